"""What every hypergradient method shares: the virtual inner step, the unroll, the adjoint's step back.

One definition of each piece (docs/design.md, "The hypergradient: four methods"), so the four methods in
``ilnas/hypergrad/methods/`` differ only in how they chain them; a method reads its inputs from one
:class:`HypergradState` instead of a long parameter list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ilnas.hypergrad.problem import InnerHParams, Params, Problem, Stage

FD_EPS = 0.01


@dataclass
class HypergradResult:
    grads: list[torch.Tensor]  # one per hyper, same order as problem.hypers()
    val_loss: float
    val_losses: list[float]  # per task


@dataclass(frozen=True)
class HypergradState:
    """The inputs of one hypergradient, as every method reads them (``params`` already detached)."""

    problem: Problem
    params: Params
    stages: Sequence[Stage]
    val_batches: Sequence[Any]
    hp: InnerHParams
    hypers: list[torch.Tensor]  # problem.hypers(), taken once
    val_on: str = "final"
    fd_eps: float = FD_EPS


@dataclass
class Record:
    """One virtual inner step, as the finite-difference chains walk back through it."""

    stage: int
    theta: Params  # stage parameters before the step (detached)
    batch: Any
    xi: float


def zeros_like_all(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Fresh zero accumulators shaped like ``tensors`` (a gradient that nothing has added to yet)."""
    return [torch.zeros_like(t) for t in tensors]


def _grad_or_zero(grads: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, like, strict=True)]


def grad(loss: torch.Tensor, wrt: Sequence[torch.Tensor], hp: InnerHParams,
         create_graph: bool = False) -> list[torch.Tensor]:
    """Every gradient the engine takes: zeros where unused, then averaged over data-parallel ranks."""
    grads = _grad_or_zero(torch.autograd.grad(loss, list(wrt), allow_unused=True, create_graph=create_graph), wrt)
    return hp.grad_mean(grads) if hp.grad_mean is not None else grads


def _inner_step(theta: Params, grads: Sequence[torch.Tensor], stage: Stage, anchor: Params, xi: float,
                hp: InnerHParams, bufs: dict[str, torch.Tensor | None]) -> Params:
    names, ps = list(theta), list(theta.values())
    if any(p.requires_grad for p in ps) or any(g.requires_grad for g in grads):  # exact: keep the graph
        new = {}
        for name, p, g in zip(names, ps, grads, strict=True):
            d = g + hp.weight_decay * p
            if hp.lam and name in anchor:
                d = d + hp.lam * (p - anchor[name])
            buf = bufs.get(name)  # detached: the momentum term is a constant of the step
            step = d if buf is None else hp.momentum * buf + d
            bufs[name] = step.detach()  # torch.optim.SGD's buffer update (dampening 0)
            new[name] = p - xi * step
        return new
    # the same arithmetic as one multi-tensor op per term (hundreds of parameters: the Python loop showed)
    d = list(torch._foreach_add(list(grads), ps, alpha=hp.weight_decay)) if hp.weight_decay else list(grads)
    if hp.lam:
        idx = [i for i, n in enumerate(names) if n in anchor]
        pulled = torch._foreach_sub([ps[i] for i in idx], [anchor[names[i]] for i in idx])
        added = torch._foreach_add([d[i] for i in idx], pulled, alpha=hp.lam)
        for i, t in zip(idx, added, strict=True):
            d[i] = t
    with_buf = [i for i, n in enumerate(names) if bufs.get(n) is not None]
    if with_buf:
        moved = torch._foreach_add([d[i] for i in with_buf], torch._foreach_mul(
            [bufs[names[i]] for i in with_buf], hp.momentum))
        for i, t in zip(with_buf, moved, strict=True):
            d[i] = t
    for name, step in zip(names, d, strict=True):
        bufs[name] = step
    return dict(zip(names, torch._foreach_add(ps, d, alpha=-xi), strict=True))


class _MomentumBuffers:
    """The SGD momentum buffers the virtual steps continue from: one set, or one set per model (task)."""

    def __init__(self, hp: InnerHParams):
        self.per_task = hp.task_momentum_buffers is not None
        source = hp.task_momentum_buffers or {}
        self._sets: dict[int, dict[str, torch.Tensor | None]] = {
            k: {n: b.clone() for n, b in bufs.items()} for k, bufs in source.items()}
        self._shared: dict[str, torch.Tensor | None] = {n: b.clone() for n, b in hp.momentum_buffers.items()}

    def of(self, task: int) -> dict[str, torch.Tensor | None]:
        return self._sets.setdefault(task, {}) if self.per_task else self._shared


def unroll(problem: Problem, params0: Params, stages: Sequence[Stage], hp: InnerHParams,
           create_graph: bool = False) -> tuple[Params, list[Params], list[Record]]:
    """Run every stage's inner steps on a parameter dict.

    Returns the final params, each stage's ending values of its own parameters (encoder + head), and the
    per-step records the finite-difference chains walk back through.
    """
    params = dict(params0)
    buffers = _MomentumBuffers(hp)
    snapshots: list[Params] = []
    records: list[Record] = []
    for si, stage in enumerate(stages):
        anchor = {n: params[n] for n in stage.anchored}
        bufs = buffers.of(stage.task)
        for batch, xi in zip(stage.batches, stage.lrs, strict=True):
            if create_graph:
                theta = {n: params[n] for n in stage.names}
            else:
                theta = {n: params[n].detach().requires_grad_(True) for n in stage.names}
            loss = problem.train_loss({**params, **theta}, stage.task, batch)
            check_finite(loss, f"virtual train loss of stage {si} (task {stage.task})")
            grads = grad(loss, list(theta.values()), hp, create_graph=create_graph)
            if not create_graph:
                theta = {n: t.detach() for n, t in theta.items()}
                grads = [g.detach() for g in grads]
                records.append(Record(si, theta, batch, xi))
            params.update(_inner_step(theta, grads, stage, anchor, xi, hp, bufs))
        snapshots.append({n: params[n] for n in stage.names})
    return params, snapshots, records


def val_objective(problem: Problem, final: Params, own_snapshots: dict[int, Params] | None,
                  val_batches: Sequence[Any]) -> tuple[torch.Tensor, list[float]]:
    """The summed validation loss (the top level's objective) and each task's term, on the encoder ``val_on`` picks."""
    losses = []
    for k, batch in enumerate(val_batches):
        params = final if own_snapshots is None else {**final, **own_snapshots[k]}
        loss = problem.val_loss(params, k, batch)
        check_finite(loss, f"validation loss of task {k}")
        losses.append(loss)
    total = torch.stack(losses).sum()
    return total, [float(v.detach()) for v in losses]


def own_stage_index(stages: Sequence[Stage], k: int) -> int:
    """The last stage that trained task k: its encoder is W_k^R for ``val_on: own``."""
    return max(i for i, s in enumerate(stages) if s.task == k)


def records_by_stage(records: Sequence[Record]) -> dict[int, list[Record]]:
    """The unroll's step records grouped by stage, so a chain can walk back one stage at a time."""
    by_stage: dict[int, list[Record]] = {}
    for rec in records:
        by_stage.setdefault(rec.stage, []).append(rec)
    return by_stage


def backstep(state: HypergradState, rec: Record, stage: Stage, u: Params, g_hyper: list[torch.Tensor],
             anchor_adjoint: Params, need_theta: bool) -> None:
    """One inner step backwards: ``g_A -= xi * mixed``; then, if needed, ``u <- u - xi (H u + wd u + lam u)``."""
    hp = state.hp
    u_theta = [u[n] for n in stage.names]
    hvp, mixed = _central_difference(state, rec, stage, u_theta, need_theta)
    for h, m in zip(g_hyper, mixed, strict=True):
        h.sub_(rec.xi * m)
    if not need_theta:
        return
    for n, hv in zip(stage.names, hvp, strict=True):
        u_old = u[n]
        delta = hv + hp.weight_decay * u_old
        if hp.lam and n in stage.anchored:
            delta = delta + hp.lam * u_old
            if n in anchor_adjoint:
                anchor_adjoint[n] += rec.xi * hp.lam * u_old
        u[n] = u_old - rec.xi * delta


def _central_difference(state: HypergradState, rec: Record, stage: Stage, u_theta: list[torch.Tensor],
                        need_theta: bool = True) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``(Hess_theta L u, d/dA <grad_theta L, u>)`` from gradients at ``theta +- eps u`` (DARTS' eps = 0.01/||u||).

    With ``need_theta=False`` only A's gradient is taken (no weight gradients: a cheaper backward pass)
    and the Hessian-vector part comes back empty.
    """
    norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(u_theta)))) if u_theta else 0.0
    if norm == 0.0:
        return (zeros_like_all(u_theta) if need_theta else []), zeros_like_all(state.hypers)
    hypers = state.hypers
    eps = state.fd_eps / norm
    sides = []
    start = [rec.theta[n] for n in stage.names]
    for sign in (1.0, -1.0):
        with torch.no_grad():
            theta = dict(zip(stage.names, torch._foreach_add(start, u_theta, alpha=sign * eps), strict=True))
        wrt = hypers
        if need_theta:
            theta = {n: t.requires_grad_(True) for n, t in theta.items()}
            wrt = list(theta.values()) + hypers
        loss = state.problem.train_loss(theta, stage.task, rec.batch)
        sides.append(grad(loss, wrt, state.hp))
    plus, minus = sides
    diff = torch._foreach_div(torch._foreach_sub(plus, minus), 2 * eps)
    n_theta = len(u_theta) if need_theta else 0
    return diff[:n_theta], diff[n_theta:]


def check_finite(loss: torch.Tensor, what: str) -> None:
    """A diverged virtual loss stops the hypergradient there, naming which loss it was."""
    if not torch.isfinite(loss.detach()).all():
        raise FloatingPointError(f"non-finite {what}: {float(loss.detach())}")
