"""The training loop shared by retraining and transfer, assembled from timm's parts.

timm provides the optimizer and scheduler (``ilnas.train.optim``), Mixup/CutMix, the
losses (LabelSmoothingCrossEntropy, SoftTargetCrossEntropy), ModelEmaV3, CheckpointSaver, NativeScaler
(AMP), accuracy and AverageMeter. What is ours: LeRaC, the DARTS drop-path ramp, the auxiliary loss,
exact resume (RNG + data order per epoch), DDP sharding and metric reduction (``ilnas.train.evaluation``),
CSV/JSON outputs.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.utils import AverageMeter, ModelEmaV3, NativeScaler, accuracy, dispatch_clip_grad
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from ilnas.train.checkpoint import (
    FINAL,
    FINAL_EMA,
    FINAL_WEIGHTS,
    LAST,
    CheckpointError,
    SafeCheckpointSaver,
    config_mismatch,
    load_checkpoint_file,
    load_module_state,
    save_final_weights,
)
from ilnas.train.config import LeRaCConfig, _TrainCommon
from ilnas.train.distributed import DistContext, all_reduce_sum, barrier
from ilnas.train.evaluation import eval_loader, evaluate, progress_enabled, to_device
from ilnas.train.optim import build_optimizer, group_lrs
from ilnas.utils.device import amp_enabled, rng_state, set_rng_state
from ilnas.utils.io import atomic_write_csv

EpochCallback = Callable[[int, dict[str, Any]], None]  # (epoch counted from 1, history row)
log = logging.getLogger("ilnas.train")
# config keys that may differ between an interrupted run and its resume (they do not change the result)
RESUME_IGNORED = ("num_workers", "device", "log_interval", "data_root", "checkpoint", "eval_batches")


def epoch_line(desc: str, row: dict[str, Any], epochs: int, eval_split: str = "val") -> str:
    """One short line per epoch, 4 significant digits: what a log (DVC, Prefect, a file) keeps of an epoch."""
    keys = ("train_loss", "train_top1", f"{eval_split}_loss", f"{eval_split}_top1", f"{eval_split}_top1_ema", "lr")
    parts = [f"{k} {row[k]:.4g}" for k in keys if isinstance(row.get(k), int | float)]
    return f"{desc} epoch {row['epoch']}/{epochs}: " + " ".join(parts) + f" ({row.get('epoch_time_s', 0.0):.1f} s)"


@dataclass
class FitResult:
    """What ``fit`` trained. One set of weights is the result: ``eval_model`` after the last epoch (its EMA when
    ``ema`` is on), saved as ``final_weights``; ``weights`` names which (``final`` or ``final_ema``)."""

    model: nn.Module
    eval_model: nn.Module  # EMA weights when ema is on, else the model
    history: list[dict[str, Any]]
    best_metric: float | None  # max per-epoch eval top-1: a monitoring figure, never the reported weights
    best_epoch: int | None
    last_checkpoint: Path
    final_weights: Path
    weights: str
    resumed_from: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def fit(
    cfg: _TrainCommon,
    model: nn.Module,
    train_ds: Dataset,
    eval_ds: Dataset,
    num_classes: int,
    out_dir: Path,
    ctx: DistContext,
    *,
    resume: bool = True,
    callbacks: Sequence[EpochCallback] = (),
    lerac: LeRaCConfig | None = None,
    identity: dict[str, Any] | None = None,
    desc: str = "train",
    eval_split: str = "val",
) -> FitResult:
    """Train ``model`` for ``cfg.epochs`` epochs, evaluating on ``eval_ds`` after each, with checkpoints.

    ``identity`` (config + genotype as plain data) is stored in every checkpoint; resuming from a checkpoint
    whose identity differs raises CheckpointError instead of silently mixing two runs. ``eval_split`` names
    what ``eval_ds`` is (``val`` or ``test``): the history's columns say so (``test_top1``, never a test
    accuracy called ``val_top1``). History rows and callbacks count epochs from 1, as the search does.
    """
    device = ctx.device
    use_amp = amp_enabled(device, cfg.amp)
    channels_last = cfg.channels_last and device.type == "cuda"
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer, scheduler = build_optimizer(model, cfg, lerac)
    loss_scaler = NativeScaler(device=device.type) if use_amp else None
    model_ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema else None

    mixup_fn = None
    if cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0:
        mixup_fn = Mixup(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha,
                         label_smoothing=cfg.label_smoothing, num_classes=num_classes)
        train_loss_fn: nn.Module = SoftTargetCrossEntropy()
    elif cfg.label_smoothing > 0:
        train_loss_fn = LabelSmoothingCrossEntropy(smoothing=cfg.label_smoothing)
    else:
        train_loss_fn = nn.CrossEntropyLoss()

    # data order is a pure function of (seed, epoch) and the same permutation for every world size: rank r
    # takes positions r, r + W, ... so the union of the ranks' k-th batches is the single process's k-th batch
    batch = cfg.per_process_batch(ctx.world_size)
    sampler = DistributedSampler(train_ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=cfg.seed,
                                 drop_last=mixup_fn is not None)
    loader_gen = torch.Generator()
    train_loader = DataLoader(train_ds, batch_size=batch, sampler=sampler, num_workers=cfg.num_workers,
                              pin_memory=device.type == "cuda", drop_last=mixup_fn is not None,
                              generator=loader_gen, persistent_workers=False)
    if len(train_loader) == 0:
        raise ValueError(f"{desc}: no training batches (train set {len(train_ds)} images, batch {cfg.batch_size} "
                         f"= {batch} per process x {ctx.world_size})")
    val_loader = eval_loader(eval_ds, cfg.batch_size, ctx, cfg.num_workers)

    ddp_model: nn.Module = model
    if ctx.distributed:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    ckpt_dir = out_dir / "checkpoints"
    history: list[dict[str, Any]] = []
    num_updates = 0
    identity = identity or {}

    def extra_state() -> dict[str, Any]:
        return {
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "history": history,
            "num_updates": num_updates,
            "identity": identity,
        }

    saver = None
    if ctx.is_main:
        saver = SafeCheckpointSaver(model, optimizer, ckpt_dir, extra_state, model_ema=model_ema,
                                    amp_scaler=loss_scaler)

    start_epoch, resumed_from = 0, None
    last_path = ckpt_dir / LAST
    if resume and last_path.exists():
        state = load_checkpoint_file(last_path)
        saved_identity = state["extra"].get("identity", {})
        diffs = config_mismatch(saved_identity, identity, ignore=tuple(f"config.{k}" for k in RESUME_IGNORED))
        if diffs:
            raise CheckpointError(
                f"{last_path}: checkpoint belongs to a different run: {'; '.join(diffs)}. "
                "Use a fresh output directory or resume=False (--no-resume) to start over."
            )
        load_module_state(last_path, model, state["state_dict"])
        if model_ema is not None:
            if "state_dict_ema" not in state:
                raise CheckpointError(f"{last_path}: ema is on but the checkpoint has no 'state_dict_ema'")
            load_module_state(last_path, model_ema.module, state["state_dict_ema"], "state_dict_ema")
        try:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["extra"]["scheduler"])
            if loss_scaler is not None and loss_scaler.state_dict_key in state:
                loss_scaler.load_state_dict(state[loss_scaler.state_dict_key])
            if saver is not None and "saver" in state:
                saver.load_state_dict(state["saver"])
            set_rng_state(state["extra"]["rng"])
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise CheckpointError(f"{last_path}: cannot restore training state ({type(exc).__name__}: {exc})") from exc
        history = list(state["extra"]["history"])
        num_updates = int(state["extra"]["num_updates"])
        start_epoch = resumed_from = int(state["epoch"]) + 1
        barrier(ctx)

    unwrapped = _unwrap(model)
    steps = len(train_loader)
    prev_metric: float | None = history[-1].get("metric") if history else None
    for epoch in range(start_epoch, cfg.epochs):
        scheduler.step(epoch, prev_metric)
        if hasattr(unwrapped, "drop_path_prob"):
            # DARTS: drop-path probability ramps linearly from 0 to the target over the epochs
            unwrapped.drop_path_prob = getattr(unwrapped, "drop_path_rate", 0.0) * epoch / max(cfg.epochs, 1)
        sampler.set_epoch(epoch)
        loader_gen.manual_seed(cfg.seed * 100019 + epoch)
        row: dict[str, Any] = {"epoch": epoch + 1, **group_lrs(optimizer),
                               "drop_path_prob": float(getattr(unwrapped, "drop_path_prob", 0.0))}

        ddp_model.train()
        loss_m, acc_m = AverageMeter(), AverageMeter()
        t0 = time.perf_counter()
        bar = tqdm(train_loader, total=steps, desc=f"{desc} {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not progress_enabled(ctx))
        for x, y in bar:
            x, y = to_device(x, y, device, channels_last)
            target = y
            if mixup_fn is not None:
                x, target = mixup_fn(x, y)
            with torch.autocast(device.type, dtype=torch.float16) if use_amp else nullcontext():
                out = ddp_model(x)
                if isinstance(out, tuple):
                    logits, aux = out
                    loss = train_loss_fn(logits, target) + cfg.auxiliary_weight * train_loss_fn(aux, target)
                else:
                    logits = out
                    loss = train_loss_fn(logits, target)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"{desc}: non-finite loss {loss.item()} at epoch {epoch}; "
                                         "lower lr or enable grad_clip")
            optimizer.zero_grad(set_to_none=True)
            if loss_scaler is not None:
                loss_scaler(loss, optimizer, clip_grad=cfg.grad_clip, parameters=model.parameters())
            else:
                loss.backward()
                if cfg.grad_clip:
                    dispatch_clip_grad(model.parameters(), cfg.grad_clip)
                optimizer.step()
            num_updates += 1
            if model_ema is not None:
                model_ema.update(model, step=num_updates)
            bs = y.shape[0]
            loss_m.update(loss.item(), bs)
            acc_m.update(float(accuracy(logits.detach().float(), y, topk=(1,))[0]) / 100.0, bs)
            bar.set_postfix(loss=f"{loss_m.avg:.3f}", top1=f"{acc_m.avg:.3f}")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_time = time.perf_counter() - t0
        if ctx.distributed:  # BN running stats drift per rank between DDP's per-forward broadcasts
            for buf in model.buffers():
                torch.distributed.broadcast(buf, src=0)
        loss_sum, acc_sum, n_seen = all_reduce_sum([loss_m.sum, acc_m.sum, float(loss_m.count)], ctx)
        row.update(train_loss=loss_sum / n_seen, train_top1=acc_sum / n_seen)

        val = evaluate(model, val_loader, ctx, num_classes, use_amp, channels_last, desc=f"{desc} eval")
        row.update({f"{eval_split}_loss": val["loss"], f"{eval_split}_top1": val["top1"],
                    f"{eval_split}_top5": val["top5"]})
        metric = val["top1"]
        if model_ema is not None:
            val_ema = evaluate(model_ema.module, val_loader, ctx, num_classes, use_amp, channels_last,
                               desc=f"{desc} eval ema")
            row.update({f"{eval_split}_loss_ema": val_ema["loss"], f"{eval_split}_top1_ema": val_ema["top1"],
                        f"{eval_split}_top5_ema": val_ema["top5"]})
            metric = val_ema["top1"]
        row["metric"] = metric
        row["train_steps"] = steps  # per rank: a DistributedSampler shard is 1/world of the data
        row["epoch_time_s"] = time.perf_counter() - t0
        row["train_images_per_s"] = n_seen / train_time if train_time > 0 else float("inf")
        history.append(row)
        prev_metric = metric
        if saver is not None:
            saver.save_checkpoint(epoch, metric=None)  # no "best" file: the final weights are the result
            atomic_write_csv(out_dir / "history.csv", history)
            log.info("%s", epoch_line(desc, row, cfg.epochs, eval_split))
            for cb in callbacks:
                cb(epoch + 1, dict(row))
        barrier(ctx)

    best_metric = best_epoch = None
    if history:
        best = max(history, key=lambda r: (r["metric"], -r["epoch"]))
        best_metric, best_epoch = best["metric"], best["epoch"]
    eval_model = model_ema.module if model_ema is not None else model
    weights = FINAL_EMA if model_ema is not None else FINAL
    final_path = out_dir / FINAL_WEIGHTS
    if ctx.is_main:
        save_final_weights(final_path, eval_model, weights, epoch=len(history))
    barrier(ctx)
    return FitResult(
        model=model,
        eval_model=eval_model,
        history=history,
        best_metric=best_metric,
        best_epoch=best_epoch,
        last_checkpoint=last_path,
        final_weights=final_path,
        weights=weights,
        resumed_from=resumed_from,
    )
