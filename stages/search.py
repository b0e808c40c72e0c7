"""DVC stage 'search': interleaved architecture search -> models/search/ (alphas, history, checkpoint).

Resumable: the search runs in ``runs/search/<config and code hash>/``, a directory DVC does not own, because
DVC deletes a stage's outs before running it (that would throw away an interrupted search's checkpoint).
Rerunning after an interruption resumes from there; a different search config or different search code
gets a different directory (an unfinished search of other code is named in the log, never resumed).
When the search finishes, its files are copied into the DVC out ``models/search/`` and the work dir goes.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from stages.common import (
    METRICS,
    PREPARED,
    SEARCH_OUT,
    SEARCH_WORK,
    clean,
    config_hash,
    fresh_dir,
    is_rank0,
    relaunch_under_torchrun,
    setup,
    torchrun_needed,
    tracker,
    without_timings,
    write_metrics,
    write_rows_csv,
)

log = logging.getLogger("ilnas.stages.search")

FILES = ("alphas.pt", "alpha_history.json", "history.csv", "metrics.json", "genotype.json", "checkpoint.pt")


def work_dir(cfg) -> Path:
    """``runs/search/<hash of the search config and the search code>``: where an unfinished search lives."""
    from ilnas.search.provenance import code_version

    return SEARCH_WORK / config_hash({"config": cfg.model_dump(mode="json"), "code": code_version()})


def main(argv: Sequence[str] | None = None) -> None:
    params = setup("search", argv)
    if torchrun_needed(params):  # `distributed` asks for several processes: one per device, data parallel
        from ilnas.search.parallel import check_resume_world

        # checked before the launch: an unfinished search resumes only on the world size it ran on
        check_resume_world(work_dir(params.search) / "checkpoint.pt", params.distributed.world_size)
        raise SystemExit(relaunch_under_torchrun("search", argv, params))
    from ilnas.data.prepare import load_stage_tasks
    from ilnas.search import SearchRun

    cfg = params.search
    work = work_dir(cfg)
    # the splits come through the search manifests 'prepare' wrote (fingerprints checked, files named)
    tasks = load_stage_tasks(PREPARED, "search", list(cfg.tasks), cfg.seed, cfg.val_fraction)
    if not is_rank0():  # the other ranks only search; rank 0 tracks and writes
        SearchRun(cfg, work, tasks=tasks).run(resume=True, progress=False)
        return
    others = sorted(p for p in SEARCH_WORK.glob("*/checkpoint.pt") if p.parent != work)
    if others:
        log.info("not resuming %d unfinished search(es) of another config or code version: %s", len(others),
                 ", ".join(str(p.parent) for p in others))
    datasets = sorted({t.dataset for t in cfg.tasks})
    tags = {"strategy": cfg.strategy, "dataset": ",".join(datasets), "hypergrad": cfg.hypergrad,
            "tasks": ",".join(t.name for t in cfg.tasks), "world_size": str(params.distributed.world_size)}
    with tracker("search", params, tags) as trk:
        trk.log_params(cfg.model_dump(mode="json"), prefix="search.")
        logged: set[int] = set()

        def on_epoch(epoch: int, row: dict) -> None:
            logged.add(epoch)
            trk.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)

        if (work / "checkpoint.pt").exists():
            log.info("resuming the search from %s", work / "checkpoint.pt")
            trk.set_tags({"resumed": "true"})
        result = SearchRun(cfg, work, tasks=tasks).run(resume=True, progress=False, callbacks=[on_epoch])
        for row in result.history:  # epochs finished before a resumption
            if int(row["epoch"]) not in logged:
                trk.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))

        out = fresh_dir(SEARCH_OUT)
        for name in FILES:
            src = work / name
            if src.exists():
                shutil.copy2(src, out / name)
        # the DVC out without wall-clock columns: a rerun with the same result hashes the same (MLflow has them)
        write_rows_csv(out / "history.csv", result.history)
        (out / "metrics.json").write_text(json.dumps(clean(without_timings(result.metrics)), indent=2) + "\n")
        write_metrics("search", result.metrics)
        write_rows_csv(METRICS / "search_history.csv", result.history)
        # one name per value: the epoch series already hold the last epoch's numbers; log only the rest
        per_epoch = {k for row in result.history for k in row}
        trk.log_metrics({k: v for k, v in result.metrics.items() if k not in per_epoch})

        for name in ("genotype.json", "alpha_history.json", "history.csv", "metrics.json"):
            trk.log_artifact(out / name)
        if params.tracking.log_checkpoints:
            trk.log_artifact(out / "alphas.pt")
            trk.log_artifact(out / "checkpoint.pt", "checkpoint")
    shutil.rmtree(work, ignore_errors=True)
    log.info("search done: %s", Path(SEARCH_OUT))  # the genotype: the search's own compact line
    m = result.metrics  # the headline means the same for 5-way and 10-way tasks (raw means do not)
    log.info("search headline: val_loss_norm_mean %.4f (loss / ln C), val_acc_above_chance_mean %.4f "
             "((acc - 1/C) / (1 - 1/C)); per task: val_loss/<task>, val_acc/<task>",
             m.get("val_loss_norm_mean", float("nan")), m.get("val_acc_above_chance_mean", float("nan")))


if __name__ == "__main__":  # a known error ends as one message block (exit 2 for bad input)
    from stages.common import run_main

    run_main(main, "search")
