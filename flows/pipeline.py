"""The Prefect flow: run the DVC stages one Prefect task each, in dvc.yaml's topological order.

Who owns what: DVC owns the DAG and caching (``dvc repro`` reruns only what changed), Prefect owns
when and how (retries, timeouts, schedules, run history), MLflow records what each stage did. So the
flow never caches results itself (``cache_policy=NONE``, no persisted results) and never hard-codes
the stage list: it parses ``dvc.yaml``.

Param overrides (``-S key=value``, like ``dvc exp run -S``) are validated together with params.yaml
before any stage runs, then written into params.yaml (comments kept) so that params.yaml + dvc.lock
record exactly what ran: the run is reproducible with a plain ``dvc repro`` afterwards.

    python -m flows.pipeline                         # run once over params.yaml (what `make run` does)
    python -m flows.pipeline -S search.hypergrad=first_order -S retrain.epochs=10
    python -m flows.pipeline --preset configs/cifar.yaml
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.runtime import flow_run as flow_run_runtime
from prefect.runtime import task_run as task_run_runtime

from ilnas.params import ParamsError, apply_overrides, read_params_file, validate_params
from ilnas.tracking import (
    ENV_PARENT_RUN_ID,
    TELEMETRY_OFF,
    end_parent_run,
    git_commit,
    start_parent_run,
    telemetry_off,
    tracking_uri,
)
from ilnas.utils.overrides import split_key

log = logging.getLogger("ilnas.flows")

ARTIFACT_KEY = "ilnas-pipeline"
# the headline number per stage, in order of preference, read from the stage's metrics file
KEY_METRICS = ("top1", "val_loss_sum", "normal_parametric_edges", "tasks")


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero or timed out; the message names the stage."""


# -- dvc.yaml ------------------------------------------------------------------------------------------------
def _paths(entries: Any) -> list[str]:
    """dvc.yaml deps/outs/metrics/plots entries (strings or one-key mappings) -> normalized paths."""
    out = []
    for entry in entries or []:
        path = next(iter(entry)) if isinstance(entry, dict) else entry
        out.append(os.path.normpath(str(path)))
    return out


def _overlaps(dep: str, out: str) -> bool:
    return dep == out or dep.startswith(out + os.sep) or out.startswith(dep + os.sep)


def read_stages(dvc_yaml: str | Path) -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(Path(dvc_yaml).read_text()) or {}
    stages = data.get("stages") or {}
    for name, spec in stages.items():
        if "foreach" in spec or "matrix" in spec:
            raise ValueError(f"{dvc_yaml}: stage {name!r} uses foreach/matrix, which the flow does not expand")
    return stages


def stage_order(dvc_yaml: str | Path) -> list[str]:
    """Topological order of dvc.yaml's stages from their deps/outs (ties broken by file order)."""
    stages = read_stages(dvc_yaml)
    produced = {name: _paths(s.get("outs")) + _paths(s.get("metrics")) + _paths(s.get("plots"))
                for name, s in stages.items()}
    upstream: dict[str, set[str]] = {name: set() for name in stages}
    for name, spec in stages.items():
        for dep in _paths(spec.get("deps")):
            for other, outs in produced.items():
                if other != name and any(_overlaps(dep, o) for o in outs):
                    upstream[name].add(other)
    order: list[str] = []
    pending = list(stages)
    while pending:
        ready = next((s for s in pending if upstream[s] <= set(order)), None)
        if ready is None:
            raise ValueError(f"{dvc_yaml}: dependency cycle among {pending}")
        order.append(ready)
        pending.remove(ready)
    return order


def missing_params(dvc_yaml: str | Path, data: dict[str, Any], params_defaults: dict[str, Any]) -> list[str]:
    """dvc.yaml params (``params.yaml`` ones) absent from ``data``: DVC refuses to run such a stage."""
    problems = []
    for name, spec in read_stages(dvc_yaml).items():
        for entry in spec.get("params") or []:
            if isinstance(entry, dict):  # {other_file.yaml: [keys]}: not ours to check
                continue
            node: Any = data
            default: Any = params_defaults
            for part in str(entry).split("."):
                node = node.get(part) if isinstance(node, dict) else None
                default = default.get(part) if isinstance(default, dict) else None
            if node is None and not _present(data, str(entry)):
                problems.append(f"{entry} (stage {name}; schema default: {json.dumps(default)})")
    return problems


def _present(data: dict[str, Any], key: str) -> bool:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def stage_metrics_files(dvc_yaml: str | Path) -> dict[str, list[str]]:
    return {name: _paths(spec.get("metrics")) for name, spec in read_stages(dvc_yaml).items()}


def key_metrics(project: Path, files: Sequence[str]) -> list[tuple[str, float]]:
    """The KEY_METRICS present in a stage's metrics files, file by file, in KEY_METRICS order."""
    found: list[tuple[str, float]] = []
    for rel in files:
        try:
            data = json.loads((project / rel).read_text())
        except (OSError, ValueError):
            continue
        for key in KEY_METRICS:
            value = data.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                found.append((key, float(value)))
    return found


def key_metric(project: Path, files: Sequence[str]) -> str:
    """``name=value`` of the stage's headline metric ('' when there is none yet)."""
    found = key_metrics(project, files)
    return f"{found[0][0]}={found[0][1]:.4g}" if found else ""


# -- params --------------------------------------------------------------------------------------------------
def write_params(path: Path, overrides: Sequence[str], preset: Path | None = None) -> None:
    """Apply a preset and ``key=value`` edits to params.yaml in place, keeping its comments (ruamel)."""
    from ruamel.yaml import YAML

    rt = YAML()
    rt.preserve_quotes = True
    source = preset if preset is not None else path
    with source.open() as fh:
        data = rt.load(fh)
    for item in overrides:
        key, _, raw = item.partition("=")
        parts = split_key(key)
        node = data
        for part in parts[:-1]:
            if isinstance(node, dict) and node.get(part) is None:
                node[part] = {}
            node = node[part]
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    with path.open("w") as fh:
        rt.dump(data, fh)


# -- the task ------------------------------------------------------------------------------------------------
def _dvc() -> str:
    local = Path(sys.executable).parent / "dvc"
    return str(local) if local.exists() else (shutil.which("dvc") or "dvc")


def stage_env(parent_run_id: str | None, uri: str | None) -> dict[str, str]:
    """The stage's environment: the venv's python first on PATH, telemetry off, the MLflow parent run."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    for key, value in TELEMETRY_OFF.items():
        env.setdefault(key, value)
    env.pop(ENV_PARENT_RUN_ID, None)
    if parent_run_id:
        env[ENV_PARENT_RUN_ID] = parent_run_id
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
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


@task(name="dvc-stage", cache_policy=NONE, persist_result=False, retries=0)
def run_stage(stage: str, project_dir: str, timeout_s: float | None = None, force: bool = False,
              parent_run_id: str | None = None, uri: str | None = None) -> dict[str, Any]:
    """``dvc --wait-for-lock repro --single-item <stage>``; reports whether DVC ran or skipped it."""
    logger = get_run_logger()
    attempt = task_run_runtime.get_run_count() or 1
    cmd = [_dvc(), "--wait-for-lock", "repro", "--single-item", stage] + (["--force"] if force else [])
    logger.info("stage %s (attempt %d): %s", stage, attempt, " ".join(cmd))
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=project_dir, env=stage_env(parent_run_id, uri), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            logger.info("[%s] %s", stage, line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill(proc)
        reader.join(5)
        raise StageFailed(f"stage {stage!r} timed out after {timeout_s:g} s (attempt {attempt})") from None
    reader.join(30)
    duration = time.perf_counter() - started
    output = "\n".join(lines)
    if rc != 0:
        tail = "\n".join(lines[-15:])
        raise StageFailed(f"stage {stage!r} failed with exit code {rc} (attempt {attempt}):\n{tail}")
    if f"Running stage '{stage}'" in output:
        status = "ran"
    elif "is cached - skipping run" in output:
        status = "restored"  # DVC's run cache had outputs for exactly these deps and params
    elif "didn't change, skipping" in output:
        status = "skipped"
    else:
        status = "up to date"
    logger.info("stage %s %s in %.1f s", stage, status, duration)
    return {"stage": stage, "status": status, "duration_s": round(duration, 1), "attempts": attempt}


# -- the flow ------------------------------------------------------------------------------------------------
def markdown_table(rows: Sequence[dict[str, Any]], header: str) -> str:
    lines = [header, "", "| stage | status | attempts | duration (s) | key metric |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['status']} | {r.get('attempts', '')} | {r.get('duration_s', '')} "
                     f"| {r.get('metric', '')} |")
    return "\n".join(lines) + "\n"


@flow(name="ilnas-pipeline", persist_result=False, log_prints=True)
def pipeline(project_dir: str = ".", overrides: list[str] | None = None, preset: str | None = None,
             stages: list[str] | None = None, force: bool = False, retries: int = 1, retry_delay_s: float = 5.0,
             timeout_s: float = 3600.0, track: bool = True) -> dict[str, Any]:
    """prepare -> search -> derive -> retrain -> transfer (order from dvc.yaml), each a retried DVC stage."""
    logger = get_run_logger()
    telemetry_off()
    project = Path(project_dir).resolve()
    params_path = project / "params.yaml"
    overrides = list(overrides or [])
    # 1. everything is validated before anything runs
    preset_path = Path(preset) if preset else None
    if preset_path is not None and not preset_path.is_absolute():
        preset_path = project / preset_path
    data = apply_overrides(read_params_file(preset_path or params_path), overrides)
    params = validate_params(data, source=str(preset_path or params_path) + (f" with {overrides}" if overrides else ""))
    order = stage_order(project / "dvc.yaml")
    missing = missing_params(project / "dvc.yaml", data, params.model_dump(mode="json"))
    if missing:
        raise ParamsError(f"{preset_path or params_path}: keys that dvc.yaml lists as stage params must be written "
                          f"out explicitly (DVC refuses missing ones): {missing}")
    if stages:
        unknown = sorted(set(stages) - set(order))
        if unknown:
            raise ValueError(f"stages: unknown {unknown}; allowed: {order}")
        order = [s for s in order if s in stages]
    if preset_path is not None or overrides:
        write_params(params_path, overrides, preset_path)
        logger.info("params.yaml updated with %s", [str(preset_path)] if preset_path else overrides)

    # 2. the MLflow parent run (best effort)
    uri = tracking_uri(project, params.tracking.uri) if params.tracking.enabled and track else None
    parent: str | None = None
    flow_run_id = str(flow_run_runtime.get_id() or "")
    if uri:
        try:
            parent = start_parent_run(
                uri, params.tracking.experiment, run_name=f"pipeline {flow_run_runtime.get_name() or ''}".strip(),
                tags={"stage": "pipeline", "git_commit": git_commit(project), "strategy": params.search.strategy,
                      "hypergrad": params.search.hypergrad, "prefect_flow_run_id": flow_run_id,
                      "dataset": ",".join(sorted({t.dataset for t in params.search.tasks})),
                      "overrides": " ".join(overrides)},
                params=params.model_dump(mode="json"))
            logger.info("MLflow parent run %s (%s)", parent, uri)
        except Exception as exc:  # noqa: BLE001 - tracking must not stop the pipeline
            logger.warning("MLflow parent run could not be created (%s: %s); stages log their own runs",
                           type(exc).__name__, exc)

    # 3. the stages, one retried task each
    metrics_files = stage_metrics_files(project / "dvc.yaml")
    rows: list[dict[str, Any]] = []
    failure: BaseException | None = None
    try:
        for stage in order:
            runner = run_stage.with_options(name=f"dvc-{stage}", retries=retries, retry_delay_seconds=retry_delay_s,
                                            task_run_name=f"dvc-{stage}")
            try:
                row = runner(stage, str(project), timeout_s=timeout_s, force=force, parent_run_id=parent, uri=uri)
            except Exception as exc:
                rows.append({"stage": stage, "status": "FAILED", "attempts": retries + 1, "metric": ""})
                rows.extend({"stage": s, "status": "not run"} for s in order[len(rows):])
                raise StageFailed(f"pipeline failed at stage {stage!r} after {retries + 1} attempt(s): {exc}") from exc
            row["metric"] = key_metric(project, metrics_files.get(stage, []))
            rows.append(row)
    except BaseException as exc:
        failure = exc
        raise
    finally:
        ran = [r["stage"] for r in rows if r["status"] == "ran"]
        verdict = "failed" if failure else ("ran " + ", ".join(ran) if ran else "nothing to do: every stage skipped")
        header = (f"# ilnas pipeline: {verdict}\n\nproject `{project}`, git `{git_commit(project)}`"
                  + (f", MLflow parent run `{parent}`" if parent else "")
                  + (f", overrides `{' '.join(overrides)}`" if overrides else ""))
        md = markdown_table(rows, header)
        try:
            create_markdown_artifact(key=ARTIFACT_KEY, markdown=md, description="ilnas pipeline: stages ran/skipped")
        except Exception as exc:  # noqa: BLE001
            logger.warning("Prefect artifact not created: %s", exc)
        if parent and uri:
            try:
                end_parent_run(uri, parent, "FAILED" if failure else "FINISHED",
                               tags={"stages_ran": ",".join(ran) or "none",
                                     "stages_skipped": ",".join(r["stage"] for r in rows if r["status"] == "skipped")},
                               metrics=_headline(project, metrics_files), markdown=md)
            except Exception as exc:  # noqa: BLE001
                logger.warning("MLflow parent run not closed cleanly: %s", exc)
    logger.info("\n%s", md)
    return {"stages": rows, "parent_run_id": parent, "tracking_uri": uri, "project": str(project),
            "flow_run_id": flow_run_id}


def _headline(project: Path, metrics_files: dict[str, list[str]]) -> dict[str, float]:
    return {f"{stage}/{key}": value for stage, files in metrics_files.items()
            for key, value in key_metrics(project, files)}


def where_to_look(result: dict[str, Any]) -> str:
    project = Path(result["project"])
    uri = result.get("tracking_uri") or tracking_uri(project)
    lines = ["", "Where to look:",
             f"  MLflow UI:    {Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri {uri}"
             " --port 5000   (then http://127.0.0.1:5000)",
             f"  genotype:     {project / 'models/genotype.json'} (cells: {project / 'models/cells'})",
             f"  metrics:      {project / 'metrics'}/*.json   (dvc metrics show; dvc plots show)",
             f"  models:       {project / 'models'}"]
    if result.get("parent_run_id"):
        lines.append(f"  parent run:   {result['parent_run_id']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description="Run the ilnas pipeline once.")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="param override written into params.yaml before the run (like dvc exp run -S)")
    parser.add_argument("--preset", help="params file to copy over params.yaml first (e.g. configs/cifar.yaml)")
    parser.add_argument("--stage", dest="stages", action="append", help="run only these stages (repeatable)")
    parser.add_argument("--force", action="store_true", help="rerun stages even when DVC says nothing changed")
    parser.add_argument("--retries", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per stage attempt")
    parser.add_argument("--project-dir", default=".")
    parser.add_argument("--no-track", action="store_true", help="no MLflow parent run")
    args = parser.parse_args(argv)
    telemetry_off()
    try:
        result = pipeline(project_dir=args.project_dir, overrides=args.overrides, preset=args.preset,
                          stages=args.stages, force=args.force, retries=args.retries, timeout_s=args.timeout,
                          track=not args.no_track)
    except (ParamsError, StageFailed, ValueError) as exc:
        print(f"\nilnas pipeline failed: {exc}", file=sys.stderr)
        return 1
    print(where_to_look(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
