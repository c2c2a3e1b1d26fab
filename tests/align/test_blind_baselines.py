"""The image- and state-blind baselines the demo and the study score alignment against."""

import numpy as np

from lerobot_roboalign.align.score import blind_baselines
from lerobot_roboalign.fast import FastTokenizer


def _samples(fast: FastTokenizer, chunks: np.ndarray, tasks: list[str]) -> list[dict]:
    tokens = fast.encode(chunks)
    return [{"task": t, "actions": c, "fast_tokens": k} for t, c, k in zip(tasks, chunks, tokens, strict=True)]


def test_a_held_out_instruction_unseen_in_training_gets_the_pooled_baseline():
    """A varied corpus holds out phrasings no training frame has: those frames are compared against the baseline
    of all training frames instead of being dropped (which gave NaN intervals and a 0.80 'decode rate' in the
    demo's report)."""
    rng = np.random.default_rng(0)
    chunks = rng.uniform(-1, 1, (40, 4, 2))
    fast = FastTokenizer.fit(chunks, vocab_size=64)
    train = _samples(fast, chunks[:30], ["reach the red cube"] * 15 + ["reach the green cube"] * 15)
    heldout = _samples(fast, chunks[30:], ["reach the red cube"] * 5 + ["touch the white cube"] * 5)
    baselines = blind_baselines(train, heldout, fast)
    for name, summary in baselines.items():
        assert None not in summary["per_frame_l1"], name
    pooled_mean = np.mean(chunks[:30], axis=0)
    unseen = heldout[5]
    expected = float(np.abs(fast.normalize(pooled_mean) - fast.normalize(unseen["actions"])).mean())
    assert baselines["mean chunk per task (blind)"]["per_frame_l1"][5] == expected
    red_mean = np.mean(chunks[:15], axis=0)  # a seen instruction keeps its own baseline
    seen = float(np.abs(fast.normalize(red_mean) - fast.normalize(heldout[0]["actions"])).mean())
    assert baselines["mean chunk per task (blind)"]["per_frame_l1"][0] == seen
