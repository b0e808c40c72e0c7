"""The Prefect flow: one Prefect task per DVC stage, in the order of DVC's own DAG.

Who owns what: DVC owns the DAG, caching and experiments (``dvc repro`` reruns only what changed; a variant
is a DVC experiment), Prefect owns when and how (retries, timeouts, schedules, run history), MLflow records
what each stage did. The flow caches nothing itself and reads nothing DVC knows from anywhere but DVC
(:mod:`flows.dvc_repo`).

A variant (``-S key=value``, ``--preset``, ``--name``) runs like ``dvc exp run -S`` in the workspace, stage
by stage, then ``dvc exp save`` records it as an experiment (``dvc exp show`` lists it, ``dvc exp apply
<name>`` brings it back) and the workspace is put back as it was: params.yaml is never left changed.

    python -m flows                                   # once over params.yaml (what `make run` does)
    python -m flows -S search.hypergrad=first_order   # an experiment named hypergrad-first_order
    python -m flows --preset configs/darts.yaml       # an experiment named darts
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.runtime import flow_run as flow_run_runtime
from prefect.runtime import task_run as task_run_runtime
from prefect.states import Completed

from flows.dvc_repo import (
    StageInfo,
    Workspace,
    dvc_command,
    exp_save,
    missing_params,
    read_dag,
    restorable,
    stage_changed,
)
from flows.naming import flow_run_identity, label_flow_run
from flows.summary import headline, log_search_comparison, markdown_table, stage_metrics
from flows.variants import Variant, resolve_variant
from ilnas.params import ParamsError, PipelineParams
from ilnas.tracking import (
    ENV_PARENT_RUN_ID,
    TELEMETRY_OFF,
    TrackingUnavailable,
    end_parent_run,
    not_logged_summary,
    start_parent_run,
    telemetry_off,
    tracking_uri,
)
from stages.common import search_method

ARTIFACT_KEY = "ilnas-pipeline"
# the Prefect state name of a stage's task run: what DVC did (all are of type COMPLETED)
STATE_NAMES = {"ran": "Completed", "restored": "Restored", "skipped": "Skipped"}
RunLogger = logging.Logger | logging.LoggerAdapter  # what get_run_logger() returns


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero or timed out; the message names the stage."""


class _WithoutTraceback(logging.Formatter):
    """The console formatter it wraps, minus the traceback: Prefect logs a failed task run (each attempt) and
    the failed flow run with ``exc_info``; the message line stays, the traceback only with ``--debug``."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None  # type: ignore[assignment]
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def quiet_failure_tracebacks() -> None:
    """Prefect's console handlers print no tracebacks unless ``--debug`` / ``ILNAS_DEBUG=1`` (the API log keeps
    them for the Prefect UI); the failure itself ends the run as one message block (flows.__main__)."""
    from ilnas.errors import debug_enabled

    for handler in logging.getLogger().handlers:
        quiet = isinstance(handler.formatter, _WithoutTraceback)
        if debug_enabled() and quiet:
            handler.setFormatter(handler.formatter.inner)
        elif not debug_enabled() and not quiet and type(handler).__module__.startswith("prefect."):
            handler.setFormatter(_WithoutTraceback(handler.formatter or logging.Formatter()))


# -- the task ------------------------------------------------------------------------------------------------
def stage_env(parent_run_id: str | None, uri: str | None, experiment: str | None) -> dict[str, str]:
    """The stage's environment: telemetry off, the MLflow parent run, the experiment's name, bare log lines."""
    env = dict(os.environ)
    for key, value in TELEMETRY_OFF.items():
        env.setdefault(key, value)
    env.pop(ENV_PARENT_RUN_ID, None)
    env.pop("DVC_EXP_NAME", None)
    if parent_run_id:
        env[ENV_PARENT_RUN_ID] = parent_run_id
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    if experiment:
        env["DVC_EXP_NAME"] = experiment  # what `dvc exp run` sets; the stages tag their MLflow runs with it
    env["ILNAS_LOG_BARE"] = "1"  # Prefect's logger adds the time and the task: one prefix per line
    env.setdefault("ILNAS_PYTHON", sys.executable)  # stages/python.sh runs the stages with the flow's python
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _kill(proc: subprocess.Popen) -> None:
    """Stop the whole stage process group (dvc and the python it started)."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _forward(logger: Any, line: str) -> None:
    """A stage's output line into the task's log, at the level the stage logged it (its bare format)."""
    level, _, rest = line.partition(" ")
    if level in ("WARNING", "ERROR", "CRITICAL"):
        logger.log(getattr(__import__("logging"), level), "%s", rest)
    else:
        logger.info("%s", rest if level in ("INFO", "DEBUG") else line)


# what `dvc repro` prints after every stage that ran (CmdRepro.run writes it unconditionally; only -q, which also
# hides DVC's errors, turns it off): the flow drops it (DVC's own git-add hint is quieted in flows.dvc_repo)
DVC_HINTS = frozenset({"Use `dvc push` to send your updates to remote storage."})


@task(name="dvc-stage", cache_policy=NONE, persist_result=False, retries=0)
def run_stage(stage: str, project_dir: str, timeout_s: float | None = None, force: bool = False,
              env: dict[str, str] | None = None) -> Completed:
    """``dvc repro --single-item <stage>`` when ``dvc status`` says it changed; the task's state names what DVC
    did: Completed (ran), Restored (from DVC's run cache) or Skipped (up to date)."""
    logger = get_run_logger()
    project = Path(project_dir)
    attempt = task_run_runtime.get_run_count() or 1
    started = time.perf_counter()
    if not force and not stage_changed(project, stage):
        row = {"stage": stage, "status": "skipped", "duration_s": round(time.perf_counter() - started, 1),
               "attempts": attempt}
        return Completed(name=STATE_NAMES["skipped"], message=f"{stage}: up to date (dvc status)", data=row)
    status = "restored" if not force and restorable(project, stage) else "ran"
    cmd = dvc_command("--wait-for-lock", "repro", "--single-item", stage, *(["--force"] if force else []))
    logger.info("%s stage %s (attempt %d): dvc %s", "restoring" if status == "restored" else "running", stage,
                attempt, " ".join(cmd[3:]))
    proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, start_new_session=True)
    tail: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:  # universal newlines: a progress bar's '\r' updates arrive as lines too
            line = raw.rstrip()
            if line and line not in DVC_HINTS:
                tail.append(line)
                del tail[:-15]
                _forward(logger, line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill(proc)
        reader.join(5)
        raise StageFailed(f"stage {stage!r} timed out after {timeout_s:g} s (attempt {attempt})") from None
    reader.join(30)
    if rc != 0:
        raise StageFailed(f"stage {stage!r} failed with exit code {rc} (attempt {attempt}):\n" + "\n".join(tail))
    row = {"stage": stage, "status": status, "duration_s": round(time.perf_counter() - started, 1),
           "attempts": attempt}
    return Completed(name=STATE_NAMES[status], message=f"{stage}: {status} in {row['duration_s']} s", data=row)


# -- the flow ------------------------------------------------------------------------------------------------
def _workspace_paths(dag: Sequence[StageInfo]) -> list[str]:
    """The git-tracked files a run rewrites: params.yaml, dvc.lock, uncached outs, DVC's .gitignore entries."""
    paths = ["params.yaml", "dvc.lock"]
    for stage in dag:
        paths += stage.uncached_outs + stage.gitignores
    return list(dict.fromkeys(paths))


@dataclass
class Plan:
    """A run as validated before anything runs: the variant, DVC's DAG and the stages to run, in DAG order."""

    project: Path
    variant: Variant
    dag: list[StageInfo]
    order: list[str]

    @property
    def params(self) -> PipelineParams:
        return self.variant.params

    @property
    def exp(self) -> str | None:
        return self.variant.experiment


@dataclass
class Tracking:
    """Where the run is recorded: the MLflow store and parent run (None: off or unavailable), the Prefect run."""

    uri: str | None
    parent: str | None
    flow_run_id: str


@dataclass(frozen=True)
class StageOptions:
    """How each stage's task runs: the flow's retry, timeout and force parameters, handed on as one."""

    retries: int
    retry_delay_s: float
    timeout_s: float
    force: bool


def plan_run(project: Path, overrides: list[str] | None, preset: str | None, name: str | None,
             stages: list[str] | None) -> Plan:
    """Validate everything before anything runs (python -m flows did it already, before Prefect started): a bad
    key or stage name must fail before a stage rewrites the workspace."""
    variant = resolve_variant(project, overrides or [], preset, name)
    dag = read_dag(project)
    import yaml

    missing = missing_params(dag, yaml.safe_load(variant.text) or {})
    if missing:
        raise ParamsError(f"keys that dvc.yaml lists as stage params must be written out in params.yaml "
                          f"(DVC refuses missing ones): {missing}")
    order = [s.name for s in dag]
    if stages:
        unknown = sorted(set(stages) - set(order))
        if unknown:
            raise ParamsError(f"--stage: unknown {unknown}; allowed: {order}")
        order = [s for s in order if s in stages]
    return Plan(project=project, variant=variant, dag=dag, order=order)


def _label_flow_run(variant: Variant, logger: RunLogger) -> str:
    """Name and tag the Prefect run after what runs (the run list then says 'IL K=2 finite_difference seed 0
    [darts]', not a random name); returns its id. A label that cannot be set must not stop the pipeline."""
    flow_run_id = str(flow_run_runtime.get_id() or "")
    if flow_run_id:
        try:
            label_flow_run(flow_run_id, *flow_run_identity(variant))
        except Exception as exc:  # noqa: BLE001 - a label must not stop the pipeline
            logger.warning("flow run not renamed or tagged: %s: %s", type(exc).__name__, exc)
    return flow_run_id


def _open_parent_run(plan: Plan, uri: str, flow_run_id: str, logger: RunLogger) -> str | None:
    """The MLflow parent run the stages' runs nest under, named and tagged for comparing variants; best effort:
    without it every output is still written, so a tracking error only warns."""
    params, exp, method = plan.params, plan.exp, search_method(plan.params)
    try:
        return start_parent_run(
            uri, params.tracking.experiment,
            run_name=f"pipeline {method} K={len(params.search.tasks)} {params.search.hypergrad} "
                     f"seed {params.seed}" + (f" [{exp}]" if exp else ""),
            tags={"stage": "pipeline", "method": method, "K": len(params.search.tasks),
                  "hypergrad": params.search.hypergrad, "seed": params.seed, "dvc_exp": exp or "workspace",
                  "strategy": params.search.strategy, "prefect_flow_run_id": flow_run_id,
                  "dataset": ",".join(sorted({t.dataset for t in params.search.tasks})),
                  "overrides": " ".join(plan.variant.overrides), "preset": plan.variant.preset or ""},
            params=params.model_dump(mode="json"), project_dir=plan.project)
    except TrackingUnavailable as exc:  # the stages probe the same store and skip tracking just as fast
        logger.warning("%s: no MLflow runs for this pipeline; every output is still written", exc)
    except Exception as exc:  # noqa: BLE001 - tracking must not stop the pipeline
        logger.warning("MLflow parent run could not be created (%s: %s); the stages try their own runs",
                       type(exc).__name__, exc)
    return None


def start_tracking(plan: Plan, track: bool, logger: RunLogger) -> Tracking:
    """Label the Prefect run and open the MLflow parent run (when tracking is on) before any stage starts, so
    the stages' own runs can nest under it (their environment carries its id)."""
    params = plan.params
    uri = tracking_uri(plan.project, params.tracking.uri) if params.tracking.enabled and track else None
    flow_run_id = _label_flow_run(plan.variant, logger)
    parent = _open_parent_run(plan, uri, flow_run_id, logger) if uri else None
    return Tracking(uri=uri, parent=parent, flow_run_id=flow_run_id)


def enter_variant(plan: Plan, logger: RunLogger) -> Workspace:
    """Keep the bytes of the git-tracked files the run rewrites (every run's are put back if it fails, a
    variant's always), then write a variant's params.yaml the way `dvc exp run -S` puts it there."""
    workspace = Workspace(plan.project, _workspace_paths(plan.dag))
    if plan.exp:
        (plan.project / "params.yaml").write_text(plan.variant.text)
        logger.info("experiment %s: %s", plan.exp,
                    " ".join(filter(None, [plan.variant.preset, *plan.variant.overrides])) or "params.yaml as it is")
    return workspace


def run_stages(plan: Plan, opts: StageOptions, env: dict[str, str], rows: list[dict[str, Any]],
               logger: RunLogger) -> None:
    """One retried Prefect task per stage in DAG order, then a variant saved as a DVC experiment. ``rows`` is
    the caller's, filled as stages end: a failure still reports what ran, what failed and what never ran."""
    for stage in plan.order:
        runner = run_stage.with_options(name=f"dvc-{stage}", retries=opts.retries,
                                        retry_delay_seconds=opts.retry_delay_s, task_run_name=f"dvc-{stage}")
        try:
            state = runner(stage, str(plan.project), timeout_s=opts.timeout_s, force=opts.force, env=env,
                           return_state=True)
            row = dict(state.result())
        except Exception as exc:
            rows.append({"stage": stage, "status": "FAILED", "attempts": opts.retries + 1})
            rows.extend({"stage": s, "status": "not run"} for s in plan.order[len(rows):])
            raise StageFailed(f"pipeline failed at stage {stage!r} after {opts.retries + 1} attempt(s): "
                              f"{exc}") from exc
        row["metric"] = ", ".join(f"{k}={v:.4g}" for k, v in stage_metrics(plan.project, plan.dag, stage)[:2])
        rows.append(row)
    if plan.exp:
        exp_save(plan.project, plan.exp, include=_workspace_paths(plan.dag)[2:])
        logger.info("saved as DVC experiment %r (dvc exp show; dvc exp apply %s)", plan.exp, plan.exp)


def put_back(plan: Plan, workspace: Workspace, failure: BaseException | None, logger: RunLogger) -> None:
    """params.yaml is never left changed: a variant's workspace comes back with its outs (it lives on as a DVC
    experiment); a failed plain run's git-tracked files come back, the finished stages' outputs stay."""
    if plan.exp:
        workspace.restore()
    elif failure is not None:
        workspace.restore(checkout=False)
        logger.warning("pipeline failed: params.yaml, dvc.lock and the metrics are back as they were before "
                       "this run; the outputs of the stages that finished stay in the workspace and in DVC's "
                       "run cache (the next run restores them instead of recomputing)")


def publish(plan: Plan, trk: Tracking, rows: list[dict[str, Any]], failure: BaseException | None,
            logger: RunLogger) -> str:
    """The stage table where people look, failed runs too: a Prefect artifact and, on the MLflow parent run,
    IL against DARTS and the closing status. Best effort: none of them may hide the stages' own outcome."""
    params, exp, parent, uri = plan.params, plan.exp, trk.parent, trk.uri
    ran = [r["stage"] for r in rows if r["status"] == "ran"]
    verdict = "failed" if failure else ("ran " + ", ".join(ran) if ran else "nothing to run: every stage current")
    header = (f"# ilnas pipeline: {verdict}\n\n{search_method(params)} K={len(params.search.tasks)} "
              f"{params.search.hypergrad}, project `{plan.project}`" + (f", DVC experiment `{exp}`" if exp else "")
              + (f", MLflow parent run `{parent}`" if parent else ""))
    md = markdown_table(rows, header)
    try:
        create_markdown_artifact(key=ARTIFACT_KEY, markdown=md, description="ilnas pipeline: what DVC did")
    except Exception as exc:  # noqa: BLE001
        logger.warning("Prefect artifact not created: %s", exc)
    if parent and uri and failure is None:
        try:  # IL against DARTS on the parent run: figures/comparison.png, comparison.md / .json
            log_search_comparison(uri, parent, params.tracking.experiment)
        except Exception as exc:  # noqa: BLE001 - tracking is best effort
            logger.warning("MLflow comparison not logged on the parent run: %s: %s", type(exc).__name__, exc)
    if parent and uri:
        try:
            end_parent_run(uri, parent, "FAILED" if failure else "FINISHED",
                           tags={"stages_ran": ",".join(ran) or "none",
                                 "stages_skipped": ",".join(r["stage"] for r in rows
                                                            if r["status"] in ("skipped", "restored"))},
                           metrics=headline(rows), markdown=md)
        except Exception as exc:  # noqa: BLE001
            logger.warning("MLflow parent run not closed cleanly: %s", exc)
    return md


@flow(name="ilnas-pipeline", persist_result=False, log_prints=True)
def pipeline(project_dir: str = ".", overrides: list[str] | None = None, preset: str | None = None,
             name: str | None = None, stages: list[str] | None = None, force: bool = False, retries: int = 1,
             retry_delay_s: float = 5.0, timeout_s: float = 3600.0, track: bool = True) -> dict[str, Any]:
    """prepare -> search -> derive -> retrain -> transfer (DVC's DAG), each a retried DVC stage; a variant
    (``overrides``, ``preset``, ``name``) is saved as the DVC experiment ``name`` and the workspace restored.
    A run that fails leaves every git-tracked file it touches as it was before the run."""
    logger = get_run_logger()
    telemetry_off()
    quiet_failure_tracebacks()
    plan = plan_run(Path(project_dir).resolve(), overrides, preset, name, stages)
    trk = start_tracking(plan, track, logger)
    workspace = enter_variant(plan, logger)
    env = stage_env(trk.parent, trk.uri, plan.exp)
    rows: list[dict[str, Any]] = []
    failure: BaseException | None = None
    try:
        run_stages(plan, StageOptions(retries, retry_delay_s, timeout_s, force), env, rows, logger)
    except BaseException as exc:
        failure = exc
        raise
    finally:
        put_back(plan, workspace, failure, logger)
        md = publish(plan, trk, rows, failure, logger)
    logger.info("\n%s", md)
    missed = not_logged_summary()
    if missed:
        logger.warning("%s", missed)
    return {"stages": rows, "parent_run_id": trk.parent, "tracking_uri": trk.uri, "project": str(plan.project),
            "flow_run_id": trk.flow_run_id, "experiment": plan.exp, "flow_run_url": flow_run_runtime.ui_url,
            "mlflow_experiment": plan.params.tracking.experiment}


if __name__ == "__main__":  # the entry point is flows/__main__.py (importing it here would close a loop)
    raise SystemExit("run the pipeline with: python -m flows (see python -m flows --help)")
