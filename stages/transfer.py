"""DVC stage 'transfer': the derived cell in the ImageNet-style network, trained/evaluated on an ImageFolder.

``transfer.data_root: null`` uses the embedded default's stand-in (data/imagefolder, written by 'prepare').
``transfer.checkpoint: retrain`` fine-tunes from the retrain stage's best weights (matching tensors only);
that is also why this stage runs after 'retrain' in the DAG.
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
    setup,
    tracker,
    write_metrics,
    write_rows_csv,
)

log = logging.getLogger("ilnas.stages.transfer")


def _retrain_checkpoint() -> str:
    for name in ("model_best.pth.tar", "last.pth.tar"):
        path = RETRAIN_OUT / "checkpoints" / name
        if path.exists():
            return str(path)
    raise FileNotFoundError(f"transfer.checkpoint: 'retrain' given but no checkpoint under {RETRAIN_OUT}/checkpoints")


def main(argv: Sequence[str] | None = None) -> None:
    params = setup("transfer", argv)
    from ilnas.space.genotype import load_genotype
    from ilnas.train import transfer

    cfg = params.transfer
    if cfg.checkpoint == "retrain":
        cfg = cfg.model_copy(update={"checkpoint": _retrain_checkpoint()})
    data_root = cfg.data_root or str(IMAGEFOLDER)
    tags = {"dataset": "imagefolder:" + data_root, "model": cfg.model, "strategy": params.search.strategy,
            "hypergrad": params.search.hypergrad}
    with tracker("transfer", params, tags) as trk:
        trk.log_params(cfg.model_dump(mode="json"), prefix="transfer.")
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
    log.info("transfer done: top1 %s top5 %s", result.metrics.get("top1"), result.metrics.get("top5"))


if __name__ == "__main__":
    main()
