"""``python -m flows``: validate the variant, then run the Prefect flow once (what ``make run`` calls).

Validation comes first and imports no Prefect: a typo in ``-S`` fails in about a second with one message
and exit code 2, before any Prefect server starts and without leaving a flow run behind. Known errors end
through :func:`ilnas.errors.guarded` like every other entry point: one block, exit 2 for bad input and 1 for
a failed stage; ``--debug`` or ``ILNAS_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ilnas.errors import guarded, strip_debug_flag

MLFLOW_PORT = 5000
SEARCH_RUNS = "tags.stage = 'search'"
PREFECT_PORT = 4200


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flows", description="Run the ilnas pipeline once (Prefect flow).")
    p.add_argument("-S", "--set-param", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a param override, as `dvc exp run -S` takes it (dotted keys, YAML values); the run "
                        "becomes a DVC experiment and params.yaml is left as it was")
    p.add_argument("--preset", help="a complete params file to run instead of params.yaml (configs/*.yaml); "
                                    "also an experiment")
    p.add_argument("-n", "--name", help="the DVC experiment's name (default: from the preset and overrides)")
    p.add_argument("--stage", dest="stages", action="append", help="run only these stages (repeatable)")
    p.add_argument("--force", action="store_true", help="rerun stages even when DVC says nothing changed")
    p.add_argument("--retries", type=int, default=1)
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per stage attempt")
    p.add_argument("--project-dir", default=".")
    p.add_argument("--no-track", action="store_true", help="no MLflow parent run")
    p.add_argument("--debug", action="store_true", help="show the traceback of a known error (or ILNAS_DEBUG=1)")
    return p


def where_to_look(result: dict[str, Any]) -> str:
    """Links to what the run produced: the Prefect flow run, the MLflow parent run, DVC's views."""
    from ilnas.tracking import tracking_uri, ui_url

    project = Path(result["project"])
    uri = result.get("tracking_uri") or tracking_uri(project)
    venv = Path(sys.executable).parent
    lines = ["", "Where to look:"]
    flow_run = result.get("flow_run_id")
    if flow_run:
        lines.append(f"  Prefect run:  http://127.0.0.1:{PREFECT_PORT}/runs/flow-run/{flow_run}   (after "
                     f"PREFECT_HOME={project / '.prefect'} {venv / 'prefect'} server start)")
    parent = result.get("parent_run_id")
    mlflow_ui = f"{venv / 'mlflow'} ui --backend-store-uri {uri} --port {MLFLOW_PORT}"
    exp_id = result.get("mlflow_experiment_id") or ""
    if parent and exp_id:  # ?workflowType=machine_learning: MLflow 3.17 opens on runs, not on GenAI traces
        base = f"http://127.0.0.1:{MLFLOW_PORT}"
        lines.append(f"  MLflow UI:    {mlflow_ui}")
        lines.append(f"  this run:     {ui_url(base, exp_id, parent)}")
        lines.append(f"  IL vs DARTS:  {ui_url(base, exp_id, parent, artifact='figures/comparison.png')}   "
                     f"(or: {venv / 'ilnas'} compare)")
        lines.append(f"  search runs:  {ui_url(base, exp_id, search_filter=SEARCH_RUNS)}")
    elif parent:
        lines.append(f"  MLflow run:   {parent}   (after {mlflow_ui})")
    else:
        lines.append(f"  MLflow UI:    {mlflow_ui}")
    if result.get("experiment"):
        name = result["experiment"]
        lines.append(f"  experiment:   {venv / 'dvc'} exp show --only-changed   (bring it into the workspace: "
                     f"dvc exp apply {name})")
    lines += [f"  genotype:     {project / 'models/genotype.json'} (cells: {project / 'models/cells'})",
              f"  metrics:      {venv / 'dvc'} metrics show; {venv / 'dvc'} plots show"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = strip_debug_flag(list(sys.argv[1:] if argv is None else argv))
    return guarded(lambda: _run(parser().parse_args(argv)), "python -m flows")


def _run(args: argparse.Namespace) -> int:
    from ilnas.tracking import telemetry_off

    telemetry_off()
    from flows.variants import resolve_variant

    variant = resolve_variant(args.project_dir, args.overrides, args.preset, args.name)  # ParamsError: exit 2
    from flows.naming import flow_run_identity

    name, run_tags = flow_run_identity(variant)  # the flow run is created with them: the console says it too
    import os

    # Prefect's default 20 s for its temporary server is too short on a busy 2-core machine (make study sets the same)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from prefect import tags

    from flows.pipeline import pipeline

    with tags(*run_tags):
        result = pipeline.with_options(flow_run_name=name.replace("{", "{{").replace("}", "}}"))(
            project_dir=args.project_dir, overrides=args.overrides, preset=args.preset, name=args.name,
            stages=args.stages, force=args.force, retries=args.retries, timeout_s=args.timeout,
            track=not args.no_track)
    if result.get("parent_run_id") and result.get("tracking_uri"):
        try:
            from mlflow.tracking import MlflowClient

            run = MlflowClient(result["tracking_uri"]).get_run(result["parent_run_id"])
            result["mlflow_experiment_id"] = run.info.experiment_id
        except Exception:  # noqa: BLE001 - only for the link
            pass
    print(where_to_look(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
