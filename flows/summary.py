"""The run's summary: each stage's headline numbers (from its DVC metrics files) and the markdown table the flow
publishes as a Prefect artifact and logs to the MLflow parent run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flows.dvc_repo import StageInfo

# the numbers that say how a stage did, most telling first (names the stages write). The search's are the
# K-independent headline: accuracy above chance and loss over log(classes) mean the same for K = 1 and K = 2,
# where plain val_acc_mean rises with K only because each task has fewer classes.
KEY_METRICS = ("top1", "val_acc_above_chance_mean", "val_loss_norm_mean", "normal_parametric_edges",
               "reduce_parametric_edges", "tasks")


def stage_metrics(project: Path, dag: Sequence[StageInfo], stage: str) -> list[tuple[str, float]]:
    """The KEY_METRICS present in the stage's metrics files (read by ``dvc.api.metrics_show``), in KEY_METRICS
    order; a stage whose metrics are missing or unreadable has none."""
    import dvc.api

    targets = [rel for info in dag if info.name == stage for rel in info.metrics if (project / rel).is_file()]
    if not targets:
        return []
    try:
        data = dvc.api.metrics_show(*targets, repo=str(project))
    except Exception:  # noqa: BLE001 - a damaged metrics file leaves the summary without numbers, not the run
        return []
    found: list[tuple[str, float]] = []
    for key in KEY_METRICS:
        value = data.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            found.append((key, float(value)))
    return found


def headline(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The parent run's own numbers: wall time per stage that ran (timings live in MLflow, not in DVC)."""
    return {f"stage_time_s/{r['stage']}": float(r["duration_s"]) for r in rows
            if r.get("status") in ("ran", "restored") and "duration_s" in r}


def markdown_table(rows: Sequence[dict[str, Any]], header: str) -> str:
    lines = [header, "", "| stage | DVC | attempts | duration (s) | key metrics |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['status']} | {r.get('attempts', '')} | {r.get('duration_s', '')} "
                     f"| {r.get('metric', '')} |")
    return "\n".join(lines) + "\n"


def log_search_comparison(uri: str, parent_run_id: str, experiment: str) -> str:
    """The latest search run of each method / K / hypergradient / seed / DVC experiment side by side, logged on
    the pipeline's parent run (``figures/comparison.png``, ``comparison.md``, ``comparison.json``): IL against
    DARTS is then one click on the newest pipeline run. Returns the markdown table."""
    import tempfile

    from ilnas.compare import compare, log_comparison

    with tempfile.TemporaryDirectory(prefix="ilnas-compare-") as tmp:
        result = compare(uri, experiment, figure=Path(tmp) / "comparison.png")
        log_comparison(uri, parent_run_id, result)
    return result.text
