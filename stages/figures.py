"""Figures the stages draw (PNG; DVC plots and MLflow artifacts), kept out of ``stages.common``.

Only the stages that draw import this module, so ``ilnas/viz.py`` is a DVC dependency of those stages alone:
editing a picture's layout reruns derive and retrain, never the search. The search's own curves and alpha
heatmap are drawn by derive from the files the search wrote (``models/search/history.csv``,
``alpha_history.json``) into ``models/search_figures/``.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("ilnas.stages")

SEARCH_FIGURES = Path("models/search_figures")  # a DVC out of derive (dvc.yaml names the same path)


def viz() -> Any | None:
    """``ilnas.viz`` when it imports (figures are extras: their absence must not fail a stage)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import ilnas.viz as module

        return module
    except Exception as exc:  # noqa: BLE001
        log.warning("figures skipped: ilnas.viz unavailable (%s: %s)", type(exc).__name__, exc)
        return None


def figure(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Draw one figure; a plotting failure is a warning naming the figure, never a stage failure."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001
        log.warning("figure %s failed: %s: %s", what, type(exc).__name__, exc)
        return None


def figure_title(stage: str, params: Any) -> str:
    """What a picture names: stage, method, K, hypergradient, seed and the DVC experiment (as the MLflow run)."""
    from ilnas.tracking import run_identity
    from stages.common import search_method

    section = getattr(params, stage, None)
    seed = getattr(section, "seed", params.seed)
    return run_identity(stage, search_method(params), len(params.search.tasks), params.search.hypergrad, seed)[0]


def draw_search_figures(search_dir: Path, out: Path, title: str | None = None) -> list[Path]:
    """Loss and accuracy curves, the alpha heatmap (and LFM's class weights) of a finished search, into ``out``.

    Reads the search's outputs only, so redrawing never reruns the search; returns the figures drawn."""
    v = viz()
    if v is None:
        return []
    try:
        with (search_dir / "history.csv").open(newline="") as fh:
            history = list(csv.DictReader(fh))
        alpha_rows = json.loads((search_dir / "alpha_history.json").read_text())
    except (OSError, ValueError) as exc:
        log.warning("search figures skipped: %s: %s", type(exc).__name__, exc)
        return []
    try:  # the searched space (search.primitives), so a subset's heatmap rows carry its own op names
        space = {"primitives": json.loads((search_dir / "genotype.json").read_text())["primitives"]}
    except (OSError, ValueError, KeyError, TypeError):
        space = {}
    columns = list(history[0]) if history else []
    loss_keys = [k for k in columns if k.startswith(("train_loss/", "val_loss/"))]
    acc_keys = [k for k in columns if k.startswith(("train_acc/", "val_acc/"))]
    drawn = [figure("alpha heatmap", v.plot_alpha_history, alpha_rows, out / "alpha_history.png", title=title,
                    **space),
             figure("loss curves", v.plot_curves, history, loss_keys, out / "loss.png", title=title),
             figure("accuracy curves", v.plot_curves, history, acc_keys, out / "accuracy.png", title=title)]
    if any("class_weights" in row for row in alpha_rows):  # strategy: lfm
        drawn.append(figure("class weights", v.plot_class_weights, alpha_rows, out / "class_weights.png",
                            title=title))
    return [p for p in drawn if p is not None]
