"""Data-parallel search under torchrun: every rank holds the same supernet and the same architecture.

The known failure of multi-GPU DARTS is architectures that drift apart between replicas. Here nothing is
wrapped in DistributedDataParallel (hypergradients take ``autograd.grad`` through virtual steps, which DDP
does not support); instead every gradient the search uses is averaged across ranks before it is used: the
real weight gradients before each SGD step, and inside the hypergradient engine every gradient of a virtual
step, of a validation loss and of a central difference (see :func:`SearchWorld.mean`). BatchNorm takes its
statistics over the global batch (:class:`GlobalBatchNorm2d`), so a W-rank search with global batch B
computes what one process computes with batch B. The architecture starts from rank 0's and a cheap
checksum compares it across ranks every ``sync_check_every`` iterations.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ilnas.utils.distributed import DistContext, setup_distributed

_SYNC = {"on": True}


class ArchitectureDivergedError(RuntimeError):
    """The ranks no longer hold the same architecture: the message names the iteration and the checksums."""


@contextlib.contextmanager
def local_statistics() -> Iterator[None]:
    """BatchNorm on each rank's own batch inside this block (evaluation runs the same full data everywhere)."""
    previous, _SYNC["on"] = _SYNC["on"], False
    try:
        yield
    finally:
        _SYNC["on"] = previous


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Differentiable all-reduce (its backward all-reduces the gradient): torch.distributed.nn's."""
    from torch.distributed.nn.functional import all_reduce

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated in favour of functional collectives
        return all_reduce(t)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the batches of all ranks (CPU/gloo and CUDA/nccl).

    torch's SyncBatchNorm is GPU-only and its backward is not twice differentiable (the exact hypergradient
    needs that); this one is built from differentiable ops and a differentiable all-reduce. With one process
    (or outside training) it is plain BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scaled(x, None)

    def scaled(self, x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        """``scale * bn(x)`` (the fused mixed op passes its mixing weight as the scale of an affine-free BN)."""
        if not (self.training and _SYNC["on"] and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            y = super().forward(x)
            return y if scale is None else y * scale[None, :, None, None]
        # two passes (mean, then squared deviations): E[x^2] - E[x]^2 loses digits in float32
        count = torch.tensor([float(x.shape[0] * x.shape[2] * x.shape[3])], device=x.device, dtype=x.dtype)
        stats = _all_reduce_sum(torch.cat([x.sum(dim=(0, 2, 3)), count]))
        n = stats[-1]
        mean = stats[:-1] / n
        centered = x - mean[None, :, None, None]
        var = _all_reduce_sum((centered * centered).sum(dim=(0, 2, 3))) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * n.detach() / (n.detach() - 1))
        y = centered * torch.rsqrt(var[None, :, None, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y if scale is None else y * scale[None, :, None, None]


def use_global_batchnorm(model: nn.Module) -> nn.Module:
    """Turn every BatchNorm2d of ``model`` into a GlobalBatchNorm2d in place (same parameters and buffers)."""
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = GlobalBatchNorm2d
    return model


@dataclass
class SearchWorld:
    """This process's place in a (possibly one-process) search: rank, world size, device."""

    dist_ctx: DistContext = field(default_factory=DistContext)

    @classmethod
    def from_env(cls, device_name: str = "auto") -> SearchWorld:
        """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
        return cls(setup_distributed(device_name))

    @property
    def rank(self) -> int:
        return self.dist_ctx.rank

    @property
    def world_size(self) -> int:
        return self.dist_ctx.world_size

    @property
    def distributed(self) -> bool:
        return self.dist_ctx.distributed

    @property
    def is_main(self) -> bool:
        return self.dist_ctx.is_main

    def mean(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Average over ranks, differentiably (used on every gradient inside the hypergradient engine)."""
        if not self.distributed:
            return list(tensors)
        flat = torch.cat([t.reshape(-1) for t in tensors])
        flat = _all_reduce_sum(flat) / self.world_size
        out, start = [], 0
        for t in tensors:
            out.append(flat[start : start + t.numel()].view_as(t))
            start += t.numel()
        return out

    def mean_grads_(self, params: Sequence[nn.Parameter]) -> None:
        """Average ``.grad`` over ranks in place, before a real optimizer step (one flat all-reduce)."""
        if not self.distributed:
            return
        with_grad = [p for p in params if p.grad is not None]
        if not with_grad:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in with_grad])
        dist.all_reduce(flat)
        flat /= self.world_size
        start = 0
        for p in with_grad:
            p.grad.copy_(flat[start : start + p.grad.numel()].view_as(p.grad))
            start += p.grad.numel()

    def broadcast_(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers everywhere: every replica starts identical."""
        if not self.distributed:
            return
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)

    def check_same_architecture(self, arch: nn.Module, iteration: int) -> None:
        """Compare a checksum of the architecture across ranks; stop with the iteration named if they differ."""
        if not self.distributed:
            return
        with torch.no_grad():
            flat = torch.cat([p.detach().double().reshape(-1) for p in arch.parameters()])
            weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
            local = torch.stack([flat.sum(), (flat * weights).sum()]).reshape(1, 2)
            gathered = [torch.zeros_like(local) for _ in range(self.world_size)]
            dist.all_gather(gathered, local)
        sums = torch.cat(gathered)
        if not torch.equal(sums, sums[:1].expand_as(sums)):
            raise ArchitectureDivergedError(
                f"the architecture differs between ranks at iteration {iteration} (checksums per rank: "
                f"{[tuple(round(v, 12) for v in row) for row in sums.tolist()]}); the search is stopped")

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        self.dist_ctx.close()


def check_global_batch(batch_size: int, world_size: int) -> None:
    """``search.batch_size`` is the global batch: each of the ranks takes ``batch_size / world_size``."""
    from ilnas.errors import InputError
    from ilnas.utils.checks import global_batch_error

    error = global_batch_error("search.batch_size", batch_size, world_size)
    if error:
        raise InputError(error)  # one block, exit 2 (under torchrun: every rank meets it, rank 0 prints it)


def check_resume_world(path: str | os.PathLike, world_size: int) -> None:
    """Before torchrun is launched: an unfinished search's checkpoint resumes only on the world size it was
    written on (the data shards and the batch statistics depend on it); :class:`CheckpointError` otherwise.

    The same rule the search applies when it loads the checkpoint, checked by the launcher so that a refusal
    costs no process start. A checkpoint of other search code is set aside by the search, so it passes here."""
    from ilnas.search import provenance
    from ilnas.search.checkpoint import CheckpointError, load_checkpoint

    path = Path(path)
    if not path.is_file():
        return
    state = load_checkpoint(path)
    if state.get("code_version") != provenance.code_version():
        return
    saved = int(state.get("world_size", 1))
    if saved != world_size:
        raise CheckpointError(f"{path}: written by a search on {saved} process(es), distributed asks for "
                              f"{world_size} (nproc_per_node x nnodes); resume with the same distributed settings "
                              "(the data shards and batch statistics depend on them) or delete it to start over")
