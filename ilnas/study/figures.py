"""The study's pictures: accuracy per arm against the random cells, any-time search curves, cells per arm.

Each figure is written to ``figures/`` and returned as PNG bytes too, so the report can embed it
(``data:image/png;base64``): the markdown then displays the same in a file viewer, in MLflow's artifact
pane and in the Prefect artifact, with no relative links to break.
"""

from __future__ import annotations

import base64
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ilnas.utils.io import atomic_write

OPS = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
       "dil_conv_5x5")
ANYTIME_METRIC = "val_acc_above_chance_mean"  # comparable across K (5-way and 10-way tasks)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> bytes:
    plt = _plt()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=90, bbox_inches="tight"))
    plt.close(fig)
    return path.read_bytes()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def accuracy_figure(path: Path, arms: list[str], values: dict[str, list[list[float]]],
                    reference: list[float] | None) -> bytes:
    """Cell means per arm (box + points) beside the reference distribution of random cells (violin)."""
    plt = _plt()
    cols = (["reference"] if reference else []) + arms
    fig, ax = plt.subplots(figsize=(1.8 + 1.3 * len(cols), 3.8))
    if reference:
        ax.violinplot([reference], positions=[1], showmedians=True, widths=0.7)
    for i, arm in enumerate(arms, start=len(cols) - len(arms) + 1):
        means = [float(np.mean(v)) for v in values.get(arm, []) if v]
        if means:
            ax.boxplot([means], positions=[i], widths=0.5, showfliers=False)
            ax.scatter(i + np.linspace(-0.12, 0.12, len(means)), means, s=18, zorder=3)
    ax.set_xticks(range(1, len(cols) + 1), [f"{c}\n(random cells)" if c == "reference" else c for c in cols],
                  rotation=15)
    ax.set_ylabel("retrained test top-1 (cell mean)")
    ax.set_title("test top-1 per arm: one point per cell (search seed)")
    return _save(fig, path)


def anytime_figure(path: Path, curves: dict[str, list[dict[str, list[float]]]]) -> bytes | None:
    """The search's validation metric against training images seen and against wall time, per search arm."""
    if not curves:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    colors = plt.get_cmap("tab10")
    for k, (arm, seeds) in enumerate(curves.items()):
        for j, c in enumerate(seeds):
            for ax, x in zip(axes, ("images", "wall_s"), strict=True):
                ax.plot(c[x], c["metric"], color=colors(k), alpha=0.35, lw=1, label=arm if j == 0 else None,
                        marker="o", ms=2)
    axes[0].set_xlabel("training images seen by the search")
    axes[1].set_xlabel("search wall time (s, cumulative epoch time)")
    axes[0].set_ylabel("val accuracy above chance (task mean)")
    axes[0].legend(fontsize=8)
    fig.suptitle("any-time search curves (one line per search seed)")
    return _save(fig, path)


def ops_figure(path: Path, cells: dict[str, list[dict[str, Any]]]) -> bytes | None:
    """Share of each operation in the normal and reduction cells of every arm (all its cells together)."""
    if not cells:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(2.5 + 1.1 * len(cells), 3.6), sharey=True)
    colors = plt.get_cmap("tab10")
    names = list(cells)
    for ax, cell in zip(axes, ("normal", "reduce"), strict=True):
        bottom = np.zeros(len(names))
        for k, op in enumerate(OPS):
            share = np.array([_share(cells[a], cell, op) for a in names])
            ax.bar(range(len(names)), share, bottom=bottom, color=colors(k), label=op)
            bottom += share
        ax.set_xticks(range(len(names)), names, rotation=25)
        ax.set_title(f"{cell} cells: share of each op")
    axes[0].set_ylabel("share of edges")
    axes[1].legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    return _save(fig, path)


def _share(genotypes: list[dict[str, Any]], cell: str, op: str) -> float:
    counts = Counter(o for g in genotypes for o, _ in g[cell])
    total = sum(counts.values())
    return counts[op] / total if total else math.nan


def cell_figure(path: Path, genotype: dict[str, Any], title: str) -> bytes | None:
    """The normal cell of one genotype (the project's cell drawing)."""
    from ilnas.space.genotype import Genotype
    from ilnas.viz import plot_cell

    try:
        plot_cell(Genotype.from_dict(genotype), "normal", path, title)
    except Exception:  # noqa: BLE001 - a picture is an extra: the report's table lists every cell
        return None
    return path.read_bytes()
