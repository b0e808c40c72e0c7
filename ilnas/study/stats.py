"""Statistics a NAS reviewer accepts: the cell (search seed) is the unit, retrain seeds are nested in it.

* Arm means and intervals: a two-level (hierarchical) bootstrap -- resample search seeds with replacement,
  then each drawn seed's retrain seeds with replacement -- percentile interval, clipped to [0, 1].
* Tests: Welch's t-test on the per-cell means (one number per search seed, so retrain seeds do not count as
  independent samples); Holm's step-down correction over the study's family of comparisons; Hedges' g as the
  effect size. Two constant samples give no p-value (NaN, "no variance"), never p = 0.
* Calibration: Kendall's tau between a proxy and a longer evaluation, ICC(1) (one-way random effects:
  between-cell against within-cell variance) and the smallest detectable difference of a design.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

BOOTSTRAP = 10_000
TEST_NAME = "Welch's t-test on per-cell means (two-sided), Holm-corrected"

Nested = Sequence[Sequence[float]]  # per search seed (cell): the values of its retrain seeds


@dataclass
class ArmSummary:
    arm: str
    cells: int  # finished trials (distinct searched / sampled cells)
    n: int  # (search seed, retrain seed) pairs
    failed: int
    mean: float  # mean over cells of each cell's mean
    std: float  # SD of the per-cell means (the seed-to-seed spread that matters)
    ci95_low: float
    ci95_high: float

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


@dataclass
class Comparison:
    arm: str
    other: str
    diff: float  # mean(arm) - mean(other)
    diff_ci95_low: float
    diff_ci95_high: float
    hedges_g: float
    t: float
    p_value: float  # uncorrected
    p_holm: float = math.nan
    test: str = TEST_NAME

    def to_dict(self) -> dict[str, float | str]:
        return asdict(self)


def cell_means(values: Nested) -> np.ndarray:
    return np.array([float(np.mean(v)) for v in values if len(v)])


def hierarchical_bootstrap(values: Nested, reps: int = BOOTSTRAP, seed: int = 0) -> np.ndarray:
    """``reps`` bootstrap means: search seeds resampled, then the retrain seeds inside each drawn seed."""
    groups = [np.asarray(v, dtype=float) for v in values if len(v)]
    rng = np.random.default_rng(seed)
    if not groups:
        return np.full(reps, math.nan)
    out = np.empty(reps)
    for b in range(reps):
        picks = rng.integers(len(groups), size=len(groups))
        out[b] = np.mean([rng.choice(groups[i], size=len(groups[i])).mean() for i in picks])
    return out


def interval(samples: np.ndarray, clip: tuple[float, float] | None = (0.0, 1.0)) -> tuple[float, float]:
    """The 2.5 and 97.5 % percentiles of bootstrap samples, clipped to ``clip`` (accuracies live in [0, 1])."""
    low, high = (float(x) for x in np.nanpercentile(samples, [2.5, 97.5]))
    if clip is not None:
        low, high = max(clip[0], low), min(clip[1], high)
    return low, high


def summarize(arm: str, values: Nested, failed: int = 0, reps: int = BOOTSTRAP) -> ArmSummary:
    means = cell_means(values)
    n = sum(len(v) for v in values)
    if not len(means):
        return ArmSummary(arm, 0, 0, failed, math.nan, math.nan, math.nan, math.nan)
    low, high = interval(hierarchical_bootstrap(values, reps)) if len(means) > 1 else (math.nan, math.nan)
    std = float(np.std(means, ddof=1)) if len(means) > 1 else math.nan
    return ArmSummary(arm, len(means), n, failed, float(means.mean()), std, low, high)


def hedges_g(a: np.ndarray, b: np.ndarray) -> float:
    """Standardised mean difference with the small-sample correction (NaN without variance)."""
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return math.nan
    pooled = math.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
    if pooled == 0:
        return math.nan
    return float((a.mean() - b.mean()) / pooled * (1 - 3 / (4 * (na + nb) - 9)))


def compare(arm: str, values: Nested, other: str, other_values: Nested, reps: int = BOOTSTRAP) -> Comparison:
    """``arm`` minus ``other``: difference of means with a bootstrap interval, Hedges' g, Welch's t on cell means."""
    from scipy import stats

    a, b = cell_means(values), cell_means(other_values)
    diff = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    low = high = t = p = math.nan
    if len(a) > 1 and len(b) > 1:
        boot = hierarchical_bootstrap(values, reps, 1) - hierarchical_bootstrap(other_values, reps, 2)
        low, high = interval(boot, clip=(-1.0, 1.0))
        if a.var(ddof=1) + b.var(ddof=1) > 0:  # two constant samples: no test (NaN), not p = 0
            res = stats.ttest_ind(a, b, equal_var=False)
            t, p = float(res.statistic), float(res.pvalue)
    return Comparison(arm, other, diff, low, high, hedges_g(a, b), t, p)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN entries stay NaN and do not count in the family)."""
    idx = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    m = len(idx)
    out = [math.nan] * len(p_values)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda j: p_values[j])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


def percentile_of(value: float, reference: Sequence[float]) -> float:
    """Share (0-100) of reference values below ``value``, ties counted half."""
    ref = np.asarray(reference, dtype=float)
    if not len(ref) or math.isnan(value):
        return math.nan
    return float(100 * ((ref < value).sum() + 0.5 * (ref == value).sum()) / len(ref))


def percentile_interval(values: Nested, reference: Sequence[float], reps: int = 2000,
                        seed: int = 3) -> tuple[float, float, float]:
    """Mean percentile of an arm's runs among the reference, with a bootstrap interval (arm and reference)."""
    runs = [float(x) for v in values for x in v]
    ref = np.asarray(reference, dtype=float)
    if not runs or not len(ref):
        return math.nan, math.nan, math.nan
    point = float(np.mean([percentile_of(x, ref) for x in runs]))
    rng = np.random.default_rng(seed)
    groups = [np.asarray(v, dtype=float) for v in values if len(v)]
    boot = np.empty(reps)
    for b in range(reps):
        r = rng.choice(ref, size=len(ref))
        drawn = np.concatenate([rng.choice(groups[i], size=len(groups[i]))
                                for i in rng.integers(len(groups), size=len(groups))])
        boot[b] = np.mean([percentile_of(x, r) for x in drawn])
    low, high = interval(boot, clip=(0.0, 100.0))
    return point, low, high


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    from scipy import stats

    res = stats.kendalltau(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
    return float(res.statistic), float(res.pvalue)


def icc1(values: Nested) -> dict[str, float]:
    """ICC(1) of a one-way random-effects ANOVA (cells x seeds, balanced), with its variance components."""
    groups = [np.asarray(v, dtype=float) for v in values]
    k = min(len(g) for g in groups)
    if k < 2 or len(groups) < 2:
        return {"icc": math.nan, "between_sd": math.nan, "within_sd": math.nan, "seeds": k}
    data = np.stack([g[:k] for g in groups])
    n = len(data)
    grand = data.mean()
    msb = k * ((data.mean(axis=1) - grand) ** 2).sum() / (n - 1)
    msw = ((data - data.mean(axis=1, keepdims=True)) ** 2).sum() / (n * (k - 1))
    between = max(0.0, (msb - msw) / k)
    icc = (msb - msw) / (msb + (k - 1) * msw) if msb + (k - 1) * msw > 0 else math.nan
    return {"icc": float(icc), "between_sd": math.sqrt(between), "within_sd": math.sqrt(msw), "seeds": k}


def detectable_difference(between_sd: float, within_sd: float, cells: int, retrain_seeds: int,
                          comparisons: int = 1, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true difference of arm means the design detects with ``power`` (two-sided Welch, Bonferroni
    level ``alpha / comparisons``, the conservative end of Holm): per-cell-mean SD from the variance parts."""
    from scipy import stats

    if cells < 2 or math.isnan(between_sd) or math.isnan(within_sd):
        return math.nan
    sd_cell = math.sqrt(between_sd ** 2 + within_sd ** 2 / retrain_seeds)
    df = 2 * cells - 2
    q = float(stats.t.ppf(1 - alpha / comparisons / 2, df) + stats.t.ppf(power, df))
    return q * sd_cell * math.sqrt(2 / cells)
