"""``first_order``: W held constant; the gradient of the summed validation loss at the current weights."""

from __future__ import annotations

from ilnas.hypergrad._common import HypergradResult, HypergradState, grad, val_objective
from ilnas.hypergrad.registry import register_method


@register_method("first_order")
def first_order(state: HypergradState) -> HypergradResult:
    """DARTS' first-order approximation: no inner step is unrolled, so one backward per task suffices."""
    total, per_task = val_objective(state.problem, state.params, None, state.val_batches)
    return HypergradResult(grad(total, state.hypers, state.hp), float(total.detach()), per_task)
