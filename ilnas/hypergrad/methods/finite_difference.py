"""``finite_difference``: reverse mode through every inner step of every stage, products by central differences.

Each Hessian-vector and mixed product takes two gradients per step (w.r.t. theta and A); at the earliest step
of the chain only the A part is needed, so only A's gradient is taken there.
"""

from __future__ import annotations

import torch

from ilnas.hypergrad._common import (
    HypergradResult,
    HypergradState,
    backstep,
    grad,
    own_stage_index,
    records_by_stage,
    unroll,
    val_objective,
)
from ilnas.hypergrad.problem import Params
from ilnas.hypergrad.registry import register_method


@register_method("finite_difference")
def finite_difference(state: HypergradState) -> HypergradResult:
    """The adjoint starts at the validation gradient w.r.t. the final (or own) weights and walks every step back."""
    problem, stages, val_batches, hp, hypers = state.problem, state.stages, state.val_batches, state.hp, state.hypers
    final, snaps, records = unroll(problem, state.params, stages, hp, create_graph=False)
    final = {n: p.detach().requires_grad_(True) for n, p in final.items()}
    own_idx: dict[int, int] = {}
    own = None
    if state.val_on == "own":
        own_idx = {k: own_stage_index(stages, k) for k in range(len(val_batches))}
        own = {k: {n: p.detach().requires_grad_(True) for n, p in snaps[i].items()} for k, i in own_idx.items()}
    total, per_task = val_objective(problem, final, own, val_batches)
    leaves = list(final.values()) + [p for k in sorted(own or {}) for p in own[k].values()]
    grads = grad(total, hypers + leaves, hp)
    g_hyper, rest = grads[: len(hypers)], grads[len(hypers):]
    u: Params = dict(zip(final.keys(), rest[: len(final)], strict=True))
    own_adjoint: dict[int, Params] = {}
    offset = len(final)
    for k in sorted(own or {}):
        names = list(own[k].keys())
        own_adjoint[own_idx[k]] = dict(zip(names, rest[offset : offset + len(names)], strict=True))
        offset += len(names)

    by_stage = records_by_stage(records)
    earliest = records[0] if records else None
    for si in reversed(range(len(stages))):
        stage = stages[si]
        for name, v in own_adjoint.get(si, {}).items():
            u[name] = u[name] + v
        anchor_adjoint = {n: torch.zeros_like(u[n]) for n in stage.anchored} if hp.lam else {}
        for rec in reversed(by_stage.get(si, [])):
            # the adjoint before the chain's first step is never used: skip the theta part there
            backstep(state, rec, stage, u, g_hyper, anchor_adjoint, need_theta=rec is not earliest)
        for n, a in anchor_adjoint.items():
            u[n] = u[n] + a
    return HypergradResult(g_hyper, float(total.detach()), per_task)
