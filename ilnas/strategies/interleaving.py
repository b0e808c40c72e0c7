"""Interleaving learning (Ban & Xie, 2021): the encoder passes from task to task, round after round.

K = 1, R = 1, lam = 0 is DARTS (first or second order) through the same code.
"""

from __future__ import annotations

import torch

from ilnas.hypergrad import SupernetProblem, hypergradient
from ilnas.strategies import register_strategy
from ilnas.strategies.base import (
    SearchDivergedError,
    SearchStrategy,
    apply_hypergradient,
    interleaved_stages,
    train_stages,
)


@register_strategy("interleaving")
class InterleavingLearning(SearchStrategy):
    def step(self, iteration: int, lr: float, update_arch: bool) -> dict[str, float]:
        ctx = self.ctx
        stages = interleaved_stages(ctx, lr)
        metrics: dict[str, float] = {}
        if update_arch:
            val = [ctx.batch(s) for s in ctx.val_streams]
            problem = SupernetProblem(ctx.model, ctx.arch)
            params = dict(ctx.model.named_parameters())
            try:
                result = hypergradient(ctx.config.hypergrad, problem, params, stages, val,
                                       ctx.inner_hparams(), ctx.config.val_on, ctx.config.fd_eps)
            except FloatingPointError as exc:
                raise SearchDivergedError(f"{exc} at iteration {iteration} (tasks {ctx.task_names})") from exc
            apply_hypergradient(ctx.a_optimizer, self.hyper_parameters(), result.grads)
            for name, v in zip(ctx.task_names, result.val_losses, strict=True):
                metrics[f"arch_val_loss/{name}"] = v
        with torch.no_grad():
            weights = {k: v.detach() for k, v in ctx.arch().items()}
        metrics.update(train_stages(ctx, stages, weights, iteration))
        return metrics
