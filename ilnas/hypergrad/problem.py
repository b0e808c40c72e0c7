"""What the hypergradient engine differentiates: losses of a parameter dict, and the hyper-parameters.

The engine never touches a real module's state: a ``Problem`` evaluates losses on parameter dicts through
``torch.func.functional_call``, with BatchNorm's running statistics left as they are (see
:func:`running_stats_frozen`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from torch.func import functional_call

Params = dict[str, torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]


class Problem(Protocol):
    """A multi-level problem: train loss of stage ``task`` and validation loss of ``task``."""

    def hypers(self) -> list[torch.Tensor]: ...

    def train_loss(self, params: Params, task: int, batch: Any) -> torch.Tensor: ...

    def val_loss(self, params: Params, task: int, batch: Any) -> torch.Tensor: ...


@dataclass
class Stage:
    """One stage (r, k) of the interleave: ``steps`` SGD steps of ``names`` (= encoder W + head H_k) on task k.

    ``anchored`` are the names pulled towards the stage's starting value by ``lam`` (the encoder W).
    """

    task: int
    names: list[str]
    anchored: list[str]
    batches: list[Any]
    lrs: list[float]
    round: int = 0


@dataclass
class InnerHParams:
    """The inner optimizer every method imitates: SGD with momentum and weight decay, plus the proximity term.

    ``momentum_buffers``: one buffer per parameter name (``optimizer_state: shared``).
    ``task_momentum_buffers``: one set per model k (``per_model``); when given, a stage of task k continues
    from (and updates) model k's set, and ``momentum_buffers`` is ignored.
    ``grad_mean``: averages a list of gradients over data-parallel ranks (differentiably), as the real
    optimizer's gradients are; ``None`` in one process.
    """

    momentum: float = 0.9
    weight_decay: float = 3e-4
    lam: float = 0.0
    momentum_buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    task_momentum_buffers: dict[int, dict[str, torch.Tensor]] | None = None
    grad_mean: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None


@contextmanager
def running_stats_frozen(norms: Sequence[nn.modules.batchnorm._BatchNorm]) -> Iterator[None]:
    """BatchNorm in train mode normalises with the batch's statistics and, untracked, updates nothing.

    The engine's virtual passes must not move the real running statistics, and nothing reads statistics they
    would accumulate (train mode never uses running statistics; eval mode is unaffected by the flag). So no
    buffer is cloned or swapped: ``functional_call`` swaps the parameters only (a third of the tensors).
    """
    tracked = [m for m in norms if m.track_running_stats]
    for m in tracked:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in tracked:
            m.track_running_stats = True


class SupernetProblem:
    """Cross-entropy of ``supernet(x, arch(), task)`` evaluated on parameter dicts (Betty-style)."""

    def __init__(self, model: nn.Module, arch: nn.Module):
        self.model, self.arch = model, arch
        self.norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def hypers(self) -> list[torch.Tensor]:
        return list(self.arch.parameters())

    def logits(self, params: Params, task: int, x: torch.Tensor) -> torch.Tensor:
        with running_stats_frozen(self.norms):  # parameters only: no tied weights, so no untying walk either
            return functional_call(self.model, params, (x, self.arch(), task), strict=False, tie_weights=False)

    def train_loss(self, params: Params, task: int, batch: Batch) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.logits(params, task, x), y)

    val_loss = train_loss
