"""Published remedies for DARTS' collapse, as functions of the architecture and the epoch (docs/search-remedies.md).

Each follows its authors' code; file and line are cited where the number comes from:

* SDARTS-RS (Chen & Hsieh 2020): in the weight step only, the softmaxed alphas plus uniform noise in
  [-eps, eps], clipped back to the simplex; eps ramps linearly from 0.03 to ``epsilon`` (0.3) over the search.
* beta-DARTS (Ye et al. 2022): ``lambda * mean_edges logsumexp(alpha)`` added to the architecture loss, lambda
  ramping linearly from 0 to ``beta_decay`` (50) over the search.
* DARTS- (Chu et al. 2021): an auxiliary skip on every edge, weight 1 decaying to 0 (linear or cosine).
* Fair DARTS (Chu et al. 2020): the zero-one loss ``-w0 * mean (sigma(alpha) - 0.5)^2`` on the architecture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

# SmoothDARTS sota/cnn/train_search.py:170: epsilon_alpha = 0.03 + (args.epsilon_alpha - 0.03) * epoch / epochs
RS_EPSILON_START = 0.03
AUX_SKIP_SCHEDULES = ("none", "linear", "cosine")
_NOISE_SALT = 0x5D4A275


def smoothing_epsilon(epsilon: float, epoch: int, epochs: int) -> float:
    """SDARTS-RS' noise radius at ``epoch`` (0-based): 0.03 at the start, ``epsilon`` after the last epoch."""
    return RS_EPSILON_START + (epsilon - RS_EPSILON_START) * epoch / epochs


def random_smoothing(weights: torch.Tensor, epsilon: float, generator: torch.Generator) -> torch.Tensor:
    """``weights`` (edges x ops, rows on the simplex) plus U(-eps, eps), then SDARTS' clip.

    The clip (SmoothDARTS sota/cnn/model_search.py:170-177, after attacker/perturb.py:47-50): clamp to [0, 1];
    a row clamped to all zeros gets 1 at its largest entry; every row divided by its sum.
    """
    noise = (torch.rand(weights.shape, generator=generator, dtype=torch.float64) * 2 - 1) * epsilon
    noisy = weights + noise.to(weights.dtype).to(weights.device)
    clipped = noisy.clamp(0.0, 1.0)
    empty = clipped.sum(-1, keepdim=True) == 0
    if bool(empty.any()):
        top = torch.nn.functional.one_hot(noisy.argmax(-1), noisy.shape[-1]).to(noisy.dtype)
        clipped = torch.where(empty, top, clipped)
    return clipped / clipped.sum(-1, keepdim=True)


def noise_generator(seed: int, iteration: int) -> torch.Generator:
    """A CPU generator fixed by (seed, iteration): the same draw on every data-parallel rank and after a resume."""
    return torch.Generator().manual_seed((seed * 1_000_003 + iteration) ^ _NOISE_SALT)


def beta_decay_loss(alphas: list[torch.Tensor]) -> torch.Tensor:
    """beta-DARTS' regulariser: the mean over edges (of every cell) of logsumexp over the edge's op alphas.

    Beta-DARTS optimizers/darts/architect.py:55-59 (``mlc_loss``: ``mean(logsumexp(alpha, -1))``).
    Its gradient is ``softmax(alpha_e) / E`` for each of the E edges.
    """
    return torch.logsumexp(torch.cat([a.reshape(-1, a.shape[-1]) for a in alphas]), dim=-1).mean()


def beta_decay_coefficient(beta_decay: float, epoch: int, epochs: int) -> float:
    """Linear ramp from 0 at the first epoch: Beta-DARTS optimizers/darts/architect.py:81 (``50 * epoch / 100``
    over the 100 epochs of its search) with the search's own epoch count."""
    return beta_decay * epoch / epochs


def zero_one_loss(weights: list[torch.Tensor]) -> torch.Tensor:
    """Fair DARTS' zero-one loss: ``-mean((w - 0.5)^2)`` over every op weight of every cell.

    github xiaomi-automl/FairDARTS fairdarts/separate_loss.py:16 (``-F.mse_loss(input2, 0.5)``, the default
    ``sep_loss: l2``) on ``cat(sigmoid(alphas_normal), sigmoid(alphas_reduce))`` (fairdarts/architect.py:22).
    Minimising it moves every weight away from 0.5: towards 0 below, towards 1 above.
    """
    w = torch.cat([x.reshape(-1) for x in weights])
    return -((w - 0.5) ** 2).mean()


def aux_skip_rate(schedule: str, epoch: int, epochs: int) -> float | None:
    """DARTS-' auxiliary-skip weight at ``epoch`` (0-based); 1 at the start, 0 after the last epoch.

    Meituan-AutoML/DARTS- src/utils.py:181-192 (``DecayScheduler``, base 1, T_start 0, T_max = T_stop =
    epochs): linear ``(E - e) / E`` (their scripts/run_darts_minus.sh:8), cosine ``(1 + cos(pi e / E)) / 2``.
    """
    if schedule == "none":
        return None
    if schedule == "linear":
        return (epochs - epoch) / epochs
    if schedule == "cosine":
        return (1 + math.cos(math.pi * epoch / epochs)) / 2
    raise ValueError(f"aux_skip: got {schedule!r}; allowed: {list(AUX_SKIP_SCHEDULES)}")


@dataclass(frozen=True)
class Remedies:
    """The search's remedy settings (``search.*``) and what they do at a given epoch and iteration."""

    smoothing: str = "none"
    smoothing_epsilon: float = 0.3
    beta_decay: float = 0.0
    zero_one_weight: float = 0.0
    aux_skip: str = "none"
    epochs: int = 1
    seed: int = 0

    @classmethod
    def of(cls, config: Any) -> Remedies:
        """From a SearchConfig (read by name, so this layer does not import the search package)."""
        return cls(**{k: getattr(config, k) for k in cls.__dataclass_fields__})

    def epoch_values(self, epoch: int) -> dict[str, float]:
        """The schedules' values at ``epoch``, for the history (only the remedies that are on)."""
        values: dict[str, float] = {}
        if self.smoothing == "random":
            values["smoothing_epsilon"] = smoothing_epsilon(self.smoothing_epsilon, epoch, self.epochs)
        if self.beta_decay:
            values["beta_decay_coefficient"] = beta_decay_coefficient(self.beta_decay, epoch, self.epochs)
        rate = aux_skip_rate(self.aux_skip, epoch, self.epochs)
        if rate is not None:
            values["aux_skip_rate"] = rate
        return values

    def weight_step_weights(self, weights: dict[str, torch.Tensor], epoch: int,
                            iteration: int) -> dict[str, torch.Tensor]:
        """The architecture weights the weight steps of ``iteration`` see: perturbed op weights under SDARTS-RS."""
        if self.smoothing != "random":
            return weights
        eps = smoothing_epsilon(self.smoothing_epsilon, epoch, self.epochs)
        gen = noise_generator(self.seed, iteration)
        return {k: random_smoothing(v, eps, gen) if k in ("normal", "reduce") else v for k, v in weights.items()}

    def arch_loss(self, arch: torch.nn.Module, epoch: int) -> torch.Tensor | None:
        """The regularisers added to the architecture objective (a function of the alphas alone), or None."""
        terms = []
        coefficient = beta_decay_coefficient(self.beta_decay, epoch, self.epochs)
        if coefficient:
            terms.append(coefficient * beta_decay_loss([arch.alphas_normal, arch.alphas_reduce]))
        if self.zero_one_weight:
            w = arch()
            terms.append(self.zero_one_weight * zero_one_loss([w["normal"], w["reduce"]]))
        return sum(terms[1:], terms[0]) if terms else None


def add_loss_gradients(loss: torch.Tensor, hypers: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """``grads`` (one per hyper) plus the gradient of ``loss`` with respect to the same hypers."""
    extra = torch.autograd.grad(loss, hypers, allow_unused=True)
    return [g if e is None else g + e.to(g.dtype) for g, e in zip(grads, extra, strict=True)]
