"""``stagewise``: each task's term of the objective through the one stage that produced the encoder it validates.

``val_on: own``: the task's last-round stage; ``final``: the last stage. What that stage was handed (encoder,
starting head, other heads) is held constant and the terms are summed over tasks. With R = 1 and ``own``:
every stage's own term, the published reading of interleaving learning; about K DARTS second-order steps.
Earlier rounds' stages add nothing, as in the objective.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ilnas.hypergrad._common import (
    HypergradResult,
    HypergradState,
    backstep,
    check_finite,
    grad,
    own_stage_index,
    records_by_stage,
    unroll,
    zeros_like_all,
)
from ilnas.hypergrad.problem import Stage
from ilnas.hypergrad.registry import register_method


@register_method("stagewise")
def stagewise(state: HypergradState) -> HypergradResult:
    """The objective's terms, each through the one stage that produced its encoder; the rest is a constant."""
    problem, stages, val_batches, hp, hypers = state.problem, state.stages, state.val_batches, state.hp, state.hypers
    final, snaps, records = unroll(problem, state.params, stages, hp, create_graph=False)
    by_stage = records_by_stage(records)
    g_hyper = zeros_like_all(hypers)
    per_task = [0.0] * len(val_batches)
    base = final if state.val_on == "final" else state.params  # what the stage's own parameters are evaluated beside
    for si, stage in enumerate(stages):
        tasks = [k for k in range(len(val_batches)) if _term_stage(stages, k, state.val_on) == si]
        if not tasks:
            continue  # an earlier round: the objective validates none of its encoders
        end = {n: snaps[si][n].detach().requires_grad_(True) for n in stage.names}
        losses = []
        for k in tasks:
            loss = problem.val_loss({**base, **end}, k, val_batches[k])
            check_finite(loss, f"validation loss of task {k} after stage {si}")
            per_task[k] = float(loss.detach())
            losses.append(loss)
        grads = grad(torch.stack(losses).sum(), hypers + list(end.values()), hp)
        for h, g in zip(g_hyper, grads[: len(hypers)], strict=True):
            h.add_(g)
        u = dict(zip(end.keys(), grads[len(hypers):], strict=True))
        recs = by_stage.get(si, [])
        for rec in reversed(recs):
            backstep(state, rec, stage, u, g_hyper, {}, need_theta=rec is not recs[0])
    return HypergradResult(g_hyper, sum(per_task), per_task)


def _term_stage(stages: Sequence[Stage], k: int, val_on: str) -> int:
    """The stage whose encoder task k's validation term reads: its own last one, or the last of all."""
    return own_stage_index(stages, k) if val_on == "own" else len(stages) - 1
