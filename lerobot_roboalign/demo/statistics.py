"""Statistics of the demo's (and the study's) results: intervals and paired comparisons over the same seeds."""

import math

import numpy as np

Z_95 = 1.959963984540054


def wilson_interval(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval: honest at the small n and 0%/100% rates a demo produces."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denominator = 1 + Z_95**2 / n
    centre = (p + Z_95**2 / (2 * n)) / denominator
    half = Z_95 * math.sqrt(p * (1 - p) / n + Z_95**2 / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_counts(a: list[bool], b: list[bool]) -> tuple[int, int]:
    """Episodes on the same seeds that B won and A lost, and that B lost and A won (the discordant pairs)."""
    won = sum(y and not x for x, y in zip(a, b, strict=True))
    lost = sum(x and not y for x, y in zip(a, b, strict=True))
    return won, lost


def paired_on_decoded(model_l1: list[float | None], baseline_l1: list[float], seed: int) -> dict | None:
    """Baseline L1 minus the model's, paired over the frames whose action span decodes (None if none does): the
    decoded L1 compared on the same frames, so a model that decodes only where actions are easy gains nothing."""
    decoded = [i for i, error in enumerate(model_l1) if error is not None]
    if not decoded:
        return None
    from ..align.score import paired_bootstrap

    return paired_bootstrap([model_l1[i] for i in decoded], [baseline_l1[i] for i in decoded], seed=seed)


# The study's replicated comparisons (docs/study.md, "Statistics"): each row is a (head seeds, episodes) array of
# successes on the same episodes (one per task and evaluation seed, in one shared order), the episodes' tasks
# given as ``strata`` so every resample keeps each task's share of the pooled mean.

RESAMPLES = 10_000
NO_DIFFERENCE = "no difference shown"


def as_successes(successes) -> np.ndarray:
    """A (head seeds, episodes) float array, refusing anything else with the shape it got."""
    array = np.asarray(successes, dtype=float)
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"successes must be (head seeds, episodes) with both >= 1, got shape {array.shape}.")
    return array


def seed_weights(rng, n_seeds: int, resamples: int) -> np.ndarray:
    """(resamples, n_seeds) weights of head seeds drawn with replacement (each row of weights sums to 1)."""
    return rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=resamples) / n_seeds


def episode_weights(rng, strata, resamples: int) -> np.ndarray:
    """(resamples, episodes) weights of episodes drawn with replacement within each stratum (task), so each
    task keeps its share of the pooled mean; each row sums to 1."""
    strata = np.asarray(strata)
    weights = np.zeros((resamples, len(strata)))
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        weights[:, members] = rng.multinomial(len(members), np.full(len(members), 1 / len(members)), size=resamples)
    return weights / len(strata)


def percentile_interval(draws: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(low), float(high)


def row_success(successes, strata, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """A row's success (mean over head seeds and episodes) with its cluster-bootstrap 95% interval (head seeds
    and episodes resampled), and each head seed's successes with its Wilson interval."""
    array = as_successes(successes)
    rng = np.random.default_rng(seed)
    draws = ((seed_weights(rng, len(array), resamples) @ array) * episode_weights(rng, strata, resamples)).sum(1)
    low, high = percentile_interval(draws)
    per_seed = []
    for row in array:
        k, n = int(row.sum()), row.size
        per_seed.append({"successes": k, "n": n, "rate": k / n, "wilson": wilson_interval(k, n)})
    return {"mean": float(array.mean()), "low": low, "high": high, "per_seed": per_seed}


def paired_difference(a, b, strata, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """B minus A, paired by episode: per episode the success averaged over head seeds, differenced, and
    averaged over episodes. 95% interval by a cluster bootstrap: head seeds resampled within each row,
    episodes resampled jointly for both rows (within task). Won/lost: episodes where B's mean success is
    above/below A's. Two rows with the same mean success on every episode are "no difference shown"."""
    a, b = as_successes(a), as_successes(b)
    if a.shape[1] != b.shape[1] or len(strata) != a.shape[1]:
        raise ValueError(f"rows must share their episodes: {a.shape[1]} and {b.shape[1]} episodes, "
                         f"{len(strata)} strata; evaluate every row on the same seeds.")  # fmt: skip
    rng = np.random.default_rng(seed)
    per_episode = seed_weights(rng, len(b), resamples) @ b - seed_weights(rng, len(a), resamples) @ a
    draws = (per_episode * episode_weights(rng, strata, resamples)).sum(1)
    low, high = percentile_interval(draws)
    mean_a, mean_b = a.mean(0), b.mean(0)
    won, lost = int((mean_b > mean_a).sum()), int((mean_b < mean_a).sum())
    verdict = NO_DIFFERENCE if won == lost == 0 else decision(low, high)
    return {"mean": float(mean_b.mean() - mean_a.mean()), "low": low, "high": high, "won": won, "lost": lost,
            "verdict": verdict, "mcnemar": stratified_mcnemar(a, b) if len(a) == len(b) else None}  # fmt: skip


def decision(low: float, high: float) -> str:
    """The pre-registered rule on a 95% interval of B minus A."""
    return "supported" if low > 0 else "contradicted" if high < 0 else "not shown"


def stratified_mcnemar(a, b) -> dict:
    """Exact McNemar test stratified by head seed: head seed h of A is paired with head seed h of B, and each
    episode on which exactly one of the pair succeeds is a discordant pair. Under no difference each discordant
    pair favours B with probability 1/2 in every stratum, so their sum over strata is Binomial(n, 1/2) given n
    (the exact form of the Mantel-Haenszel statistic for matched pairs, also given as chi-square). Strata share
    episodes, so this treats them as independent, which the cluster bootstrap does not."""
    from scipy.stats import binomtest

    a, b = as_successes(a) > 0.5, as_successes(b) > 0.5
    if a.shape != b.shape:
        raise ValueError(f"McNemar pairs head seeds: both rows need the same shape, got {a.shape} and {b.shape}.")
    b_only, a_only = int((b & ~a).sum()), int((a & ~b).sum())
    n = b_only + a_only
    return {
        "b_only": b_only, "a_only": a_only,
        "chi2": (b_only - a_only) ** 2 / n if n else 0.0,
        "p_value": float(binomtest(b_only, n, 0.5).pvalue) if n else 1.0,
        "method": "exact McNemar, discordant pairs summed over head-seed strata",
    }  # fmt: skip
