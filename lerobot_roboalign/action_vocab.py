"""The MLLM's action vocabulary: ``<ACTION_START>``, ``<ACTION_END>`` and one token per FAST id.

RoboAlign extends the backbone's tokenizer with these tokens, so the MLLM answers with
``<ACTION_START><act_12><act_7>...<ACTION_END>``. New embedding rows start at the mean of the old
ones (a neutral point the model can move away from). The FAST <-> LLM id mapping is a lookup table,
saved as ``action_vocab.json`` next to the model together with the FAST tokenizer
(``fast_tokenizer/``).
"""

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import AddedToken

from .fast import FastTokenizer

ACTION_START = "<ACTION_START>"
ACTION_END = "<ACTION_END>"
ACTION_TOKEN_FORMAT = "<act_{}>"
ACTION_VOCAB_FILE = "action_vocab.json"
FAST_TOKENIZER_DIR = "fast_tokenizer"


def action_token(fast_id: int) -> str:
    return ACTION_TOKEN_FORMAT.format(fast_id)


@dataclass
class ActionVocabulary:
    """Where the action tokens live in an extended LLM vocabulary; ``action_ids[fast_id] = llm_id``."""

    fast_tokenizer: FastTokenizer
    start_id: int
    end_id: int
    action_ids: np.ndarray

    def __post_init__(self):
        self.action_ids = np.asarray(self.action_ids, dtype=np.int64)
        self._fast_of_llm = np.full(int(self.action_ids.max()) + 1, -1, dtype=np.int64)
        self._fast_of_llm[self.action_ids] = np.arange(len(self.action_ids))

    @property
    def num_action_tokens(self) -> int:
        return len(self.action_ids)

    @classmethod
    def extend(cls, model: torch.nn.Module, tokenizer, fast_tokenizer: FastTokenizer) -> "ActionVocabulary":
        """Add the action tokens to ``tokenizer`` (or a processor's) and grow ``model``'s embeddings.

        Idempotent: tokens already present keep their ids and rows.
        """
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        names = [ACTION_START, ACTION_END] + [
            action_token(i) for i in range(fast_tokenizer.bpe.get_vocab_size())
        ]
        old_len = len(tokenizer)
        tokenizer.add_tokens([AddedToken(name, special=False, normalized=False) for name in names])
        ids = np.asarray(tokenizer.convert_tokens_to_ids(names), dtype=np.int64)
        new_ids = ids[ids >= old_len]
        if len(new_ids):
            _grow_embeddings(
                model, rows=max(len(tokenizer), int(ids.max()) + 1), new_ids=new_ids, old_len=old_len
            )
        return cls(fast_tokenizer, start_id=int(ids[0]), end_id=int(ids[1]), action_ids=ids[2:])

    # ------------------------------------------------------------------ id mapping
    def fast_to_llm(self, fast_ids) -> list[int]:
        fast_ids = np.asarray(fast_ids, dtype=np.int64)
        if fast_ids.size and (fast_ids.min() < 0 or fast_ids.max() >= self.num_action_tokens):
            raise ValueError(
                f"FAST ids must be in [0, {self.num_action_tokens}); got {fast_ids.min()}..{fast_ids.max()}: "
                "encode with the FAST tokenizer saved next to this model (fast_tokenizer/)."
            )
        return self.action_ids[fast_ids].tolist()

    def llm_to_fast(self, llm_ids) -> list[int]:
        fast = self._lookup(llm_ids)
        if (fast < 0).any():
            raise ValueError(
                f"LLM ids {np.asarray(llm_ids)[fast < 0][:5].tolist()} are not action tokens: "
                "pass only the ids "
                f"between {ACTION_START} and {ACTION_END} (see parse_span)."
            )
        return fast.tolist()

    def _lookup(self, llm_ids) -> np.ndarray:
        llm_ids = np.asarray(llm_ids, dtype=np.int64).ravel()
        inside = (llm_ids >= 0) & (llm_ids < len(self._fast_of_llm))
        return np.where(inside, self._fast_of_llm[np.where(inside, llm_ids, 0)], -1)

    # ------------------------------------------------------------------ spans
    def format_span(self, fast_ids) -> str:
        """FAST ids -> ``<ACTION_START><act_i>...<ACTION_END>`` text, tokenised back to exactly these ids."""
        return (
            ACTION_START
            + "".join(ACTION_TOKEN_FORMAT.format(i) for i in np.asarray(fast_ids).tolist())
            + ACTION_END
        )

    def parse_span(self, llm_token_ids) -> list[int] | None:
        """FAST ids of the first complete action span; ``None`` if there is none or it holds other tokens."""
        ids = np.asarray(llm_token_ids, dtype=np.int64).ravel()
        starts = np.flatnonzero(ids == self.start_id)
        if not len(starts):
            return None
        ends = np.flatnonzero(ids[starts[0] + 1 :] == self.end_id)
        if not len(ends):
            return None
        fast = self._lookup(ids[starts[0] + 1 : starts[0] + 1 + ends[0]])
        return None if (fast < 0).any() else fast.tolist()

    def chunks_to_spans(self, chunks: np.ndarray) -> list[str]:
        """Raw action chunks ``[N, H, D]`` -> one action span text per chunk (SFT targets)."""
        return [self.format_span(ids) for ids in self.fast_tokenizer.encode(chunks)]

    def span_to_chunk(self, llm_token_ids) -> np.ndarray | None:
        """Generated LLM ids -> action chunk ``[H, D]``, or ``None`` if no valid span decodes."""
        fast_ids = self.parse_span(llm_token_ids)
        if fast_ids is None:
            return None
        chunks, valid = self.fast_tokenizer.decode([fast_ids])
        return chunks[0] if valid[0] else None

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Write ``action_vocab.json`` and ``fast_tokenizer/``; the caller saves model and tokenizer."""
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        self.fast_tokenizer.save_pretrained(path / FAST_TOKENIZER_DIR)
        content = {
            "action_start": ACTION_START,
            "action_end": ACTION_END,
            "action_token_format": ACTION_TOKEN_FORMAT,
            "start_id": self.start_id,
            "end_id": self.end_id,
            "action_ids": self.action_ids.tolist(),
            "fast_tokenizer": FAST_TOKENIZER_DIR,
        }
        (path / ACTION_VOCAB_FILE).write_text(json.dumps(content) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, tokenizer=None) -> "ActionVocabulary":
        """Load the mapping saved with a model; with ``tokenizer``, check it holds the same ids."""
        path = Path(path)
        if not (path / ACTION_VOCAB_FILE).is_file():
            raise FileNotFoundError(
                f"{path} has no action vocabulary ({ACTION_VOCAB_FILE} is missing): this backbone was never "
                "extended with FAST action tokens. Run `roboalign align sft` on it first (or "
                "ActionVocabulary.extend(model, tokenizer, fast_tokenizer) and save_pretrained)."
            )
        content = json.loads((path / ACTION_VOCAB_FILE).read_text())
        vocab = cls(
            FastTokenizer.from_pretrained(path / content["fast_tokenizer"]),
            start_id=content["start_id"],
            end_id=content["end_id"],
            action_ids=content["action_ids"],
        )
        if tokenizer is not None:
            vocab.check_tokenizer(tokenizer)
        return vocab

    def check_fast_tokenizer(self, fast_tokenizer: FastTokenizer, given: str, backbone: str) -> None:
        """Refuse a FAST tokenizer other than the one this vocabulary's action tokens were made for.

        Targets encoded with another tokenizer would teach the model ids that the saved ``fast_tokenizer/``
        decodes to different actions (or cannot decode at all).
        """
        if fast_signature(fast_tokenizer) != fast_signature(self.fast_tokenizer):
            raise ValueError(
                f"--model.fast_tokenizer={given} differs from the FAST tokenizer that backbone {backbone} already "
                f"has action tokens for ({Path(backbone) / FAST_TOKENIZER_DIR}); the saved model would emit ids its "
                "own tokenizer decodes wrongly. Fix: drop --model.fast_tokenizer to train with the backbone's "
                "tokenizer, or start from a backbone without action tokens (no action_vocab.json, e.g. the base "
                "MLLM) to extend it with the new one."
            )

    def check_tokenizer(self, tokenizer) -> None:
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        last = self.num_action_tokens - 1
        names = [ACTION_START, ACTION_END, action_token(0), action_token(last)]
        expected = [self.start_id, self.end_id, int(self.action_ids[0]), int(self.action_ids[last])]
        if tokenizer.convert_tokens_to_ids(names) != expected:
            raise ValueError(
                "the tokenizer's action token ids differ from action_vocab.json: load the tokenizer saved "
                "with this model, or re-run `roboalign align sft` to extend this one."
            )


def fast_signature(fast_tokenizer: FastTokenizer) -> tuple:
    """Everything that decides how a FAST tokenizer maps chunks to ids: BPE model, quantisation, shapes, percentiles."""
    q01, q99 = (None if q is None else q.tolist() for q in (fast_tokenizer.q01, fast_tokenizer.q99))
    return (
        fast_tokenizer.bpe.to_str(),
        fast_tokenizer.scale,
        fast_tokenizer.min_token,
        fast_tokenizer.max_token,
        fast_tokenizer.chunk_size,
        fast_tokenizer.action_dim,
        q01,
        q99,
    )


def _grow_embeddings(model: torch.nn.Module, rows: int, new_ids: np.ndarray, old_len: int) -> None:
    """Resize to at least ``rows`` and set the new tokens' input and output rows to the old rows' mean."""
    if rows > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(rows, mean_resizing=False)
    index = torch.as_tensor(new_ids)
    embeddings = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not embeddings[0]:
        embeddings.append(output.weight)
    with torch.no_grad(), _gathered(embeddings):
        for weight in embeddings:
            weight[index] = weight[:old_len].mean(dim=0).to(weight.dtype)


def _gathered(params: list[torch.Tensor]):
    """Under DeepSpeed ZeRO-3 (loaded partitioned) the whole weights, for an edit that rank 0's copy decides."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0)
