"""One epoch of retraining or transfer: the parts built once per run, a training pass and its evaluation.

Nothing here reads or writes a file: checkpoints, resume and outputs are :mod:`ilnas.train.engine`'s job, which
composes these parts into ``fit``. The order of every operation (RNG draws included) is what exact resume and
the resume tests rely on: move nothing between these functions without rerunning them.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.utils import AverageMeter, ModelEmaV3, NativeScaler, accuracy, dispatch_clip_grad, distribute_bn
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from ilnas.train.config import LeRaCConfig, _TrainCommon
from ilnas.train.distributed import DistContext, all_reduce_sum
from ilnas.train.evaluation import eval_loader, evaluate, progress_enabled, to_device
from ilnas.train.optim import build_optimizer, group_lrs
from ilnas.utils.device import amp_enabled


@dataclass(frozen=True)
class Job:
    """What every part of a run reads and nothing changes: one argument instead of five in each signature."""

    cfg: _TrainCommon
    ctx: DistContext
    num_classes: int
    desc: str = "train"
    eval_split: str = "val"  # what the eval set is: names the history's columns (val_top1 or test_top1)


@dataclass
class Trainer:
    """The parts ``build`` makes once per run: the model, its optimizer and schedule, the losses and the data."""

    job: Job
    model: nn.Module
    ddp_model: nn.Module  # the model itself, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a timm Scheduler, or LeRaCScheduler wrapping one (same step/state API)
    loss_scaler: NativeScaler | None
    model_ema: ModelEmaV3 | None
    mixup_fn: Mixup | None
    train_loss_fn: nn.Module
    sampler: DistributedSampler
    loader_gen: torch.Generator
    train_loader: DataLoader
    val_loader: DataLoader
    use_amp: bool
    channels_last: bool


@dataclass
class TrainState:
    """What changes as a run goes and what a checkpoint keeps of it besides the weights (with the RNG state)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    num_updates: int = 0


@dataclass
class EpochTimes:
    """A training pass's clock and image count: the epoch's row gets its time and images/s after validation."""

    started: float  # time.perf_counter() before the first batch
    train_time: float
    n_seen: float


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _losses(cfg: _TrainCommon, num_classes: int) -> tuple[Mixup | None, nn.Module]:
    """Mixup/CutMix needs soft targets, so it decides the training loss; label smoothing otherwise."""
    if cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0:
        mixup_fn = Mixup(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha,
                         label_smoothing=cfg.label_smoothing, num_classes=num_classes)
        return mixup_fn, SoftTargetCrossEntropy()
    if cfg.label_smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=cfg.label_smoothing)
    return None, nn.CrossEntropyLoss()


def _train_loader(job: Job, train_ds: Dataset, drop_last: bool) -> tuple[DistributedSampler, torch.Generator,
                                                                           DataLoader]:
    """Data order is a pure function of (seed, epoch) and the same permutation for every world size: rank r
    takes positions r, r + W, ... so the union of the ranks' k-th batches is the single process's k-th batch."""
    cfg, ctx = job.cfg, job.ctx
    batch = cfg.per_process_batch(ctx.world_size)
    sampler = DistributedSampler(train_ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=cfg.seed,
                                 drop_last=drop_last)
    loader_gen = torch.Generator()
    train_loader = DataLoader(train_ds, batch_size=batch, sampler=sampler, num_workers=cfg.num_workers,
                              pin_memory=ctx.device.type == "cuda", drop_last=drop_last,
                              generator=loader_gen, persistent_workers=False)
    if len(train_loader) == 0:
        raise ValueError(f"{job.desc}: no training batches (train set {len(train_ds)} images, batch {cfg.batch_size} "
                         f"= {batch} per process x {ctx.world_size})")
    return sampler, loader_gen, train_loader


def build(job: Job, model: nn.Module, train_ds: Dataset, eval_ds: Dataset, lerac: LeRaCConfig | None) -> Trainer:
    """Everything a run trains with, on its device; the model is moved (and wrapped for DDP), nothing trained."""
    cfg, ctx = job.cfg, job.ctx
    device = ctx.device
    use_amp = amp_enabled(device, cfg.amp)
    channels_last = cfg.channels_last and device.type == "cuda"
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer, scheduler = build_optimizer(model, cfg, lerac)
    loss_scaler = NativeScaler(device=device.type) if use_amp else None
    model_ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema else None
    mixup_fn, train_loss_fn = _losses(cfg, job.num_classes)
    sampler, loader_gen, train_loader = _train_loader(job, train_ds, drop_last=mixup_fn is not None)
    val_loader = eval_loader(eval_ds, cfg.batch_size, ctx, cfg.num_workers)
    ddp_model: nn.Module = model
    if ctx.distributed:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return Trainer(job=job, model=model, ddp_model=ddp_model, optimizer=optimizer, scheduler=scheduler,
                   loss_scaler=loss_scaler, model_ema=model_ema, mixup_fn=mixup_fn, train_loss_fn=train_loss_fn,
                   sampler=sampler, loader_gen=loader_gen, train_loader=train_loader, val_loader=val_loader,
                   use_amp=use_amp, channels_last=channels_last)


def begin_epoch(t: Trainer, epoch: int, prev_metric: float | None) -> dict[str, Any]:
    """Set the epoch's rate, drop path and data order (counted from 0); the row's first columns as they stand."""
    cfg = t.job.cfg
    unwrapped = _unwrap(t.model)
    t.scheduler.step(epoch, prev_metric)
    if hasattr(unwrapped, "drop_path_prob"):
        # DARTS: drop-path probability ramps linearly from 0 to the target over the epochs
        unwrapped.drop_path_prob = getattr(unwrapped, "drop_path_rate", 0.0) * epoch / max(cfg.epochs, 1)
    t.sampler.set_epoch(epoch)
    t.loader_gen.manual_seed(cfg.seed * 100019 + epoch)
    return {"epoch": epoch + 1, **group_lrs(t.optimizer),
            "drop_path_prob": float(getattr(unwrapped, "drop_path_prob", 0.0))}


def train_step(t: Trainer, state: TrainState, x: torch.Tensor, y: torch.Tensor,
               epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimizer update (and EMA update) on one batch; returns the loss, the logits and the labels on device."""
    cfg, device = t.job.cfg, t.job.ctx.device
    x, y = to_device(x, y, device, t.channels_last)
    target = y
    if t.mixup_fn is not None:
        x, target = t.mixup_fn(x, y)
    with torch.autocast(device.type, dtype=torch.float16) if t.use_amp else nullcontext():
        out = t.ddp_model(x)
        if isinstance(out, tuple):
            logits, aux = out
            loss = t.train_loss_fn(logits, target) + cfg.auxiliary_weight * t.train_loss_fn(aux, target)
        else:
            logits = out
            loss = t.train_loss_fn(logits, target)
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"{t.job.desc}: non-finite loss {loss.item()} at epoch {epoch}; "
                                 "lower lr or enable grad_clip")
    t.optimizer.zero_grad(set_to_none=True)
    if t.loss_scaler is not None:
        t.loss_scaler(loss, t.optimizer, clip_grad=cfg.grad_clip, parameters=t.model.parameters())
    else:
        loss.backward()
        if cfg.grad_clip:
            dispatch_clip_grad(t.model.parameters(), cfg.grad_clip)
        t.optimizer.step()
    state.num_updates += 1
    if t.model_ema is not None:
        t.model_ema.update(t.model, step=state.num_updates)
    return loss, logits, y


def train_one_epoch(t: Trainer, state: TrainState, epoch: int, row: dict[str, Any]) -> EpochTimes:
    """One pass over this rank's shard; adds train_loss and train_top1 (reduced over ranks) to ``row``."""
    job = t.job
    device = job.ctx.device
    t.ddp_model.train()
    loss_m, acc_m = AverageMeter(), AverageMeter()
    t0 = time.perf_counter()
    bar = tqdm(t.train_loader, total=len(t.train_loader), desc=f"{job.desc} {epoch + 1}/{job.cfg.epochs}",
               leave=False, disable=not progress_enabled(job.ctx))
    for x, y in bar:
        loss, logits, y = train_step(t, state, x, y, epoch)
        bs = y.shape[0]
        loss_m.update(loss.item(), bs)
        acc_m.update(float(accuracy(logits.detach().float(), y, topk=(1,))[0]) / 100.0, bs)
        bar.set_postfix(loss=f"{loss_m.avg:.3f}", top1=f"{acc_m.avg:.3f}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_time = time.perf_counter() - t0
    if job.ctx.distributed:  # BN running stats drift per rank between DDP's per-forward broadcasts: rank 0's
        distribute_bn(t.model, job.ctx.world_size, reduce=False)
    loss_sum, acc_sum, n_seen = all_reduce_sum([loss_m.sum, acc_m.sum, float(loss_m.count)], job.ctx)
    row.update(train_loss=loss_sum / n_seen, train_top1=acc_sum / n_seen)
    return EpochTimes(started=t0, train_time=train_time, n_seen=n_seen)


def validate(t: Trainer, row: dict[str, Any]) -> float:
    """Evaluate the model, then its EMA when on, into ``row``; the epoch's metric is the last one's top-1."""
    job = t.job
    split = job.eval_split
    val = evaluate(t.model, t.val_loader, job.ctx, job.num_classes, t.use_amp, t.channels_last,
                   desc=f"{job.desc} eval")
    row.update({f"{split}_loss": val["loss"], f"{split}_top1": val["top1"], f"{split}_top5": val["top5"]})
    metric = val["top1"]
    if t.model_ema is not None:
        val_ema = evaluate(t.model_ema.module, t.val_loader, job.ctx, job.num_classes, t.use_amp, t.channels_last,
                           desc=f"{job.desc} eval ema")
        row.update({f"{split}_loss_ema": val_ema["loss"], f"{split}_top1_ema": val_ema["top1"],
                    f"{split}_top5_ema": val_ema["top5"]})
        metric = val_ema["top1"]
    return metric
