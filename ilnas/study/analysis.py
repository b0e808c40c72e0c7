"""What a study's results say: per-arm estimates, percentiles among random cells, the Holm family, a verdict.

The unit of replication is the cell (one per search seed); retrain seeds are nested in it. Every number
here is on the held-out test split, read once for this report; the selections that happened before (the
proxy protocol, random search's kept cell) read only the validation split.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ilnas.study import cells, stats

ALPHA = 0.05


def nested_values(results: list[dict[str, Any]], arm: str, key: str = "test_top1") -> list[list[float]]:
    """Per finished cell of ``arm``: the ``key`` of each of its retrainings (search-seed order)."""
    ok = sorted((r for r in results if r["arm"] == arm and r["status"] == "ok"), key=lambda r: r["search_seed"])
    return [[float(run[key]) for run in r["retrains"]] for r in ok]


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def arm_row(arm: dict[str, Any], results: list[dict[str, Any]], reference: list[float] | None) -> dict[str, Any]:
    name = arm["name"]
    values = nested_values(results, name)
    failed = sum(1 for r in results if r["arm"] == name and r["status"] != "ok")
    row: dict[str, Any] = {"kind": arm.get("kind", "search"), **stats.summarize(name, values, failed).to_dict()}
    ok = [r for r in results if r["arm"] == name and r["status"] == "ok"]
    runs = [run for r in ok for run in r["retrains"]]
    vals = [run["val_top1"] for run in runs if run.get("val_top1") is not None]
    row |= {"val_top1_mean": _mean(vals),  # what a choice between arms (a remedy, a default) may read
            "test_loss_mean": _mean([run["test_loss"] for run in runs]),
            "params": _mean([run["params"] for run in runs]), "macs": _mean([run["macs"] for run in runs]),
            "search_time_s": _mean([r.get("search_time_s", 0.0) for r in ok]),
            "search_images": _mean([r.get("search_images", 0) for r in ok]),
            "arch_steps": _mean([r.get("arch_steps", 0) for r in ok]),
            "retrain_time_s": _mean([run["retrain_time_s"] for run in runs])}
    row |= cells.cell_stats([r["genotype"] for r in ok if r.get("genotype")])
    if reference:
        point, low, high = stats.percentile_interval(values, reference)
        row |= {"percentile": point, "percentile_ci95_low": low, "percentile_ci95_high": high}
    return row


def comparisons(spec: dict[str, Any], family: list[tuple[str, str]], results: list[dict[str, Any]]
                ) -> list[dict[str, Any]]:
    """Each pair of the family: difference, bootstrap interval, Hedges' g, Welch p and Holm-adjusted p."""
    rows = [stats.compare(a, nested_values(results, a), b, nested_values(results, b)).to_dict() for a, b in family]
    for row, p in zip(rows, stats.holm([r["p_value"] for r in rows]), strict=True):
        row["p_holm"] = p
    return rows


def detectable(spec: dict[str, Any], results: list[dict[str, Any]], comparisons_n: int) -> dict[str, float]:
    """Smallest difference the design detects (80 % power, Holm's strictest level), from the baseline arm's
    between-cell and within-cell (retrain seed) variance."""
    values = nested_values(results, spec["baseline"])
    icc = stats.icc1(values) if values else {"between_sd": math.nan, "within_sd": math.nan, "icc": math.nan}
    mde = stats.detectable_difference(icc["between_sd"], icc["within_sd"], len(spec["search_seeds"]),
                                      len(spec["retrain_seeds"]), max(1, comparisons_n), ALPHA)
    return {"detectable_difference": mde, "baseline_icc": icc["icc"], "baseline_between_sd": icc["between_sd"],
            "baseline_within_sd": icc["within_sd"]}


def _pct(row: dict[str, Any]) -> str:
    if math.isnan(row.get("percentile", math.nan)):
        return ""
    return (f", percentile {row['percentile']:.0f} among random cells "
            f"[{row['percentile_ci95_low']:.0f}, {row['percentile_ci95_high']:.0f}]")


def against_median(arms: dict[str, dict[str, Any]], median: float | None) -> str:
    """Each searched or selected arm's mean test top-1 against the median random cell of the reference, in
    points of top-1, and whether its percentile interval lies above 50 (the question a NAS reader asks first)."""
    if median is None or math.isnan(median):
        return ""
    parts = []
    for name, r in arms.items():
        if r["kind"] == "random" or math.isnan(r.get("mean", math.nan)):
            continue
        above = r.get("percentile_ci95_low", math.nan) > 50
        parts.append(f"{name} {r['mean'] - median:+.4f}" + (" (percentile interval above 50)" if above else ""))
    if not parts:
        return ""
    lifted = [n for n, r in arms.items() if r["kind"] != "random" and r.get("percentile_ci95_low", math.nan) > 50]
    head = (f" Against the median random cell of the reference (test top-1 {median:.4f}): " + "; ".join(parts) + ". ")
    return head + (f"Lifted above it beyond doubt: {', '.join(lifted)}." if lifted else
                   "No arm's percentile interval lies above 50: none is shown to beat the median random cell.")


def verdict(arms: dict[str, dict[str, Any]], rows: list[dict[str, Any]], power: dict[str, float],
            median: float | None = None) -> str:
    """One paragraph that says exactly what the data support, comparison by comparison."""
    parts = []
    for r in rows:
        a, b = r["arm"], r["other"]
        if math.isnan(r["diff"]):
            parts.append(f"{a} vs {b}: not estimable (missing cells).")
            continue
        sig = not math.isnan(r["p_holm"]) and r["p_holm"] < ALPHA
        direction = "better than" if r["diff"] > 0 else "worse than"
        ci = f"{r['diff']:+.4f} [{r['diff_ci95_low']:+.4f}, {r['diff_ci95_high']:+.4f}]"
        if sig:
            parts.append(f"{a} is {direction} {b} by {ci} test top-1 (Hedges' g {r['hedges_g']:.2f}, "
                         f"Holm p = {r['p_holm']:.3g}).")
        else:
            p = "n/a (no variance)" if math.isnan(r["p_holm"]) else f"{r['p_holm']:.3g}"
            parts.append(f"{a} vs {b}: {ci}, Holm p = {p}: no detectable difference.")
    mde = power.get("detectable_difference", math.nan)
    tail = (f" With these seeds the design detects a true difference of {mde:.4f} (80 % power, Holm's strictest "
            "level); smaller effects may exist unseen." if not math.isnan(mde) else "")
    placed = [f"{a}{_pct(r)}" for a, r in arms.items() if "percentile" in r and r["kind"] != "random"]
    where = (" Placement among the reference's random cells (test top-1): " + "; ".join(placed) + ".") if placed else ""
    return " ".join(parts) + tail + where + against_median(arms, median)
