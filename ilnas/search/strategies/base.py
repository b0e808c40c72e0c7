"""What every search strategy gets (a context) and must provide (one search iteration)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ilnas.data.loaders import CyclingLoader
from ilnas.hypergrad import InnerHParams, Stage
from ilnas.search.config import SearchConfig
from ilnas.space.architecture import Architecture
from ilnas.space.supernet import Supernet


class SearchDivergedError(FloatingPointError):
    """A loss became NaN/inf: the message names the iteration and the task; the last checkpoint is kept."""


@dataclass
class SearchContext:
    config: SearchConfig
    model: Supernet
    arch: Architecture
    w_optimizer: torch.optim.Optimizer
    task_names: list[str]
    num_classes: list[int]
    train_streams: list[CyclingLoader]
    val_streams: list[CyclingLoader]
    device: torch.device
    amp: bool = False
    a_optimizer: torch.optim.Optimizer | None = None  # built by the runner over strategy.hyper_parameters()
    extra: dict[str, Any] = field(default_factory=dict)
    # optimizer_state: per_model -> one SGD per model k (encoder + head k); shared -> [w_optimizer]
    w_optimizers: list[torch.optim.Optimizer] = field(default_factory=list)
    # data-parallel search: average gradient lists over ranks (the engine's) and .grad in place (real steps)
    grad_mean: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None
    mean_grads_: Callable[[list[nn.Parameter]], None] | None = None

    def optimizer_for(self, task: int) -> torch.optim.Optimizer:
        """The weight optimizer of model ``task`` (the one shared optimizer when the state is shared)."""
        return self.w_optimizers[task] if len(self.w_optimizers) > 1 else self.w_optimizer

    def batch(self, stream: CyclingLoader) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = stream.next()
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp and self.device.type == "cuda")

    def inner_hparams(self, model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None
                      ) -> InnerHParams:
        """The real weight optimizer's settings and momentum buffers, for the virtual steps to imitate.

        With per-model optimizers (and no explicit ``optimizer``) the buffers come per task.
        """
        model = model or self.model

        def buffers(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
            found = {}
            for name, p in model.named_parameters():
                buf = opt.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    found[name] = buf.detach()
            return found

        per_task = optimizer is None and len(self.w_optimizers) > 1
        optimizer = optimizer or self.w_optimizer
        group = optimizer.param_groups[0]
        hp = InnerHParams(momentum=group["momentum"], weight_decay=group["weight_decay"], lam=self.config.lam,
                          grad_mean=self.grad_mean)
        if per_task:
            hp.task_momentum_buffers = {k: buffers(opt) for k, opt in enumerate(self.w_optimizers)}
        else:
            hp.momentum_buffers = buffers(optimizer)
        return hp


class SearchStrategy:
    """One search iteration at a time; the runner owns epochs, schedules, evaluation and checkpoints."""

    name: str = "base"

    def __init__(self, ctx: SearchContext):
        self.ctx = ctx

    def hyper_parameters(self) -> list[nn.Parameter]:
        """Parameters the hyper optimizer (Adam) updates; the architecture by default."""
        return list(self.ctx.arch.parameters())

    def step(self, iteration: int, lr: float, update_arch: bool) -> dict[str, float]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def epoch_extras(self) -> dict[str, Any]:
        """Extra per-epoch history (e.g. class weights), kept beside the alpha history."""
        return {}


def interleaved_stages(ctx: SearchContext, lr: float, model: Supernet | None = None) -> list[Stage]:
    """Draw the batches of one iteration: R rounds x K stages x T inner steps."""
    model = model or ctx.model
    cfg, encoder = ctx.config, model.encoder_names()
    stages = []
    for r in range(cfg.rounds):
        for k, stream in enumerate(ctx.train_streams):
            batches = [ctx.batch(stream) for _ in range(cfg.inner_steps)]
            stages.append(Stage(task=k, names=encoder + model.head_names(k), anchored=encoder,
                                batches=batches, lrs=[lr] * cfg.inner_steps, round=r))
    return stages


def apply_hypergradient(optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
                        grads: list[torch.Tensor]) -> None:
    optimizer.zero_grad(set_to_none=True)
    for p, g in zip(params, grads, strict=True):
        p.grad = g.detach().to(p.dtype)
    optimizer.step()


def train_stages(ctx: SearchContext, stages: list[Stage], arch_weights: dict[str, torch.Tensor], iteration: int,
                 model: Supernet | None = None, optimizer: torch.optim.Optimizer | None = None,
                 loss_fn=None) -> dict[str, float]:
    """The real interleaved weight steps: stage by stage, SGD on L_k^tr + lam/2 ||W - W_prev||^2."""
    model = model or ctx.model
    loss_fn = loss_fn or nn.functional.cross_entropy
    cfg = ctx.config
    params = dict(model.named_parameters())
    metrics: dict[str, float] = {}
    model.train()
    for stage in stages:
        name = ctx.task_names[stage.task]
        opt = optimizer or ctx.optimizer_for(stage.task)
        anchor = {n: params[n].detach().clone() for n in stage.anchored} if cfg.lam else {}
        for x, y in stage.batches:
            opt.zero_grad(set_to_none=True)
            with ctx.autocast():
                logits = model(x, arch_weights, stage.task)
                loss = loss_fn(logits.float(), y)
            total = loss
            if anchor:
                total = total + 0.5 * cfg.lam * sum(((params[n] - a) ** 2).sum() for n, a in anchor.items())
            if not torch.isfinite(total.detach()):
                raise SearchDivergedError(
                    f"non-finite train loss ({float(total.detach())}) at iteration {iteration}, task {name!r}")
            total.backward()
            if ctx.mean_grads_ is not None:  # data parallel: every rank steps with the global-batch gradient
                ctx.mean_grads_([params[n] for n in stage.names])
            nn.utils.clip_grad_norm_([params[n] for n in stage.names], cfg.grad_clip)
            opt.step()
            metrics[f"train_loss/{name}"] = float(loss.detach())
            metrics[f"train_acc/{name}"] = float((logits.argmax(1) == y).float().mean())
    return metrics
