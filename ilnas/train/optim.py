"""The optimizer and learning-rate schedule of retraining and transfer: timm's factories, LeRaC's groups, and
the schedules timm lacks (``ilnas.train.schedules``)."""

from __future__ import annotations

from typing import Any

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn

from ilnas.train.config import LeRaCConfig, _TrainCommon
from ilnas.train.lerac import GROUP_KEY, LeRaCScheduler, lerac_param_groups
from ilnas.train.schedules import SCHEDULES, create_schedule


def build_optimizer(model: nn.Module, cfg: _TrainCommon, lerac: LeRaCConfig | None):
    """timm optimizer + scheduler; with LeRaC, one param group per depth group and a wrapping scheduler.

    The starting rate is ``cfg.effective_lr()`` (linear scaling when ``lr_base_batch`` is set); weight decay
    covers norms and biases only with ``wd_on_norm_and_bias`` (DARTS), else timm's rule skips 1-d tensors.
    ``opt: momentum`` is timm's plain heavy-ball SGD (DARTS' torch.optim.SGD); timm's ``sgd`` is Nesterov.
    """
    lr = cfg.effective_lr()
    opt_kwargs: dict[str, Any] = {}
    if cfg.opt.lower() in ("sgd", "nesterov", "momentum"):
        opt_kwargs["momentum"] = cfg.momentum
    if lerac is not None and lerac.enabled:
        params = lerac_param_groups(model, cfg.weight_decay, decay_all=cfg.wd_on_norm_and_bias)
        optimizer = create_optimizer_v2(params, opt=cfg.opt, lr=lr, weight_decay=cfg.weight_decay, **opt_kwargs)
        sched = _scheduler(optimizer, cfg, max(cfg.epochs - lerac.epochs, 1), warmup_epochs=0)
        return optimizer, LeRaCScheduler(optimizer, sched, lr, lerac.min_ratio, lerac.epochs)
    optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=lr, weight_decay=cfg.weight_decay,
                                    filter_bias_and_bn=not cfg.wd_on_norm_and_bias, **opt_kwargs)
    return optimizer, _scheduler(optimizer, cfg, max(cfg.epochs, 1), cfg.warmup_epochs)


def _scheduler(optimizer: torch.optim.Optimizer, cfg: _TrainCommon, epochs: int, warmup_epochs: int):
    """timm's scheduler by name, or one of ours (``ilnas.train.schedules``) for the names timm lacks."""
    if cfg.sched in SCHEDULES:
        return create_schedule(optimizer, cfg.sched, epochs, warmup_epochs)
    sched, _ = create_scheduler_v2(optimizer, sched=cfg.sched, num_epochs=epochs, warmup_epochs=warmup_epochs,
                                   warmup_lr=cfg.warmup_lr, min_lr=cfg.lr_min, decay_epochs=cfg.decay_epochs,
                                   decay_rate=cfg.decay_rate)
    return sched


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """``lr`` (the highest) plus, with LeRaC groups, ``lr_g{j}`` per depth group."""
    row: dict[str, float] = {"lr": max(g["lr"] for g in optimizer.param_groups)}
    if any(GROUP_KEY in g for g in optimizer.param_groups):
        per: dict[int, float] = {}
        for g in optimizer.param_groups:
            per.setdefault(int(g[GROUP_KEY]), g["lr"])
        row.update({f"lr_g{j}": per[j] for j in sorted(per)})
    return row
