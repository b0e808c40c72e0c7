"""Run a study: arms x search seeds, judged against a reference distribution of random cells.

    python -m flows.study configs/study.yaml                          # what `make study` does
    python -m flows.study configs/study.yaml -S retrain.epochs=2      # an override for every trial
    python -m flows.study configs/study_cifar.yaml --address tcp://scheduler:8786   # attach to a cluster

The spec and every trial's params are validated before Prefect is imported: a bad spec ends as one message
block with exit 2 in a few seconds, with nothing written (no Prefect state, no MLflow run, no report).
The flow itself is :func:`flows.study_flow.study_flow`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ilnas.errors import guarded, strip_debug_flag


def validate(spec_path: str, overrides: Sequence[str] = (), project_dir: str = ".") -> Any:
    """The spec and all its trials, validated (no Prefect, no torch); raises ``StudySpecError``."""
    from ilnas.study.spec import load_spec
    from ilnas.study.trials import expand_trials

    path = spec_path if Path(spec_path).is_absolute() else str(Path(project_dir).resolve() / spec_path)
    spec = load_spec(path, list(overrides))
    expand_trials(spec, list(overrides))
    return spec


def study(spec_path: str, overrides: list[str] | None = None, project_dir: str = ".", address: str | None = None,
          workers: int | None = None, trials_dir: str | None = None, reports_dir: str | None = None,
          track: bool = True) -> dict[str, Any]:
    """Validate, then run the study flow (for scripts and tests; the CLI is :func:`main`)."""
    validate(spec_path, overrides or [], project_dir)
    from flows.study_flow import study_flow

    return study_flow(spec_path=spec_path, overrides=overrides, project_dir=project_dir, address=address,
                      workers=workers, trials_dir=trials_dir, reports_dir=reports_dir, track=track)


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
    args = parser.parse_args(strip_debug_flag(list(sys.argv[1:] if argv is None else argv)))
    from ilnas.tracking import telemetry_off

    telemetry_off()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the local workers
    prog = "python -m flows.study"
    guarded(lambda: validate(args.spec, args.overrides, args.project_dir), prog)  # before Prefect: exit 2, fast
    result = guarded(lambda: study(spec_path=args.spec, overrides=args.overrides, project_dir=args.project_dir,
                                   address=args.address, workers=args.workers, track=not args.no_track), prog)
    print(f"\n{result['summary']['verdict']}\n")
    print(f"report: {result['report']}  ({len(result['ran'])} trial(s) ran, {len(result['failed'])} failed, "
          f"{result['wall_s']:.0f} s; report {'written' if result['report_changed'] else 'unchanged'})")
    if result.get("parent_run_id"):
        print(f"MLflow parent run {result['parent_run_id']} in {result['tracking_uri']}")
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
