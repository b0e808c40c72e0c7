"""The study flow: the reference distribution, then ``arms x search seeds`` trials on Dask, then one report.

Who owns what: Prefect owns the run (task states, run history, the markdown artifact); Dask owns where work
runs (:mod:`flows.engine`); directories keyed by config and code own caching (a finished trial or proxy
evaluation is never rerun); MLflow records the study and its trials (a rerun adds no runs). The work itself
is the library: :func:`ilnas.study.trial.run_trial` (search -> derive -> retrain) and
:func:`ilnas.study.proxy.evaluate_cell` (the reference cells).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.runtime import flow_run as flow_run_runtime

from flows.engine import Progress, annotated, dask_runner, gather, proxy_task, share_api_url
from ilnas.study.spec import StudySpec, load_spec, spec_hash
from ilnas.study.trials import Trial, code_version, expand_trials
from ilnas.tracking import git_commit, telemetry_off, tracking_uri
from ilnas.utils.io import atomic_write_json

CODE_ROOT = Path(__file__).resolve().parents[1]  # the checkout whose code computes the trials
TRIALS_DIR = Path("runs/study/trials")  # shared by all studies: equal trials are computed once
PROXY_DIR = Path("runs/proxy")  # proxy evaluations (reference cells, calibrations, the trials' retrainings)
REPORTS_DIR = Path("reports")
REFERENCES_DIR = Path("references")  # reference distributions, one file per protocol key (DVC-tracked)


@task(name="study-trial", cache_policy=NONE, persist_result=False, retries=0)
def trial_task(trial: dict[str, Any], trials_dir: str, proxy_cache: str) -> dict[str, Any]:
    """One trial on a Dask worker; its failure is a ``failed`` result, not an exception (the others go on)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from ilnas.study.trial import run_trial

    return run_trial(trial, trials_dir, proxy_cache=proxy_cache)


@flow(name="ilnas-study-reference", persist_result=False)
def evaluate_reference(jobs: list[tuple[int, dict[str, Any]]], protocol: dict[str, Any], cache: str,
                       resources: dict[str, float] | None = None) -> list[str]:
    """The reference cells not yet evaluated, fanned out; returns the failures."""
    failures: list[str] = []
    futures = {}
    for i, genotype in jobs:
        with annotated(resources):
            future = proxy_task.with_options(task_run_name=f"reference-cell{i}").submit(genotype, protocol, 0, cache)
        futures[future] = i
    gather(futures, Progress("reference cells", len(jobs)),
           lambda i, r: failures.append(f"cell {i}: {r['error']}") if r["status"] != "ok" else None)
    return failures


@flow(name="ilnas-study-trials", persist_result=False)
def run_trials(pending_file: str, trials_dir: str, proxy_cache: str,
               resources: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Submit every pending trial to the task runner (Dask); collect results as they finish.

    The trials come as a file, not as a parameter: Prefect refuses flow-run parameters over 512 KB, which a
    study of ~80 trials (each with its full params) passes."""
    trials = json.loads(Path(pending_file).read_text())
    futures = {}
    for t in trials:
        with annotated(resources):
            future = trial_task.with_options(task_run_name=f"trial-{t['arm']}-s{t['search_seed']}").submit(
                t, trials_dir, proxy_cache)
        futures[future] = Trial.from_dict(t)
    results: list[dict[str, Any]] = []

    def keep(trial: Trial, result: dict[str, Any]) -> None:
        if "key" not in result:  # the worker died: the trial failed, the study goes on
            result = {"key": trial.key, "study": trial.study, "arm": trial.arm, "kind": trial.kind,
                      "strategy": trial.strategy, "search_seed": trial.search_seed, "ran": True, **result}
        results.append(result)

    gather(futures, Progress("trials", len(trials)), keep)
    return results


def _reference(spec: StudySpec, overrides: list[str], cache: Path, project: Path, address: str | None,
               workers: int | None) -> list[dict[str, Any]] | None:
    """The reference distribution: read from ``references/<protocol key>.json`` when it holds every cell, else
    the missing cells evaluated (seed 0, the study's protocol) and the file written and ``dvc add``-ed."""
    if spec.reference is None:
        return None
    from ilnas.study.proxy import cached_evaluation, protocol_key
    from ilnas.study.reference import load_reference, reference_cells, save_reference
    from ilnas.study.spec import arm_params

    _, params = arm_params(spec, spec.arms[0], overrides)
    protocol = {k: v for k, v in params.retrain.model_dump(mode="json").items() if k != "seed"}
    path = project / REFERENCES_DIR / f"{protocol_key(protocol)}.json"
    stored = load_reference(path, spec.reference.cells)
    if stored is not None:
        get_run_logger().info("reference: %d random cells from %s", len(stored), path)
        return stored
    cells = reference_cells(spec.reference.cells, params.search.nodes, tuple(params.search.primitives))
    pending = [(i, g.to_dict()) for i, g in cells if cached_evaluation(cache, protocol, g, 0) is None]
    get_run_logger().info("reference: %d random cells, %d to evaluate", len(cells), len(pending))
    if pending:
        share_api_url()
        runner = dask_runner(address, workers, spec.trial_resources or None)
        failures = evaluate_reference.with_options(task_runner=runner)(pending, protocol, str(cache),
                                                                      spec.trial_resources or None)
        if failures:
            raise RuntimeError(f"{len(failures)} reference evaluation(s) failed: " + "; ".join(failures[:3]))
    records = [{**cached_evaluation(cache, protocol, g, 0), "index": i} for i, g in cells]  # type: ignore[dict-item]
    save_reference(path, protocol, records)
    get_run_logger().info("reference: %s", dvc_track(path, project))
    return records


def dvc_track(path: Path, project: Path) -> str:
    """``dvc add`` the file when ``project`` is a DVC repository (the data goes to DVC's cache and remotes)."""
    if not (project / ".dvc").is_dir():
        return f"written to {path} (not a DVC repository: not tracked)"
    try:
        from dvc.repo import Repo

        with Repo(str(project)) as repo:
            repo.add(str(path))
    except Exception as exc:  # noqa: BLE001 - the file stays; tracking it is a convenience
        return f"written to {path}; dvc add failed: {type(exc).__name__}: {exc}"
    return f"written to {path} and tracked by DVC ({path.name}.dvc: commit it; `dvc push` shares the data)"


def _calibration(spec: StudySpec, project: Path) -> dict[str, Any] | None:
    if not spec.calibration:
        return None
    import json

    path = Path(spec.calibration) if Path(spec.calibration).is_absolute() else project / spec.calibration
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        get_run_logger().warning("calibration report %s not found: the report will say the protocol's choice is "
                                 "undocumented (run `make calibrate` first)", path)
        return None


def _track(uri: str | None, spec: StudySpec, provenance: dict[str, Any], trials: list[Trial],
           results: list[dict[str, Any]], summary: dict[str, Any], rdir: Path, markdown: str) -> str | None:
    """The MLflow parent and child runs; an identical study already logged is only pointed at."""
    if not uri:
        return None
    logger = get_run_logger()
    experiment = trials[0].params["tracking"].get("experiment", "ilnas")
    from ilnas.study.tracking import end_study_run, existing_study_run, log_trial_run, start_study_run

    ident = {"study": spec.name, "spec_hash": provenance["spec_hash"], "code_version": provenance["code_version"],
             "fingerprint": summary["fingerprint"]}
    try:
        if not any(r.get("ran") for r in results) and (found := existing_study_run(uri, experiment, ident)):
            logger.info("MLflow: this study is logged already (run %s); nothing new", found)
            return found
        tags = {k: v for k, v in provenance.items() if k not in ("overrides", "wall_s")}
        parent = start_study_run(uri, experiment, spec.model_dump(mode="json"),
                                 tags | {"overrides": " ".join(provenance["overrides"])})
        by_key = {t.key: t for t in trials}
        for r in results:
            log_trial_run(uri, parent, by_key[r["key"]], r)
        end_study_run(uri, parent, summary, rdir, markdown, failed=any(r["status"] != "ok" for r in results))
        return parent
    except Exception as exc:  # noqa: BLE001 - tracking must not stop the study
        logger.warning("MLflow runs not logged: %s: %s", type(exc).__name__, exc)
        return None


@flow(name="ilnas-study", persist_result=False, log_prints=True)
def study_flow(spec_path: str, overrides: list[str] | None = None, project_dir: str = ".", address: str | None = None,
               workers: int | None = None, trials_dir: str | None = None, reports_dir: str | None = None,
               track: bool = True) -> dict[str, Any]:
    """Reference cells, then the missing trials on Dask, then the report, MLflow runs and the Prefect artifact."""
    from ilnas.study.report import write_report
    from ilnas.study.trial import finished_result

    logger = get_run_logger()
    telemetry_off()
    started = time.perf_counter()
    project = Path(project_dir).resolve()
    overrides = list(overrides or [])
    spec = load_spec(spec_path if Path(spec_path).is_absolute() else project / spec_path, overrides)
    tdir = Path(trials_dir) if trials_dir else project / TRIALS_DIR
    cache = tdir.parent.parent / "proxy" if trials_dir else project / PROXY_DIR
    rdir = (Path(reports_dir) if reports_dir else project / REPORTS_DIR) / spec.name
    reference = _reference(spec, overrides, cache, project, address, workers)
    trials = expand_trials(spec, overrides, reference)
    cached = {t.key: r for t in trials if (r := finished_result(tdir, t)) is not None}
    pending = [t for t in trials if t.key not in cached]
    logger.info("study %s: %d trials, %d finished before, %d to run", spec.name, len(trials), len(cached), len(pending))
    provenance = {"git_commit": git_commit(CODE_ROOT), "code_version": code_version(), "spec_path": str(spec_path),
                  "spec_hash": spec_hash(spec, overrides), "overrides": overrides,
                  "engine": (f"Dask at {address}" if address else
                             f"Dask LocalCluster, {workers or os.cpu_count()} worker(s) x 1 thread") if pending
                  else "none (every trial was finished)",
                  "prefect_flow_run_id": str(flow_run_runtime.get_id() or ""), "trials_dir": str(tdir)}
    results = [{**r, "ran": False} for r in cached.values()]
    if pending:
        share_api_url()
        pending_file = atomic_write_json(tdir / "pending" / f"{provenance['spec_hash']}.json",
                                         [t.to_dict() for t in pending])
        runner = run_trials.with_options(task_runner=dask_runner(address, workers, spec.trial_resources or None))
        results += runner(str(pending_file), str(tdir), str(cache), spec.trial_resources or None)
    provenance["wall_s"] = round(time.perf_counter() - started, 1)
    path, markdown, summary, changed = write_report(
        rdir, spec.model_dump(mode="json"), spec.family(), trials, results, provenance, reference,
        _calibration(spec, project))
    base = trials[0].params["tracking"]
    uri = tracking_uri(project, base.get("uri")) if base.get("enabled", True) and track else None
    parent = _track(uri, spec, provenance, trials, results, summary, rdir, markdown)
    if changed:
        try:
            create_markdown_artifact(key="ilnas-study-" + re.sub(r"[^a-z0-9-]+", "-", spec.name.lower()).strip("-"),
                                     markdown=markdown, description=f"ilnas study {spec.name}: arms over seeds")
        except Exception as exc:  # noqa: BLE001
            logger.warning("Prefect artifact not created: %s", exc)
    failed = [r["key"] for r in results if r["status"] != "ok"]
    logger.info("report: %s (%s)", path, "written" if changed else "unchanged: same results as before")
    return {"study": spec.name, "report": str(path), "summary": summary, "parent_run_id": parent,
            "tracking_uri": uri, "ran": [r["key"] for r in results if r.get("ran")], "failed": failed,
            "wall_s": provenance["wall_s"], "report_changed": changed,
            "flow_run_id": provenance["prefect_flow_run_id"]}
