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


def _git_head(project: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True,
                          check=True).stdout.strip()


def _exp_show(project: Path) -> list[dict]:
    import json

    out = subprocess.run([str(Path(sys.executable).parent / "dvc"), "exp", "show", "--json"], cwd=project,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _experiments(project: Path) -> dict[str, dict]:
    """name -> the experiment's data (params, metrics) as `dvc exp show --json` reports it."""
    found = {}
    for row in _exp_show(project):
        for exp in row.get("experiments") or []:
            revs = exp.get("revs") or []
            if revs:
                found[exp.get("name")] = revs[0].get("data", {})
    return found


def _task_states(flow_run_id: str) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name: r.state.name for r in runs}


def test_end_to_end_then_everything_skipped(project: Path) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    from flows.pipeline import pipeline
    from ilnas.space.genotype import load_genotype

    result = pipeline(project_dir=str(project), retries=0)
    assert _statuses(result) == dict.fromkeys(STAGES, "ran")
    assert set(_task_states(result["flow_run_id"]).values()) == {"Completed"}
    for rel in ("data/prepared", "models/search/alphas.pt", "models/search/checkpoint.pt",
                "models/genotype.json", "models/cells", "models/retrain/metrics.json",
                "models/transfer/metrics.json", "dvc.lock", *(f"metrics/{s}.json" for s in STAGES)):
        assert (project / rel).exists(), rel
    load_genotype(project / "models/genotype.json")
    assert not (project / "runs/search").exists() or not any((project / "runs/search").iterdir())
    # no wall-clock numbers in what DVC hashes or diffs
    for rel in ("metrics/search.json", "metrics/retrain.json", "metrics/search_history.csv",
                "models/search/history.csv", "models/search/metrics.json"):
        text = (project / rel).read_text()
        assert "_time_s" not in text and "_per_s" not in text, rel

    uri = result["tracking_uri"]
    assert uri == f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(uri)
    parent = client.get_run(result["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == "pipeline IL K=2 first_order seed 0"
    assert parent.data.tags["mlflow.source.git.commit"] == _git_head(project)
    assert client.get_experiment(parent.info.experiment_id).tags["mlflow.experimentKind"] == \
        "custom_model_development"
    assert {f"stage_time_s/{s}" for s in STAGES} <= set(parent.data.metrics)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_stage = {r.data.tags["stage"]: r for r in children}
    assert sorted(by_stage) == sorted(STAGES)
    for stage, run in by_stage.items():
        assert run.info.status == "FINISHED", stage
        assert run.data.metrics and run.data.params, stage
        assert run.info.run_name == f"{stage} IL K=2 first_order seed 0", stage
        tags = run.data.tags
        assert (tags["method"], tags["K"], tags["hypergrad"], tags["seed"], tags["dvc_exp"]) == \
            ("IL", "2", "first_order", "0", "workspace"), stage
        assert tags["mlflow.source.git.commit"] == _git_head(project), stage  # MLflow's own; clean, no '+dirty'
        assert "git_commit" not in tags, stage
        assert not [k for k in run.data.metrics if k.startswith("final/")], stage  # one name per value
    search = by_stage["search"]
    assert search.data.tags["strategy"] == "interleaving" and search.data.tags["dataset"] == "digits"
    for key in ("val_loss_mean", "val_acc_mean", "val_loss/a", "val_acc/b"):
        assert [m.step for m in client.get_metric_history(search.info.run_id, key)] == [1], key  # epoch 1 of 1
    arts = {s: {a.path for a in client.list_artifacts(r.info.run_id)} for s, r in by_stage.items()}
    assert {"genotype.json", "alphas.pt", "checkpoint", "history.csv"} <= arts["search"]
    assert {"genotype.json", "cells"} <= arts["derive"]
    assert {"checkpoint", "metrics.json", "history.csv"} <= arts["retrain"]
    mlflow.set_tracking_uri(uri)
    models = mlflow.search_logged_models(experiment_ids=[parent.info.experiment_id], output_format="list")
    assert any(m.source_run_id == by_stage["retrain"].info.run_id for m in models)
    assert "| search | ran |" in _artifact_markdown(result["flow_run_id"])
    # `dvc plots show` offline: the stages' PNG figures, no vega scripts from a CDN
    out = subprocess.run([str(Path(sys.executable).parent / "dvc"), "plots", "show", "-o", str(project / "dvc_plots")],
                         cwd=project, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    page = (project / "dvc_plots" / "index.html").read_text()
    assert page.count("<img") == 6 and "cdn.jsdelivr" not in page and "<script" not in page

    again = pipeline(project_dir=str(project), retries=0)
    assert _statuses(again) == dict.fromkeys(STAGES, "skipped")
    assert set(_task_states(again["flow_run_id"]).values()) == {"Skipped"}
    markdown = _artifact_markdown(again["flow_run_id"])
    assert "every stage current" in markdown and "| transfer | skipped |" in markdown
    assert not client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{again['parent_run_id']}'")


def test_retrain_variant_is_an_experiment_then_restored_from_run_cache(project: Path) -> None:
    from flows.pipeline import pipeline

    params = (project / "params.yaml").read_bytes()
    result = pipeline(project_dir=str(project), overrides=["retrain.lr=0.04"], retries=0)
    statuses = _statuses(result)
    # prepare depends on the whole retrain section (its manifest); its outputs do not change, so the search
    # below it stays current
    assert {s: statuses[s] for s in STAGES[1:]} == {"search": "skipped", "derive": "skipped",
                                                     "retrain": "ran", "transfer": "ran"}
    assert (project / "params.yaml").read_bytes() == params  # the workspace is as it was
    exps = _experiments(project)
    assert exps["lr-0.04"]["params"]["params.yaml"]["data"]["retrain"]["lr"] == 0.04
    assert "top1" in exps["lr-0.04"]["metrics"]["metrics/retrain.json"]["data"]

    again = pipeline(project_dir=str(project), overrides=["retrain.lr=0.04"], retries=0)
    assert _statuses(again)["retrain"] == "restored" and _statuses(again)["transfer"] == "restored"
    assert _task_states(again["flow_run_id"])["dvc-retrain"] == "Restored"


def test_il_and_darts_compare_by_tags(project: Path, capsys: pytest.CaptureFixture) -> None:
    """`make run` then `make run ARGS="-S ... -n darts"`: a script finds both search runs by tags and reads the
    headline metric of each (same name and meaning for K = 2 and K = 1; no NaN)."""
    import math

    from mlflow.tracking import MlflowClient

    from flows.__main__ import main

    params = (project / "params.yaml").read_bytes()
    assert main(["--project-dir", str(project), "--retries", "0", "-n", "darts",
                 "-S", "search.tasks=[{name: digits, dataset: digits}]"]) == 0
    assert (project / "params.yaml").read_bytes() == params
    printed = capsys.readouterr().out  # the end of `make run`: where to look
    assert "Prefect run:  http://127.0.0.1:4200/runs/flow-run/" in printed
    assert "this run:     http://127.0.0.1:5000/#/experiments/" in printed and "dvc exp apply darts" in printed
    darts = _experiments(project)["darts"]
    assert darts["params"]["params.yaml"]["data"]["search"]["tasks"] == [{"name": "digits", "dataset": "digits"}]
    assert "val_loss_mean" in darts["metrics"]["metrics/search.json"]["data"]

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("micro")
    runs = {}
    for method, exp in (("IL", "workspace"), ("DARTS", "darts")):
        found = client.search_runs([experiment.experiment_id], filter_string=(
            f"tags.stage = 'search' AND tags.method = '{method}' AND tags.dvc_exp = '{exp}'"))
        assert len(found) == 1, (method, [r.info.run_name for r in found])
        runs[method] = found[0]
    assert runs["DARTS"].info.run_name == "search DARTS K=1 first_order seed 0 [darts]"
    assert runs["DARTS"].data.tags["K"] == "1" and runs["IL"].data.tags["K"] == "2"
    for run in runs.values():
        for key in ("val_loss_mean", "val_acc_mean"):
            assert math.isfinite(run.data.metrics[key]), (run.info.run_name, key)
    retrain = client.search_runs([experiment.experiment_id],
                                 filter_string="tags.stage = 'retrain' AND tags.dvc_exp = 'darts'")
    assert len(retrain) == 1 and math.isfinite(retrain[0].data.metrics["top1"])  # the final word: test accuracy


def test_dvc_exp_run_without_an_activated_venv(project: Path) -> None:
    """The README's `.venv/bin/dvc exp run -S ...` on a fresh clone: no venv on PATH, the stage cmds find it."""
    (project / ".venv").symlink_to(Path(sys.executable).parent.parent)  # what `make install` leaves in a clone
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = "/usr/bin:/bin"
    out = subprocess.run([str(Path(sys.executable).parent / "dvc"), "exp", "run", "-n", "fd",
                          "-S", "search.hypergrad=finite_difference"], cwd=project, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Running stage 'search'" in out.stdout
    assert _experiments(project)["fd"]["params"]["params.yaml"]["data"]["search"]["hypergrad"] == \
        "finite_difference"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("micro").experiment_id],
                              filter_string="tags.stage = 'search' AND tags.dvc_exp = 'fd'")
    assert [r.info.run_name for r in runs] == ["search IL K=2 finite_difference seed 0 [fd]"]


def test_interrupted_search_resumes_from_its_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from mlflow.tracking import MlflowClient

    from ilnas.data.prepare import load_stage_tasks
    from ilnas.params import load_params
    from ilnas.search.runner import SearchRun
    from stages.common import PREPARED
    from stages.search import work_dir

    project = init_repo(tmp_path / "project")
    text = (project / "params.yaml").read_text().replace("  epochs: 1\n  iterations_per_epoch", "  epochs: 2\n"
                                                         "  iterations_per_epoch")
    (project / "params.yaml").write_text(text)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    prepared = subprocess.run([sys.executable, "-m", "stages.prepare"], cwd=project, env=env, capture_output=True,
                              text=True, timeout=400)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    cfg = load_params(project / "params.yaml").search
    assert cfg.epochs == 2
    monkeypatch.chdir(project)
    work = work_dir(cfg)
    tasks = load_stage_tasks(PREPARED, "search", list(cfg.tasks), cfg.seed, cfg.val_fraction)  # as the stage does
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # what a search killed after its first epoch leaves behind
        with pytest.raises(KeyboardInterrupt):
            SearchRun(cfg, work, tasks=tasks).run(progress=False, stop_after_epoch=0)
    finally:
        torch.set_num_threads(threads)
    assert (work / "checkpoint.pt").exists()

    # the same command `dvc repro` runs for the stage (the stage scripts also work alone)
    out = subprocess.run([sys.executable, "-m", "stages.search"], cwd=project, env=env, capture_output=True,
                         text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "resuming the search from" in out.stdout + out.stderr
    assert "resumed from" in out.stdout + out.stderr and "at epoch 2" in out.stdout + out.stderr
    assert not work.exists()  # finished: copied into models/search and cleaned up
    import json

    assert json.loads((project / "metrics/search.json").read_text())["epochs"] == 2
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.stage = 'search'")
    assert len(runs) == 1 and runs[0].data.tags.get("resumed") == "true"
    assert sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "val_loss_mean")) == [1, 2]


def test_retrain_stage_relaunches_under_torchrun(tmp_path: Path) -> None:
    import json

    from ilnas.space.genotype import DARTS_V2

    project = init_repo(tmp_path / "project")
    prepared = subprocess.run([sys.executable, "-m", "stages.prepare"], cwd=project, capture_output=True, text=True,
                              timeout=400)  # retrain reads its split through the manifests prepare writes
    assert prepared.returncode == 0, prepared.stderr[-3000:]
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
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.stage = 'retrain'")
    assert [r.data.tags["world_size"] for r in runs] == ["2"]  # one run: only rank 0 tracks
