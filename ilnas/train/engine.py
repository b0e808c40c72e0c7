"""The training loop shared by retraining and transfer, assembled from timm's parts.

timm provides the optimizer and scheduler (``ilnas.train.optim``), Mixup/CutMix, the
losses (LabelSmoothingCrossEntropy, SoftTargetCrossEntropy), ModelEmaV3, CheckpointSaver, NativeScaler
(AMP), accuracy and AverageMeter. What is ours: LeRaC, the DARTS drop-path ramp, the auxiliary loss,
exact resume (RNG + data order per epoch), DDP sharding and metric reduction (``ilnas.train.evaluation``),
CSV/JSON outputs.

This module owns a run's files: ``fit`` composes the parts of an epoch (:mod:`ilnas.train.loop`: build,
train_one_epoch, validate) with checkpoints, resume, history.csv and the final weights.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

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
from ilnas.train.distributed import DistContext, barrier
from ilnas.train.loop import EpochTimes, Job, Trainer, TrainState, begin_epoch, build, train_one_epoch, validate
from ilnas.utils.device import rng_state, set_rng_state
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


def make_saver(t: Trainer, state: TrainState, ckpt_dir: Path,
               identity: dict[str, Any]) -> SafeCheckpointSaver | None:
    """Rank 0's checkpoint writer (it creates ``ckpt_dir``); each file carries what an exact resume restores."""
    if not t.job.ctx.is_main:
        return None

    def extra_state() -> dict[str, Any]:
        return {
            "scheduler": t.scheduler.state_dict(),
            "rng": rng_state(),
            "history": state.history,
            "num_updates": state.num_updates,
            "identity": identity,
        }

    return SafeCheckpointSaver(t.model, t.optimizer, ckpt_dir, extra_state, model_ema=t.model_ema,
                               amp_scaler=t.loss_scaler)


def resume_from(t: Trainer, state: TrainState, saver: SafeCheckpointSaver | None, last_path: Path,
                identity: dict[str, Any]) -> int:
    """Restore weights, optimizer, schedule, scaler, saver, RNG and history from ``last_path``; returns the
    epoch to continue with (counted from 0). A checkpoint of another run, or one missing a part, is an error."""
    state_file = load_checkpoint_file(last_path)
    saved_identity = state_file["extra"].get("identity", {})
    diffs = config_mismatch(saved_identity, identity, ignore=tuple(f"config.{k}" for k in RESUME_IGNORED))
    if diffs:
        raise CheckpointError(
            f"{last_path}: checkpoint belongs to a different run: {'; '.join(diffs)}. "
            "Use a fresh output directory or resume=False (--no-resume) to start over."
        )
    load_module_state(last_path, t.model, state_file["state_dict"])
    if t.model_ema is not None:
        if "state_dict_ema" not in state_file:
            raise CheckpointError(f"{last_path}: ema is on but the checkpoint has no 'state_dict_ema'")
        load_module_state(last_path, t.model_ema.module, state_file["state_dict_ema"], "state_dict_ema")
    try:
        t.optimizer.load_state_dict(state_file["optimizer"])
        t.scheduler.load_state_dict(state_file["extra"]["scheduler"])
        if t.loss_scaler is not None and t.loss_scaler.state_dict_key in state_file:
            t.loss_scaler.load_state_dict(state_file[t.loss_scaler.state_dict_key])
        if saver is not None and "saver" in state_file:
            saver.load_state_dict(state_file["saver"])
        set_rng_state(state_file["extra"]["rng"])
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{last_path}: cannot restore training state ({type(exc).__name__}: {exc})") from exc
    state.history = list(state_file["extra"]["history"])
    state.num_updates = int(state_file["extra"]["num_updates"])
    barrier(t.job.ctx)
    return int(state_file["epoch"]) + 1


def end_epoch(t: Trainer, state: TrainState, saver: SafeCheckpointSaver | None, epoch: int, row: dict[str, Any],
              out_dir: Path, callbacks: Sequence[EpochCallback]) -> None:
    """The epoch's row joins the history; rank 0 checkpoints, writes history.csv, logs one line, runs callbacks."""
    job = t.job
    state.history.append(row)
    if saver is not None:
        saver.save_checkpoint(epoch, metric=None)  # no "best" file: the final weights are the result
        atomic_write_csv(out_dir / "history.csv", state.history)
        log.info("%s", epoch_line(job.desc, row, job.cfg.epochs, job.eval_split))
        for cb in callbacks:
            cb(epoch + 1, dict(row))
    barrier(job.ctx)


def finish(t: Trainer, state: TrainState, out_dir: Path, last_path: Path, resumed_from: int | None) -> FitResult:
    """Save the one set of weights the run reports (the last epoch's, EMA when on) and say what was trained."""
    history = state.history
    best_metric = best_epoch = None
    if history:
        best = max(history, key=lambda r: (r["metric"], -r["epoch"]))
        best_metric, best_epoch = best["metric"], best["epoch"]
    eval_model = t.model_ema.module if t.model_ema is not None else t.model
    weights = FINAL_EMA if t.model_ema is not None else FINAL
    final_path = out_dir / FINAL_WEIGHTS
    if t.job.ctx.is_main:
        save_final_weights(final_path, eval_model, weights, epoch=len(history))
    barrier(t.job.ctx)
    return FitResult(
        model=t.model,
        eval_model=eval_model,
        history=history,
        best_metric=best_metric,
        best_epoch=best_epoch,
        last_checkpoint=last_path,
        final_weights=final_path,
        weights=weights,
        resumed_from=resumed_from,
    )


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
    t = build(Job(cfg, ctx, num_classes, desc, eval_split), model, train_ds, eval_ds, lerac)
    identity = identity or {}
    state = TrainState()
    saver = make_saver(t, state, out_dir / "checkpoints", identity)
    start_epoch, resumed_from = 0, None
    last_path = out_dir / "checkpoints" / LAST
    if resume and last_path.exists():
        start_epoch = resumed_from = resume_from(t, state, saver, last_path, identity)
    prev_metric: float | None = state.history[-1].get("metric") if state.history else None
    for epoch in range(start_epoch, cfg.epochs):
        row = begin_epoch(t, epoch, prev_metric)
        times: EpochTimes = train_one_epoch(t, state, epoch, row)
        metric = validate(t, row)
        row["metric"] = metric
        row["train_steps"] = len(t.train_loader)  # per rank: a DistributedSampler shard is 1/world of the data
        row["epoch_time_s"] = time.perf_counter() - times.started
        row["train_images_per_s"] = times.n_seen / times.train_time if times.train_time > 0 else float("inf")
        end_epoch(t, state, saver, epoch, row, out_dir, callbacks)
        prev_metric = metric
    return finish(t, state, out_dir, last_path, resumed_from)
