"""Runs side by side: IL against DARTS, or any set of MLflow runs, as one table and one figure.

Why: the MLflow UI nests a pipeline's stage runs under their parent, its Compare view lists every metric
name of every run (per-task names differ between K = 1 and K = 2, so half the rows are empty) and prints
full float precision. This module picks the runs (the latest of each method / K / hypergradient / seed /
DVC experiment by default), keeps the metrics every picked run has (the K-independent headline first),
rounds them for reading and draws the per-epoch curves with integer epochs. The flow logs the result on the
pipeline's parent run (``comparison.md``, ``comparison.json``, ``figures/comparison.png``); ``ilnas compare``
prints and plots the same for any filter or run ids.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ilnas.errors import InputError

# the headline numbers, most telling first: accuracy above chance and loss / ln(classes) compare tasks with
# different class counts (K = 2 digit tasks of 5 classes against DARTS' one 10-class task); the plain means next
HEADLINE = ("val_acc_above_chance_mean", "val_loss_norm_mean", "val_acc_mean", "val_loss_mean", "top1", "top5",
            "max_epoch_top1_selected_on_test")
IDENTITY = ("method", "K", "hypergrad", "seed", "dvc_exp")
DEFAULT_FILTER = "tags.stage = 'search'"
TIMING_SUFFIXES = ("_time_s", "_per_s")


class NoRunsError(InputError, LookupError):
    """Nothing to compare: the message names the experiment or the filter (exit 2)."""


@dataclass
class RunRow:
    """One compared run: its id, a readable label, its final metric values and per-step histories."""

    run_id: str
    label: str
    metrics: dict[str, float]
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


def run_label(tags: dict[str, str], fallback: str) -> str:
    """``IL K=2 finite_difference seed 0`` (+ `` [darts]`` for a DVC experiment), from the runs' tags."""
    if not all(k in tags for k in IDENTITY[:4]):
        return fallback
    label = f"{tags['method']} K={tags['K']} {tags['hypergrad']} seed {tags['seed']}"
    exp = tags.get("dvc_exp", "workspace")
    return label + (f" [{exp}]" if exp and exp != "workspace" else "")


def select_runs(client: Any, experiment_ids: Sequence[str], filter_string: str = DEFAULT_FILTER,
                run_ids: Sequence[str] = (), latest_per_label: bool = True, max_runs: int = 8) -> list[Any]:
    """The runs to compare: ``run_ids`` as given, else the finished runs matching ``filter_string``, newest
    first, one per label (method, K, hypergradient, seed, DVC experiment) unless ``latest_per_label`` is off."""
    if run_ids:
        return [client.get_run(r) for r in run_ids]
    query = " AND ".join(filter(None, [filter_string, "attributes.status = 'FINISHED'"]))
    runs = client.search_runs(list(experiment_ids), query, order_by=["attributes.start_time DESC"],
                              max_results=500)
    picked, seen = [], set()
    for run in runs:
        label = run_label(run.data.tags, run.info.run_name or run.info.run_id)
        if latest_per_label and label in seen:
            continue
        seen.add(label)
        picked.append(run)
        if len(picked) >= max_runs:
            break
    return sorted(picked, key=lambda r: run_label(r.data.tags, r.info.run_name or ""))


def shared_metrics(runs: Sequence[Any], requested: Sequence[str] = (), every: bool = False) -> list[str]:
    """``requested`` as given; else the headline metrics every run has (no empty cells); with ``every`` (or when
    the runs share no headline metric) all the metric names every run has, headline first, timings last."""
    if requested:
        return list(requested)
    if not runs:
        return []
    common = set.intersection(*(set(r.data.metrics) for r in runs))
    head = [m for m in HEADLINE if m in common]
    if head and not every:
        return head
    rest = sorted(common - set(head), key=lambda m: (m.endswith(TIMING_SUFFIXES), m))
    return head + rest


def collect(client: Any, runs: Sequence[Any], metrics: Sequence[str], curves: Sequence[str] = ()) -> list[RunRow]:
    """Final values of ``metrics`` and the step histories of ``curves`` for each run."""
    rows = []
    for run in runs:
        label = run_label(run.data.tags, run.info.run_name or run.info.run_id)
        history = {m: sorted((int(p.step), float(p.value)) for p in client.get_metric_history(run.info.run_id, m))
                   for m in curves}
        rows.append(RunRow(run.info.run_id, label, {m: run.data.metrics.get(m, math.nan) for m in metrics},
                           {m: h for m, h in history.items() if h}))
    return rows


def fmt(value: float, digits: int = 4) -> str:
    """Four significant digits (0.8748, 12.35, 1.5e-05); NaN as '-'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}"


def markdown(rows: Sequence[RunRow], metrics: Sequence[str], title: str = "") -> str:
    """One row per run, one column per metric; the run id so a reader can open it."""
    head = ["run", *metrics, "run id"]
    lines = [f"# {title}", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r.label, *(fmt(r.metrics[m]) for m in metrics), r.run_id]) + " |")
    return "\n".join(lines) + "\n"


def as_columns(rows: Sequence[RunRow], metrics: Sequence[str]) -> dict[str, list[Any]]:
    """The table as columns (``MlflowClient.log_table``: the UI shows it as a table), values rounded."""
    table: dict[str, list[Any]] = {"run": [r.label for r in rows], "run_id": [r.run_id for r in rows]}
    for m in metrics:
        table[m] = [None if math.isnan(r.metrics[m]) else float(fmt(r.metrics[m])) for r in rows]
    return table


def plot(rows: Sequence[RunRow], curves: Sequence[str], path: str | Path) -> Path | None:
    """One panel per metric, one line per run, x = epoch with integer ticks; None when no run has a curve."""
    curves = [c for c in curves if any(c in r.history for r in rows)]
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(curves), figsize=(5.2 * len(curves), 3.8), squeeze=False)
    for ax, name in zip(axes.flat, curves, strict=True):
        for r in rows:
            if name in r.history:
                xs, ys = zip(*r.history[name], strict=True)
                ax.plot(xs, ys, marker="o", markersize=3, label=r.label)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@dataclass
class Comparison:
    """What :func:`compare` found: the rows, the metric columns, the markdown table and the figure."""

    rows: list[RunRow]
    metrics: list[str]
    text: str
    figure: Path | None


def compare(uri: str, experiment: str = "ilnas", filter_string: str = DEFAULT_FILTER, run_ids: Sequence[str] = (),
            metrics: Sequence[str] = (), figure: str | Path | None = None, max_runs: int = 8,
            every: bool = False) -> Comparison:
    """Select, tabulate and (with ``figure``) plot runs of the MLflow store at ``uri``.

    Raises :class:`NoRunsError` naming the experiment or filter when nothing matches."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None and not run_ids:
        names = sorted(e.name for e in client.search_experiments())
        raise NoRunsError(f"no MLflow experiment {experiment!r} in {uri}; experiments there: {names}")
    runs = select_runs(client, [exp.experiment_id] if exp else [], filter_string, run_ids, max_runs=max_runs)
    if not runs:
        raise NoRunsError(f"no finished run in experiment {experiment!r} matches {filter_string!r} ({uri})")
    names = shared_metrics(runs, metrics, every)
    curves = [m for m in names if m in HEADLINE][:2] or names[:2]
    rows = collect(client, runs, names, curves if figure else ())
    title = f"{len(rows)} runs of experiment {experiment!r}" + (f" ({filter_string})" if not run_ids else "")
    drawn = plot(rows, curves, figure) if figure else None
    return Comparison(rows, names, markdown(rows, names, title), drawn)


def log_comparison(uri: str, run_id: str, comparison: Comparison) -> None:
    """The table and the figure on ``run_id`` (the pipeline's parent run): ``figures/comparison.png`` (figures
    are listed first in the artifacts pane), ``comparison.md`` and ``comparison.json`` (shown as a table)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    client.log_text(run_id, comparison.text, "comparison.md")
    client.log_table(run_id, as_columns(comparison.rows, comparison.metrics), "comparison.json")
    if comparison.figure is not None:
        client.log_artifact(run_id, str(comparison.figure), "figures")
