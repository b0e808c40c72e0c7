"""``exact``: the chain of ``finite_difference`` by autograd through ``create_graph=True``.

Memory grows with K*R*T, so it serves as the tests' reference rather than the pipeline's method.
"""

from __future__ import annotations

from ilnas.hypergrad._common import HypergradResult, HypergradState, grad, own_stage_index, unroll, val_objective
from ilnas.hypergrad.registry import register_method


@register_method("exact")
def exact(state: HypergradState) -> HypergradResult:
    """Differentiate the validation objective through every unrolled inner step, second derivatives included."""
    stages, val_batches = state.stages, state.val_batches
    leaves = {n: p.clone().requires_grad_(True) for n, p in state.params.items()}
    final, snaps, _ = unroll(state.problem, leaves, stages, state.hp, create_graph=True)
    own = ({k: snaps[own_stage_index(stages, k)] for k in range(len(val_batches))}
           if state.val_on == "own" else None)
    total, per_task = val_objective(state.problem, final, own, val_batches)
    return HypergradResult(grad(total, state.hypers, state.hp), float(total.detach()), per_task)
