"""Learning-rate schedules beyond timm's factory, as timm ``Scheduler`` subclasses (same step/state API).

``pcdarts_linear`` is PC-DARTS' ImageNet schedule (yuhuixu1993/PC-DARTS ``train_imagenet.py``, ``adjust_lr``
and the warm-up block of ``main``): a linear decay that reaches ``lr / (E - 5)`` five epochs before the end and
then a five-times gentler slope, with ``warmup_epochs`` of ``lr * (e + 1) / warmup_epochs`` first. timm's own
linear warm-up starts from ``warmup_lr`` and reaches ``lr`` one epoch later, and its ``poly`` schedule has no
second slope, so neither reproduces it.
"""

from __future__ import annotations

import torch
from timm.scheduler.scheduler import Scheduler

SCHEDULES = ("pcdarts_linear",)
TAIL_EPOCHS = 5  # PC-DARTS: "smaller slope for the last 5 epochs because lr * 1/250 is relatively large"


def pcdarts_linear_factor(epoch: int, epochs: int, warmup_epochs: int) -> float:
    """The fraction of the base rate PC-DARTS uses at ``epoch`` (0-based) of ``epochs``."""
    if epoch < warmup_epochs:
        return (epoch + 1) / warmup_epochs
    if epochs <= TAIL_EPOCHS:  # too short for the two slopes (tests, smoke runs): linear to lr / epochs
        return (epochs - epoch) / epochs
    if epochs - epoch > TAIL_EPOCHS:
        return (epochs - TAIL_EPOCHS - epoch) / (epochs - TAIL_EPOCHS)
    return (epochs - epoch) / ((epochs - TAIL_EPOCHS) * TAIL_EPOCHS)


class PCDartsLinearScheduler(Scheduler):
    """PC-DARTS' ImageNet schedule per epoch (see the module docstring); ``step(epoch)`` as timm's schedulers."""

    def __init__(self, optimizer: torch.optim.Optimizer, epochs: int, warmup_epochs: int = 0) -> None:
        super().__init__(optimizer, param_group_field="lr", t_in_epochs=True)
        self.epochs = max(int(epochs), 1)
        self.warmup_epochs = int(warmup_epochs)
        self.update_groups(self._get_lr(0))

    def _get_lr(self, t: int) -> list[float]:
        factor = pcdarts_linear_factor(t, self.epochs, self.warmup_epochs)
        return [v * factor for v in self.base_values]


def create_schedule(optimizer: torch.optim.Optimizer, name: str, epochs: int, warmup_epochs: int) -> Scheduler:
    """One of :data:`SCHEDULES` by name (the names timm's ``create_scheduler_v2`` does not know)."""
    if name == "pcdarts_linear":
        return PCDartsLinearScheduler(optimizer, epochs, warmup_epochs)
    raise ValueError(f"sched: unknown schedule {name!r}; allowed here: {list(SCHEDULES)}")
