"""DVC stage 'derive': searched alphas -> models/genotype.json and a picture of each cell (models/cells/).

It also draws the search's curves and alpha heatmap (models/search_figures/) from the search's outputs, so
the search stage itself depends on no plotting code.

DARTS rule (ilnas.search.derive_genotype_from_file): per intermediate node, the two strongest incoming
edges by their best non-``none`` op weight. ``derive.source: DARTS_V2`` swaps in the published DARTS
genotype as a baseline without touching the search.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

from stages.common import CELLS, GENOTYPE, SEARCH_OUT, fresh_dir, setup, tracker, write_metrics
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
        if source == "search":
            from ilnas.search import derive_from_alphas_file

            derived = derive_from_alphas_file(SEARCH_OUT / "alphas.pt", params.derive.select)
            genotype = derived.genotype
            metrics.update(select=derived.select, selected_epoch=derived.epoch,
                           selected_val_loss_mean=derived.val_loss_mean)
            log.info("derived from the alphas of epoch %s (select: %s)", derived.epoch, derived.select)
        else:
            genotype = getattr(genotypes, source)
        GENOTYPE.parent.mkdir(parents=True, exist_ok=True)
        genotype.to_json(GENOTYPE)
        cells = fresh_dir(CELLS)
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


def compact(genotype: object) -> str:
    """``normal[op<-input ...] reduce[...]``: one short line instead of the dataclass repr."""
    cells = [f"{cell}[{' '.join(f'{op}<-{j}' for op, j in getattr(genotype, cell))}]" for cell in ("normal", "reduce")]
    return " ".join(cells)


if __name__ == "__main__":  # a known error ends as one message block (exit 2 for bad input)
    from stages.common import run_main

    run_main(main, "derive")
