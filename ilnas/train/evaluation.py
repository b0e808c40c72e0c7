"""Evaluation shared by the training loop and the final test: per-rank shards, loss / top-1 / top-k, images/s.

Every rank evaluates a disjoint slice and the sums are reduced, so a metric counts each image once."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from contextlib import nullcontext

import torch
from timm.utils import accuracy
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from ilnas.utils.distributed import DistContext, all_reduce_sum


def progress_enabled(ctx: DistContext) -> bool:
    """Progress bars only on rank 0 and only on a terminal (no bar spam in DVC / Prefect logs)."""
    return ctx.is_main and sys.stderr.isatty()


def shard(dataset: Dataset, ctx: DistContext) -> Dataset:
    """Every rank evaluates a disjoint slice (no padding, so reduced metrics count each image once)."""
    if not ctx.distributed:
        return dataset
    return Subset(dataset, list(range(ctx.rank, len(dataset), ctx.world_size)))


def eval_loader(dataset: Dataset, batch_size: int, ctx: DistContext, num_workers: int = 0) -> DataLoader:
    return DataLoader(shard(dataset, ctx), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=ctx.device.type == "cuda")


def to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool):
    x = x.to(device, non_blocking=True)
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, ctx: DistContext, num_classes: int, amp: bool = False,
             channels_last: bool = False, max_batches: int | None = None, desc: str = "eval") -> dict[str, float]:
    """Loss, top-1 and top-k (k = min(5, num_classes)) as fractions, and images/s, reduced over ranks."""
    model.eval()
    k = min(5, num_classes)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    loss_sum = correct1 = correctk = n = 0.0
    seconds = 0.0
    autocast = torch.autocast("cuda", dtype=torch.float16) if amp else nullcontext()
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress_enabled(ctx))
    for i, (x, y) in enumerate(bar):
        if max_batches is not None and i >= max_batches:
            break
        x, y = to_device(x, y, ctx.device, channels_last)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        start = time.perf_counter()
        with autocast:
            out = model(x)
        if isinstance(out, tuple):
            out = out[0]
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        seconds += time.perf_counter() - start
        out = out.float()
        bs = y.shape[0]
        acc1, acck = accuracy(out, y, topk=(1, k))
        loss_sum += float(loss_fn(out, y))
        correct1 += round(float(acc1) * bs / 100.0)
        correctk += round(float(acck) * bs / 100.0)
        n += bs
    loss_sum, correct1, correctk, n, seconds_sum = all_reduce_sum([loss_sum, correct1, correctk, n, seconds], ctx)
    if n == 0:
        raise ValueError(f"{desc}: the evaluation set is empty")
    # ranks run in parallel: throughput is all images over the mean per-rank time
    per_rank_seconds = seconds_sum / ctx.world_size
    return {
        "loss": loss_sum / n,
        "top1": correct1 / n,
        "top5": correctk / n,
        "topk": k,
        "n": int(n),
        "images_per_s": n / per_rank_seconds if per_rank_seconds > 0 else float("inf"),
    }
