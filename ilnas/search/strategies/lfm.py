"""Learning from mistakes with class weighting, LFM-CW (Gala & Xie, 2021), on the interleaving machinery.

Three levels per search iteration (every level runs the same R x K x T interleaved stages as IL):

1. W1 (``ctx.model``) is trained normally on the task data with architecture A.
2. W2 (a second supernet of the same shape, its own SGD with W1's settings) is trained on the
   class-weighted loss ``mean_i c_k[y_i] * CE_i``, optionally on real plus generated images.
   ``c_k = n_k * softmax(logits_k)``: positive, mean 1 per task, so the loss scale stays that of CE.
3. A and c minimize W2's validation loss; their hypergradients come through W2's unrolled update from
   the same engine as IL (``ilnas.hypergrad.hypergradient``: c is just another hyper of the problem).

c starts from W1's mistakes: at the first architecture update (i.e. after ``warmup_epochs``) it is set
once to W1's per-class validation error (+ ``class_weight_floor``, normalized) over the whole val split,
unless ``class_weight_init: uniform``. It has its own Adam (``class_weight_lr``), checkpointed with W2.
With ``warmup_epochs: 0`` that first update is iteration 0, where W1 is untrained and close to a constant
predictor (one class right, all others wrong): c then starts ~20x lower on that one class. Use
``warmup_epochs >= 1`` with ``val_error`` (or ``uniform``).

What the hypergradient does with c: it raises the weight of classes whose extra training lowers W2's
validation loss (measured on a toy: an under-represented class, 16/16 draws). It is not "more weight to
every class W1 gets wrong": for label noise or irreducible overlap more weight cannot fix the mistakes,
and on the toy those classes showed no consistent direction.

``first_order`` and c: with W2 held constant, W2's validation loss does not depend on c at all, so a
first-order c-gradient is identically zero. With ``hypergrad: first_order`` the architecture still takes
its first-order gradient, and c either takes the cheapest gradient that exists, the unrolled
finite-difference one (``first_order_class_weights: finite_difference``, default; a second engine call
with c as the only hyper), or stays at its initial value (``frozen``: a fixed error-based re-weighting).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ilnas.hypergrad import Stage, hypergradient
from ilnas.hypergrad.problem import Batch, Params, SupernetProblem
from ilnas.search.strategies import register_strategy
from ilnas.search.strategies._generator import ConditionalVAE
from ilnas.search.strategies.base import (
    SearchContext,
    SearchDivergedError,
    SearchStrategy,
    apply_hypergradient,
    interleaved_stages,
    train_stages,
)
from ilnas.space.calibration import calibration_subset, recalibrated


class ClassWeights(nn.Module):
    """One logit vector per task; ``self(k) = n_k * softmax(logits_k)`` (positive, mean 1). A hyper, never a weight."""

    def __init__(self, num_classes: list[int]):
        super().__init__()
        self.logits = nn.ParameterList(nn.Parameter(torch.zeros(n)) for n in num_classes)

    def forward(self, task: int) -> torch.Tensor:
        logits = self.logits[task]
        return len(logits) * torch.softmax(logits, dim=0)

    def table(self) -> list[list[float]]:
        with torch.no_grad():
            return [self(k).float().cpu().tolist() for k in range(len(self.logits))]


def weighted_cross_entropy(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``mean_i w[y_i] CE_i``: the batch mean (not a weighted mean), so dL/dc_j is class j's summed loss / N."""
    return (weights[y] * nn.functional.cross_entropy(logits.float(), y, reduction="none")).mean()


class ClassWeightedProblem(SupernetProblem):
    """W2's problem for the engine: class-weighted train loss, plain val loss; ``hypers`` picks what gets gradients."""

    def __init__(self, model: nn.Module, arch: nn.Module, class_weights: ClassWeights, hypers: list[torch.Tensor]):
        super().__init__(model, arch)
        self.class_weights, self._hypers = class_weights, hypers

    def hypers(self) -> list[torch.Tensor]:
        return self._hypers

    def train_loss(self, params: Params, task: int, batch: Batch) -> torch.Tensor:
        x, y = batch
        return weighted_cross_entropy(self.logits(params, task, x), y, self.class_weights(task))

    def val_loss(self, params: Params, task: int, batch: Batch) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.logits(params, task, x), y)


@register_strategy("lfm")
class LearningFromMistakes(SearchStrategy):
    """LFM-CW: W1 plain, W2 class-weighted, (A, c) on W2's validation loss. Module docstring has the details."""

    def __init__(self, ctx: SearchContext):
        super().__init__(ctx)
        self.cfg = ctx.config.lfm
        self.w2 = copy.deepcopy(ctx.model)  # same shape and the same starting point as W1
        group = ctx.w_optimizer.param_groups[0]
        self.w2_optimizer = torch.optim.SGD(self.w2.parameters(), lr=group["lr"], momentum=group["momentum"],
                                            weight_decay=group["weight_decay"])
        self.class_weights = ClassWeights(ctx.num_classes).to(ctx.device)
        # its own optimizer (not a param group of the runner's Adam): own lr, no weight decay towards uniform
        self.c_optimizer = torch.optim.Adam(self.class_weights.parameters(), lr=self.cfg.class_weight_lr,
                                            betas=tuple(ctx.config.a_betas))
        self.initialized = self.cfg.class_weight_init == "uniform"
        self.generator: ConditionalVAE | None = None
        self.offsets = [sum(ctx.num_classes[:k]) for k in range(len(ctx.num_classes))]
        if self.cfg.use_generator:
            if ctx.grad_mean is not None:
                raise ValueError("search.lfm.use_generator: the generator is trained per process and is not "
                                 "supported in a data-parallel search; allowed with more than one process: false")
            first = ctx.extra["tasks"][0]
            self.generator = ConditionalVAE(sum(ctx.num_classes), first.in_channels, first.image_size,
                                            self.cfg.generator_latent_dim, self.cfg.generator_hidden).to(ctx.device)
            self.g_optimizer = torch.optim.Adam(self.generator.parameters(), lr=self.cfg.generator_lr)
            # its own random stream, checkpointed: resumed runs must draw the same latents and labels
            self.g_rng = torch.Generator(ctx.device).manual_seed(ctx.config.seed)

    # -- one iteration ---------------------------------------------------------------------------------
    def step(self, iteration: int, lr: float, update_arch: bool) -> dict[str, float]:
        ctx = self.ctx
        stages = interleaved_stages(ctx, lr)  # real batches, shared by W1 and W2
        metrics: dict[str, float] = {}
        if self.generator is not None:
            metrics["generator_loss"] = self._train_generator(stages)
        w2_stages = self._with_synthetic(stages)
        if update_arch:
            if not self.initialized:
                self.init_from_val_error()
            metrics.update(self._hyper_step(w2_stages, iteration))
        with torch.no_grad():
            weights = {k: v.detach() for k, v in ctx.arch().items()}
            c = [self.class_weights(k).detach() for k in range(len(ctx.task_names))]
        metrics.update(train_stages(ctx, stages, weights, iteration))  # level 1: W1, plain CE
        for g in self.w2_optimizer.param_groups:
            g["lr"] = lr  # the runner's schedule drives W2 as it drives W1
        for stage in w2_stages:  # level 2: W2, class-weighted (one call per stage: the weights depend on the task)
            m = train_stages(ctx, [stage], weights, iteration, self.w2, self.w2_optimizer,
                             functools.partial(weighted_cross_entropy, weights=c[stage.task]))
            metrics.update({f"w2_{k}": v for k, v in m.items()})
        return metrics

    def _hyper_step(self, stages: list[Stage], iteration: int) -> dict[str, float]:
        """Level 3: (A, c) down the hypergradient of W2's summed validation loss through W2's unrolled steps."""
        ctx = self.ctx
        val = [ctx.batch(s) for s in ctx.val_streams]
        params = dict(self.w2.named_parameters())
        hp = ctx.inner_hparams(self.w2, self.w2_optimizer)
        arch_p, c_p = list(ctx.arch.parameters()), list(self.class_weights.parameters())

        def run(method: str, hypers: list[torch.Tensor]):
            problem = ClassWeightedProblem(self.w2, ctx.arch, self.class_weights, hypers)
            try:
                return hypergradient(method, problem, params, stages, val, hp, ctx.config.val_on, ctx.config.fd_eps)
            except FloatingPointError as exc:
                raise SearchDivergedError(f"{exc} at iteration {iteration} (tasks {ctx.task_names})") from exc

        method = ctx.config.hypergrad
        c_grads: list[torch.Tensor] | None = None
        if method == "first_order":
            result = run(method, arch_p)
            arch_grads = result.grads
            if self.cfg.first_order_class_weights == "finite_difference":
                c_grads = run("finite_difference", c_p).grads
        else:
            result = run(method, arch_p + c_p)
            arch_grads, c_grads = result.grads[: len(arch_p)], result.grads[len(arch_p):]
        apply_hypergradient(ctx.a_optimizer, arch_p, arch_grads)
        if c_grads is not None:
            apply_hypergradient(self.c_optimizer, c_p, c_grads)
        return {f"arch_val_loss/{name}": v for name, v in zip(ctx.task_names, result.val_losses, strict=True)}

    @torch.no_grad()
    def init_from_val_error(self) -> None:
        """c_k ∝ W1's per-class error on the whole val split of task k (+ floor): learn from W1's mistakes.

        Measured as the search evaluation measures (BatchNorm recalibrated for the current architecture on
        the task's seeded calibration images, then eval mode): the running statistics were accumulated under
        earlier mixing weights, and eval mode on them sits near chance early in a search.
        """
        ctx = self.ctx
        cfg = ctx.config
        weights = ctx.arch()
        for k, task in enumerate(ctx.extra["tasks"]):
            n = ctx.num_classes[k]
            wrong = torch.zeros(n, device=ctx.device)
            count = torch.zeros(n, device=ctx.device)
            calib = calibration_subset(task.train, cfg.eval_bn_images, cfg.seed + k)
            with recalibrated(ctx.model, weights, k, calib, cfg.batch_size, ctx.device, cfg.seed + k) as model:
                for x, y in DataLoader(task.val, batch_size=4 * cfg.batch_size, shuffle=False):
                    x, y = x.to(ctx.device), y.to(ctx.device)
                    pred = model(x, weights, k).argmax(1)
                    wrong += torch.bincount(y[pred != y], minlength=n).float()
                    count += torch.bincount(y, minlength=n).float()
            p = wrong / count.clamp(min=1) + self.cfg.class_weight_floor
            self.class_weights.logits[k].copy_(torch.log(p / p.sum()))  # n * softmax(log p) = n * p / sum(p)
        self.initialized = True

    # -- the optional generator --------------------------------------------------------------------------
    def _train_generator(self, stages: list[Stage]) -> float:
        """One generator step per real batch of the iteration (it learns from real data only)."""
        assert self.generator is not None
        self.generator.train()
        losses = []
        for stage in stages:
            for x, y in stage.batches:
                self.g_optimizer.zero_grad(set_to_none=True)
                loss = self.generator.loss(x, y + self.offsets[stage.task], self.g_rng)
                if not torch.isfinite(loss.detach()):
                    raise SearchDivergedError(f"non-finite generator loss ({float(loss)}) in task {stage.task}")
                loss.backward()
                self.g_optimizer.step()
                losses.append(float(loss.detach()))
        return sum(losses) / max(1, len(losses))

    def _with_synthetic(self, stages: list[Stage]) -> list[Stage]:
        """W2's batches: real ones plus ``synthetic_per_batch`` generated images of uniform random classes of the task.

        The class weights then apply to real and synthetic examples alike (they are one batch).
        """
        m = self.cfg.synthetic_per_batch
        if self.generator is None or m == 0:
            return stages
        out = []
        for stage in stages:
            n = self.ctx.num_classes[stage.task]
            batches = []
            for x, y in stage.batches:
                ys = torch.randint(n, (m,), generator=self.g_rng, device=y.device)
                xs = self.generator.sample(ys + self.offsets[stage.task], self.g_rng).to(x.dtype)
                batches.append((torch.cat([x, xs]), torch.cat([y, ys])))
            out.append(dataclasses.replace(stage, batches=batches))
        return out

    # -- history and checkpoints -------------------------------------------------------------------------
    def epoch_extras(self) -> dict[str, Any]:
        return {"class_weights": dict(zip(self.ctx.task_names, self.class_weights.table(), strict=True))}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "w2": self.w2.state_dict(), "w2_optimizer": self.w2_optimizer.state_dict(),
            "class_weights": self.class_weights.state_dict(), "c_optimizer": self.c_optimizer.state_dict(),
            "initialized": self.initialized,
        }
        if self.generator is not None:
            state["generator"] = self.generator.state_dict()
            state["g_optimizer"] = self.g_optimizer.state_dict()
            state["g_rng"] = self.g_rng.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = [k for k in ("w2", "w2_optimizer", "class_weights", "c_optimizer", "initialized")
                   + (("generator", "g_optimizer", "g_rng") if self.generator is not None else ()) if k not in state]
        if missing:
            raise KeyError(f"LFM strategy state lacks {missing}")  # the runner names the checkpoint file
        self.w2.load_state_dict(state["w2"])
        self.w2_optimizer.load_state_dict(state["w2_optimizer"])
        self.class_weights.load_state_dict(state["class_weights"])
        self.c_optimizer.load_state_dict(state["c_optimizer"])
        self.initialized = bool(state["initialized"])
        if self.generator is not None:
            self.generator.load_state_dict(state["generator"])
            self.g_optimizer.load_state_dict(state["g_optimizer"])
            self.g_rng.set_state(state["g_rng"])
