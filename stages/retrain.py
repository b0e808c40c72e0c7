"""DVC stage 'retrain': the derived genotype as a timm network, trained from scratch -> models/retrain/.

With ``distributed.nproc_per_node`` (or ``nnodes``) > 1 the stage relaunches itself under ``torchrun``
(DistributedDataParallel, one process per GPU); only rank 0 writes metrics and talks to MLflow.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from stages.common import (
    GENOTYPE,
    METRICS,
    PREPARED,
    RETRAIN_OUT,
    is_rank0,
    parse_args,
    relaunch_under_torchrun,
    setup,
    torchrun_needed,
    tracker,
    write_metrics,
    write_rows_csv,
)
from stages.figures import figure, figure_title, viz

if TYPE_CHECKING:  # annotations only: main imports torch (genotype, training) after setup validated the params
    from ilnas.params import PipelineParams
    from ilnas.space.genotype import Genotype
    from ilnas.tracking import StageTracker
    from ilnas.train.retraining import RetrainResult

log = logging.getLogger("ilnas.stages.retrain")


def _tags(params: PipelineParams) -> dict[str, str]:
    """What the MLflow run is filtered and compared by, beside the tags every stage gets."""
    cfg = params.retrain
    return {"dataset": cfg.task.dataset, "model": cfg.model, "strategy": params.search.strategy,
            "hypergrad": params.search.hypergrad, "lerac": str(cfg.lerac.enabled),
            "world_size": str(params.distributed.world_size), "recipe": cfg.recipe}


def train_and_write(params: PipelineParams, genotype: Genotype, trk: StageTracker) -> RetrainResult:
    """Rank 0's training: the config on the run, each epoch logged as it ends, then the metrics DVC tracks
    (metrics/retrain.json, retrain_history.csv) and the final figures not already in the epoch series."""
    from ilnas.train import retrain

    cfg = params.retrain
    trk.log_params(cfg.model_dump(mode="json"), prefix="retrain.")
    trk.log_params(params.distributed.model_dump(mode="json"), prefix="distributed.")
    # DVC removed models/retrain before this run, so resume only covers a restart inside one stage run
    # the task's splits come through the retrain manifest 'prepare' wrote (fingerprints checked)
    result = retrain(cfg, genotype, RETRAIN_OUT, resume=True, callbacks=[trk.epoch_callback()],
                     manifest_dir=PREPARED)
    write_metrics("retrain", result.metrics)
    write_rows_csv(METRICS / "retrain_history.csv", result.history)
    # one name per value: what the epoch series already hold is not logged again
    per_epoch = {k for row in (getattr(result, "history", None) or []) for k in row}
    trk.log_metrics({k: v for k, v in result.metrics.items() if k not in per_epoch})
    return result


def log_outputs(params: PipelineParams, result: RetrainResult, trk: StageTracker) -> None:
    """The run's files on MLflow: curves, metrics, config and genotype, the final weights and the model."""
    v = viz()
    if v is not None and result.history:
        keys = [k for k in result.history[0] if "loss" in k or "top1" in k]
        panels = {"loss": [k for k in keys if "loss" in k], "top-1": [k for k in keys if "top1" in k]}
        figure("curves", v.plot_curves, result.history, keys, RETRAIN_OUT / "curves.png",
               title=figure_title("retrain", params), panels=panels)  # train beside test in each panel
        if (RETRAIN_OUT / "curves.png").exists():
            trk.log_artifact(RETRAIN_OUT / "curves.png", "figures")  # the artifacts pane lists folders first
    for name in ("metrics.json", "history.csv", "config.json", "genotype.json"):
        if (RETRAIN_OUT / name).exists():
            trk.log_artifact(RETRAIN_OUT / name)
    # one set of weights (metrics["weights"]): the final ones, EMA when on -- the checkpoint artifact, the
    # logged model and what transfer.checkpoint: retrain fine-tunes from are the same tensors
    trk.set_tags({"weights": result.metrics["weights"]})
    if params.tracking.log_checkpoints:
        trk.log_artifact(result.checkpoint, "checkpoint")
    if params.tracking.log_model and result.model is not None:
        trk.log_model(getattr(result.model, "module", result.model), name="model",
                      files=[RETRAIN_OUT / "genotype.json", RETRAIN_OUT / "config.json"])


def main(argv: Sequence[str] | None = None) -> None:
    """Train the derived genotype; under torchrun every rank trains, rank 0 alone writes and tracks."""
    params = setup("retrain", argv)
    if torchrun_needed(params):
        raise SystemExit(relaunch_under_torchrun("retrain", argv, params))
    rank0 = is_rank0()
    from ilnas.space.genotype import load_genotype
    from ilnas.train import retrain
    from ilnas.train.config import warn_implicit_recipe

    cfg = params.retrain
    if is_rank0():  # the papers' recipe or timm's: say which when the file does not
        warn_implicit_recipe("retrain", cfg, parse_args("retrain", argv).params)
    genotype = load_genotype(GENOTYPE)
    if not rank0:  # the other ranks only train
        retrain(cfg, genotype, RETRAIN_OUT, resume=True, manifest_dir=PREPARED)
        return
    with tracker("retrain", params, _tags(params)) as trk:
        result = train_and_write(params, genotype, trk)
        log_outputs(params, result, trk)
    log.info("retrain done: top1 %.4f (%s)", result.metrics.get("top1", float("nan")), RETRAIN_OUT)


if __name__ == "__main__":  # a known error ends as one message block (exit 2 for bad input)
    from stages.common import run_main

    run_main(main, "retrain")
