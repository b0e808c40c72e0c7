"""Shared test fixtures: telemetry off, a temp PREFECT_HOME, one session Prefect harness, temp MLflow stores.

The environment is set at import, before any test module imports prefect/mlflow/dvc, because those
libraries read their settings once.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="ilnas-prefect-home-")
os.environ.pop("PREFECT_API_URL", None)
for _key, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
}.items():
    os.environ[_key] = _value
# One intra-op thread (set before torch is imported): the suite's tiny networks gain nothing from a second
# thread, and with a stage subprocess or a DDP rank on the other core, two threads ran ~15x slower here.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One ephemeral Prefect server for the whole session (it takes 10-22 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh sqlite MLflow store (absolute URI), exported as MLFLOW_TRACKING_URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


REPO = Path(__file__).resolve().parents[1]

# a pipeline small enough for tests: every stage runs in seconds on one CPU core
MICRO_PARAMS = """\
seed: 0
device: cpu
tracking: {enabled: true, experiment: micro, uri: null, log_model: true, log_checkpoints: true}
prepare: {image_size: 16, data_deps: {search: ilnas/data, retrain: ilnas/data, transfer: data/imagefolder}}
search:
  tasks:
    - {name: a, dataset: digits, classes: [0, 1, 2, 3, 4]}
    - {name: b, dataset: digits, classes: [5, 6, 7, 8, 9]}
  hypergrad: first_order
  epochs: 1
  iterations_per_epoch: 1
  batch_size: 32
  val_fraction: 0.5
  channels: 4
  cells: 3
derive: {source: search}
retrain: {task: {name: digits, dataset: digits}, epochs: 1, batch_size: 64, channels: 4, cells: 3}
distributed: {nproc_per_node: 1, nnodes: 1}
transfer: {epochs: 1, batch_size: 32, image_size: 16, channels: 4, cells: 3, eval_batches: 2}
"""


def git(cwd: Path, *args: str) -> str:
    import subprocess

    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def init_repo(root: Path, files: dict[str, str] | None = None, copy_project: bool = True) -> Path:
    """A temporary git + DVC repo: a copy of the pipeline (stages, flows, ilnas, dvc.yaml) or just ``files``."""
    import shutil
    import subprocess

    root.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    if copy_project:
        for name in ("stages", "flows", "ilnas"):
            shutil.copytree(REPO / name, root / name, ignore=ignore)
        for name in ("dvc.yaml", ".dvcignore"):
            shutil.copy2(REPO / name, root / name)
        (root / "params.yaml").write_text(MICRO_PARAMS)
    for rel, text in (files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / ".gitignore").write_text("/mlflow.db\n/mlartifacts/\n/runs/\n__pycache__/\n")
    git(root, "init", "-q")
    git(root, "config", "user.email", "test@example.com")
    git(root, "config", "user.name", "test")
    dvc = str(Path(os.sys.executable).parent / "dvc")
    subprocess.run([dvc, "init", "-q"], cwd=root, check=True)
    subprocess.run([dvc, "config", "core.analytics", "false"], cwd=root, check=True)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "init")
    return root


# `make test-fast` runs `-m "not slow"`: these files start a Prefect server or a browser, run the pipeline or a
# study through DVC, start several ranks under torchrun, kill and resume processes, import every stage in a
# fresh interpreter, or run real searches and retrainings (seconds to a minute each on one core)
SLOW_FILES = {
    "test_pipeline.py", "test_flows.py", "test_flows_deploy.py", "test_faults_messages.py", "test_faults_kill.py",
    "test_faults_tracking.py", "test_faults_files.py", "test_faults_torchrun.py", "test_lineage.py", "test_study.py",
    "test_search_ddp.py", "test_ddp.py", "test_dvc_deps.py", "test_train_cli.py", "test_browser.py",
    "test_search_core.py", "test_search_trust.py", "test_lfm.py", "test_remedies_steps.py", "test_diagnostics.py",
    "test_selection.py", "test_train.py", "test_transfer.py", "test_lerac.py",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)
