"""Fault tests, files the project writes: damage is an error naming the file, refusals come before writes,
interrupted writes leave nothing behind, written files get the permissions of a normal write.

Real files throughout: real torch.save checkpoints (search and timm retraining), real byte flips, real
processes for the temp-file owners, the real umask.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from faults_util import flip_tensor_byte

from ilnas.errors import IntegrityError, exit_code_of
from ilnas.search import SearchConfig, run_search
from ilnas.search.checkpoint import CheckpointError, load_checkpoint, load_state_file, save_checkpoint
from ilnas.train.checkpoint import CheckpointError as TrainCheckpointError
from ilnas.utils.io import atomic_write_text, remove_stale_temps, verify_zip_members

TINY_SEARCH = dict(epochs=1, iterations_per_epoch=1, channels=4, cells=3, nodes=2, batch_size=16, device="cpu",
                   hypergrad="first_order", eval_bn_images=16)


# -- integrity -------------------------------------------------------------------------------------------------
def test_flipped_byte_in_a_checkpoint_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"weights": torch.arange(4096, dtype=torch.float32), "epoch": 3})
    assert load_checkpoint(path)["epoch"] == 3
    member = flip_tensor_byte(path)
    assert not torch.equal(torch.load(path, weights_only=True)["weights"], torch.arange(4096, dtype=torch.float32))
    with pytest.raises(CheckpointError) as info:  # torch.load alone accepted it (above)
        load_checkpoint(path)
    assert str(path) in str(info.value) and member in str(info.value) and "CRC-32" in str(info.value)
    assert exit_code_of(info.value) == 2


@pytest.mark.parametrize("damage", ["truncate", "garbage", "directory"])
def test_other_damage_is_an_error_naming_the_file(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "alphas.pt"
    save_checkpoint(path, {"a": torch.ones(64)})
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-200])
    elif damage == "garbage":
        path.write_bytes(b"\x00not a torch file" * 10)
    else:
        path.unlink()
        path.mkdir()
    with pytest.raises(CheckpointError) as info:
        load_state_file(path)
    assert str(path) in str(info.value)


def test_damaged_search_checkpoint_and_alphas_are_refused_not_resumed(tmp_path: Path) -> None:
    cfg = SearchConfig(**TINY_SEARCH)
    result = run_search(cfg, tmp_path, progress=False)
    flip_tensor_byte(result.checkpoint)
    with pytest.raises(CheckpointError, match="CRC-32"):
        run_search(cfg, tmp_path, progress=False)
    from ilnas.search import derive_genotype_from_file

    flip_tensor_byte(result.alphas)
    with pytest.raises(CheckpointError, match="alphas.pt"):
        derive_genotype_from_file(result.alphas)


def test_zip_check_passes_intact_files(tmp_path: Path) -> None:
    path = tmp_path / "ok.pt"
    torch.save({"x": torch.randn(10)}, path)
    verify_zip_members(path)  # no exception
    path.write_bytes(b"plain text")
    with pytest.raises(IntegrityError, match="not a file written by torch.save"):
        verify_zip_members(path)


# -- retraining: damage, and refusal before any write ----------------------------------------------------------
def _retrain(out: Path, **overrides):  # noqa: ANN202
    from ilnas.train import RetrainConfig, retrain

    cfg = RetrainConfig(**{"epochs": 1, "channels": 4, "cells": 3, "device": "cpu", "batch_size": 64,
                           "task": {"name": "d3", "dataset": "digits", "classes": [0, 1, 2]}, **overrides})
    return retrain(cfg, None, out)


def test_retrain_refuses_a_damaged_checkpoint_and_a_foreign_one_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _retrain(out)
    last = out / "checkpoints" / "last.pth.tar"
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    with pytest.raises(TrainCheckpointError, match="different run") as info:
        _retrain(out, lr=0.01)  # another config over the same run directory
    assert str(last) in str(info.value)
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    assert after == before  # config.json and everything else untouched
    flip_tensor_byte(last)
    with pytest.raises(TrainCheckpointError, match="CRC-32"):
        _retrain(out, epochs=2)


# -- temp files and permissions --------------------------------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temp_files_of_interrupted_writes_are_removed_on_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pt"
    dead = tmp_path / f".checkpoint.pt.{_dead_pid()}.abc123.tmp"
    legacy = tmp_path / ".checkpoint.pt.k2j3h4.tmp"  # the name before the pid was part of it
    live = tmp_path / f".checkpoint.pt.{os.getppid()}.zzz.tmp"  # a live writer's: left alone
    other = tmp_path / ".other.pt.123.x.tmp"
    for p in (dead, legacy, live, other):
        p.write_bytes(b"partial")
    atomic_write_text(target, "done")
    assert target.read_text() == "done"
    assert not dead.exists() and not legacy.exists() and live.exists() and other.exists()
    assert remove_stale_temps(target) == []


def test_timm_saver_leftover_removed_when_training_starts(tmp_path: Path) -> None:
    from ilnas.train.checkpoint import SafeCheckpointSaver

    leftover = tmp_path / "checkpoints" / "tmp.pth.tar"
    leftover.parent.mkdir()
    leftover.write_bytes(b"half a checkpoint")
    model = torch.nn.Linear(2, 2)
    SafeCheckpointSaver(model, torch.optim.SGD(model.parameters(), lr=0.1), tmp_path / "checkpoints", dict)
    assert not leftover.exists()


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_atomic_writes_get_the_mode_of_a_normal_write(tmp_path: Path, umask: int) -> None:
    script = (f"import os; os.umask({umask}); from ilnas.utils.io import atomic_write_text, atomic_torch_save; "
              f"atomic_write_text({str(tmp_path / 'a.json')!r}, '{{}}'); "
              f"import torch; atomic_torch_save({str(tmp_path / 'b.pt')!r}, {{'x': torch.ones(1)}}); "
              f"open({str(tmp_path / 'plain.txt')!r}, 'w').write('x')")
    subprocess.run([sys.executable, "-c", script], check=True)
    plain = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert plain == 0o666 & ~umask
    for name in ("a.json", "b.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == plain, name


def test_atomic_write_keeps_an_existing_files_mode(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text("{}")
    path.chmod(0o640)
    atomic_write_text(path, json.dumps({"a": 1}))
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and json.loads(path.read_text()) == {"a": 1}


def test_unwritable_output_is_one_known_error(tmp_path: Path) -> None:
    from ilnas.errors import OutputError

    blocker = tmp_path / "models"
    blocker.write_text("a file where the output directory should be")
    with pytest.raises(OutputError, match="models/search/metrics.json: cannot write") as info:
        atomic_write_text(blocker / "search" / "metrics.json", "{}")
    assert exit_code_of(info.value) == 1 and isinstance(info.value, OSError)
    target = tmp_path / "ok.json"
    target.write_text("old")

    def fail(path: Path) -> None:
        path.write_text("half")
        raise OSError(28, "No space left on device")

    from ilnas.utils.io import atomic_write

    with pytest.raises(OutputError, match="No space left on device"):
        atomic_write(target, fail)
    assert target.read_text() == "old" and not list(tmp_path.glob(".ok.json.*"))
