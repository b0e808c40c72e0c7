"""Summary statistics of a study: per-arm mean, std and 95 % interval, and each arm against the baseline.

The test is Welch's two-sample t-test (unequal variances; ``scipy.stats.ttest_ind(equal_var=False)``) on the
retrained test accuracies of all (search seed, retrain seed) pairs of the two arms. Pairs of one search seed
share a cell, so with several retrain seeds the samples are not independent and the p-value is optimistic;
the report says how many cells and pairs each arm has.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

TEST_NAME = "Welch's t-test (two-sided, unequal variances)"


@dataclass
class ArmSummary:
    arm: str
    n: int  # (search seed, retrain seed) pairs
    cells: int  # finished trials (distinct searched / sampled cells)
    failed: int
    mean: float
    std: float
    ci95_low: float
    ci95_high: float

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


@dataclass
class Comparison:
    arm: str
    baseline: str
    diff: float  # mean(arm) - mean(baseline)
    t: float
    p_value: float
    test: str = TEST_NAME

    def to_dict(self) -> dict[str, float | str]:
        return asdict(self)


def summarize(arm: str, values: Sequence[float], cells: int = 0, failed: int = 0) -> ArmSummary:
    """Mean, sample std and the t-based 95 % interval of the mean (NaN where n is too small)."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n if n else math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    if n > 1:
        half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
        low, high = mean - half, mean + half
    else:
        low = high = math.nan
    return ArmSummary(arm, n, cells, failed, mean, std, low, high)


def compare(arm: str, values: Sequence[float], baseline: str, base_values: Sequence[float]) -> Comparison:
    """Welch's t of ``arm`` against ``baseline``; NaN t and p when either side has fewer than 2 values."""
    from scipy import stats

    if len(values) < 2 or len(base_values) < 2:
        return Comparison(arm, baseline, _mean(values) - _mean(base_values), math.nan, math.nan)
    res = stats.ttest_ind(list(values), list(base_values), equal_var=False)
    t, p = float(res.statistic), float(res.pvalue)
    if math.isnan(t):  # both samples constant: identical -> no evidence of a difference
        p = 1.0 if _mean(values) == _mean(base_values) else 0.0
    return Comparison(arm, baseline, _mean(values) - _mean(base_values), t, p)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan
