"""GRPO rewards of RoboAlign: r = (r_format + r_action) / 2, computed offline against the dataset's FAST tokens.

Edge cases the paper leaves open, and the choice made here:

* Unparseable completion (no ``<ACTION_START>...<ACTION_END>`` span, or a non-action token inside it):
  r_action = 0. There is nothing to compare, and rewarding it would teach the model to skip the span.
* No match (the first action token is already wrong): r_action = 0, as in the paper's formula.
* Shorter generation: r_action = matched prefix / target length, as in the paper's formula.
* Extra tokens after a full match: r_action = matched prefix / max(target length, generated length).
  The paper's formula would give 1.0, but the extra tokens decode to a different (or undecodable) chunk,
  so they are as wrong as missing ones; dividing by the longer length penalises both alike and keeps the
  paper's value whenever the generation is not longer than the target.
* Empty target (a chunk FAST encodes to no token): r_action = 1 iff the generated span is empty too.

The format reward additionally needs non-empty reasoning inside ``<think>``: an empty think block is the
"collapsed reasoning" the paper warns about, and RL should not pay for it.
The alternative ``l1`` reward decodes both token sequences back to action chunks and maps the mean absolute
error, in the FAST tokenizer's normalised [-1, 1] units so one scale fits every robot, to (0, 1] with
exp(-L1 / scale); an undecodable generation gets 0.
"""

import math
import re
from collections.abc import Sequence

import numpy as np

from lerobot_roboalign.action_vocab import ACTION_END, ACTION_START, ActionVocabulary
from lerobot_roboalign.fast import FastTokenizer

REWARD_KINDS = ("prefix", "l1")

_FORMAT_RE = re.compile(
    r"^\s*<think>(?P<think>.*?)</think>\s*<answer>\s*"
    + re.escape(ACTION_START)
    + r".*?"
    + re.escape(ACTION_END)
    + r"\s*</answer>\s*$",
    re.DOTALL,
)


def prefix_match_reward(generated: Sequence[int] | None, target: Sequence[int]) -> float:
    """Longest common prefix over max(len(target), len(generated)); 0 for an unparseable generation."""
    if generated is None:
        return 0.0
    if len(target) == 0:
        return float(len(generated) == 0)
    matched = 0
    for produced, expected in zip(generated, target):
        if produced != expected:
            break
        matched += 1
    return matched / max(len(target), len(generated))


def follows_format(text: str) -> bool:
    """True for ``<think>non-empty</think><answer><ACTION_START>...<ACTION_END></answer>`` (whitespace allowed)."""
    match = _FORMAT_RE.match(text)
    return match is not None and bool(match.group("think").strip())


def l1_reward(
    generated: Sequence[int] | None, target: Sequence[int], fast_tokenizer: FastTokenizer, scale: float
) -> float:
    """exp(-mean |decoded(generated) - decoded(target)| / scale); 0 when the generation does not decode."""
    if not generated:
        return 0.0
    chunks, valid = fast_tokenizer.decode([list(generated), list(target)])
    if not (valid[0] and valid[1]) or not np.all(np.isfinite(chunks[0])):
        return 0.0
    error = np.abs(fast_tokenizer.normalize(chunks[0]) - fast_tokenizer.normalize(chunks[1])).mean()
    return math.exp(-float(error) / scale)


class _TokenReward:
    """Shared plumbing: TRL passes the sampled token ids, which we cut at the first stop token."""

    def __init__(self, tokenizer, vocabulary: ActionVocabulary, stop_ids: set[int]):
        self.tokenizer = tokenizer
        self.vocabulary = vocabulary
        self.stop_ids = stop_ids

    def _strip(self, ids: Sequence[int]) -> list[int]:
        ids = list(ids)
        for index, token in enumerate(ids):
            if token in self.stop_ids:
                return ids[:index]
        return ids

    def text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(self._strip(ids), skip_special_tokens=False)

    def action_tokens(self, ids: Sequence[int]) -> list[int] | None:
        return self.vocabulary.parse_span(self._strip(ids))


class FormatReward(_TokenReward):
    """r_f in {0, 1}: the completion follows the think/answer/action-span format and the span parses."""

    __name__ = "format"

    def __call__(self, completions, completion_ids, **kwargs) -> list[float]:
        return [
            float(follows_format(self.text(ids)) and self.action_tokens(ids) is not None)
            for ids in completion_ids
        ]


class ActionPrefixReward(_TokenReward):
    """r_a: longest matching prefix of FAST tokens over the target length (see the module docstring)."""

    __name__ = "action"

    def __call__(self, completions, completion_ids, fast_tokens, **kwargs) -> list[float]:
        return [
            prefix_match_reward(self.action_tokens(ids), target)
            for ids, target in zip(completion_ids, fast_tokens, strict=True)
        ]


class ActionL1Reward(_TokenReward):
    """Alternative r_a: decoded-chunk L1 error mapped to (0, 1]."""

    __name__ = "action_l1"

    def __init__(self, tokenizer, vocabulary, stop_ids, fast_tokenizer: FastTokenizer, scale: float = 0.2):
        super().__init__(tokenizer, vocabulary, stop_ids)
        self.fast_tokenizer = fast_tokenizer
        self.scale = scale

    def __call__(self, completions, completion_ids, fast_tokens, **kwargs) -> list[float]:
        return [
            l1_reward(self.action_tokens(ids), target, self.fast_tokenizer, self.scale)
            for ids, target in zip(completion_ids, fast_tokens, strict=True)
        ]


def make_reward_funcs(
    kind: str,
    tokenizer,
    vocabulary: ActionVocabulary,
    fast_tokenizer: FastTokenizer,
    stop_ids: set[int],
    l1_scale: float = 0.2,
) -> list:
    """[format, action]: TRL sums them with equal weights 0.5 each, giving (r_f + r_a) / 2."""
    if kind not in REWARD_KINDS:
        raise ValueError(f"Unknown reward {kind!r}: use --grpo.reward=prefix (paper) or --grpo.reward=l1.")
    action = (
        ActionPrefixReward(tokenizer, vocabulary, stop_ids)
        if kind == "prefix"
        else ActionL1Reward(tokenizer, vocabulary, stop_ids, fast_tokenizer, l1_scale)
    )
    return [FormatReward(tokenizer, vocabulary, stop_ids), action]


def total_rewards(reward_funcs: list, **inputs) -> np.ndarray:
    """(r_f + r_a) / 2 per completion, the quantity GRPO maximises (used for evaluation outside TRL)."""
    return np.mean([np.asarray(func(**inputs), dtype=float) for func in reward_funcs], axis=0)
