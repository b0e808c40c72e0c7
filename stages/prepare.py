"""DVC stage 'prepare': task manifests (data/prepared/) and the transfer stand-in ImageFolder (data/imagefolder/).

The manifests pin which images each task's train/val/test split holds and fingerprint the source files:
``data/prepared/search/tasks/<task>.json`` with the search's seed and val fraction, ``data/prepared/retrain/
tasks/<task>.json`` with the retrain's. The search and retrain stages load their splits through them
(fingerprints checked), and the dataset roots are DVC deps (``prepare.data_deps``), so a changed image
reruns this stage and the stages that read it. The ImageFolder holds the
digits held-out images in ImageNet layout (train/<class>/, val/<class>/): the embedded default's stand-in
for ImageNet transfer, so the whole pipeline runs without downloads.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from stages.common import IMAGEFOLDER, PREPARED, fresh_dir, setup, tracker, write_metrics

log = logging.getLogger("ilnas.stages.prepare")


def main(argv: Sequence[str] | None = None) -> None:
    params = setup("prepare", argv)
    from ilnas.data.prepare import export_imagefolder, prepare_tasks

    search, retrain = params.search, params.retrain
    datasets = sorted({t.dataset for t in [*search.tasks, retrain.task]})
    with tracker("prepare", params, {"dataset": ",".join(datasets)}) as trk:
        trk.log_params(params.prepare.model_dump(mode="json"), prefix="prepare.")
        out = fresh_dir(PREPARED)
        # one manifest set per reading stage, each with that stage's own seed and split
        summaries = {
            "search": prepare_tasks(list(search.tasks), out / "search", seed=search.seed,
                                    val_fraction=search.val_fraction),
            "retrain": prepare_tasks([retrain.task], out / "retrain", seed=retrain.seed,
                                     val_fraction=retrain.val_fraction),
        }
        trk.log_params({f"{stage}.split": {"seed": sm["seed"], "val_fraction": sm["val_fraction"]}
                        for stage, sm in summaries.items()})
        folder = export_imagefolder(fresh_dir(IMAGEFOLDER), image_size=params.prepare.image_size, seed=params.seed)
        # tasks: the search's K (what the run summary shows); the manifests also hold the retrain task
        metrics: dict = {"tasks": len(search.tasks), "manifest_tasks": len(search.tasks) + 1}
        for stage, summary in summaries.items():
            for name, info in summary["tasks"].items():
                metrics.update({f"{stage}/{name}/{k}": v for k, v in info.items() if isinstance(v, int | float)})
        if isinstance(folder, dict):
            metrics.update({f"imagefolder/{k}": v for k, v in folder.items() if isinstance(v, int | float)})
        write_metrics("prepare", metrics)
        trk.log_metrics(metrics)
        trk.log_artifact(PREPARED, "prepared")
    log.info("prepared the search and retrain manifests into %s and the stand-in into %s", PREPARED, IMAGEFOLDER)


if __name__ == "__main__":  # a known error ends as one message block (exit 2 for bad input)
    from stages.common import run_main

    run_main(main, "prepare")
