"""What every stage shares: params loading (validated before compute), paths, metrics files, the tracker."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ilnas.params import ParamsError, PipelineParams, load_params
from ilnas.tracking import StageTracker, run_identity, telemetry_off
from ilnas.utils.fingerprint import json_digest
from ilnas.utils.io import atomic_write_csv

log = logging.getLogger("ilnas.stages")

# DVC outs and metrics (dvc.yaml names the same paths)
PREPARED = Path("data/prepared")
IMAGEFOLDER = Path("data/imagefolder")
SEARCH_OUT = Path("models/search")
SEARCH_WORK = Path("runs/search")  # checkpoints of unfinished searches: outside DVC's outs, never deleted by it
GENOTYPE = Path("models/genotype.json")
CELLS = Path("models/cells")
RETRAIN_OUT = Path("models/retrain")
TRANSFER_OUT = Path("models/transfer")
METRICS = Path("metrics")


def parse_args(stage: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m stages.{stage}", description=f"DVC stage '{stage}'")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser.parse_args(argv)


# under the flow (ILNAS_LOG_BARE=1) Prefect's logger adds the time and the stage: one prefix per line
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FORMAT_BARE = "%(levelname)s %(name)s: %(message)s"
QUIET_LOGGERS = ("timm.utils.checkpoint_saver",)  # its INFO is a listing of every checkpoint after each epoch


def setup_logging() -> None:
    bare = os.environ.get("ILNAS_LOG_BARE") == "1"
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT_BARE if bare else LOG_FORMAT, datefmt="%H:%M:%S")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def setup(stage: str, argv: Sequence[str] | None = None) -> PipelineParams:
    """Logging, telemetry off, and the validated params; a bad file exits 2 before any compute."""
    setup_logging()
    telemetry_off()
    args = parse_args(stage, argv)
    try:
        return load_params(args.params)
    except ParamsError as exc:
        from ilnas.errors import fail

        fail(f"python -m stages.{stage}", exc)


def torchrun_needed(params: PipelineParams) -> bool:
    """True in the launching process when ``distributed`` asks for more than one process (not yet under torchrun)."""
    dist = params.distributed
    return (dist.nproc_per_node > 1 or dist.nnodes > 1) and "LOCAL_RANK" not in os.environ


def relaunch_under_torchrun(stage: str, argv: Sequence[str] | None, params: PipelineParams) -> int:
    """Run ``stages.<stage>`` under torchrun with the ``distributed`` section; returns the ranks' exit code.

    torchrun runs in this process (:func:`ilnas.utils.launcher.launch_torchrun`): a refusal the ranks printed
    ends with their exit code (2), without torchrun's failure report."""
    import sys

    from ilnas.utils.launcher import launch_torchrun

    dist = params.distributed
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={dist.nproc_per_node}",
           f"--nnodes={dist.nnodes}"]
    if dist.nnodes > 1:
        cmd += ["--rdzv_backend=c10d", f"--rdzv_endpoint={dist.rdzv_endpoint}"]
    else:
        cmd += ["--standalone"]
    cmd += ["-m", f"stages.{stage}", "--params", parse_args(stage, argv).params]
    log.info("relaunching under torchrun: %s", " ".join(cmd))
    return launch_torchrun(cmd[3:])


def is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def search_method(params: PipelineParams) -> str:
    """What the search is, in the words of the papers: DARTS (K = 1, R = 1, lam = 0), IL, or LFM-CW."""
    s = params.search
    if s.strategy == "lfm":
        return "LFM-CW"
    if len(s.tasks) == 1 and s.rounds == 1 and s.lam == 0:
        return "DARTS"
    return "IL" if s.strategy == "interleaving" else s.strategy


def tracker(stage: str, params: PipelineParams, tags: Mapping[str, Any] | None = None) -> StageTracker:
    """The stage's MLflow run: named ``<stage> <method> K=<k> <hypergrad> seed <seed>``, tagged to filter by.

    The store is resolved against ``$DVC_ROOT`` (the repo DVC runs for, also under ``dvc exp run --temp``),
    so a relative or default store never lands in a temporary experiment copy."""
    t = params.tracking
    section = getattr(params, stage, None)
    seed = getattr(section, "seed", params.seed)
    name, identity = run_identity(stage, search_method(params), len(params.search.tasks), params.search.hypergrad,
                                  seed)
    return StageTracker(stage, enabled=t.enabled, experiment=t.experiment, uri=t.uri,
                        project_dir=os.environ.get("DVC_ROOT") or Path.cwd(), tags={**identity, **(tags or {})},
                        run_name=name)


def clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become null (DVC and browsers reject them), paths become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


TIMING_SUFFIXES = ("_time_s", "_per_s", "duration_s")


def is_timing(key: str) -> bool:
    """Wall-clock figures: they differ on every rerun, so they go to MLflow, never into DVC metrics or outs."""
    return key.endswith(TIMING_SUFFIXES)


def without_timings(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not is_timing(str(k))}


def write_metrics(name: str, metrics: Mapping[str, Any]) -> Path:
    """``metrics/<name>.json`` (a DVC metrics file, ``cache: false``), timings left out."""
    METRICS.mkdir(parents=True, exist_ok=True)
    path = METRICS / f"{name}.json"
    path.write_text(json.dumps(clean(without_timings(metrics)), indent=2, sort_keys=True) + "\n")
    return path


def write_rows_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Per-epoch rows as CSV (DVC plots): timings left out, NaN/inf blank (``ilnas.utils.io.atomic_write_csv``)."""
    return atomic_write_csv(path, [clean(without_timings(r)) for r in rows])


def config_hash(data: Mapping[str, Any]) -> str:
    """The key of a search's work directory (``ilnas.utils.fingerprint.json_digest``)."""
    return json_digest(data)


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def run_main(main: Any, stage: str) -> None:
    """``python -m stages.<stage>``: ``main(argv)`` through :func:`ilnas.errors.guarded`, so a known error
    (params, checkpoint, genotype, manifest) prints one block and exits 2; ``--debug`` / ``ILNAS_DEBUG=1``
    shows the traceback."""
    import sys

    from ilnas.errors import guarded, strip_debug_flag

    argv = strip_debug_flag(sys.argv[1:])
    guarded(lambda: main(argv), f"python -m stages.{stage}")
