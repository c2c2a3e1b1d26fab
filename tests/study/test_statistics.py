"""The study's replicated statistics on constructed rows whose answer is known."""

import numpy as np
import pytest

from lerobot_roboalign.demo.statistics import (
    NO_DIFFERENCE,
    paired_difference,
    row_success,
    stratified_mcnemar,
)

STRATA = np.repeat(["reach_and_close", "pick_and_place"], 50)  # 2 tasks x 50 evaluation seeds


def rows(rate: float, seed: int, heads: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).random((heads, len(STRATA))) < rate


def test_identical_rows_show_no_difference():
    a = rows(0.5, 0)
    result = paired_difference(a, a.copy(), STRATA, resamples=2000)
    assert result["verdict"] == NO_DIFFERENCE
    assert (result["won"], result["lost"], result["mean"]) == (0, 0, 0.0)
    assert result["low"] < 0 < result["high"]  # head seeds are resampled separately per row
    assert result["mcnemar"]["p_value"] == 1.0


def test_a_row_that_wins_every_episode_is_above_zero():
    result = paired_difference(np.zeros((4, len(STRATA))), np.ones((4, len(STRATA))), STRATA, resamples=2000)
    assert result["low"] > 0.99 and result["verdict"] == "supported"
    assert (result["won"], result["lost"]) == (len(STRATA), 0)
    assert result["mcnemar"]["b_only"] == 4 * len(STRATA) and result["mcnemar"]["p_value"] < 1e-6


def test_worse_row_is_contradicted():
    result = paired_difference(rows(0.9, 1), rows(0.1, 2), STRATA, resamples=2000)
    assert result["high"] < 0 and result["verdict"] == "contradicted" and result["lost"] > result["won"]


def test_one_head_seed_carrying_the_successes_widens_the_interval():
    """Same mean success (0.25): spread over every head seed, or all of it from one head seed."""
    even = rows(0.25, 3)
    clustered = np.zeros_like(even)
    clustered[0] = True
    even_row, clustered_row = row_success(even, STRATA, 2000), row_success(clustered, STRATA, 2000)
    assert even_row["mean"] == pytest.approx(clustered_row["mean"], abs=0.03)
    assert clustered_row["high"] - clustered_row["low"] > 3 * (even_row["high"] - even_row["low"])
    assert [s["successes"] for s in clustered_row["per_seed"]] == [100, 0, 0, 0]
    low, high = clustered_row["per_seed"][1]["wilson"]
    assert low == pytest.approx(0.0) and high > 0.0


def test_bootstrap_is_seeded():
    a, b = rows(0.4, 4), rows(0.6, 5)
    assert paired_difference(a, b, STRATA, 500, seed=1) == paired_difference(a, b, STRATA, 500, seed=1)


def test_mcnemar_counts_discordant_pairs_per_head_seed():
    a = np.array([[1, 1, 0, 0], [0, 0, 0, 0]])
    b = np.array([[1, 0, 1, 1], [1, 0, 0, 0]])
    result = stratified_mcnemar(a, b)
    assert (result["b_only"], result["a_only"]) == (3, 1)
    assert result["p_value"] == pytest.approx(0.625)  # two-sided exact binomial, 3 of 4 at 1/2


def test_rows_on_other_episodes_are_refused():
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference(np.ones((4, 10)), np.ones((4, 12)), np.zeros(10))
