"""The MLflow UI as a user sees it, in a real headless Chromium: the links the flow prints open on runs (not on
MLflow 3's GenAI overview), the search runs of both pipelines show as one flat list, and IL against DARTS is
a figure at the top of the newest pipeline run's artifacts.

Skipped only where no Chromium/Chrome is installed (``apt-get install chromium``); the runs are made by the
real tracking code (parent runs, nested stage runs, the flow's comparison) in a temporary sqlite store served
by a real ``mlflow server``.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
                 if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium or Chrome installed (apt-get install chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pipeline(uri: str, method: str, k: int, exp: str | None, accs: list[float]) -> str:
    """A pipeline parent run with its nested search run, logged by the stages' tracker, then closed."""
    from ilnas.tracking import ENV_PARENT_RUN_ID, StageTracker, end_parent_run, run_identity, start_parent_run

    name, tags = run_identity("search", method, k, "first_order", 0, experiment=exp or "workspace")
    parent = start_parent_run(uri, "ilnas", name.replace("search", "pipeline", 1), tags={**tags, "stage": "pipeline"})
    os.environ[ENV_PARENT_RUN_ID] = parent
    try:
        with StageTracker("search", experiment="ilnas", tags=tags, run_name=name) as trk:
            for epoch, acc in enumerate(accs, start=1):
                trk.log_metrics({"val_acc_mean": acc, "val_loss_mean": 1.0 - acc}, step=epoch)
    finally:
        del os.environ[ENV_PARENT_RUN_ID]
    end_parent_run(uri, parent, "FINISHED", markdown="# pipeline\n")
    return parent


@pytest.fixture(scope="module")
def mlflow_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    from flows.summary import log_search_comparison
    from ilnas.tracking import get_or_create_experiment

    root = tmp_path_factory.mktemp("mlflow-ui")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        _pipeline(uri, "IL", 2, None, [0.5, 0.7, 0.8])
        darts = _pipeline(uri, "DARTS", 1, "darts", [0.4, 0.6, 0.75])
        log_search_comparison(uri, darts, "ilnas")  # what the flow does at the end of a pipeline run
        experiment_id = get_or_create_experiment(uri, "ilnas")
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    port = _free_port()
    log = (root / "server.log").open("w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", uri,
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield {"base": base, "experiment_id": experiment_id, "darts_parent": darts, "dir": str(root)}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def page_text(url: str, profile: Path) -> str:
    """The rendered page's visible text: Chromium runs the app's JavaScript, then dumps the DOM."""
    out = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    body = re.sub(r"<script.*?</script>|<style.*?</style>", " ", out.stdout, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body)))


def test_experiment_link_opens_on_runs_not_genai(mlflow_site: dict[str, str], tmp_path: Path) -> None:
    from ilnas.tracking import ui_url

    text = page_text(ui_url(mlflow_site["base"], mlflow_site["experiment_id"]), tmp_path / "profile")
    assert "Run Name" in text and "pipeline IL K=2 first_order seed 0" in text, text[:1500]
    assert "pipeline DARTS K=1 first_order seed 0 [darts]" in text
    assert "Token Usage" not in text and "No data available for the selected time range" not in text


def test_search_runs_link_lists_both_search_runs_flat(mlflow_site: dict[str, str], tmp_path: Path) -> None:
    from flows.__main__ import SEARCH_RUNS
    from ilnas.tracking import ui_url

    url = ui_url(mlflow_site["base"], mlflow_site["experiment_id"], search_filter=SEARCH_RUNS)
    text = page_text(url, tmp_path / "profile")
    # one filter, and the two search runs are rows of their own (not two collapsed 'pipeline' parents)
    assert "search IL K=2 first_order seed 0" in text and "search DARTS K=1 first_order seed 0 [darts]" in text, \
        text[:1500]
    assert "2 matching runs" in text and "pipeline IL" not in text


def test_comparison_figure_is_first_in_the_parent_runs_artifacts(mlflow_site: dict[str, str], tmp_path: Path) -> None:
    from ilnas.tracking import ui_url

    url = ui_url(mlflow_site["base"], mlflow_site["experiment_id"], mlflow_site["darts_parent"],
                 artifact="figures/comparison.png")
    text = page_text(url, tmp_path / "profile")
    pane = text[text.index("Artifacts"):]
    assert re.search(r"Artifacts figures comparison\.png comparison\.json comparison\.md pipeline_summary\.md", pane), \
        pane[:800]
