"""FAST action tokenizer (Pertsch et al. 2025), vectorised over batches of action chunks.

RoboAlign's MLLM speaks in FAST tokens: each action dimension is normalised to [-1, 1] with its
1st/99th percentiles, transformed along time with an orthonormal DCT-II (scipy), multiplied by
``scale``, rounded, flattened time-major, and compressed with BPE (the ``tokenizers`` library),
where every integer coefficient is one unicode character ``chr(value - min_token)``.

The directory layout and keys are those of the Hub's ``physical-intelligence/fast`` processor
(``processor_config.json`` + ``tokenizer.json``/``tokenizer_config.json``/
``special_tokens_map.json``), so a FAST or FAST+ tokenizer downloaded from the Hub or written by
``lerobot-train-tokenizer`` loads here without ``trust_remote_code``; our extra keys (percentiles,
``max_token``) are ignored there.
"""

import json
from pathlib import Path

import numpy as np
from scipy.fft import dct, idct
from tokenizers import Tokenizer, decoders, models, trainers
from tqdm import tqdm

PROCESSOR_CONFIG = "processor_config.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
HUB_FILES = (PROCESSOR_CONFIG, TOKENIZER_FILE, TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP)
HUB_PROCESSOR_CLASS = "UniversalActionProcessor"
HUB_AUTO_MAP = {"AutoProcessor": "processing_action_tokenizer.UniversalActionProcessor"}
# Percentile span below which a dimension counts as constant (LeRobot's QUANTILES epsilon).
EPS = 1e-8


class InvalidActionTokens(ValueError):
    """Token sequences that do not decode to an action chunk; ``reasons`` maps index -> why."""

    def __init__(self, reasons: dict[int, str]):
        self.reasons = reasons
        listed = "; ".join(f"#{i}: {why}" for i, why in list(reasons.items())[:5])
        super().__init__(
            f"{len(reasons)} token sequence(s) do not decode to an action chunk ({listed}). Use "
            "FastTokenizer.decode to get a validity flag per sequence instead of an error."
        )


class FastTokenizer:
    """DCT + BPE action tokenizer for chunks of shape ``[chunk_size, action_dim]``."""

    def __init__(
        self,
        bpe: Tokenizer,
        *,
        scale: float,
        min_token: int,
        chunk_size: int,
        action_dim: int,
        vocab_size: int,
        max_token: int | None = None,
        q01: np.ndarray | None = None,
        q99: np.ndarray | None = None,
    ):
        self.bpe = bpe
        self.scale = float(scale)
        self.min_token = int(min_token)
        self.max_token = None if max_token is None else int(max_token)
        self.chunk_size = int(chunk_size)
        self.action_dim = int(action_dim)
        self.vocab_size = int(vocab_size)
        self.q01 = None if q01 is None else np.asarray(q01, dtype=np.float64)
        self.q99 = None if q99 is None else np.asarray(q99, dtype=np.float64)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        chunks: np.ndarray,
        scale: float = 10,
        vocab_size: int = 2048,
        *,
        show_progress: bool = False,
    ) -> "FastTokenizer":
        """Fit percentiles and BPE merges on raw action chunks ``[N, H, D]``.

        The alphabet covers every coefficient a chunk in [-1, 1] can produce (|c| <= sqrt(H) for
        an orthonormal DCT), so held-out chunks never fall outside it.
        """
        chunks = _as_chunks(chunks)
        _, horizon, action_dim = chunks.shape
        flat = chunks.reshape(-1, action_dim)
        q01, q99 = np.percentile(flat, 1, axis=0), np.percentile(flat, 99, axis=0)
        bound = int(np.ceil(scale * np.sqrt(horizon)))
        if 2 * bound + 1 > vocab_size:
            raise ValueError(
                f"scale={scale} and chunk_size={horizon} give {2 * bound + 1} distinct DCT coefficients, "
                f"more than vocab_size={vocab_size}: lower --scale or raise --vocab_size."
            )
        tokenizer = cls(
            _untrained_bpe(),
            scale=scale,
            min_token=-bound,
            max_token=bound,
            chunk_size=horizon,
            action_dim=action_dim,
            vocab_size=vocab_size,
            q01=q01,
            q99=q99,
        )
        strings = _to_strings(tokenizer.coefficient_codes(chunks))
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=2,
            special_tokens=[],
            initial_alphabet=[chr(i) for i in range(2 * bound + 1)],
            show_progress=show_progress,
        )
        tokenizer.bpe.train_from_iterator(strings, trainer=trainer, length=len(strings))
        return tokenizer

    # ------------------------------------------------------------------ transforms
    def normalize(self, actions: np.ndarray) -> np.ndarray:
        """Raw actions -> [-1, 1] per dimension (clipped at the 1st/99th percentiles)."""
        if self.q01 is None:
            return actions
        span = np.maximum(self.q99 - self.q01, EPS)
        return np.clip(2.0 * (actions - self.q01) / span - 1.0, -1.0, 1.0)

    def denormalize(self, normalized: np.ndarray) -> np.ndarray:
        if self.q01 is None:
            return normalized
        span = np.maximum(self.q99 - self.q01, EPS)
        return self.q01 + (normalized + 1.0) * 0.5 * span

    def coefficient_codes(self, chunks: np.ndarray) -> np.ndarray:
        """Chunks ``[N, H, D]`` -> BPE alphabet codes ``[N, H*D]`` (DCT, scale, round, time-major)."""
        chunks = self._check_shape(_as_chunks(chunks))
        coefficients = dct(self.normalize(chunks), axis=1, norm="ortho")
        codes = np.rint(coefficients * self.scale).astype(np.int64).reshape(len(chunks), -1)
        upper = None if self.max_token is None else self.max_token - self.min_token
        return np.clip(codes - self.min_token, 0, upper)

    def chunks_from_codes(self, codes: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`coefficient_codes` up to rounding."""
        coefficients = (codes.astype(np.float64) + self.min_token) / self.scale
        coefficients = coefficients.reshape(-1, self.chunk_size, self.action_dim)
        return self.denormalize(idct(coefficients, axis=1, norm="ortho"))

    # ------------------------------------------------------------------ encode / decode
    def encode(self, chunks: np.ndarray) -> list[list[int]]:
        """Raw action chunks ``[N, H, D]`` -> one list of FAST token ids per chunk."""
        strings = _to_strings(self.coefficient_codes(chunks))
        return [encoding.ids for encoding in self.bpe.encode_batch_fast(strings, add_special_tokens=False)]

    def decode(self, token_lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids -> (chunks ``[N, H, D]``, valid ``[N]``); invalid rows are NaN, never zeros."""
        chunks, reasons = self.decode_with_reasons(token_lists)
        valid = np.array([why is None for why in reasons], dtype=bool)
        return chunks, valid

    def decode_strict(self, token_lists: list[list[int]]) -> np.ndarray:
        """Like :meth:`decode` but raises :class:`InvalidActionTokens` if any sequence is invalid."""
        chunks, reasons = self.decode_with_reasons(token_lists)
        invalid = {i: why for i, why in enumerate(reasons) if why is not None}
        if invalid:
            raise InvalidActionTokens(invalid)
        return chunks

    def decode_with_reasons(self, token_lists: list[list[int]]) -> tuple[np.ndarray, list[str | None]]:
        """Decode and say, per sequence, why it is invalid (``None`` when valid)."""
        reasons = self._check_ids(token_lists)
        candidates = [i for i, why in enumerate(reasons) if why is None]
        texts = dict(
            zip(
                candidates,
                self.bpe.decode_batch([list(map(int, token_lists[i])) for i in candidates]),
                strict=True,
            )
        )
        length = self.chunk_size * self.action_dim
        for i, text in texts.items():
            if len(text) != length:
                reasons[i] = (
                    f"decodes to {len(text)} DCT coefficients, expected {length} (truncated or extra tokens)"
                )
        good = [i for i in candidates if reasons[i] is None]
        codes = _from_strings([texts[i] for i in good], length)
        if self.max_token is not None:
            for row in np.flatnonzero((codes > self.max_token - self.min_token).any(axis=1)):
                reasons[good[row]] = "decodes to a coefficient outside the tokenizer's alphabet"
        chunks = np.full((len(token_lists), self.chunk_size, self.action_dim), np.nan)
        keep = np.array([reasons[i] is None for i in good], dtype=bool)
        chunks[np.asarray(good, dtype=np.int64)[keep]] = self.chunks_from_codes(codes[keep])
        return chunks, reasons

    def _check_ids(self, token_lists: list[list[int]]) -> list[str | None]:
        """Empty sequences and ids outside ``[0, bpe vocabulary)`` are invalid before BPE decoding."""
        bpe_size = self.bpe.get_vocab_size()
        lengths = np.array([len(ids) for ids in token_lists], dtype=np.int64)
        flat = np.concatenate([np.asarray(ids, dtype=np.int64).ravel() for ids in token_lists] or [[]])
        out_of_range = (flat < 0) | (flat >= bpe_size)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        bad_counts = np.add.reduceat(out_of_range, starts) if flat.size else np.zeros(len(lengths))
        reasons: list[str | None] = [None] * len(token_lists)
        for i in range(len(token_lists)):
            if lengths[i] == 0:
                reasons[i] = "empty token sequence"
            elif bad_counts[i]:
                reasons[i] = f"token id outside the FAST vocabulary [0, {bpe_size})"
        return reasons

    def _check_shape(self, chunks: np.ndarray) -> np.ndarray:
        if chunks.shape[1:] != (self.chunk_size, self.action_dim):
            raise ValueError(
                f"action chunks have shape [H, D] = {list(chunks.shape[1:])} but this FAST tokenizer was fit "
                f"on [{self.chunk_size}, {self.action_dim}]: cut chunks to chunk_size={self.chunk_size} "
                f"with {self.action_dim} action dims, or fit a new tokenizer (roboalign tokenizer fit "
                f"--chunk_size={chunks.shape[1]})."
            )
        return chunks

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Write the Hub FAST processor layout (plus our percentiles) to ``save_directory``."""
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        self.bpe.save(str(path / TOKENIZER_FILE))
        _write_json(
            path / TOKENIZER_CONFIG,
            {
                "added_tokens_decoder": {},
                "clean_up_tokenization_spaces": False,
                "model_max_length": 1e30,
                "tokenizer_class": "PreTrainedTokenizerFast",
            },
        )
        _write_json(path / SPECIAL_TOKENS_MAP, {})
        config = {
            "action_dim": self.action_dim,
            "auto_map": HUB_AUTO_MAP,
            "min_token": self.min_token,
            "processor_class": HUB_PROCESSOR_CLASS,
            "scale": self.scale,
            "time_horizon": self.chunk_size,
            "vocab_size": self.vocab_size,
            "max_token": self.max_token,
        }
        if self.q01 is not None:
            config |= {"q01": self.q01.tolist(), "q99": self.q99.tolist()}
        _write_json(path / PROCESSOR_CONFIG, config)
        return path

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, chunk_size: int | None = None, action_dim: int | None = None
    ) -> "FastTokenizer":
        """Load ours or a Hub/``lerobot-train-tokenizer`` FAST processor directory.

        Universal tokenizers (FAST+) leave ``time_horizon``/``action_dim`` unset: pass them here.
        Without stored percentiles the input is taken as already normalised to [-1, 1].
        """
        path = Path(path)
        missing = [name for name in (PROCESSOR_CONFIG, TOKENIZER_FILE) if not (path / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{path} is not a FAST tokenizer directory (missing {', '.join(missing)}): create one with "
                "`roboalign tokenizer fit --output_dir=...` or point to a physical-intelligence/fast "
                "download."
            )
        config = json.loads((path / PROCESSOR_CONFIG).read_text())
        chunk_size = chunk_size or config.get("time_horizon")
        action_dim = action_dim or config.get("action_dim")
        if chunk_size is None or action_dim is None:
            raise ValueError(
                f"{path / PROCESSOR_CONFIG} does not fix time_horizon/action_dim (a universal FAST+ "
                "tokenizer): pass FastTokenizer.from_pretrained(path, chunk_size=H, action_dim=D)."
            )
        return cls(
            Tokenizer.from_file(str(path / TOKENIZER_FILE)),
            scale=config["scale"],
            min_token=config.get("min_token", 0),
            max_token=config.get("max_token"),
            chunk_size=chunk_size,
            action_dim=action_dim,
            vocab_size=config.get("vocab_size", 1024),
            q01=config.get("q01"),
            q99=config.get("q99"),
        )


def dataset_action_chunks(
    repo_id: str, root: str | Path | None, chunk_size: int, stride: int = 1
) -> np.ndarray:
    """All length-``chunk_size`` windows of ``action`` inside each episode of a LeRobotDataset."""
    from lerobot.datasets import LeRobotDataset
    from lerobot.utils.constants import ACTION

    from .dataset_mapping import missing_offline_dataset

    if message := missing_offline_dataset(repo_id, root, "--dataset.roots='[DIR]'"):
        raise FileNotFoundError(message)
    dataset = LeRobotDataset(repo_id, root=root)
    columns = dataset.hf_dataset.select_columns([ACTION, "episode_index"]).with_format("numpy")[:]
    actions, episodes = np.asarray(np.stack(columns[ACTION]), dtype=np.float64), columns["episode_index"]
    windows = [
        np.lib.stride_tricks.sliding_window_view(actions[episodes == episode], chunk_size, axis=0)[::stride]
        for episode in np.unique(episodes)
        if (episodes == episode).sum() >= chunk_size
    ]
    if not windows:
        raise ValueError(
            f"{repo_id} has no episode of at least chunk_size={chunk_size} frames: lower --chunk_size."
        )
    return np.concatenate(windows).transpose(0, 2, 1)


def fit_from_datasets(
    repo_ids: list[str],
    roots: list[str | Path | None] | None = None,
    chunk_size: int = 16,
    *,
    scale: float = 10,
    vocab_size: int = 2048,
    stride: int = 1,
    max_chunks: int | None = None,
    seed: int = 0,
) -> FastTokenizer:
    """Fit a FAST tokenizer on the action chunks of one or more LeRobotDatasets (same action dim)."""
    roots = roots or [None] * len(repo_ids)
    if len(roots) != len(repo_ids):
        raise ValueError(f"got {len(repo_ids)} repo_ids but {len(roots)} roots: pass one root per dataset.")
    parts = [
        dataset_action_chunks(repo_id, root, chunk_size, stride)
        for repo_id, root in tqdm(list(zip(repo_ids, roots, strict=True)), desc="reading action chunks")
    ]
    dims = [part.shape[-1] for part in parts]
    if len(set(dims)) > 1:
        listed = ", ".join(f"{repo_id}: {dim}" for repo_id, dim in zip(repo_ids, dims, strict=True))
        raise ValueError(
            f"datasets have different action dims ({listed}): fit one tokenizer per action space."
        )
    chunks = np.concatenate(parts)
    if max_chunks is not None and len(chunks) > max_chunks:
        chunks = chunks[np.random.default_rng(seed).choice(len(chunks), max_chunks, replace=False)]
    return FastTokenizer.fit(chunks, scale=scale, vocab_size=vocab_size, show_progress=True)


def _untrained_bpe() -> Tokenizer:
    """A BPE with no pre-tokenizer (a chunk is one word) and a decoder that concatenates tokens."""
    bpe = Tokenizer(models.BPE())
    bpe.decoder = decoders.Fuse()
    return bpe


def _as_chunks(chunks: np.ndarray) -> np.ndarray:
    chunks = np.asarray(chunks, dtype=np.float64)
    if chunks.ndim != 3:
        raise ValueError(
            f"expected action chunks of shape [N, H, D], got {list(chunks.shape)}: add a batch axis "
            "with chunk[None] for a single chunk."
        )
    if not np.isfinite(chunks).all():
        raise ValueError("action chunks contain NaN or inf: drop or repair those frames before tokenizing.")
    return chunks


def _to_strings(codes: np.ndarray) -> list[str]:
    """Rows of alphabet codes -> one string per row, via a single UTF-32 decode of the whole batch."""
    length = codes.shape[1]
    text = codes.astype("<u4").tobytes().decode("utf-32-le")
    return [text[i : i + length] for i in range(0, len(text), length)]


def _from_strings(strings: list[str], length: int) -> np.ndarray:
    """Inverse of :func:`_to_strings` for strings of equal ``length``."""
    return (
        np.frombuffer("".join(strings).encode("utf-32-le"), dtype="<u4").reshape(-1, length).astype(np.int64)
    )


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n")
