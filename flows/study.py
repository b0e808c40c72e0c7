"""The study flow: ``arms x search seeds`` trials fanned out on Dask through Prefect, then one report.

    python -m flows.study configs/study.yaml                          # what `make study` does
    python -m flows.study configs/study.yaml -S retrain.epochs=2      # an override for every trial
    python -m flows.study configs/study_cifar.yaml --address tcp://scheduler:8786   # attach to a cluster

Who owns what: Prefect owns the run (task states, run history, the markdown artifact); Dask owns where
trials run (``prefect-dask``'s ``DaskTaskRunner``: a ``LocalCluster`` of one-thread worker processes, or
an existing cluster by address; ``trial_resources: {GPU: 1}`` in the spec makes each trial hold one GPU
of a worker started with ``--resources GPU=1``); the trial directory keyed by the trial's config and the
code version owns caching (a finished trial is never rerun); MLflow records the study and its trials.
The trials themselves are :func:`ilnas.study.trial.run_trial`: the search, derive and retrain library
the pipeline stages call.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.futures import as_completed
from prefect.runtime import flow_run as flow_run_runtime

from ilnas.errors import guarded, strip_debug_flag
from ilnas.study.spec import load_spec, spec_hash
from ilnas.study.trials import Trial, code_version, expand_trials
from ilnas.tracking import git_commit, telemetry_off, tracking_uri

log = logging.getLogger("ilnas.flows.study")

CODE_ROOT = Path(__file__).resolve().parents[1]  # the checkout whose code computes the trials
TRIALS_DIR = Path("runs/study/trials")  # shared by all studies: equal trials are computed once
REPORTS_DIR = Path("reports")


def dask_runner(address: str | None = None, workers: int | None = None,
                resources: dict[str, float] | None = None) -> Any:
    """Prefect's Dask task runner: attach to ``address``, or a local cluster of one-thread worker processes.

    Local default: one worker per core (2 here), one thread each: a trial is a single-threaded torch job,
    and two threads per worker ran slower than one on these shared cores. ``resources`` are given to every
    local worker so that trials annotated with them can be scheduled.
    """
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    kwargs: dict[str, Any] = {"n_workers": workers or max(1, os.cpu_count() or 1), "threads_per_worker": 1,
                              "processes": True, "dashboard_address": ":0"}  # any free port: never clash
    if resources:
        kwargs["resources"] = dict(resources)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=kwargs)


@task(name="study-trial", cache_policy=NONE, persist_result=False, retries=0)
def trial_task(trial: dict[str, Any], trials_dir: str) -> dict[str, Any]:
    """One trial on a Dask worker; its failure is a ``failed`` result, not an exception (the others go on)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from ilnas.study.trial import run_trial

    result = run_trial(trial, trials_dir)
    get_run_logger().info("trial %s/s%s: %s", trial["arm"], trial["search_seed"], result["status"])
    return result


def _log_child(uri: str | None, parent: str | None, trial: Trial, result: dict[str, Any], logger: Any) -> None:
    if not (uri and parent):
        return
    try:
        from ilnas.study.tracking import log_trial_run

        log_trial_run(uri, parent, trial, result)
    except Exception as exc:  # noqa: BLE001 - tracking must not stop the study
        logger.warning("MLflow child run of %s not logged: %s: %s", trial.label, type(exc).__name__, exc)


@flow(name="ilnas-study-trials", persist_result=False)
def run_trials(trials: list[dict[str, Any]], trials_dir: str, resources: dict[str, float] | None = None,
               uri: str | None = None, parent_run_id: str | None = None) -> list[dict[str, Any]]:
    """Submit every pending trial to the task runner (Dask); collect results as they finish."""
    import dask

    logger = get_run_logger()
    futures = {}
    for t in trials:
        annotate = dask.annotate(resources=resources) if resources else contextlib.nullcontext()
        with annotate:
            future = trial_task.with_options(task_run_name=f"trial-{t['arm']}-s{t['search_seed']}").submit(
                t, trials_dir)
        futures[future] = Trial.from_dict(t)
    results = []
    for future in as_completed(list(futures)):
        trial = futures[future]
        try:
            result = future.result()
        except Exception as exc:  # noqa: BLE001 - a worker died: the trial failed, the study goes on
            result = {"key": trial.key, "study": trial.study, "arm": trial.arm, "kind": trial.kind,
                      "strategy": trial.strategy, "search_seed": trial.search_seed, "status": "failed", "ran": True,
                      "error": f"{type(exc).__name__}: {exc}"[:2000]}
        logger.info("trial %s %s", trial.label, result["status"] if result["status"] != "ok" else
                    "ok: test top-1 " + ", ".join(f"{r['test_top1']:.4f}" for r in result["retrains"]))
        _log_child(uri, parent_run_id, trial, result, logger)
        results.append(result)
    return results


def share_api_url() -> str | None:
    """Point the Dask workers (new processes, started after this) at this flow's Prefect API.

    Without it each worker of a local cluster would start an ephemeral Prefect server of its own (10-60 s
    each here), and its task runs would land in a database nobody reads. Remote workers need the
    ``PREFECT_API_URL`` of a real server in their own environment (README, "Studies").
    """
    from prefect.client.orchestration import get_client

    try:
        url = str(get_client(sync_client=True).api_url).rstrip("/")
    except Exception:  # noqa: BLE001 - the workers then fall back to their own settings
        return None
    if url.startswith("http") and "ephemeral-prefect" not in url:
        os.environ["PREFECT_API_URL"] = url
        return url
    return None


def _artifact_key(name: str) -> str:
    return "ilnas-study-" + re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")


@flow(name="ilnas-study", persist_result=False, log_prints=True)
def study(spec_path: str, overrides: list[str] | None = None, project_dir: str = ".", address: str | None = None,
          workers: int | None = None, trials_dir: str | None = None, reports_dir: str | None = None,
          track: bool = True) -> dict[str, Any]:
    """Validate the spec, run the missing trials on Dask, log every trial to MLflow, write the report."""
    from ilnas.study.report import write_report
    from ilnas.study.trial import finished_result

    logger = get_run_logger()
    telemetry_off()
    started = time.perf_counter()
    project = Path(project_dir).resolve()
    overrides = list(overrides or [])
    # 1. everything is validated before any trial starts
    spec = load_spec(spec_path if Path(spec_path).is_absolute() else project / spec_path, overrides)
    trials = expand_trials(spec, overrides)
    tdir = Path(trials_dir) if trials_dir else project / TRIALS_DIR
    rdir = (Path(reports_dir) if reports_dir else project / REPORTS_DIR) / spec.name
    cached = {t.key: r for t in trials if (r := finished_result(tdir, t)) is not None}
    pending = [t for t in trials if t.key not in cached]
    logger.info("study %s: %d trials, %d finished before, %d to run", spec.name, len(trials), len(cached),
                len(pending))
    base = trials[0].params
    provenance = {"git_commit": git_commit(CODE_ROOT), "code_version": code_version(), "spec_path": str(spec_path),
                  "spec_hash": spec_hash(spec, overrides), "overrides": overrides,
                  "engine": (f"Dask at {address}" if address else
                             f"Dask LocalCluster, {workers or os.cpu_count()} worker(s) x 1 thread") if pending
                  else "none (every trial was finished)",
                  "prefect_flow_run_id": str(flow_run_runtime.get_id() or ""), "trials_dir": str(tdir)}

    # 2. MLflow parent run (best effort)
    tracking = base["tracking"]
    uri = tracking_uri(project, tracking.get("uri")) if tracking.get("enabled", True) and track else None
    parent = None
    if uri:
        try:
            from ilnas.study.tracking import start_study_run

            parent = start_study_run(uri, tracking.get("experiment", "ilnas"), spec.model_dump(mode="json"),
                                     {k: v for k, v in provenance.items() if k != "overrides"}
                                     | {"overrides": " ".join(overrides)})
        except Exception as exc:  # noqa: BLE001
            logger.warning("MLflow parent run not created (%s: %s)", type(exc).__name__, exc)

    # 3. the missing trials, fanned out; finished ones are only logged
    by_key = {t.key: t for t in trials}
    results = [{**r, "ran": False} for r in cached.values()]
    for r in results:
        _log_child(uri, parent, by_key[r["key"]], r, logger)
    if pending:
        share_api_url()
        runner = run_trials.with_options(task_runner=dask_runner(address, workers, spec.trial_resources or None))
        results += runner([t.to_dict() for t in pending], str(tdir), spec.trial_resources or None, uri, parent)

    # 4. the report: file, MLflow, Prefect artifact
    provenance["wall_s"] = round(time.perf_counter() - started, 1)
    provenance["mlflow_parent_run_id"] = parent
    path, markdown, summary = write_report(rdir, spec.model_dump(mode="json"), trials, results, provenance)
    failed = [r for r in results if r["status"] != "ok"]
    if parent and uri:
        try:
            from ilnas.study.tracking import end_study_run

            end_study_run(uri, parent, summary, rdir, markdown, failed=bool(failed))
        except Exception as exc:  # noqa: BLE001
            logger.warning("MLflow parent run not closed cleanly: %s: %s", type(exc).__name__, exc)
    try:
        create_markdown_artifact(key=_artifact_key(spec.name), markdown=markdown,
                                 description=f"ilnas study {spec.name}: arms over seeds")
    except Exception as exc:  # noqa: BLE001
        logger.warning("Prefect artifact not created: %s", exc)
    logger.info("report: %s", path)
    return {"study": spec.name, "report": str(path), "summary": summary, "parent_run_id": parent,
            "tracking_uri": uri, "ran": [r["key"] for r in results if r.get("ran")],
            "failed": [r["key"] for r in failed], "wall_s": provenance["wall_s"],
            "flow_run_id": provenance["prefect_flow_run_id"]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.study", description="Run a study (arms x search seeds).")
    parser.add_argument("spec", nargs="?", default="configs/study.yaml",
                        help="study YAML (default: configs/study.yaml)")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="params override applied to every trial, e.g. -S retrain.epochs=2")
    parser.add_argument("--address", help="attach to a running Dask scheduler (tcp://host:8786) instead of a "
                                          "local cluster")
    parser.add_argument("--workers", type=int, help="local cluster workers (default: one per core)")
    parser.add_argument("--project-dir", default=".")
    parser.add_argument("--no-track", action="store_true", help="no MLflow runs")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a known error (or ILNAS_DEBUG=1)")
    argv = strip_debug_flag(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    telemetry_off()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the local workers
    # a bad spec or override (StudySpecError, ParamsError) ends as one block with exit 2, like every entry point
    result = guarded(lambda: study(spec_path=args.spec, overrides=args.overrides, project_dir=args.project_dir,
                                   address=args.address, workers=args.workers, track=not args.no_track),
                     "python -m flows.study")
    print(f"\nreport: {result['report']}  ({len(result['ran'])} trial(s) ran, {len(result['failed'])} failed, "
          f"{result['wall_s']:.0f} s)")
    if result.get("parent_run_id"):
        print(f"MLflow parent run {result['parent_run_id']} in {result['tracking_uri']}")
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
