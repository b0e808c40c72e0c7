"""Studies end to end on a real local Dask cluster, the session Prefect harness and a sqlite MLflow store.

Micro budgets: a trial is a 2-iteration search of a 4-channel, 3-cell supernet and a 1-epoch retraining.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

MICRO_STUDY = {
    "name": "micro",
    "search_seeds": [0, 1],
    "retrain_seeds": [0],
    "search_images": 128,
    "reference": {"cells": 5},
    "base": {
        "device": "cpu",
        "tracking": {"experiment": "micro-study"},
        "search": {"tasks": [{"name": "a", "dataset": "digits", "classes": [0, 1, 2, 3, 4]},
                             {"name": "b", "dataset": "digits", "classes": [5, 6, 7, 8, 9]}],
                   "hypergrad": "first_order", "epochs": 1, "batch_size": 32, "channels": 4, "cells": 3},
        "retrain": {"recipe": "darts", "epochs": 1, "batch_size": 64, "channels": 4, "cells": 3, "val_fraction": 0.2,
                    "auxiliary": False, "drop_path_rate": 0.0, "cutout": 4, "hflip": 0.0},
    },
    "arms": [{"name": "il", "kind": "search"}, {"name": "random", "kind": "random"},
             {"name": "rs", "kind": "random_search", "candidates": 2}],
}


def write_spec(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**MICRO_STUDY, **changes}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def dask_address(prefect_harness) -> str:
    """One real Dask cluster (2 one-thread worker processes) the studies attach to by address, as on a GPU
    cluster: its workers keep torch imported between tests and report task runs to the harness's API."""
    from distributed import LocalCluster
    from prefect.settings import PREFECT_API_URL

    os.environ["PREFECT_API_URL"] = str(PREFECT_API_URL.value())  # inherited by the worker processes
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
            yield cluster.scheduler_address
    finally:
        os.environ.pop("PREFECT_API_URL", None)


def run_study(tmp_path: Path, spec: Path, address: str | None = None, **kwargs):
    from flows.study import study

    return study(spec_path=str(spec), project_dir=str(tmp_path), address=address, workers=None if address else 2,
                 **kwargs)


@pytest.mark.usefixtures("prefect_harness")
def test_micro_study_end_to_end_and_rerun_runs_nothing(tmp_path: Path, mlflow_uri: str, dask_address: str) -> None:
    from mlflow.tracking import MlflowClient

    spec = write_spec(tmp_path)
    result = run_study(tmp_path, spec, dask_address)
    assert len(result["ran"]) == 6 and not result["failed"]
    summary = json.loads((tmp_path / "reports/micro/summary.json").read_text())
    for arm in ("il", "random", "rs"):
        assert summary["arms"][arm]["cells"] == 2 and summary["arms"][arm]["n"] == 2
        assert 0 <= summary["arms"][arm]["percentile"] <= 100  # placed among the 5 reference cells
    assert summary["arms"]["il"]["search_images"] == 128 and summary["arms"]["random"]["search_images"] == 0
    assert summary["arms"]["il"]["arch_steps"] == 2 and summary["reference"]["cells"] == 5
    comps = {(c["arm"], c["other"]): c for c in summary["comparisons"]}
    assert set(comps) == {("il", "random"), ("rs", "random")}
    assert all(0 <= c["p_holm"] <= 1 or math.isnan(c["p_holm"]) for c in comps.values())
    # random search kept the best-validation cell of the reference cells it drew
    rs = [t for t in summary["trials"] if t["arm"] == "rs"]
    assert all(len(t["selection"]["candidates"]) == 2 for t in rs)
    report = (tmp_path / "reports/micro/report.md").read_text()
    assert "## Answer" in report and "Holm" in report and "data:image/png;base64," in report
    assert "Test split: 359 images" in report
    for fig in ("test_top1.png", "cell_ops.png"):
        assert (tmp_path / "reports/micro/figures" / fig).stat().st_size > 1000
    # the trial directories hold the search's outputs; retrainings live in the shared proxy cache
    trial = Path(next(t["dir"] for t in summary["trials"] if t["arm"] == "il"))
    assert (trial / "search/alphas.pt").exists()
    assert len(list((tmp_path / "runs/proxy").glob("*/*/result.json"))) >= 5 + 2

    client = MlflowClient(mlflow_uri)
    parent = client.get_run(result["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["study"] == "micro"
    assert {"il/test_top1_mean", "random/test_top1_mean", "il_vs_random/p_holm", "il/percentile"} <= set(
        parent.data.metrics)
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted((c.data.tags["arm"], c.data.tags["search_seed"]) for c in children) == [
        ("il", "0"), ("il", "1"), ("random", "0"), ("random", "1"), ("rs", "0"), ("rs", "1")]
    names = [set(c.data.metrics) for c in children]
    assert all(n >= {"test_top1", "params", "macs", "search_time_s", "search_images"} for n in names)
    assert {c.data.tags["strategy"] for c in children} == {"interleaving", "random", "random_search"}

    # Prefect: the report is the flow's markdown artifact; the trials ran as task runs on the Dask workers,
    # reported to this same API (not to a temporary server of each worker)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowFilter,
        FlowFilterName,
        TaskRunFilter,
        TaskRunFilterName,
    )

    with get_client(sync_client=True) as prefect:
        artifacts = prefect.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[result["flow_run_id"]])))
        task_runs = prefect.read_task_runs(task_run_filter=TaskRunFilter(
            name=TaskRunFilterName(any_=["trial-il-s0", "trial-il-s1", "trial-random-s0", "trial-random-s1"])))
        subflows = prefect.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["ilnas-study-trials"])))
    assert [a.key for a in artifacts] == ["ilnas-study-micro"] and "data:image/png;base64," in str(artifacts[0].data)
    assert len({t.name for t in task_runs if t.state_type.value == "COMPLETED"}) == 4
    # the trials reach their subflow as a file: its parameters stay small whatever the number of trials
    # (Prefect refuses flow-run parameters over 512 KB; 90 trials with their params were 544 KB)
    assert subflows and all(set(r.parameters) >= {"pending_file"} and len(json.dumps(r.parameters)) < 2000
                            for r in subflows)

    # a rerun computes nothing, keeps the report byte for byte and adds no MLflow run
    before = (tmp_path / "reports/micro/report.md").read_bytes()
    runs_before = len(client.search_runs([parent.info.experiment_id], max_results=1000))
    again = run_study(tmp_path, spec, dask_address)
    assert again["ran"] == [] and not again["failed"] and not again["report_changed"]
    assert (tmp_path / "reports/micro/report.md").read_bytes() == before
    assert len(client.search_runs([parent.info.experiment_id], max_results=1000)) == runs_before
    assert again["parent_run_id"] == result["parent_run_id"]


@pytest.mark.usefixtures("prefect_harness")
def test_interrupted_study_reruns_only_missing_trials(tmp_path: Path, mlflow_uri: str) -> None:
    from prefect.settings import PREFECT_API_URL

    spec = write_spec(tmp_path, search_seeds=[0, 1])
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}
    trials = tmp_path / "runs/study/trials"
    proc = subprocess.Popen([sys.executable, "-m", "flows.study", str(spec), "--project-dir", str(tmp_path),
                             "--workers", "2"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while not list(trials.glob("*/result.json")):
            assert proc.poll() is None, "the study ended before any trial finished"
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the flow, the scheduler and both workers
        proc.wait(30)
    done = {p.parent.name for p in trials.glob("*/result.json")}
    assert 1 <= len(done) < 6
    result = run_study(tmp_path, spec)
    assert not result["failed"]
    assert set(result["ran"]) == {t["key"] for t in result["summary"]["trials"]} - done
    assert len(result["summary"]["trials"]) == 6


@pytest.mark.usefixtures("prefect_harness")
def test_failed_trial_is_reported_and_the_others_complete(tmp_path: Path, mlflow_uri: str, dask_address: str) -> None:
    from mlflow.tracking import MlflowClient

    arms = [{"name": "diverges", "kind": "search", "params": {"search": {"w_lr": 1.0e30}}},
            {"name": "random", "kind": "random"}]
    result = run_study(tmp_path, write_spec(tmp_path, arms=arms, search_seeds=[0]), dask_address)
    assert len(result["failed"]) == 1 and len(result["ran"]) == 2
    report = (tmp_path / "reports/micro/report.md").read_text()
    assert "- failed: `diverges`" in report and "SearchDivergedError" in report
    summary = result["summary"]["arms"]
    assert summary["diverges"]["failed"] == 1 and summary["random"]["cells"] == 1
    client = MlflowClient(mlflow_uri)
    assert client.get_run(result["parent_run_id"]).info.status == "FAILED"
    failed_dir = tmp_path / "runs/study/trials" / result["failed"][0]
    assert (failed_dir / "failed.json").exists() and not (failed_dir / "result.json").exists()


@pytest.mark.usefixtures("prefect_harness")
def test_bad_spec_fails_before_any_trial(tmp_path: Path) -> None:
    from ilnas.study.spec import StudySpecError

    arms = [{"name": "il", "params": {"search": {"channels": 0}}}, {"name": "random", "kind": "random"}]
    with pytest.raises(StudySpecError, match=r"arms\.il: search\.channels"):
        run_study(tmp_path, write_spec(tmp_path, arms=arms))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "reports").exists()
    home = tmp_path / "prefect-home"
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "flows.study", str(write_spec(tmp_path, search_seeds=[])),
                           "--project-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(home)}, timeout=300)
    assert proc.returncode == 2 and "search_seeds" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") <= 6 and time.monotonic() - started < 60
    # validated before Prefect is imported: no Prefect state, no MLflow store, no report, nothing else
    assert not home.exists() and not (tmp_path / "mlflow.db").exists() and not (tmp_path / "reports").exists()
    assert "prefect" not in proc.stdout.lower()
