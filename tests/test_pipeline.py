"""End to end on a micro config: real git + DVC repo, the Prefect test harness, a real MLflow sqlite store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import init_repo

pytestmark = pytest.mark.slow

STAGES = ["prepare", "search", "derive", "retrain", "transfer"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> Path:
    return init_repo(tmp_path_factory.mktemp("pipeline") / "project")


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # micro nets: threads only add contention on 2 shared cores
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the project's own sqlite:///<abs>/mlflow.db


def _statuses(result: dict) -> dict[str, str]:
    return {row["stage"]: row["status"] for row in result["stages"]}


def _artifact_markdown(flow_run_id: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    from flows.pipeline import ARTIFACT_KEY

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[ARTIFACT_KEY]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    assert len(artifacts) == 1
    return str(artifacts[0].data)


def test_end_to_end_then_everything_skipped(project: Path) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    from flows.pipeline import pipeline
    from ilnas.space.genotype import load_genotype

    result = pipeline(project_dir=str(project), retries=0)
    assert _statuses(result) == dict.fromkeys(STAGES, "ran")
    for rel in ("data/prepared", "data/imagefolder", "models/search/alphas.pt", "models/search/checkpoint.pt",
                "models/genotype.json", "models/cells", "models/retrain/metrics.json",
                "models/transfer/metrics.json", "dvc.lock", *(f"metrics/{s}.json" for s in STAGES)):
        assert (project / rel).exists(), rel
    load_genotype(project / "models/genotype.json")
    assert not (project / "runs/search").exists() or not any((project / "runs/search").iterdir())

    uri = result["tracking_uri"]
    assert uri == f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(uri)
    parent = client.get_run(result["parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_stage = {r.data.tags["stage"]: r for r in children}
    assert sorted(by_stage) == sorted(STAGES)
    for stage, run in by_stage.items():
        assert run.info.status == "FINISHED", stage
        assert run.data.metrics and run.data.params, stage
        assert run.data.tags["git_commit"] != "unknown"
    search = by_stage["search"]
    assert search.data.tags["hypergrad"] == "first_order" and search.data.tags["strategy"] == "interleaving"
    assert search.data.tags["dataset"] == "digits"
    history = client.get_metric_history(search.info.run_id, "val_loss_sum")
    assert [m.step for m in history] == [0]
    arts = {s: {a.path for a in client.list_artifacts(r.info.run_id)} for s, r in by_stage.items()}
    assert {"genotype.json", "alphas.pt", "checkpoint", "history.csv"} <= arts["search"]
    assert {"genotype.json", "cells"} <= arts["derive"]
    assert {"checkpoint", "metrics.json", "history.csv"} <= arts["retrain"]
    mlflow.set_tracking_uri(uri)
    models = mlflow.search_logged_models(experiment_ids=[parent.info.experiment_id], output_format="list")
    assert any(m.source_run_id == by_stage["retrain"].info.run_id for m in models)
    assert "| search | ran |" in _artifact_markdown(result["flow_run_id"])

    again = pipeline(project_dir=str(project), retries=0)
    assert _statuses(again) == dict.fromkeys(STAGES, "skipped")
    markdown = _artifact_markdown(again["flow_run_id"])
    assert "every stage skipped" in markdown and "| transfer | skipped |" in markdown
    assert not client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{again['parent_run_id']}'")


def test_retrain_param_reruns_only_retrain_and_transfer(project: Path) -> None:
    from flows.pipeline import pipeline

    result = pipeline(project_dir=str(project), overrides=["retrain.lr=0.04"], retries=0)
    assert _statuses(result) == {"prepare": "skipped", "search": "skipped", "derive": "skipped",
                                 "retrain": "ran", "transfer": "ran"}
    text = (project / "params.yaml").read_text()
    assert "lr: 0.04" in text and "val_fraction: 0.5" in text  # written in place, rest kept


def test_dvc_exp_run_with_set_param(project: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run([str(Path(sys.executable).parent / "dvc"), "exp", "run", "-S",
                          "search.hypergrad=finite_difference"], cwd=project, env=env, capture_output=True,
                         text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Running stage 'search'" in out.stdout and "Running stage 'prepare'" not in out.stdout
    assert "hypergrad: finite_difference" in (project / "params.yaml").read_text()
    show = subprocess.run([str(Path(sys.executable).parent / "dvc"), "exp", "show", "--json"], cwd=project,
                          env=env, capture_output=True, text=True, timeout=120)
    assert show.returncode == 0 and "finite_difference" in show.stdout


def test_interrupted_search_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    import torch
    from mlflow.tracking import MlflowClient

    from ilnas.params import load_params
    from ilnas.search.runner import SearchRun
    from stages.common import SEARCH_WORK, config_hash

    project = init_repo(tmp_path / "project")
    text = (project / "params.yaml").read_text().replace("  epochs: 1\n  iterations_per_epoch", "  epochs: 2\n"
                                                         "  iterations_per_epoch")
    (project / "params.yaml").write_text(text)
    cfg = load_params(project / "params.yaml").search
    assert cfg.epochs == 2
    work = project / SEARCH_WORK / config_hash(cfg.model_dump(mode="json"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # what a search killed after its first epoch leaves behind
        with pytest.raises(KeyboardInterrupt):
            SearchRun(cfg, work).run(progress=False, stop_after_epoch=0)
    finally:
        torch.set_num_threads(threads)
    assert (work / "checkpoint.pt").exists()

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    # the same command `dvc repro` runs for the stage (the stage scripts also work alone)
    out = subprocess.run([sys.executable, "-m", "stages.search"], cwd=project, env=env, capture_output=True,
                         text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "resuming the search from" in out.stdout + out.stderr
    assert "resumed from" in out.stdout + out.stderr and "at epoch 1" in out.stdout + out.stderr
    assert not work.exists()  # finished: copied into models/search and cleaned up
    import json

    assert json.loads((project / "metrics/search.json").read_text())["epochs"] == 2
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.stage = 'search'")
    assert len(runs) == 1 and runs[0].data.tags.get("resumed") == "true"
    assert sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "val_loss_sum")) == [0, 1]


def test_retrain_stage_relaunches_under_torchrun(tmp_path: Path) -> None:
    import json

    from ilnas.space.genotype import DARTS_V2

    project = init_repo(tmp_path / "project")
    params = (project / "params.yaml").read_text().replace("distributed: {nproc_per_node: 1",
                                                           "distributed: {nproc_per_node: 2")
    (project / "params.yaml").write_text(params)
    DARTS_V2.to_json(project / "models" / "genotype.json")
    out = subprocess.run([sys.executable, "-m", "stages.retrain"], cwd=project, capture_output=True, text=True,
                         timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "relaunching under torchrun" in out.stderr
    assert json.loads((project / "metrics/retrain.json").read_text())["world_size"] == 2
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.data.tags["world_size"] for r in runs] == ["2"]  # one run: only rank 0 tracks
