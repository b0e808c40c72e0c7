"""Fault tests, kill -9: a search and a retraining killed (SIGKILL, no cleanup) with a checkpoint on disk resume
to exactly the result of an uninterrupted run. Real ``ilnas`` processes on tiny configs.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
TIMING = ("epoch_time_s", "train_images_per_s", "eval_images_per_s", "time_s")


def ilnas(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ilnas", *args], cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def kill_when(proc: subprocess.Popen, path: Path, timeout: float = 240) -> None:
    """SIGKILL ``proc`` as soon as ``path`` exists (the first checkpoint is on disk)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"finished before the kill:\n{proc.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL


def finish(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return [{k: v for k, v in row.items() if not k.endswith(TIMING)} for row in csv.DictReader(fh)]


def tensors(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True)
    flat: dict[str, torch.Tensor] = {}

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, torch.Tensor):
            flat[prefix] = node
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}")
        elif isinstance(node, list | tuple):
            for i, v in enumerate(node):
                walk(v, f"{prefix}[{i}]")

    walk(state, "")
    return flat


def assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys() and ta
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key


def test_search_killed_with_a_checkpoint_resumes_to_the_same_result(tmp_path: Path) -> None:
    cfg = tmp_path / "search.yaml"
    cfg.write_text("seed: 3\ndevice: cpu\nsearch: {tasks: [{name: a, dataset: digits, classes: [0, 1]}, "
                   "{name: b, dataset: digits, classes: [2, 3]}], epochs: 3, iterations_per_epoch: 1, channels: 4, "
                   "cells: 3, nodes: 2, batch_size: 16, hypergrad: first_order, eval_bn_images: 16, "
                   "deterministic: true}\n")
    finish(ilnas("search", "-c", str(cfg), "-o", "ref", cwd=tmp_path))
    killed = ilnas("search", "-c", str(cfg), "-o", "run", cwd=tmp_path)
    kill_when(killed, tmp_path / "run" / "checkpoint.pt")
    assert not (tmp_path / "run" / "genotype.json").exists()  # it really was interrupted
    finish(ilnas("search", "-c", str(cfg), "-o", "run", cwd=tmp_path))
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert_same_tensors(ref / "alphas.pt", run / "alphas.pt")
    assert json.loads((ref / "genotype.json").read_text()) == json.loads((run / "genotype.json").read_text())
    assert rows(ref / "history.csv") == rows(run / "history.csv") and len(rows(run / "history.csv")) == 3
    assert not list(run.glob(".*.tmp"))


def test_retrain_killed_with_a_checkpoint_resumes_to_the_same_result(tmp_path: Path) -> None:
    cfg = tmp_path / "retrain.yaml"
    cfg.write_text("seed: 1\ndevice: cpu\nretrain: {epochs: 4, channels: 4, cells: 3, batch_size: 64, "
                   "deterministic: true, task: {name: d3, dataset: digits, classes: [0, 1, 2]}}\n")
    finish(ilnas("retrain", "-c", str(cfg), "-o", "ref", cwd=tmp_path))
    killed = ilnas("retrain", "-c", str(cfg), "-o", "run", cwd=tmp_path)
    kill_when(killed, tmp_path / "run" / "checkpoints" / "last.pth.tar")
    assert not (tmp_path / "run" / "metrics.json").exists()
    finish(ilnas("retrain", "-c", str(cfg), "-o", "run", cwd=tmp_path))
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert rows(ref / "history.csv") == rows(run / "history.csv") and len(rows(run / "history.csv")) == 4
    final = [p.name for p in ref.glob("*.pth")] or ["checkpoints/last.pth.tar"]
    for name in final:
        assert_same_tensors(ref / name, run / name)
    metrics_ref, metrics_run = (json.loads((d / "metrics.json").read_text()) for d in (ref, run))
    assert (metrics_ref["top1"], metrics_ref["loss"]) == (metrics_run["top1"], metrics_run["loss"])
