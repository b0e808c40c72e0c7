"""DDP: the retrain entry point under torchrun with 2 CPU processes (gloo) ends with identical weights."""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import subprocess
import sys
import textwrap

import torch

from ilnas.data.spec import TaskConfig
from ilnas.data.tasks import build_task

SCRIPT = textwrap.dedent("""
    import os, sys, torch
    from ilnas.data.spec import TaskConfig
    from ilnas.train import RetrainConfig, retrain
    out = sys.argv[1]
    cfg = RetrainConfig(channels=4, cells=3, epochs=1, batch_size=64, device="cpu", drop_path_rate=0.2,
                        task=TaskConfig(name="d3", dataset="digits", classes=[0, 1, 2]))
    result = retrain(cfg, None, out)
    rank = int(os.environ["RANK"])
    torch.save({k: v.detach().clone() for k, v in result.model.state_dict().items()},
               os.path.join(out, f"weights_rank{rank}.pt"))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_cpu_ranks_agree(tmp_path):
    script = tmp_path / "run_retrain.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(script), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    w0 = torch.load(out / "weights_rank0.pt", weights_only=True)
    w1 = torch.load(out / "weights_rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    for name in w0:
        assert torch.equal(w0[name], w1[name]), f"{name} differs between ranks"
    # identical weights although each rank trained on its own half of the data (DistributedSampler): only
    # DDP's gradient all-reduce makes that possible
    data = build_task(TaskConfig(name="d3", dataset="digits", classes=[0, 1, 2]), seed=0, val_fraction=0.1)
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert int(rows[0]["train_steps"]) == math.ceil(math.ceil(len(data.train) / 2) / 64)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["test_images"] == len(data.test)  # each rank evaluated a shard; counts reduced over ranks
    assert (out / "checkpoints" / "last.pth.tar").exists()
