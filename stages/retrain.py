"""DVC stage 'retrain': the derived genotype as a timm network, trained from scratch -> models/retrain/.

With ``distributed.nproc_per_node`` (or ``nnodes``) > 1 the stage relaunches itself under ``torchrun``
(DistributedDataParallel, one process per GPU); only rank 0 writes metrics and talks to MLflow.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Sequence

from ilnas.params import DistributedConfig
from stages.common import (
    GENOTYPE,
    METRICS,
    RETRAIN_OUT,
    figure,
    parse_args,
    setup,
    tracker,
    viz,
    write_metrics,
    write_rows_csv,
)

log = logging.getLogger("ilnas.stages.retrain")


def _torchrun(params_file: str, dist: DistributedConfig) -> int:
    """Re-exec this stage under torchrun; returns its exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={dist.nproc_per_node}",
           f"--nnodes={dist.nnodes}"]
    if dist.nnodes > 1:
        cmd += ["--rdzv_backend=c10d", f"--rdzv_endpoint={dist.rdzv_endpoint}"]
    else:
        cmd += ["--standalone"]
    cmd += ["-m", "stages.retrain", "--params", params_file]
    log.info("relaunching under torchrun: %s", " ".join(cmd))
    return subprocess.call(cmd)


def main(argv: Sequence[str] | None = None) -> None:
    params = setup("retrain", argv)
    dist = params.distributed
    if (dist.nproc_per_node > 1 or dist.nnodes > 1) and "LOCAL_RANK" not in os.environ:
        raise SystemExit(_torchrun(parse_args("retrain", argv).params, dist))
    rank0 = int(os.environ.get("RANK", "0")) == 0
    from ilnas.space.genotype import load_genotype
    from ilnas.train import retrain

    cfg = params.retrain
    genotype = load_genotype(GENOTYPE)
    if not rank0:  # the other ranks only train
        retrain(cfg, genotype, RETRAIN_OUT, resume=True)
        return
    tags = {"dataset": cfg.task.dataset, "model": cfg.model, "strategy": params.search.strategy,
            "hypergrad": params.search.hypergrad, "lerac": str(cfg.lerac.enabled),
            "world_size": os.environ.get("WORLD_SIZE", "1")}
    with tracker("retrain", params, tags) as trk:
        trk.log_params(cfg.model_dump(mode="json"), prefix="retrain.")
        trk.log_params(dist.model_dump(mode="json"), prefix="distributed.")
        # DVC removed models/retrain before this run, so resume only covers a restart inside one stage run
        result = retrain(cfg, genotype, RETRAIN_OUT, resume=True, callbacks=[trk.epoch_callback()])
        write_metrics("retrain", result.metrics)
        write_rows_csv(METRICS / "retrain_history.csv", result.history)
        # one name per value: what the epoch series already hold is not logged again
        per_epoch = {k for row in (getattr(result, "history", None) or []) for k in row}
        trk.log_metrics({k: v for k, v in result.metrics.items() if k not in per_epoch})
        v = viz()
        if v is not None and result.history:
            keys = [k for k in result.history[0] if "loss" in k or "top1" in k]
            figure("curves", v.plot_curves, result.history, keys, RETRAIN_OUT / "curves.png")
            if (RETRAIN_OUT / "curves.png").exists():
                trk.log_artifact(RETRAIN_OUT / "curves.png")
        for name in ("metrics.json", "history.csv", "config.json", "genotype.json"):
            if (RETRAIN_OUT / name).exists():
                trk.log_artifact(RETRAIN_OUT / name)
        if params.tracking.log_checkpoints:
            trk.log_artifact(result.checkpoint, "checkpoint")
        if params.tracking.log_model and result.model is not None:
            trk.log_model(getattr(result.model, "module", result.model), name="model")
    log.info("retrain done: top1 %.4f (%s)", result.metrics.get("top1", float("nan")), RETRAIN_OUT)


if __name__ == "__main__":
    main()
