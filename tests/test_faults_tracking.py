"""Fault tests, tracking: a store that is down costs seconds, and two pipelines can open one new sqlite store.

Real components only: a real closed TCP port, a sqlite path that is a directory, real sqlite MLflow stores
opened by real concurrent processes.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ilnas import tracking

REPO = Path(__file__).resolve().parents[1]


def closed_port_uri() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more: connections are refused


@pytest.fixture(autouse=True)
def fresh_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking, "_probes", {})
    monkeypatch.setattr(tracking, "_not_logged", [])


def test_closed_port_skips_tracking_in_seconds_and_warns_once(monkeypatch, caplog, tmp_path) -> None:
    uri = closed_port_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    caplog.set_level(logging.WARNING, logger="ilnas.tracking")
    started = time.perf_counter()
    for stage in ("prepare", "search"):
        with tracking.StageTracker(stage, project_dir=tmp_path) as trk:
            trk.log_params({"a": 1})
            trk.log_metrics({"loss": 0.5}, step=0)
            trk.log_artifact(tmp_path)
        assert trk.run_id is None and trk.skipped and "refused" in trk.skipped.lower()
    with pytest.raises(tracking.TrackingUnavailable, match=uri):
        tracking.start_parent_run(uri, "ilnas", "pipeline")
    elapsed = time.perf_counter() - started
    assert elapsed < 10, f"an unreachable store cost {elapsed:.1f} s"
    unreachable = [r for r in caplog.records if "store unreachable" in r.getMessage()]
    assert len(unreachable) == 1  # probed once per process
    summary = tracking.not_logged_summary()
    assert "prepare run" in summary and "search run" in summary and "pipeline parent run" in summary


def test_sqlite_path_that_is_a_directory_is_skipped_fast(monkeypatch, tmp_path) -> None:
    (tmp_path / "mlflow.db").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    started = time.perf_counter()
    with tracking.StageTracker("derive", project_dir=tmp_path) as trk:
        trk.log_metrics({"x": 1.0})
    assert time.perf_counter() - started < 5
    assert trk.skipped and "is a directory" in trk.skipped


def test_stage_outputs_written_with_tracking_down(tmp_path) -> None:
    """A real stage process with the server down: exit 0, outputs written, the log says what was not logged."""
    params = tmp_path / "params.yaml"
    params.write_text("seed: 0\ndevice: cpu\nderive: {source: DARTS_V2}\n")
    env = {"MLFLOW_TRACKING_URI": closed_port_uri(), "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
           "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "stages.derive", "--params", str(params)], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=300)
    elapsed = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "models" / "genotype.json").is_file() and (tmp_path / "metrics" / "derive.json").is_file()
    log = proc.stderr + proc.stdout
    assert log.count("store unreachable:") == 1 and "run was not logged" in log, log[-3000:]
    assert elapsed < 60, elapsed


RACE = textwrap.dedent("""
    import sys
    from ilnas import tracking
    uri, tag = sys.argv[1], sys.argv[2]
    parent = tracking.start_parent_run(uri, "race", f"pipeline {tag}")
    import os
    os.environ[tracking.ENV_PARENT_RUN_ID] = parent
    for stage in ("prepare", "search", "derive"):
        with tracking.StageTracker(stage, uri=uri, experiment="race") as trk:
            trk.log_metrics({"x": 1.0})
        assert trk.run_id is not None, trk.failures
    tracking.end_parent_run(uri, parent, "FINISHED")
    print("parent", parent)
""")


def test_concurrent_first_use_of_one_sqlite_store(tmp_path) -> None:
    """Three processes open one new sqlite store at the same moment: three parents, each with its children."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = tmp_path / "race.py"
    script.write_text(RACE)
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "MLFLOW_DISABLE_TELEMETRY": "true"}
    procs = [subprocess.Popen([sys.executable, str(script), uri, str(i)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("race")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("mlflow.parentRunId") is None]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 3 and len(children) == 9
    for parent in parents:
        mine = [c for c in children if c.data.tags["mlflow.parentRunId"] == parent.info.run_id]
        assert sorted(c.data.tags["stage"] for c in mine) == ["derive", "prepare", "search"]
