"""LeRaC (Learning Rate Curriculum): per-depth learning rates for the first ``k`` epochs, then the normal schedule.

Depth group j of n (0 = stem, n-1 = classifier) starts at ``lr_j(0) = lr * min_ratio ** (j / (n-1))`` (highest
at the input, as the paper prescribes) and moves log-linearly to the base rate:
``lr_j(t) = lr_j(0) * (lr / lr_j(0)) ** (t / k)`` for ``t <= k``. From epoch ``k`` on the wrapped timm
scheduler runs, shifted by ``k`` epochs so it starts at ``lr`` where the curriculum ends (no jump).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

GROUP_KEY = "lerac_group"


def lerac_initial_lr(lr: float, group: int, num_groups: int, min_ratio: float) -> float:
    """``lr_j(0)``: the base rate at the input, ``lr * min_ratio`` at the classifier, geometric in between."""
    if num_groups <= 1:
        return lr
    return lr * min_ratio ** (group / (num_groups - 1))


def lerac_lr(lr: float, group: int, num_groups: int, epoch: float, min_ratio: float, k: int) -> float:
    """``lr_j(t)`` of the curriculum; ``lr`` itself once ``t >= k``."""
    if epoch >= k:
        return lr
    lr0 = lerac_initial_lr(lr, group, num_groups, min_ratio)
    return lr0 * (lr / lr0) ** (epoch / k)


def lerac_param_groups(model: nn.Module, weight_decay: float, decay_all: bool = False) -> list[dict[str, Any]]:
    """One optimizer group per depth group (split into decay / no-decay as timm does), tagged ``lerac_group``.

    ``decay_all`` (the DARTS recipe) decays norms and biases too: one group per depth, no no-decay split.

    Models with ``depth_groups()`` (ilnas networks) give their own order; others are grouped by their
    top-level children in registration order (stem first, head last for most timm models).
    """
    if hasattr(model, "depth_groups"):
        named = {id(p): n for n, p in model.named_parameters()}
        groups = [[(named[id(p)], p) for p in g] for g in model.depth_groups()]
    else:
        groups = [list(child.named_parameters()) for child in model.children()]
        groups = [g for g in groups if g]
    out: list[dict[str, Any]] = []
    for j, group in enumerate(groups):
        decay = [p for n, p in group if p.requires_grad and (decay_all or (p.ndim > 1 and not n.endswith(".bias")))]
        no_decay = [p for n, p in group if p.requires_grad and not any(p is q for q in decay)]
        if decay:
            out.append({"params": decay, "weight_decay": weight_decay, GROUP_KEY: j})
        if no_decay:
            out.append({"params": no_decay, "weight_decay": 0.0, GROUP_KEY: j})
    return out


class LeRaCScheduler:
    """Wraps a timm scheduler: the curriculum for epochs ``< k``, then ``scheduler.step(epoch - k)``."""

    def __init__(self, optimizer: torch.optim.Optimizer, scheduler: Any, lr: float, min_ratio: float, k: int):
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.lr = lr
        self.min_ratio = min_ratio
        self.k = k
        self.num_groups = 1 + max(g.get(GROUP_KEY, 0) for g in optimizer.param_groups)

    def lrs(self, epoch: float) -> list[float]:
        """The curriculum rate of every depth group at ``epoch`` (input first)."""
        return [lerac_lr(self.lr, j, self.num_groups, epoch, self.min_ratio, self.k) for j in range(self.num_groups)]

    def step(self, epoch: int, metric: float | None = None) -> None:
        if epoch < self.k:
            rates = self.lrs(epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = rates[group.get(GROUP_KEY, 0)]
        elif self.scheduler is not None:
            self.scheduler.step(epoch - self.k, metric)
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr

    def state_dict(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler.state_dict() if self.scheduler is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
