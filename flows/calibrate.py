"""Calibrate the study's proxy: candidates and a long target over random cells, on validation only.

    python -m flows.calibrate configs/calibration.yaml        # what `make calibrate` does

Every evaluation is a Prefect task on Dask (:mod:`flows.engine`), cached by protocol, cell and seed in
``runs/proxy/`` (shared with the studies' reference distributions), so a rerun trains nothing twice and
an interrupted calibration finishes only what is missing. Writes ``reports/calibration/<name>/``
(``calibration.json``, ``calibration.md``) and prints the table.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ilnas.errors import guarded, strip_debug_flag

PROXY_CACHE = Path("runs/proxy")
REPORTS = Path("reports/calibration")


def load_calibration(path: str | os.PathLike) -> Any:
    from pydantic import ValidationError

    from ilnas.params import format_validation_error
    from ilnas.study.calibration import CalibrationSpec
    from ilnas.study.spec import StudySpecError
    from ilnas.utils.io import read_yaml_bounded

    data = read_yaml_bounded(path, "calibration spec", StudySpecError)
    try:
        spec = CalibrationSpec.model_validate(data)
        for name in [*spec.candidates, "target"]:
            spec.protocol(name)
    except ValidationError as exc:
        raise StudySpecError(f"{path}: " + format_validation_error(exc, CalibrationSpec)) from None
    except ValueError as exc:
        raise StudySpecError(f"{path}: {exc}") from None
    return spec


def run(spec_path: str, project_dir: str = ".", workers: int | None = None, address: str | None = None
        ) -> dict[str, Any]:
    spec = load_calibration(spec_path)  # validated before Prefect is imported
    from prefect import flow

    @flow(name="ilnas-calibrate", persist_result=False, flow_run_name=f"calibrate {spec.name}")
    def calibrate() -> dict[str, Any]:
        from flows.engine import Progress, dask_runner, gather, proxy_task, share_api_url
        from ilnas.study.calibration import calibration_markdown, summarize_calibration
        from ilnas.study.sampling import reference_genotype
        from ilnas.utils.io import atomic_write_json, atomic_write_text

        project = Path(project_dir).resolve()
        cache = str(project / PROXY_CACHE)
        jobs = [(name, i, seed) for name in [*spec.candidates, "target"] for i in range(spec.cells)
                for seed in (spec.target_seeds if name == "target" else spec.seeds)]
        records: dict[str, dict[int, list[dict[str, Any]]]] = {n: {i: [] for i in range(spec.cells)}
                                                                for n in [*spec.candidates, "target"]}
        failures: list[str] = []
        share_api_url()

        @flow(name="ilnas-calibrate-evaluations", persist_result=False)
        def evaluations() -> None:
            futures = {proxy_task.with_options(task_run_name=f"{n}-cell{i}-s{s}").submit(
                reference_genotype(i, spec.nodes).to_dict(), spec.protocol(n), s, cache): (n, i, s)
                for n, i, s in jobs}

            def keep(item: tuple[str, int, int], result: dict[str, Any]) -> None:
                if result["status"] == "ok":
                    records[item[0]][item[1]].append(result)
                else:
                    failures.append(f"{item}: {result['error']}")

            gather(futures, Progress(f"calibration {spec.name}", len(jobs)), keep)

        evaluations.with_options(task_runner=dask_runner(address, workers))()
        if failures:
            raise RuntimeError(f"{len(failures)} evaluation(s) failed: " + "; ".join(failures[:3]))
        summary = summarize_calibration(spec, records)
        out = project / REPORTS / spec.name
        atomic_write_json(out / "calibration.json", {**summary, "records": records})
        atomic_write_text(out / "calibration.md", calibration_markdown(summary))
        return {**summary, "report": str(out / "calibration.md")}

    return calibrate()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.calibrate",
                                     description="Calibrate a study's proxy evaluation on validation data.")
    parser.add_argument("spec", nargs="?", default="configs/calibration.yaml")
    parser.add_argument("--project-dir", default=".")
    parser.add_argument("--workers", type=int, help="local Dask workers (default: one per core)")
    parser.add_argument("--address", help="attach to a running Dask scheduler")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a known error")
    args = parser.parse_args(strip_debug_flag(list(sys.argv[1:] if argv is None else argv)))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from ilnas.tracking import telemetry_off

    telemetry_off()
    result = guarded(lambda: run(args.spec, args.project_dir, args.workers, args.address), "python -m flows.calibrate")
    print(Path(result["report"]).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
