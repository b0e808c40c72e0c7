"""DVC stage 'transfer': the derived cell in the ImageNet-style network, trained/evaluated on an ImageFolder.

``transfer.data_root: null`` uses the embedded default's stand-in (data/imagefolder, written by 'prepare').
``transfer.checkpoint: retrain`` fine-tunes from the retrain stage's final weights (``models/retrain/final.pth``:
the weights its metrics and logged model belong to; matching tensors only), which is also why this stage runs
after 'retrain' in the DAG. With ``distributed.nproc_per_node`` (or ``nnodes``) > 1 the stage relaunches
itself under ``torchrun`` like 'retrain'; ``transfer.batch_size`` is the global batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from stages.common import (
    GENOTYPE,
    IMAGEFOLDER,
    METRICS,
    RETRAIN_OUT,
    TRANSFER_OUT,
    is_rank0,
    parse_args,
    relaunch_under_torchrun,
    setup,
    torchrun_needed,
    tracker,
    write_metrics,
    write_rows_csv,
)

log = logging.getLogger("ilnas.stages.transfer")


def _retrain_checkpoint() -> str:
    """The retrain stage's final weights: the same tensors its metrics, checkpoint artifact and model report."""
    from ilnas.train.checkpoint import FINAL_WEIGHTS

    path = RETRAIN_OUT / FINAL_WEIGHTS
    if not path.exists():
        raise FileNotFoundError(f"transfer.checkpoint: 'retrain' given but {path} does not exist (run 'retrain')")
    return str(path)


def main(argv: Sequence[str] | None = None) -> None:
    params = setup("transfer", argv)
    if torchrun_needed(params):
        raise SystemExit(relaunch_under_torchrun("transfer", argv, params))
    from ilnas.space.genotype import load_genotype
    from ilnas.train import transfer
    from ilnas.train.config import warn_implicit_recipe

    cfg = params.transfer
    if is_rank0():  # the papers' recipe or timm's: say which when the file does not
        warn_implicit_recipe("transfer", cfg, parse_args("transfer", argv).params)
    if cfg.checkpoint == "retrain":
        cfg = cfg.model_copy(update={"checkpoint": _retrain_checkpoint()})
    data_root = cfg.data_root or str(IMAGEFOLDER)
    if not is_rank0():  # the other ranks only train
        transfer(cfg, load_genotype(GENOTYPE), TRANSFER_OUT, data_root=data_root)
        return
    tags = {"dataset": "imagefolder:" + data_root, "model": cfg.model, "strategy": params.search.strategy,
            "hypergrad": params.search.hypergrad, "recipe": cfg.recipe,
            "world_size": str(params.distributed.world_size)}
    with tracker("transfer", params, tags) as trk:
        trk.log_params(cfg.model_dump(mode="json"), prefix="transfer.")
        trk.log_params(params.distributed.model_dump(mode="json"), prefix="distributed.")
        result = transfer(cfg, load_genotype(GENOTYPE), TRANSFER_OUT, data_root=data_root,
                          callbacks=[trk.epoch_callback()])
        write_metrics("transfer", result.metrics)
        history = getattr(result, "history", None) or []
        write_rows_csv(METRICS / "transfer_history.csv", history or [{"epoch": 0}])
        # one name per value: what the epoch series already hold is not logged again
        per_epoch = {k for row in (getattr(result, "history", None) or []) for k in row}
        trk.log_metrics({k: v for k, v in result.metrics.items() if k not in per_epoch})
        for name in ("metrics.json", "history.csv", "config.json"):
            if (TRANSFER_OUT / name).exists():
                trk.log_artifact(TRANSFER_OUT / name)
    log.info("transfer done: top1 %.4g top5 %.4g (%s)", result.metrics.get("top1", float("nan")),
             result.metrics.get("top5", float("nan")), TRANSFER_OUT)


if __name__ == "__main__":  # a known error ends as one message block (exit 2 for bad input)
    from stages.common import run_main

    run_main(main, "transfer")
