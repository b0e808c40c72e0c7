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


def _search_run(uri: str, parent_name: str, identity: tuple[str, int, str], per_task: dict[str, float],
                acc: list[float]) -> tuple[str, str]:
    """A pipeline parent with one nested search child, as the flow and stages/search.py log them."""
    import os

    from ilnas.tracking import run_identity

    method, k, exp = identity
    parent = start_parent_run(uri, "ilnas", parent_name, tags={"stage": "pipeline"})
    os.environ[ENV_PARENT_RUN_ID] = parent
    try:
        name, tags = run_identity("search", method, k, "first_order", 0, experiment=exp)
        with StageTracker("search", project_dir=Path(uri.removeprefix("sqlite:///")).parent, tags=tags,
                          run_name=name) as trk:
            for epoch, value in enumerate(acc, start=1):
                trk.log_metrics({"val_acc_mean": value, "val_loss_mean": 1 - value,
                                 **{f"val_acc/{t}": v * value for t, v in per_task.items()}}, step=epoch)
    finally:
        del os.environ[ENV_PARENT_RUN_ID]
    return parent, trk.run_id


def test_existing_experiment_is_retagged_and_links_open_on_runs(mlflow_uri: str) -> None:
    from mlflow.tracking import MlflowClient

    from ilnas.tracking import get_or_create_experiment, ui_url

    client = MlflowClient(mlflow_uri)
    made_by_hand = client.create_experiment("ilnas")  # no kind tag: MLflow 3 UIs treat it as a GenAI experiment
    assert get_or_create_experiment(mlflow_uri, "ilnas") == made_by_hand
    assert client.get_experiment(made_by_hand).tags["mlflow.experimentKind"] == "custom_model_development"
    base = "http://127.0.0.1:5000"
    assert ui_url(base, "3") == f"{base}/#/experiments/3/runs?workflowType=machine_learning"
    assert ui_url(base, "3", "abc", artifact="figures/comparison.png") == \
        f"{base}/#/experiments/3/runs/abc/artifacts/figures/comparison.png?workflowType=machine_learning"
    # a filter sorts by a metric: only then does the UI list matching child runs flat, not under their parents
    assert ui_url(base, "3", search_filter="tags.stage = 'search'") == (
        f"{base}/#/experiments/3/runs?workflowType=machine_learning&searchFilter=tags.stage%20%3D%20%27search%27"
        "&orderByKey=metrics.%60val_acc_mean%60&orderByAsc=false")


def test_model_is_a_state_dict_logged_model_without_pickle(tmp_path: Path, mlflow_uri: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    import mlflow
    import torch
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv(ENV_PARENT_RUN_ID, raising=False)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    (tmp_path / "genotype.json").write_text('{"normal": []}')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with StageTracker("retrain", project_dir=tmp_path) as trk:
            trk.log_model(net, name="model", files=[tmp_path / "genotype.json", tmp_path / "absent.json"])
    assert trk.failures == []
    assert not [w for w in caught if "pickle" in str(w.message).lower()], [str(w.message) for w in caught]
    client = MlflowClient(mlflow_uri)
    assert sorted(a.path for a in client.list_artifacts(trk.run_id, "model")) == \
        ["model/genotype.json", "model/state_dict.pth"]
    mlflow.set_tracking_uri(mlflow_uri)
    models = mlflow.search_logged_models(experiment_ids=[client.get_run(trk.run_id).info.experiment_id],
                                         output_format="list")
    assert [(m.source_run_id, m.name, str(m.status)) for m in models] == [(trk.run_id, "model", "READY")]
    local = client.download_artifacts(trk.run_id, "model/state_dict.pth", str(tmp_path))
    state = torch.load(local, weights_only=True)  # tensors only: no code is unpickled
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


def test_compare_il_and_darts_side_by_side(tmp_path: Path, mlflow_uri: str) -> None:
    from mlflow.tracking import MlflowClient
    from typer.testing import CliRunner

    from ilnas.cli import app
    from ilnas.compare import compare, log_comparison

    _, il_old = _search_run(mlflow_uri, "pipeline IL old", ("IL", 2, None), {"a": 0.9, "b": 1.1}, [0.1, 0.2])
    il_parent, il = _search_run(mlflow_uri, "pipeline IL", ("IL", 2, None), {"a": 0.9, "b": 1.1},
                                [0.5, 0.7, 0.874826149])
    _, darts = _search_run(mlflow_uri, "pipeline DARTS", ("DARTS", 1, "darts"), {"digits": 1.0}, [0.4, 0.6, 0.81])
    result = compare(mlflow_uri, figure=tmp_path / "comparison.png")
    # the newest run of each label; only the metrics both have (K-independent), no per-task names, no empty cells
    assert [(r.label, r.run_id) for r in result.rows] == [("DARTS K=1 first_order seed 0 [darts]", darts),
                                                          ("IL K=2 first_order seed 0", il)]
    assert result.metrics == ["val_acc_mean", "val_loss_mean"]
    assert "| IL K=2 first_order seed 0 | 0.8748 | 0.1252 |" in result.text  # 4 significant digits
    assert result.rows[1].history["val_acc_mean"] == [(1, 0.5), (2, 0.7), (3, 0.874826149)]  # step = epoch
    assert result.figure is not None and result.figure.stat().st_size > 5000

    log_comparison(mlflow_uri, il_parent, result)
    client = MlflowClient(mlflow_uri)
    paths = [a.path for a in client.list_artifacts(il_parent)]
    assert {"comparison.md", "comparison.json", "figures"} <= set(paths)
    assert [a.path for a in client.list_artifacts(il_parent, "figures")] == ["figures/comparison.png"]

    out = CliRunner().invoke(app, ["compare", "--tracking-uri", mlflow_uri, "-m", "val_acc/a", il, darts])
    assert out.exit_code == 0, out.output
    assert "| IL K=2 first_order seed 0 | 0.7873 |" in out.output and "| - |" in out.output  # asked for: shown
    both_il = CliRunner().invoke(app, ["compare", "--tracking-uri", mlflow_uri, il_old, il])
    assert "| run | val_acc_mean | val_loss_mean | run id |" in both_il.output  # the headline by default
    both_il = CliRunner().invoke(app, ["compare", "--tracking-uri", mlflow_uri, "--all", il_old, il])
    assert "| run | val_acc_mean | val_loss_mean | val_acc/a | val_acc/b | run id |" in both_il.output
    missing = CliRunner().invoke(app, ["compare", "--tracking-uri", mlflow_uri, "-e", "nope"])
    assert missing.exit_code == 2 and "no MLflow experiment 'nope'" in missing.output


def test_compared_metrics_lead_with_the_class_count_free_headline() -> None:
    from types import SimpleNamespace

    from ilnas.compare import shared_metrics

    il = {"val_acc_mean": 0.96, "val_acc_above_chance_mean": 0.95, "val_loss_norm_mean": 0.09, "val_acc/a": 0.9,
          "lr": 0.01, "epoch_time_s": 80.0}
    darts = {"val_acc_mean": 0.95, "val_acc_above_chance_mean": 0.94, "val_loss_norm_mean": 0.1,
             "val_acc/digits": 0.95, "lr": 0.01, "epoch_time_s": 40.0}
    runs = [SimpleNamespace(data=SimpleNamespace(metrics=m)) for m in (il, darts)]
    assert shared_metrics(runs) == ["val_acc_above_chance_mean", "val_loss_norm_mean", "val_acc_mean"]
    assert shared_metrics(runs, every=True) == ["val_acc_above_chance_mean", "val_loss_norm_mean", "val_acc_mean",
                                                "lr", "epoch_time_s"]  # no per-task names: the tasks differ
    assert shared_metrics(runs, ["val_acc/a"]) == ["val_acc/a"]
