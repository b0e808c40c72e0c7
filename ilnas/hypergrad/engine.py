"""Architecture hypergradients through the interleaved stages (docs/design.md).

Four interchangeable methods share one definition of the inner step,
``theta' = theta - xi * (mu * buf + grad L_k^tr(theta, A) + wd * theta + lam * (W - W_prev))``,
with the momentum term ``mu * buf`` treated as a constant (as DARTS does) in every method. ``buf`` is one
buffer per parameter (``optimizer_state: shared``) or one per model k (``per_model``: the encoder handed to
model k continues with model k's momentum), whichever the real optimizer keeps:

* ``first_order``: W held constant; the gradient of the summed validation loss at the current weights.
* ``finite_difference``: reverse mode through every inner step of every stage; each Hessian-vector
  and mixed product by central differences (two gradients per step, each w.r.t. theta and A; at the
  earliest step of the chain only the A part is needed, so only A's gradient is taken there).
* ``stagewise``: each task's term of the objective, DARTS' hypergradient through the steps of the one stage
  that produced the encoder the term validates (``val_on: own``: the task's last-round stage; ``final``: the
  last stage), what that stage was handed (encoder, starting head, other heads) held constant; summed over
  tasks. With R = 1 and ``own``: every stage's own term, the published reading of interleaving learning;
  about K DARTS second-order steps. Earlier rounds' stages add nothing, as in the objective.
* ``exact``: the same chain as ``finite_difference`` by autograd through ``create_graph=True`` (memory
  grows with K*R*T).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ilnas.hypergrad.problem import InnerHParams, Params, Problem, Stage

METHODS = ("first_order", "finite_difference", "stagewise", "exact")
FD_EPS = 0.01


@dataclass
class HypergradResult:
    grads: list[torch.Tensor]  # one per hyper, same order as problem.hypers()
    val_loss: float
    val_losses: list[float]  # per task


@dataclass
class _Record:
    stage: int
    theta: Params  # stage parameters before the step (detached)
    batch: Any
    xi: float


def _zeros_like_all(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.zeros_like(t) for t in tensors]


def _grad_or_zero(grads: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, like, strict=True)]


def _grad(loss: torch.Tensor, wrt: Sequence[torch.Tensor], hp: InnerHParams,
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
           create_graph: bool = False) -> tuple[Params, list[Params], list[_Record]]:
    """Run every stage's inner steps on a parameter dict.

    Returns the final params, each stage's ending values of its own parameters (encoder + head), and the
    per-step records the finite-difference chains walk back through.
    """
    params = dict(params0)
    buffers = _MomentumBuffers(hp)
    snapshots: list[Params] = []
    records: list[_Record] = []
    for si, stage in enumerate(stages):
        anchor = {n: params[n] for n in stage.anchored}
        bufs = buffers.of(stage.task)
        for batch, xi in zip(stage.batches, stage.lrs, strict=True):
            if create_graph:
                theta = {n: params[n] for n in stage.names}
            else:
                theta = {n: params[n].detach().requires_grad_(True) for n in stage.names}
            loss = problem.train_loss({**params, **theta}, stage.task, batch)
            _check_finite(loss, f"virtual train loss of stage {si} (task {stage.task})")
            grads = _grad(loss, list(theta.values()), hp, create_graph=create_graph)
            if not create_graph:
                theta = {n: t.detach() for n, t in theta.items()}
                grads = [g.detach() for g in grads]
                records.append(_Record(si, theta, batch, xi))
            params.update(_inner_step(theta, grads, stage, anchor, xi, hp, bufs))
        snapshots.append({n: params[n] for n in stage.names})
    return params, snapshots, records


def _val_objective(problem: Problem, final: Params, own_snapshots: dict[int, Params] | None,
                   val_batches: Sequence[Any]) -> tuple[torch.Tensor, list[float]]:
    losses = []
    for k, batch in enumerate(val_batches):
        params = final if own_snapshots is None else {**final, **own_snapshots[k]}
        loss = problem.val_loss(params, k, batch)
        _check_finite(loss, f"validation loss of task {k}")
        losses.append(loss)
    total = torch.stack(losses).sum()
    return total, [float(v.detach()) for v in losses]


def _own_stage_index(stages: Sequence[Stage], k: int) -> int:
    """The last stage that trained task k: its encoder is W_k^R for ``val_on: own``."""
    return max(i for i, s in enumerate(stages) if s.task == k)


def hypergradient(method: str, problem: Problem, params: Params, stages: Sequence[Stage],
                  val_batches: Sequence[Any], hp: InnerHParams, val_on: str = "final",
                  fd_eps: float = FD_EPS) -> HypergradResult:
    """d/dA of the summed validation loss after the unrolled stages. ``fd_eps``: DARTS' 0.01 (/||u||).

    ``val_on`` chooses the encoder each task is validated on (its own last stage's, or the final one), for
    every method; ``stagewise`` differentiates each term through the stage that produced that encoder only.

    ReLU networks are only piecewise smooth: at DARTS' eps the central differences also see kinks the
    exact (autograd) chain ignores, so the two agree closely on larger batches and exactly as eps -> 0.
    """
    if method not in METHODS:
        raise ValueError(f"unknown hypergradient method {method!r}; allowed: {list(METHODS)}")
    if val_on not in ("final", "own"):
        raise ValueError(f"unknown val_on {val_on!r}; allowed: ['final', 'own']")
    hypers = problem.hypers()
    params = {n: p.detach() for n, p in params.items()}
    if method == "first_order":
        total, per_task = _val_objective(problem, params, None, val_batches)
        return HypergradResult(_grad(total, hypers, hp), float(total.detach()), per_task)
    if method == "exact":
        leaves = {n: p.clone().requires_grad_(True) for n, p in params.items()}
        final, snaps, _ = unroll(problem, leaves, stages, hp, create_graph=True)
        own = {k: snaps[_own_stage_index(stages, k)] for k in range(len(val_batches))} if val_on == "own" else None
        total, per_task = _val_objective(problem, final, own, val_batches)
        return HypergradResult(_grad(total, hypers, hp), float(total.detach()), per_task)
    if method == "stagewise":
        return _stagewise(problem, params, stages, val_batches, hp, hypers, fd_eps, val_on)
    return _finite_difference(problem, params, stages, val_batches, hp, val_on, hypers, fd_eps)


def _finite_difference(problem: Problem, params: Params, stages: Sequence[Stage], val_batches: Sequence[Any],
                       hp: InnerHParams, val_on: str, hypers: list[torch.Tensor], fd_eps: float) -> HypergradResult:
    final, snaps, records = unroll(problem, params, stages, hp, create_graph=False)
    final = {n: p.detach().requires_grad_(True) for n, p in final.items()}
    own_idx: dict[int, int] = {}
    own = None
    if val_on == "own":
        own_idx = {k: _own_stage_index(stages, k) for k in range(len(val_batches))}
        own = {k: {n: p.detach().requires_grad_(True) for n, p in snaps[i].items()} for k, i in own_idx.items()}
    total, per_task = _val_objective(problem, final, own, val_batches)
    leaves = list(final.values()) + [p for k in sorted(own or {}) for p in own[k].values()]
    grads = _grad(total, hypers + leaves, hp)
    g_hyper, rest = grads[: len(hypers)], grads[len(hypers):]
    u: Params = dict(zip(final.keys(), rest[: len(final)], strict=True))
    own_adjoint: dict[int, Params] = {}
    offset = len(final)
    for k in sorted(own or {}):
        names = list(own[k].keys())
        own_adjoint[own_idx[k]] = dict(zip(names, rest[offset : offset + len(names)], strict=True))
        offset += len(names)

    by_stage = _records_by_stage(records)
    earliest = records[0] if records else None
    for si in reversed(range(len(stages))):
        stage = stages[si]
        for name, v in own_adjoint.get(si, {}).items():
            u[name] = u[name] + v
        anchor_adjoint = {n: torch.zeros_like(u[n]) for n in stage.anchored} if hp.lam else {}
        for rec in reversed(by_stage.get(si, [])):
            # the adjoint before the chain's first step is never used: skip the theta part there
            _backstep(problem, rec, stage, u, g_hyper, hypers, hp, fd_eps, anchor_adjoint,
                      need_theta=rec is not earliest)
        for n, a in anchor_adjoint.items():
            u[n] = u[n] + a
    return HypergradResult(g_hyper, float(total.detach()), per_task)


def _records_by_stage(records: Sequence[_Record]) -> dict[int, list[_Record]]:
    by_stage: dict[int, list[_Record]] = {}
    for rec in records:
        by_stage.setdefault(rec.stage, []).append(rec)
    return by_stage


def _backstep(problem: Problem, rec: _Record, stage: Stage, u: Params, g_hyper: list[torch.Tensor],
              hypers: list[torch.Tensor], hp: InnerHParams, fd_eps: float, anchor_adjoint: Params,
              need_theta: bool) -> None:
    """One inner step backwards: ``g_A -= xi * mixed``; then, if needed, ``u <- u - xi (H u + wd u + lam u)``."""
    u_theta = [u[n] for n in stage.names]
    hvp, mixed = _central_difference(problem, rec, stage, u_theta, hypers, fd_eps, need_theta, hp)
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


def _stagewise(problem: Problem, params: Params, stages: Sequence[Stage], val_batches: Sequence[Any],
               hp: InnerHParams, hypers: list[torch.Tensor], fd_eps: float, val_on: str) -> HypergradResult:
    """The objective's terms, each through the one stage that produced its encoder; the rest is a constant."""
    final, snaps, records = unroll(problem, params, stages, hp, create_graph=False)
    by_stage = _records_by_stage(records)
    g_hyper = _zeros_like_all(hypers)
    per_task = [0.0] * len(val_batches)
    base = final if val_on == "final" else params  # what the stage's own parameters are evaluated beside
    for si, stage in enumerate(stages):
        tasks = [k for k in range(len(val_batches)) if _term_stage(stages, k, val_on) == si]
        if not tasks:
            continue  # an earlier round: the objective validates none of its encoders
        end = {n: snaps[si][n].detach().requires_grad_(True) for n in stage.names}
        losses = []
        for k in tasks:
            loss = problem.val_loss({**base, **end}, k, val_batches[k])
            _check_finite(loss, f"validation loss of task {k} after stage {si}")
            per_task[k] = float(loss.detach())
            losses.append(loss)
        grads = _grad(torch.stack(losses).sum(), hypers + list(end.values()), hp)
        for h, g in zip(g_hyper, grads[: len(hypers)], strict=True):
            h.add_(g)
        u = dict(zip(end.keys(), grads[len(hypers):], strict=True))
        recs = by_stage.get(si, [])
        for rec in reversed(recs):
            _backstep(problem, rec, stage, u, g_hyper, hypers, hp, fd_eps, {}, need_theta=rec is not recs[0])
    return HypergradResult(g_hyper, sum(per_task), per_task)


def _term_stage(stages: Sequence[Stage], k: int, val_on: str) -> int:
    """The stage whose encoder task k's validation term reads: its own last one, or the last of all."""
    return _own_stage_index(stages, k) if val_on == "own" else len(stages) - 1


def _central_difference(problem: Problem, rec: _Record, stage: Stage, u_theta: list[torch.Tensor],
                        hypers: list[torch.Tensor], fd_eps: float, need_theta: bool = True,
                        hp: InnerHParams | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``(Hess_theta L u, d/dA <grad_theta L, u>)`` from gradients at ``theta +- eps u`` (DARTS' eps = 0.01/||u||).

    With ``need_theta=False`` only A's gradient is taken (no weight gradients: a cheaper backward pass)
    and the Hessian-vector part comes back empty.
    """
    norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(u_theta)))) if u_theta else 0.0
    if norm == 0.0:
        return (_zeros_like_all(u_theta) if need_theta else []), _zeros_like_all(hypers)
    eps = fd_eps / norm
    sides = []
    start = [rec.theta[n] for n in stage.names]
    for sign in (1.0, -1.0):
        with torch.no_grad():
            theta = dict(zip(stage.names, torch._foreach_add(start, u_theta, alpha=sign * eps), strict=True))
        wrt = hypers
        if need_theta:
            theta = {n: t.requires_grad_(True) for n, t in theta.items()}
            wrt = list(theta.values()) + hypers
        loss = problem.train_loss(theta, stage.task, rec.batch)
        sides.append(_grad(loss, wrt, hp or InnerHParams()))
    plus, minus = sides
    diff = torch._foreach_div(torch._foreach_sub(plus, minus), 2 * eps)
    n_theta = len(u_theta) if need_theta else 0
    return diff[:n_theta], diff[n_theta:]


def _check_finite(loss: torch.Tensor, what: str) -> None:
    if not torch.isfinite(loss.detach()).all():
        raise FloatingPointError(f"non-finite {what}: {float(loss.detach())}")
