"""DVC stage 'derive': searched alphas -> models/genotype.json and a picture of each cell (models/cells/).

It also draws the search's curves and alpha heatmap (models/search_figures/) from the search's outputs, so
the search stage itself depends on no plotting code.

DARTS rule (ilnas.search.derive_genotype_from_file): per intermediate node, the two strongest incoming
edges by their best non-``none`` op weight, optionally under P-DARTS' cap on skip / parameter-free edges
(``derive.max_skip_connect`` / ``max_parameter_free``; metrics record ``prior_applied``). ``derive.selection:
perturbation`` runs DARTS-PT on the trained supernet of ``models/search/checkpoint.pt`` instead (it reads the
search's data through data/prepared; every decision goes to ``models/cells/selection.json``).
``derive.source: DARTS_V2`` swaps in the published DARTS genotype as a baseline without touching the search.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

from stages.common import CELLS, GENOTYPE, PREPARED, SEARCH_OUT, fresh_dir, setup, tracker, write_metrics
from stages.figures import SEARCH_FIGURES, draw_search_figures, figure, figure_title, viz

log = logging.getLogger("ilnas.stages.derive")


def main(argv: Sequence[str] | None = None) -> None:
    params = setup("derive", argv)
    from ilnas.space import genotype as genotypes

    source = params.derive.source
    with tracker("derive", params, {"genotype_source": source, "strategy": params.search.strategy,
                                    "hypergrad": params.search.hypergrad}) as trk:
        trk.log_params(params.derive.model_dump(mode="json"), prefix="derive.")
        metrics: dict[str, object] = {"source": source}
        decisions = None
        if source == "search" and params.derive.selection == "perturbation":
            genotype, decisions = perturbation_genotype(params.derive, metrics)
        elif source == "search":
            genotype = magnitude_genotype(params.derive, metrics)
        else:
            genotype = getattr(genotypes, source)
        GENOTYPE.parent.mkdir(parents=True, exist_ok=True)
        genotype.to_json(GENOTYPE)
        cells = fresh_dir(CELLS)
        if decisions is not None:
            from ilnas.utils.io import atomic_write_json

            atomic_write_json(cells / "selection.json", decisions)
        v = viz()
        pictures = (figure("cells", v.plot_genotype, genotype, cells, title=figure_title("derive", params))
                    if v is not None else None)
        if not pictures:
            (cells / "README.txt").write_text("cell pictures unavailable; see the stage log\n")
        collapse = genotypes.collapse_counts(genotype)
        metrics.update(collapse)
        for cell in ("normal", "reduce"):
            ops = Counter(op for op, _ in getattr(genotype, cell))
            metrics[f"{cell}_edges"] = sum(ops.values())
            metrics[f"{cell}_parametric_edges"] = sum(ops.values()) - collapse[f"param_free_edges/{cell}"]
            for op, n in sorted(ops.items()):
                metrics[f"{cell}_ops/{op}"] = n
        write_metrics("derive", metrics)
        trk.log_metrics({k: v for k, v in metrics.items() if v is not None})
        trk.log_artifact(GENOTYPE)
        trk.log_artifact(cells, "cells")
        # the search's curves, drawn here
        if draw_search_figures(SEARCH_OUT, fresh_dir(SEARCH_FIGURES), figure_title("search", params)):
            trk.log_artifact(SEARCH_FIGURES, "search_figures")
    searched = SEARCH_OUT / "genotype.json"
    if source == "search" and searched.exists() and genotypes.load_genotype(searched) == genotype:
        log.info("genotype: as the search printed it (%s)", GENOTYPE)  # printed once per run
    else:
        log.info("genotype: %s (%s)", compact(genotype), GENOTYPE)


def magnitude_genotype(derive: Any, metrics: dict[str, object]) -> Any:
    """The DARTS rule on the searched alphas, under the optional cap (recorded as a prior when it bites)."""
    from ilnas.search import derive_from_alphas_file
    from ilnas.search.derivation import Caps

    derived = derive_from_alphas_file(SEARCH_OUT / "alphas.pt", derive.select,
                                      Caps(derive.max_skip_connect, derive.max_parameter_free))
    metrics.update(selection="magnitude", select=derived.select, selected_epoch=derived.epoch,
                   selected_val_loss_mean=derived.val_loss_mean, prior_applied=derived.prior_applied,
                   prior_replaced=derived.replaced)
    log.info("derived from the alphas of epoch %s (select: %s)", derived.epoch, derived.select)
    if derived.prior_applied:
        log.warning("derive prior applied (max_skip_connect %s, max_parameter_free %s): replaced %s",
                    derive.max_skip_connect, derive.max_parameter_free, "; ".join(derived.replaced))
    return derived.genotype


def perturbation_genotype(derive: Any, metrics: dict[str, object]) -> tuple[Any, list[dict[str, Any]]]:
    """DARTS-PT on the search's supernet and data (the search config travels in its checkpoint)."""
    from ilnas.data.prepare import load_stage_tasks
    from ilnas.search.selection import PerturbationSettings, select_from_checkpoint

    p = derive.perturbation
    settings = PerturbationSettings(p.criterion, p.tune_epochs, p.tune_lr_factor)
    selection, epoch = select_from_checkpoint(
        SEARCH_OUT / "checkpoint.pt",
        lambda cfg: load_stage_tasks(PREPARED, "search", list(cfg.tasks), cfg.seed, cfg.val_fraction), settings)
    metrics.update(selection="perturbation", select="last", selected_epoch=epoch, prior_applied=False,
                   perturbation_criterion=p.criterion, perturbation_tune_steps=selection.tune_steps,
                   perturbation_decisions=len(selection.decisions))
    log.info("DARTS-PT on the supernet of epoch %d: %d decisions, %d fine-tuning steps", epoch,
             len(selection.decisions), selection.tune_steps)
    return selection.genotype, selection.decisions


def compact(genotype: object) -> str:
    """``normal[op<-input ...] reduce[...]``: one short line instead of the dataclass repr."""
    cells = [f"{cell}[{' '.join(f'{op}<-{j}' for op, j in getattr(genotype, cell))}]" for cell in ("normal", "reduce")]
    return " ".join(cells)


if __name__ == "__main__":  # a known error ends as one message block (exit 2 for bad input)
    from stages.common import run_main

    run_main(main, "derive")
