"""The Prefect flow on toy DVC projects: DVC's DAG order, retries, variants as DVC experiments, Prefect states
that say what DVC did, and bad params failing before anything starts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import MICRO_PARAMS, init_repo

REPO = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).parent / "dvc")

TOY_DVC = """\
stages:
  second:
    cmd: python -c "open('b.txt', 'w').write(open('a.txt').read() + 'b')"
    deps: [a.txt]
    outs: [b.txt]
  first:
    cmd: python -c "open('a.txt', 'w').write('a')"
    outs: [a.txt]
  boom:
    cmd: python -c "open('attempts.log', 'a').write('x'); raise SystemExit(3)"
    deps: [b.txt]
    outs: [never.txt]
"""

# a two-stage project whose first stage depends on the real params schema's `seed`
SEED_DVC = """\
stages:
  first:
    cmd: python -c "import yaml; open('a.txt', 'w').write(str(yaml.safe_load(open('params.yaml'))['seed']))"
    params: [seed]
    outs: [a.txt]
  second:
    cmd: python second.py
    deps: [a.txt]
    outs: [b.txt]
    metrics:
      - m.json:
          cache: false
"""
SECOND_PY = "open('b.txt', 'w').write(open('a.txt').read() + 'b')\nopen('m.json', 'w').write('{\"n\": 1}')\n"
SEED_FILES = {"dvc.yaml": SEED_DVC, "second.py": SECOND_PY, "params.yaml": MICRO_PARAMS}


def test_stage_order_comes_from_dvcs_dag(tmp_path: Path) -> None:
    from flows.dvc_repo import read_dag

    project = init_repo(tmp_path / "toy", {"dvc.yaml": TOY_DVC, "params.yaml": "seed: 0\n"}, copy_project=False)
    assert [s.name for s in read_dag(project)] == ["first", "second", "boom"]  # not file order
    real = read_dag(REPO)
    assert [s.name for s in real] == ["prepare", "search", "derive", "retrain", "transfer"]
    search = next(s for s in real if s.name == "search")
    assert "search" in search.params and search.metrics == ["metrics/search.json"]


def test_failing_stage_is_retried_and_named(tmp_path: Path, prefect_harness: None) -> None:
    from flows.pipeline import StageFailed, pipeline

    project = init_repo(tmp_path / "toy", {"dvc.yaml": TOY_DVC, "params.yaml": "seed: 0\n"}, copy_project=False)
    with pytest.raises(StageFailed, match="stage 'boom'") as info:
        pipeline(project_dir=str(project), retries=2, retry_delay_s=0, track=False)
    assert "3 attempt" in str(info.value)
    assert (project / "attempts.log").read_text() == "xxx"  # 1 try + 2 retries
    assert (project / "b.txt").read_text() == "ab"  # the stages before it ran


# `second` rewrites a git-tracked metrics file (cache: false: DVC deletes it before running the stage) and
# `boom` fails after it: the state a failed `make run` used to leave behind
RESTORE_DVC = SEED_DVC + """\
  boom:
    cmd: python -c "raise SystemExit(3)"
    deps: [b.txt]
    outs: [never.txt]
"""
SECOND_SEEDED = ("t = open('a.txt').read()\nopen('b.txt', 'w').write(t + 'b')\n"
                 "open('m.json', 'w').write('{\"n\": ' + t + '}')\n")


def test_a_failed_run_leaves_every_git_tracked_file_as_it_was(tmp_path: Path, prefect_harness: None) -> None:
    from flows.pipeline import StageFailed, pipeline

    files = {"dvc.yaml": RESTORE_DVC, "second.py": SECOND_SEEDED, "params.yaml": MICRO_PARAMS}
    project = init_repo(tmp_path / "toy", files, copy_project=False)
    subprocess.run([DVC, "repro", "second"], cwd=project, check=True, capture_output=True, timeout=300)
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "commit", "-qm", "first results"], cwd=project, check=True)
    # the user edits params (seed 0 -> 7): first and second rerun and rewrite dvc.lock and m.json, then boom fails
    (project / "params.yaml").write_text(MICRO_PARAMS.replace("seed: 0", "seed: 7", 1))
    tracked = subprocess.run(["git", "ls-files"], cwd=project, capture_output=True, text=True,
                             check=True).stdout.split()
    before = {rel: (project / rel).read_bytes() for rel in tracked}
    with pytest.raises(StageFailed, match="stage 'boom'"):
        pipeline(project_dir=str(project), retries=0, track=False)
    assert (project / "b.txt").read_text() == "7b"  # the stages before it ran with the new seed...
    after = {rel: (project / rel).read_bytes() for rel in tracked}
    assert after == before  # ...and dvc.lock, m.json and the edited params.yaml are byte for byte as they were
    status = subprocess.run(["git", "status", "--porcelain"], cwd=project, capture_output=True, text=True).stdout
    assert status.split() == ["M", "params.yaml"], status  # only the user's own edit


def _task_states(flow_run_id: str) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name: r.state.name for r in runs}


def _flow_run_label(flow_run_id: str) -> tuple[str, list[str]]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
    order = ["ilnas", "method", "K", "hypergrad", "seed", "exp"]
    return run.name, sorted(run.tags, key=lambda t: order.index(t.split(":")[0]))


def _flow_run_logs(flow_run_id: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return "\n".join(log.message for log in logs)


def _exp_names(project: Path) -> set[str]:
    out = subprocess.run([DVC, "exp", "show", "--json"], cwd=project, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    names = set()
    for row in json.loads(out.stdout):
        for exp in row.get("experiments") or []:
            names.add(exp.get("name"))
    return names


def test_variant_is_a_dvc_experiment_and_states_say_what_dvc_did(tmp_path: Path, prefect_harness: None) -> None:
    from flows.pipeline import pipeline

    project = init_repo(tmp_path / "toy", SEED_FILES, copy_project=False)
    params_before = (project / "params.yaml").read_bytes()

    first = pipeline(project_dir=str(project), retries=0, track=False)
    assert [r["status"] for r in first["stages"]] == ["ran", "ran"]
    assert _task_states(first["flow_run_id"]) == {"dvc-first": "Completed", "dvc-second": "Completed"}
    lock_before = (project / "dvc.lock").read_bytes()

    variant = pipeline(project_dir=str(project), overrides=["seed=3"], retries=0, track=False)
    assert variant["experiment"] == "seed-3"
    # the Prefect run list says what ran (not a random name): method, K, hypergradient, seed, experiment
    assert _flow_run_label(first["flow_run_id"]) == (
        "IL K=2 first_order seed 0", ["ilnas", "method:IL", "K:2", "hypergrad:first_order", "seed:0", "exp:workspace"])
    assert _flow_run_label(variant["flow_run_id"]) == (
        "IL K=2 first_order seed 3 [seed-3]",
        ["ilnas", "method:IL", "K:2", "hypergrad:first_order", "seed:3", "exp:seed-3"])
    assert [r["status"] for r in variant["stages"]] == ["ran", "ran"]
    assert "seed-3" in _exp_names(project)  # dvc exp show lists it
    # the workspace is as the user left it: params.yaml byte for byte, dvc.lock and the outs it records
    assert (project / "params.yaml").read_bytes() == params_before
    assert (project / "dvc.lock").read_bytes() == lock_before
    assert (project / "a.txt").read_text() == "0" and (project / "b.txt").read_text() == "0b"
    shown = subprocess.run([DVC, "exp", "show", "--json"], cwd=project, capture_output=True, text=True).stdout
    assert '"seed": 3' in shown and '"n": 1' in shown  # the experiment's params and metrics, as DVC records them

    again = pipeline(project_dir=str(project), overrides=["seed=3"], retries=0, track=False)
    assert [r["status"] for r in again["stages"]] == ["restored", "restored"]  # DVC's run cache
    assert _task_states(again["flow_run_id"]) == {"dvc-first": "Restored", "dvc-second": "Restored"}

    plain = pipeline(project_dir=str(project), retries=0, track=False)
    assert [r["status"] for r in plain["stages"]] == ["skipped", "skipped"]
    assert _task_states(plain["flow_run_id"]) == {"dvc-first": "Skipped", "dvc-second": "Skipped"}
    assert plain["experiment"] is None
    console = _flow_run_logs(first["flow_run_id"])  # what the Prefect UI and the console show of the run
    assert "Running stage 'first'" in console  # the stages' own output reaches the console
    assert "git add" not in console and "To track the changes" not in console  # DVC's hint is off


def test_stage_log_lines_have_one_prefix_and_timm_listings_are_off() -> None:
    code = ("import logging; from stages.common import setup_logging; setup_logging(); "
            "logging.getLogger('ilnas.search').info('epoch 1/3'); "
            "logging.getLogger('timm.utils.checkpoint_saver').info('Current checkpoints: (a, 1)'); "
            "logging.getLogger('ilnas.search').warning('careful')")
    for bare, expected in (("1", "INFO ilnas.search: epoch 1/3\nWARNING ilnas.search: careful\n"), ("", None)):
        env = {**os.environ, "ILNAS_LOG_BARE": bare, "PYTHONPATH": str(REPO)}
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        assert "Current checkpoints" not in out.stderr
        if expected is not None:  # under the flow: Prefect adds the time and the task, the stage nothing more
            assert out.stderr == expected
        else:  # alone (dvc repro): one time stamp of its own
            assert re.fullmatch(r"\d\d:\d\d:\d\d INFO ilnas.search: epoch 1/3\n\d\d:\d\d:\d\d WARNING .*\n",
                                out.stderr), out.stderr


@pytest.mark.parametrize(("override", "key", "allowed"), [
    ("search.bogus=1", "search.bogus", "allowed keys"),
    ("retrain.epochs=many", "retrain.epochs", "valid integer"),
    ("search.epochs=-2", "search.epochs", "greater than or equal to 1"),
    ("search.hypergrad=third_order", "search.hypergrad", "'first_order'"),
    ("search.tasks.0.dataset=mnist", "search.tasks[0].dataset", "'digits'"),
])
def test_bad_params_are_refused_before_anything_runs(tmp_path: Path, override: str, key: str, allowed: str) -> None:
    from flows.variants import resolve_variant
    from ilnas.params import ParamsError

    project = init_repo(tmp_path / "toy", SEED_FILES, copy_project=False)
    with pytest.raises(ParamsError) as info:
        resolve_variant(project, [override])
    assert key in str(info.value) and allowed in str(info.value)
    assert (project / "params.yaml").read_text() == MICRO_PARAMS


def test_cli_typo_exits_2_without_prefect(tmp_path: Path) -> None:
    """`make run ARGS=-S ...` with a typo: one message, exit 2, no traceback, no Prefect server, nothing run."""
    project = init_repo(tmp_path / "toy", SEED_FILES, copy_project=False)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / "prefect-home")}
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "flows", "--project-dir", str(project), "-S", "search.hypergad=exact"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - started
    assert out.returncode == 2, out.stdout + out.stderr
    assert "search.hypergad" in out.stderr and "hypergrad" in out.stderr
    assert out.stderr.startswith("python -m flows: error:") and "--debug" in out.stderr  # as every entry point
    assert "Traceback" not in out.stderr and "prefect" not in (out.stdout + out.stderr).lower()
    assert not (tmp_path / "prefect-home").exists()  # Prefect never started (it creates its home on start)
    assert not (project / "a.txt").exists() and (project / "params.yaml").read_text() == MICRO_PARAMS
    assert elapsed < 60  # a second or two on an idle machine (mostly importing torch); generous for a busy CI


def test_absent_key_is_added_and_dvc_refusals_name_the_override(tmp_path: Path) -> None:
    """A schema key params.yaml does not hold: the flow adds it through DVC's '++key=value'; DVC's plain -S
    refuses it, and that refusal names the override and the '+' fix."""
    from flows.dvc_repo import apply_overrides
    from flows.variants import resolve_variant

    project = init_repo(tmp_path / "toy", SEED_FILES, copy_project=False)
    variant = resolve_variant(project, ["search.w_lr_min=0.0001"])
    assert variant.params.search.w_lr_min == 0.0001 and variant.experiment == "w_lr_min-0.0001"
    assert "w_lr_min: 0.0001" in variant.text and (project / "params.yaml").read_text() == MICRO_PARAMS
    with pytest.raises(ValueError, match=r"-S search.w_lr_min=0.0001: .*\+search.w_lr_min=0.0001"):
        apply_overrides(project / "params.yaml", ["search.w_lr_min=0.0001"])


def test_deploy_register_only_says_what_must_keep_running() -> None:
    from flows.deploy import NEEDS_SERVE

    text = NEEDS_SERVE.format(name="nightly")
    assert "python -m flows.deploy --name nightly" in text and "Not Ready" in text


def test_deploy_refuses_without_a_persistent_server(tmp_path: Path) -> None:
    """No PREFECT_API_URL: exit 2 naming it and how to start a server, before any (temporary) server starts."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PYTHONPATH=str(REPO), PREFECT_HOME=str(tmp_path / "prefect-home"))
    out = subprocess.run([sys.executable, "-m", "flows.deploy", "--register-only"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "PREFECT_API_URL is not set" in out.stderr and "prefect server start" in out.stderr
    assert "registered" not in out.stdout and "temporary server" not in out.stdout + out.stderr.split("error:")[0]
    home = tmp_path / "prefect-home"  # reading the settings may create it; a server would write its database
    assert not home.exists() or not any(home.iterdir())


def test_entry_points_turn_telemetry_off_before_importing_the_tools() -> None:
    keys = ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "DVC_NO_ANALYTICS", "PREFECT_SERVER_ANALYTICS_ENABLED")
    env = {k: v for k, v in os.environ.items() if k not in keys}
    code = ("import os, sys; import {pkg}; "
            "assert not [m for m in ('prefect', 'mlflow', 'dvc') if m in sys.modules]; "
            "print([os.environ.get(k) for k in {keys!r}])")
    for pkg in ("flows", "stages"):  # what `python -m flows...` and `python -m stages.<name>` import first
        out = subprocess.run([sys.executable, "-c", code.format(pkg=pkg, keys=keys)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "['true', '1', '1', 'false']", (pkg, out.stdout)
    env["DO_NOT_TRACK"] = "0"  # the user's own choice stands
    out = subprocess.run([sys.executable, "-c", code.format(pkg="flows", keys=keys)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "['true', '0', '1', 'false']"


def test_where_to_look_links_open_mlflow_on_runs() -> None:
    from flows.__main__ import where_to_look

    text = where_to_look({"project": str(REPO), "tracking_uri": "sqlite:////x/mlflow.db", "parent_run_id": "p1",
                          "mlflow_experiment_id": "4", "flow_run_id": "f1"})
    assert "http://127.0.0.1:5000/#/experiments/4/runs/p1/artifacts/figures/comparison.png" \
           "?workflowType=machine_learning" in text
    assert "/#/experiments/4/runs?workflowType=machine_learning&searchFilter=tags.stage" in text
    assert "ilnas compare" in text


def test_cli_flow_run_is_created_with_its_name_and_tags(tmp_path: Path) -> None:
    """`python -m flows`: the run's console lines carry the name from the start (not a random one renamed)."""
    project = init_repo(tmp_path / "toy", SEED_FILES, copy_project=False)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    out = subprocess.run([sys.executable, "-m", "flows", "--project-dir", str(project), "--no-track", "--retries",
                          "0", "-S", "seed=3"], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    console = out.stdout + out.stderr
    assert "Beginning flow run 'IL K=2 first_order seed 3 [seed-3]'" in console, console[-3000:]
