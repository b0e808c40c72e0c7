"""Interleaving learning (Ban & Xie, 2021): the encoder passes from task to task, round after round.

K = 1, R = 1, lam = 0 is DARTS (first or second order) through the same code. The collapse remedies that act
on the steps (SDARTS-RS noise in the weight steps, beta-DARTS and Fair DARTS' losses on the architecture
step) come from :class:`ilnas.space.remedies.Remedies`; the runner sets the epoch in ``ctx.extra``.
"""

from __future__ import annotations

import torch

from ilnas.hypergrad import SupernetProblem, hypergradient
from ilnas.search.strategies import register_strategy
from ilnas.search.strategies.base import (
    SearchContext,
    SearchDivergedError,
    SearchStrategy,
    apply_hypergradient,
    interleaved_stages,
    train_stages,
)
from ilnas.space.remedies import Remedies, add_loss_gradients


@register_strategy("interleaving")
class InterleavingLearning(SearchStrategy):
    def __init__(self, ctx: SearchContext):
        super().__init__(ctx)
        self.remedies = Remedies.of(ctx.config)

    def step(self, iteration: int, lr: float, update_arch: bool) -> dict[str, float]:
        ctx = self.ctx
        epoch = int(ctx.extra.get("epoch", 0))
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
            hypers, grads = self.hyper_parameters(), result.grads
            regulariser = self.remedies.arch_loss(ctx.arch, epoch)
            if regulariser is not None:  # a function of the alphas alone: its gradient adds to the hypergradient
                grads = add_loss_gradients(regulariser, hypers, grads)
                metrics["arch_regularizer"] = float(regulariser.detach())
            apply_hypergradient(ctx.a_optimizer, hypers, grads)
            for name, v in zip(ctx.task_names, result.val_losses, strict=True):
                metrics[f"arch_val_loss/{name}"] = v
        with torch.no_grad():
            weights = {k: v.detach() for k, v in ctx.arch().items()}
            weights = self.remedies.weight_step_weights(weights, epoch, iteration)
        metrics.update(train_stages(ctx, stages, weights, iteration))
        return metrics
