"""DVC stage 'prepare': task manifests (data/prepared/) and the transfer stand-in ImageFolder (data/imagefolder/).

The manifests pin which images each task's train/val/test split holds (seeded), so a change in the data
or the split shows up as a changed DVC out and reruns everything downstream. The ImageFolder holds the
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

    tasks = list(params.search.tasks)
    if params.retrain.task.name not in {t.name for t in tasks}:
        tasks.append(params.retrain.task)
    datasets = sorted({t.dataset for t in tasks})
    with tracker("prepare", params, {"dataset": ",".join(datasets)}) as trk:
        trk.log_params(params.prepare.model_dump(mode="json"), prefix="prepare.")
        trk.log_params({"tasks": [t.model_dump(mode="json") for t in tasks], "seed": params.seed,
                        "val_fraction": params.search.val_fraction})
        summary = prepare_tasks(tasks, fresh_dir(PREPARED), seed=params.seed,
                                val_fraction=params.search.val_fraction)
        folder = export_imagefolder(fresh_dir(IMAGEFOLDER), image_size=params.prepare.image_size, seed=params.seed)
        metrics = {"tasks": len(tasks)}
        for name, info in (summary.get("tasks", summary) if isinstance(summary, dict) else {}).items():
            if isinstance(info, dict):
                metrics.update({f"{name}/{k}": v for k, v in info.items() if isinstance(v, int | float)})
        if isinstance(folder, dict):
            metrics.update({f"imagefolder/{k}": v for k, v in folder.items() if isinstance(v, int | float)})
        write_metrics("prepare", metrics)
        trk.log_metrics(metrics)
        trk.log_artifact(PREPARED, "prepared")
    log.info("prepared %d task(s) into %s and %s", len(tasks), PREPARED, IMAGEFOLDER)


if __name__ == "__main__":
    main()
