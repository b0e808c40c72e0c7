"""MLflow helpers: nesting under a parent via the env var, per-epoch steps, and failures that never crash."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ilnas.tracking import ENV_PARENT_RUN_ID, StageTracker, flatten, start_parent_run, tracking_uri


def test_tracking_uri_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking_uri(tmp_path, "sqlite:///sub/x.db") == f"sqlite:///{tmp_path.resolve()}/sub/x.db"
    assert tracking_uri(tmp_path, "http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:5000")
    assert tracking_uri(tmp_path, "sqlite:///x.db") == "http://example:5000"


def test_flatten() -> None:
    flat = flatten({"a": {"b": 1, "tasks": [{"name": "x"}]}, "c": [1, 2]})
    assert flat == {"a.b": "1", "a.tasks": '[{"name": "x"}]', "c": "[1, 2]"}


def test_child_run_nests_under_parent(tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    parent = start_parent_run(mlflow_uri, "exp", "pipeline", tags={"stage": "pipeline"}, params={"search": {"a": 1}})
    monkeypatch.setenv(ENV_PARENT_RUN_ID, parent)
    (tmp_path / "g.json").write_text("{}")
    with StageTracker("search", experiment="ignored-when-nested", project_dir=tmp_path,
                      tags={"hypergrad": "exact"}) as trk:
        callback = trk.epoch_callback()
        for epoch in range(3):
            callback(epoch, {"epoch": epoch, "val_loss_sum": 1.0 / (epoch + 1), "name": "text is skipped"})
        trk.log_params({"search": {"epochs": 3}})
        trk.log_artifact(tmp_path / "g.json")
    client = MlflowClient(mlflow_uri)
    child = client.get_run(trk.run_id)
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert child.data.tags["stage"] == "search" and child.data.tags["hypergrad"] == "exact"
    assert child.info.experiment_id == client.get_run(parent).info.experiment_id
    assert [m.step for m in client.get_metric_history(trk.run_id, "val_loss_sum")] == [0, 1, 2]
    assert child.data.params["search.epochs"] == "3"
    assert [a.path for a in client.list_artifacts(trk.run_id)] == ["g.json"]
    assert trk.failures == []


def test_broken_store_warns_and_the_stage_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the store's directory should be")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{blocker}/sub/mlflow.db")
    monkeypatch.delenv(ENV_PARENT_RUN_ID, raising=False)
    with caplog.at_level(logging.WARNING, logger="ilnas.tracking"):
        with StageTracker("retrain", project_dir=tmp_path) as trk:
            trk.log_metrics({"top1": 0.5}, step=0)
            trk.log_artifact(tmp_path)
            (tmp_path / "out.json").write_text("{}")  # the stage's real work still happens
    assert trk.run_id is None and (tmp_path / "out.json").exists()
    assert trk.failures and "start run failed" in trk.failures[0]
    assert "mlflow start run failed" in caplog.text and "not-a-dir" in caplog.text


def test_disabled_tracking_is_silent(tmp_path: Path) -> None:
    with StageTracker("derive", enabled=False, project_dir=tmp_path) as trk:
        trk.log_metrics({"x": 1.0})
        trk.log_artifact(tmp_path)
    assert trk.run_id is None and trk.failures == []


def test_run_names_tags_and_experiment_kind(tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    from ilnas.tracking import run_identity

    monkeypatch.delenv(ENV_PARENT_RUN_ID, raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    assert run_identity("search", "IL", 2, "finite_difference", 0) == (
        "search IL K=2 finite_difference seed 0",
        {"method": "IL", "K": "2", "hypergrad": "finite_difference", "seed": "0", "dvc_exp": "workspace"})
    monkeypatch.setenv("DVC_EXP_NAME", "darts")  # what `dvc exp run` and the flow set for an experiment
    name, tags = run_identity("retrain", "DARTS", 1, "first_order", 3)
    assert name == "retrain DARTS K=1 first_order seed 3 [darts]" and tags["dvc_exp"] == "darts"
    with StageTracker("retrain", project_dir=tmp_path, tags=tags, run_name=name) as trk:
        trk.log_metrics({"top1": 0.9})
    client = MlflowClient(mlflow_uri)
    run = client.get_run(trk.run_id)
    assert run.info.run_name == name and run.data.tags["method"] == "DARTS" and "git_commit" not in run.data.tags
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
