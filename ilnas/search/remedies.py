"""The search's side of the collapse remedies: the space a config describes, the architecture-step budget,
and the per-epoch schedules (docs/search-remedies.md; the step-level mechanisms are in ilnas/space/remedies.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ilnas.search.config import SearchConfig
from ilnas.space.architecture import Architecture
from ilnas.space.remedies import Remedies, aux_skip_rate
from ilnas.space.supernet import Supernet


def build_supernet(config: SearchConfig, num_classes: Sequence[int], in_channels: int) -> Supernet:
    """The supernet of ``config``: its size, partial channels, primitives and DARTS-' auxiliary skips."""
    return Supernet(list(num_classes), in_channels, config.channels, config.cells, config.nodes,
                    config.node_multiplier, config.stem_multiplier, config.partial_channels,
                    primitives=config.primitives, aux_skip=config.aux_skip != "none")


def build_architecture(config: SearchConfig) -> Architecture:
    """The alphas of ``config``'s space (and PC-DARTS' edge betas when edge normalization is on)."""
    return Architecture(config.nodes, edge_normalization=config.uses_edge_normalization,
                        multiplier=config.node_multiplier, primitives=config.primitives,
                        activation=config.activation)


class ArchStepPlan:
    """Which iterations take an architecture step.

    Without a budget: every iteration from the end of the warm-up on (PC-DARTS: ``epoch >= 15``, github
    yuhuixu1993/PC-DARTS train_search.py:156). With ``search.arch_steps = N``: exactly N of the E iterations
    after the warm-up, spread evenly (iteration i takes one when ``floor((i+1) N / E) > floor(i N / E)``), so two
    arms can be given equal architecture steps as well as equal images; N = E is every iteration.
    """

    def __init__(self, warmup_epochs: int, epochs: int, iterations_per_epoch: int, budget: int | None):
        self.first = warmup_epochs * iterations_per_epoch
        self.eligible = max(0, epochs - warmup_epochs) * iterations_per_epoch
        self.budget = budget
        if budget is not None and not 1 <= budget <= self.eligible:
            raise ValueError(
                f"search.arch_steps: got {budget}; allowed: 1..{self.eligible} (the iterations after the warm-up: "
                f"(epochs {epochs} - warmup_epochs {warmup_epochs}) x {iterations_per_epoch} iterations per epoch)")

    @classmethod
    def of(cls, config: SearchConfig, iterations_per_epoch: int) -> ArchStepPlan:
        return cls(config.warmup_epochs, config.epochs, iterations_per_epoch, config.arch_steps)

    def due(self, iteration: int) -> bool:
        """Whether ``iteration`` (0-based, counted over the whole search) takes an architecture step."""
        i = iteration - self.first
        if i < 0:
            return False
        if self.budget is None:
            return True
        if i >= self.eligible:
            return False
        return (i + 1) * self.budget // self.eligible > i * self.budget // self.eligible


def start_epoch(ctx: Any, epoch: int) -> dict[str, float]:
    """Set the epoch the strategy's remedies read and DARTS-' auxiliary-skip weight; the schedules' values."""
    config = ctx.config
    ctx.extra["epoch"] = epoch
    ctx.arch.aux_skip = aux_skip_rate(config.aux_skip, epoch, config.epochs)
    return Remedies.of(config).epoch_values(epoch)
