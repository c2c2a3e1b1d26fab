"""What an aligned MLLM learned about actions, on frames it never trained on, next to blind baselines.

A format rate says the model speaks the markup; only action-token accuracy and the decoded chunk's error
against the dataset say it learned actions, and only if it beats a baseline that ignores the observation.
The baselines here know the task (the instruction) but neither image nor state: per task, the most
frequent FAST sequence of the training frames and their mean chunk. Completions are greedy (the model's
best guess, one per frame) and capped above the longest target, so brevity is never what is measured.
"""

import re
from collections import Counter

import numpy as np
import torch

from lerobot_roboalign.align.common import ModelConfig, generate_completions, stop_token_ids
from lerobot_roboalign.align.data import align_messages
from lerobot_roboalign.align.rewards import ActionPrefixReward, FormatReward, prefix_match_reward
from lerobot_roboalign.fast import FastTokenizer

_THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def chunk_l1(fast: FastTokenizer, predicted: np.ndarray, target: np.ndarray) -> float:
    """Mean |predicted - target| in FAST's normalised units ([-1, 1] per action dimension)."""
    return float(np.abs(fast.normalize(predicted) - fast.normalize(target)).mean())


def decoded_l1(fast: FastTokenizer, tokens: list[list[int] | None], samples: list[dict]) -> list[float | None]:
    """Per frame: L1 of the decoded chunk against the dataset's chunk; None where the tokens do not decode."""
    decodable = [i for i, t in enumerate(tokens) if t]
    errors: list[float | None] = [None] * len(tokens)
    if decodable:
        chunks, valid = fast.decode([tokens[i] for i in decodable])
        for i, chunk, ok in zip(decodable, chunks, valid, strict=True):
            if ok and np.all(np.isfinite(chunk)):
                errors[i] = chunk_l1(fast, chunk, samples[i]["actions"])
    return errors


def l1_with_fallback(fast: FastTokenizer, l1: list[float | None], samples: list[dict]) -> list[float]:
    """Per frame L1 over every frame: a span that does not decode counts as the all-zero normalised chunk
    (openpi's fallback for undecodable FAST output), so a model cannot look accurate by decoding only on easy
    frames."""
    return [
        e if e is not None else chunk_l1(fast, fast.denormalize(np.zeros_like(s["actions"])), s["actions"])
        for e, s in zip(l1, samples, strict=True)
    ]


def summarise(action: list[float], l1: list[float | None], extra: dict | None = None,
              l1_all: list[float] | None = None) -> dict:
    valid = [e for e in l1 if e is not None]
    return {
        "action": float(np.mean(action)) if action else None,
        "l1": float(np.mean(valid)) if valid else None,
        "l1_all": float(np.mean(l1_all)) if l1_all else None,
        "decode_rate": len(valid) / len(l1),
        "per_frame_action": [float(a) for a in action],
        "per_frame_l1": l1,
        "per_frame_l1_all": l1_all,
        **(extra or {}),
    }


def score_backbone(model_path: str, samples: list[dict], max_new_tokens: int) -> dict:
    """Greedy completions of ``model_path`` on ``samples``: format, prefix accuracy, decoded L1, reasoning length."""
    from lerobot_roboalign.align.grpo import load_aligned

    model, processor, vocabulary, fast = load_aligned(ModelConfig(path=model_path))
    model.eval()
    with torch.no_grad():
        ids = generate_completions(
            model, processor, [align_messages(s["task"], s["state"]) for s in samples],
            [s["images"] for s in samples], max_new_tokens=max_new_tokens,
        )  # fmt: skip
    stops = stop_token_ids(processor.tokenizer)
    format_reward = FormatReward(processor.tokenizer, vocabulary, stops)
    prefix = ActionPrefixReward(processor.tokenizer, vocabulary, stops)
    targets = [s["fast_tokens"] for s in samples]
    action = prefix(None, ids, targets)
    think = [_THINK_RE.search(format_reward.text(row)) for row in ids]
    reasoning_tokens = [len(processor.tokenizer(m.group(1), add_special_tokens=False)["input_ids"]) for m in think if m]
    l1 = decoded_l1(fast, [prefix.action_tokens(row) for row in ids], samples)
    return summarise(
        action,
        l1,
        {
            "format": float(np.mean(format_reward(None, ids))),
            "reasoning_tokens": float(np.mean(reasoning_tokens)) if reasoning_tokens else 0.0,
            "completion_tokens": float(np.mean([len(row) for row in ids])),
            "hit_cap": int(sum(len(row) >= max_new_tokens for row in ids)),
        },
        l1_with_fallback(fast, l1, samples),
    )


POOLED = "\x00all training frames"  # the key of the instruction-blind fallback (no real task text has NUL)


def blind_baselines(train: list[dict], heldout: list[dict], fast: FastTokenizer) -> dict[str, dict]:
    """Per task, from the training frames: the most frequent FAST sequence and the mean chunk. A held-out
    instruction no training frame has (a varied corpus's rarer phrasings) gets the baseline of all training frames,
    so that every frame is compared, not only those whose instruction was drawn for training."""
    by_task: dict[str, list[dict]] = {POOLED: train}
    for sample in train:
        by_task.setdefault(sample["task"], []).append(sample)
    mode = {task: list(Counter(tuple(s["fast_tokens"]) for s in rows).most_common(1)[0][0]) for task, rows in by_task.items()}
    mean = {task: np.mean([s["actions"] for s in rows], axis=0) for task, rows in by_task.items()}
    keys = [s["task"] if s["task"] in by_task else POOLED for s in heldout]
    mode_tokens = [mode[key] for key in keys]
    mode_l1 = decoded_l1(fast, mode_tokens, heldout)
    mean_l1 = [chunk_l1(fast, mean[key], s["actions"]) for key, s in zip(keys, heldout, strict=True)]
    return {
        "most frequent FAST sequence per task (blind)": summarise(
            [prefix_match_reward(t, s["fast_tokens"]) for t, s in zip(mode_tokens, heldout, strict=True)],
            mode_l1, l1_all=l1_with_fallback(fast, mode_l1, heldout),
        ),
        "mean chunk per task (blind)": summarise(
            [], mean_l1, l1_all=l1_with_fallback(fast, mean_l1, heldout)
        ),
    }


def paired_bootstrap(a: list[float], b: list[float], draws: int = 5000, seed: int = 0) -> dict:
    """Mean of b - a over the same frames with a 95% percentile bootstrap interval, and frames won/lost."""
    diff = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(draws, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {
        "mean": float(diff.mean()),
        "low": float(low),
        "high": float(high),
        "better": int((diff > 0).sum()),
        "worse": int((diff < 0).sum()),
        "n": len(diff),
    }
