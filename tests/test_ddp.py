"""DDP: retrain and transfer under torchrun with 2 CPU processes (gloo): identical weights on the ranks, the global
batch split over them (not multiplied), and for transfer the same result as one process on the same global batch."""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
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
    # batch_size 64 is the global batch: 32 per rank, so each rank takes as many steps as one process would
    assert int(rows[0]["train_steps"]) == math.ceil(math.ceil(len(data.train) / 2) / 32)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["per_process_batch"] == 32 and metrics["global_batch"] == 64
    assert metrics["test_images"] == len(data.test)  # each rank evaluated a shard; counts reduced over ranks
    assert (out / "checkpoints" / "last.pth.tar").exists()


TRANSFER_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    from ilnas.train import TransferConfig, transfer
    sys.path.insert(0, sys.argv[3])
    from test_ddp import transfer_config
    result = transfer(transfer_config(), None, sys.argv[2], data_root=sys.argv[1])
    rank = int(os.environ["RANK"])
    torch.save({k: v.detach().clone() for k, v in result.model.state_dict().items()},
               os.path.join(sys.argv[2], f"weights_rank{rank}.pt"))
""")


def transfer_config():
    """The darts recipe with its random augmentations off (scale 1 crops, no flip, no jitter), so one process and
    two ranks see the same pixels; a LayerNorm network (timm's test_convnext), so per-rank BatchNorm statistics
    (DDP's documented difference: SyncBatchNorm needs a GPU) do not enter the comparison."""
    from ilnas.train import TransferConfig

    return TransferConfig(recipe="darts", model="test_convnext", image_size=32, epochs=2, batch_size=16, device="cpu",
                          hflip=0.0, train_scale_min=1.0, color_jitter=None, auxiliary=False, deterministic=True,
                          amp=False)


def _write_folder(root) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("val", 6)):
        for c in range(3):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray((rng.random((20, 20, 3)) * 80 + 60 * c).astype("uint8")).save(d / f"{i}.png")


def test_transfer_two_ranks_match_one_process_on_the_same_global_batch(tmp_path):
    from ilnas.train import transfer

    data = tmp_path / "data"
    _write_folder(data)
    script = tmp_path / "run_transfer.py"
    script.write_text(TRANSFER_SCRIPT)
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(script), str(data), str(out), os.path.dirname(__file__)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    w0 = torch.load(out / "weights_rank0.pt", weights_only=True)
    w1 = torch.load(out / "weights_rank1.pt", weights_only=True)
    for name in w0:
        assert torch.equal(w0[name], w1[name]), f"{name} differs between ranks"

    single = transfer(transfer_config(), None, tmp_path / "single", data_root=data)
    ws = single.model.state_dict()
    for name in ws:  # the same 16-image batches, each split 8 + 8: only float summation order differs
        assert torch.allclose(ws[name], w0[name], atol=1e-5, rtol=1e-4), f"{name}: one process != two ranks"
    ddp = json.loads((out / "metrics.json").read_text())
    one = single.metrics
    assert (ddp["world_size"], ddp["per_process_batch"], one["per_process_batch"]) == (2, 8, 16)
    assert ddp["lr_effective"] == one["lr_effective"] == pytest.approx(0.1 * 16 / 128)  # darts: linear scaling
    assert ddp["top1"] == one["top1"] and ddp["eval_images"] == one["eval_images"] == 18
    assert ddp["loss"] == pytest.approx(one["loss"], rel=1e-4)


def test_transfer_stage_relaunches_under_torchrun(tmp_path, monkeypatch):
    # the distributed section applies to transfer as to retrain: the launching process re-execs under torchrun
    import yaml

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    import stages.common
    import stages.transfer
    from ilnas.params import validate_params

    params = tmp_path / "params.yaml"
    params.write_text("distributed: {nproc_per_node: 2, nnodes: 1}\ntransfer: {batch_size: 64}\n"
                      "tracking: {enabled: false}\n")
    calls = []
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(stages.transfer, "relaunch_under_torchrun",
                        lambda stage, argv, p: calls.append((stage, p.distributed.world_size)) or 0)
    # schema only: the environment checks (data/imagefolder exists) are not what this test is about
    monkeypatch.setattr(stages.common, "load_params", lambda path: validate_params(
        yaml.safe_load(Path(path).read_text()), source=str(path)))
    with pytest.raises(SystemExit) as info:
        stages.transfer.main(["--params", str(params)])
    assert info.value.code == 0 and calls == [("transfer", 2)]
