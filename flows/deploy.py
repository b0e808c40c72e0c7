"""A scheduled deployment of the pipeline flow (cron), served by this process.

Schedules need a long-running Prefect server (the ephemeral one cannot schedule), so without PREFECT_API_URL
(environment or Prefect profile) this command refuses with exit code 2 before anything starts:

    PREFECT_HOME=$PWD/.prefect .venv/bin/prefect server start --host 127.0.0.1 --port 4200   # terminal 1
    export PREFECT_API_URL=http://127.0.0.1:4200/api                                          # terminal 2
    .venv/bin/python -m flows.deploy --cron "0 3 * * *"        # registers + serves; runs nightly at 03:00
    .venv/bin/python -m flows.deploy --register-only            # register the schedule, serve later

Each scheduled run is a plain flow run: DVC skips the stages whose inputs did not change, so a nightly
run over an unchanged repo costs seconds and its Prefect artifact says "every stage skipped".
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ilnas.tracking import telemetry_off

telemetry_off()  # before prefect, mlflow or dvc is imported: they read these settings once

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_NAME = "nightly"
DEFAULT_CRON = "0 3 * * *"
# a registered deployment is "Not Ready" in the UI until a process serves it: say so, with the command
NEEDS_SERVE = ("Scheduled runs only start while something serves this deployment: keep the Prefect server "
               "running and run `python -m flows.deploy --name {name}` (it registers again and serves; the UI "
               "shows the deployment 'Not Ready' until then).")


def build_deployment(name: str = DEFAULT_NAME, cron: str = DEFAULT_CRON, timezone: str | None = None,
                     parameters: dict[str, Any] | None = None) -> Any:
    """The RunnerDeployment: the pipeline flow over this checkout on a cron schedule."""
    from prefect.client.schemas.schedules import CronSchedule

    from flows.pipeline import pipeline

    params = {"project_dir": str(PROJECT), **(parameters or {})}
    schedule = CronSchedule(cron=cron, timezone=timezone) if timezone else CronSchedule(cron=cron)
    return pipeline.to_deployment(name=name, schedule=schedule, parameters=params, tags=["ilnas"],
                                  description="ilnas pipeline: DVC stages in dvc.yaml order, tracked in MLflow")


NO_SERVER = ("no persistent Prefect server is configured (PREFECT_API_URL is not set): a deployment registered "
             "now would go into a temporary server that stops with this command, and its schedule would never "
             "run. Start one and point at it, then run this again:\n"
             "  PREFECT_HOME=$PWD/.prefect .venv/bin/prefect server start --host 127.0.0.1 --port 4200\n"
             "  export PREFECT_API_URL=http://127.0.0.1:4200/api")


def configured_api_url() -> str | None:
    """PREFECT_API_URL from the environment or the active Prefect profile (reading settings starts nothing)."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.url or None


def register(name: str = DEFAULT_NAME, cron: str = DEFAULT_CRON, timezone: str | None = None,
             parameters: dict[str, Any] | None = None) -> str:
    """Create or update the deployment on the server at PREFECT_API_URL; returns its id."""
    return str(build_deployment(name, cron, timezone, parameters).apply())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.splitlines()[0])
    parser.add_argument("--name", default=DEFAULT_NAME)
    parser.add_argument("--cron", default=DEFAULT_CRON, help="cron expression (default: 03:00 daily)")
    parser.add_argument("--timezone", default=None, help="IANA timezone of the cron (default: UTC)")
    parser.add_argument("--register-only", action="store_true", help="register the schedule and exit (no serving)")
    args = parser.parse_args(argv)
    if configured_api_url() is None:  # refused before any server, flow run or deployment exists
        print(f"python -m flows.deploy: error: {NO_SERVER}", file=sys.stderr)
        return 2
    if args.register_only:
        deployment_id = register(args.name, args.cron, args.timezone)
        print(f"deployment ilnas-pipeline/{args.name} ({deployment_id}) registered with cron {args.cron!r}.\n"
              f"{NEEDS_SERVE.format(name=args.name)}")
        return 0
    from prefect import serve

    print(f"serving ilnas-pipeline/{args.name} (cron {args.cron!r}): keep this process and the Prefect server "
          "running; scheduled runs start here (Ctrl-C stops serving, the schedule stays registered)")
    serve(build_deployment(args.name, args.cron, args.timezone))
    return 0


if __name__ == "__main__":
    sys.exit(main())
