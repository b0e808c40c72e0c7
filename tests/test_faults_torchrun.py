"""Fault tests, torchrun: refusals checked before the launch where the project launches, printed once and ending
every rank with exit code 2 under a user's own torchrun, and ranks that stop when their launcher is killed.

Real ``torch.distributed.run`` launchers, real 2-rank gloo searches on CPU, a real 1-process search checkpoint.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ilnas.search import SearchConfig, SearchRun
from ilnas.utils.io import verify_zip_members
from tests.test_faults_input import ENV, assert_one_block

REPO = Path(__file__).resolve().parents[1]
TINY = ("{tasks: [{name: a, dataset: digits, classes: [0, 1]}, {name: b, dataset: digits, classes: [2, 3]}], "
        "epochs: 1, iterations_per_epoch: 1, channels: 4, cells: 3, nodes: 2, batch_size: 16, "
        "hypergrad: first_order, eval_bn_images: 16}")


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]


@pytest.fixture(scope="module")
def one_process_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(config file, a finished 1-process search directory with its checkpoint.pt) for the TINY search."""
    import yaml

    root = tmp_path_factory.mktemp("one_process")
    cfg = root / "search.yaml"
    cfg.write_text(f"seed: 3\ndevice: cpu\nsearch: {TINY}\n")
    search = yaml.safe_load(cfg.read_text())["search"]
    SearchRun(SearchConfig(**search, seed=3, device="cpu"), root / "out").run(progress=False)
    assert (root / "out" / "checkpoint.pt").is_file()
    return cfg, root / "out"


def test_users_torchrun_refusal_is_printed_once_and_every_rank_exits_2(tmp_path: Path, one_process_checkpoint) -> None:
    cfg, done = one_process_checkpoint
    shutil.copytree(done, tmp_path / "out")
    before = (tmp_path / "out" / "checkpoint.pt").read_bytes()
    proc = subprocess.run(torchrun("-m", "ilnas", "search", "-c", str(cfg), "-o", "out"), cwd=tmp_path,
                          env=ENV, capture_output=True, text=True, timeout=300)
    err = proc.stderr
    refusal = "ilnas: error: out/checkpoint.pt: written by a search on 1 process(es), this one runs on 2"
    assert err.count(refusal) == 1, err
    assert "[rank 1]" not in err, err
    # torchrun's own report (it is the user's torchrun) lists every rank with the project's exit code
    codes = [line.split(":", 1)[1].split()[0] for line in err.splitlines() if line.strip().startswith("exitcode")]
    assert codes == ["2", "2"], err[-3000:]
    assert (tmp_path / "out" / "checkpoint.pt").read_bytes() == before


def test_stage_refuses_a_world_size_change_before_launching(tmp_path: Path, one_process_checkpoint) -> None:
    """The stage launcher reads the unfinished search's checkpoint before it starts torchrun."""
    import yaml

    sys.path.insert(0, str(REPO))
    from ilnas.params import validate_params
    from stages.search import work_dir

    cfg, done = one_process_checkpoint
    params = tmp_path / "params.yaml"
    data = {**yaml.safe_load(cfg.read_text()), "distributed": {"nproc_per_node": 2}, "tracking": {"enabled": False}}
    params.write_text(yaml.safe_dump(data))
    work = tmp_path / work_dir(validate_params(data).search)
    work.mkdir(parents=True)
    shutil.copy(done / "checkpoint.pt", work / "checkpoint.pt")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "stages.search", "--params", str(params)], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert_one_block(proc, str(work.relative_to(tmp_path) / "checkpoint.pt"), "1 process(es)",
                     "distributed asks for 2")
    assert "relaunching under torchrun" not in proc.stderr + proc.stdout  # refused before any launch
    assert time.perf_counter() - started < 120


@pytest.mark.parametrize("stage", ["search", "retrain"])
def test_stage_refuses_a_global_batch_the_processes_cannot_share_before_launching(tmp_path: Path, stage: str) -> None:
    search = TINY.replace("batch_size: 16", "batch_size: 15") if stage == "search" else TINY
    retrain = "{batch_size: 15}" if stage == "retrain" else "{batch_size: 16}"
    params = tmp_path / "params.yaml"
    params.write_text(f"seed: 3\ndevice: cpu\nsearch: {search}\nretrain: {retrain}\n"
                      "distributed: {nproc_per_node: 2}\ntracking: {enabled: false}\n")
    proc = subprocess.run([sys.executable, "-m", f"stages.{stage}", "--params", str(params)], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert_one_block(proc, f"{stage}.batch_size: 15 is the global batch over 2 processes", "allowed: a multiple of 2")
    assert "relaunching under torchrun" not in proc.stderr + proc.stdout


def test_stage_launcher_ends_with_the_ranks_exit_code_and_no_torchrun_report(tmp_path: Path) -> None:
    """Ranks that refuse after the launch (no 'prepare' manifests): one block, exit 2, no ChildFailedError."""
    params = tmp_path / "params.yaml"
    params.write_text(f"seed: 3\ndevice: cpu\nsearch: {TINY}\ndistributed: {{nproc_per_node: 2}}\n"
                      "tracking: {enabled: false}\n")
    proc = subprocess.run([sys.executable, "-m", "stages.search", "--params", str(params)], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert "relaunching under torchrun" in proc.stderr, proc.stderr[-3000:]
    assert_one_block(proc, "cannot read task manifest", "data/prepared/search/tasks/a.json")
    assert "ChildFailedError" not in proc.stderr and "exitcode" not in proc.stderr


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_ranks_stop_when_torchrun_is_killed_and_the_checkpoint_stays(tmp_path: Path) -> None:
    cfg = tmp_path / "search.yaml"
    longer = TINY.replace("epochs: 1, iterations_per_epoch: 1", "epochs: 20, iterations_per_epoch: 6")
    cfg.write_text(f"seed: 3\ndevice: cpu\nsearch: {longer}\n")
    log = tmp_path / "torchrun.log"  # a file, not a pipe: nobody has to read it for the ranks to go on writing
    with log.open("w") as out:
        launcher = subprocess.Popen(torchrun("-m", "ilnas", "search", "-c", str(cfg), "-o", "out"),
                                    cwd=tmp_path, env=ENV, stdout=out, stderr=subprocess.STDOUT)
    checkpoint = tmp_path / "out" / "checkpoint.pt"
    ranks: list[int] = []
    try:
        deadline = time.monotonic() + 500
        while not checkpoint.exists():
            assert launcher.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.02)
        ranks = _children(launcher.pid)
        assert len(ranks) == 2, ranks
        for pid in ranks:  # held still while the launcher dies, so that no epoch ends between the kill and the
            os.kill(pid, signal.SIGSTOP)  # snapshot, however fast the machine (the ranks notice on their own)
        launcher.send_signal(signal.SIGKILL)  # no cleanup: what an OOM killer or a lost session does
        launcher.wait(30)
        snapshot = checkpoint.read_bytes()
        for pid in ranks:
            os.kill(pid, signal.SIGCONT)
        stop = time.monotonic() + 10
        while any(_alive(pid) for pid in ranks) and time.monotonic() < stop:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in ranks), "ranks still running 10 s after their launcher died"
        time.sleep(1)
        assert checkpoint.read_bytes() == snapshot  # the last checkpoint stays as it was...
        verify_zip_members(checkpoint)  # ...and whole
        assert "its torchrun launcher" in log.read_text()
    finally:
        for pid in ranks:  # never leave ranks behind, whatever failed above
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if launcher.poll() is None:
            launcher.kill()
