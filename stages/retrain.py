"""DVC stage 'retrain': the derived genotype as a timm network, trained from scratch -> models/retrain/."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from stages.common import GENOTYPE, METRICS, RETRAIN_OUT, figure, setup, tracker, viz, write_metrics, write_rows_csv

log = logging.getLogger("ilnas.stages.retrain")


def main(argv: Sequence[str] | None = None) -> None:
    params = setup("retrain", argv)
    from ilnas.space.genotype import load_genotype
    from ilnas.train import retrain

    cfg = params.retrain
    genotype = load_genotype(GENOTYPE)
    tags = {"dataset": cfg.task.dataset, "model": cfg.model, "strategy": params.search.strategy,
            "hypergrad": params.search.hypergrad, "lerac": str(cfg.lerac.enabled)}
    with tracker("retrain", params, tags) as trk:
        trk.log_params(cfg.model_dump(mode="json"), prefix="retrain.")
        # DVC removed models/retrain before this run, so resume only covers a restart inside one stage run
        result = retrain(cfg, genotype, RETRAIN_OUT, resume=True, callbacks=[trk.epoch_callback()])
        write_metrics("retrain", result.metrics)
        write_rows_csv(METRICS / "retrain_history.csv", result.history)
        trk.log_metrics({f"final/{k}": v for k, v in result.metrics.items()})
        v = viz()
        if v is not None and result.history:
            keys = [k for k in result.history[0] if "loss" in k or "top1" in k]
            path = figure("curves", v.plot_curves, result.history, keys, RETRAIN_OUT / "curves.png")
            if path is not None or (RETRAIN_OUT / "curves.png").exists():
                trk.log_artifact(RETRAIN_OUT / "curves.png")
        for name in ("metrics.json", "history.csv", "config.json", "genotype.json"):
            if (RETRAIN_OUT / name).exists():
                trk.log_artifact(RETRAIN_OUT / name)
        if params.tracking.log_checkpoints:
            trk.log_artifact(result.checkpoint, "checkpoint")
        if params.tracking.log_model and result.model is not None:
            trk.log_model(result.model, name="model")
    log.info("retrain done: top1 %.4f (%s)", result.metrics.get("top1", float("nan")), RETRAIN_OUT)


if __name__ == "__main__":
    main()
