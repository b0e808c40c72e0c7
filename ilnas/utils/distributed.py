"""torchrun / DistributedDataParallel plumbing: one process per device, gloo on CPU, nccl on GPU.

The search and the training entry points call :func:`setup_distributed`; under ``torchrun --nproc_per_node N``
(WORLD_SIZE > 1 in the environment) it joins the process group, otherwise it is a no-op single-process context.
It lives in ``ilnas.utils`` because both ``ilnas.search`` and ``ilnas.train`` use it and neither imports the other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ilnas.utils.device import resolve_device
from ilnas.utils.launcher import watch_launcher


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # we initialised the process group, so we tear it down

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def setup_distributed(device_name: str = "auto") -> DistContext:
    """Join the torchrun process group when WORLD_SIZE > 1 (or reuse one the caller initialised)."""
    device = resolve_device(device_name)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not dist.is_initialized() and world <= 1:
        return DistContext(device=device)
    watch_launcher()  # a rank of a killed torchrun stops instead of holding the devices
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                       device=device, owns_group=owns)


def all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    """Sum plain numbers over ranks (float64, on the backend's device)."""
    if not ctx.distributed:
        return list(values)
    device = ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()
