"""A real `prefect server start` on loopback: the deployment registers with its cron schedule."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def prefect_server(tmp_path: Path):
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"prefect server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_deployment_registers_with_cron(prefect_server: str, tmp_path: Path) -> None:
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_HOME": str(tmp_path / "client-home")}
    out = subprocess.run([sys.executable, "-m", "flows.deploy", "--register-only", "--name", "test-nightly",
                          "--cron", "30 2 * * 1-5"], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "registered" in out.stdout
    assert "python -m flows.deploy --name test-nightly" in out.stdout and "Not Ready" in out.stdout  # what to run

    from prefect.client.orchestration import PrefectClient

    async def read() -> object:
        async with PrefectClient(api=prefect_server) as client:
            return await client.read_deployment_by_name("ilnas-pipeline/test-nightly")

    deployment = asyncio.run(read())
    crons = [s.schedule.cron for s in deployment.schedules]
    assert crons == ["30 2 * * 1-5"]
    assert all(s.active for s in deployment.schedules)
    assert deployment.parameters["project_dir"] == str(REPO)
