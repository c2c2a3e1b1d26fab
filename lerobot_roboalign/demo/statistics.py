"""Statistics of the demo's (and the study's) results: intervals and paired comparisons over the same seeds."""

import math

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
