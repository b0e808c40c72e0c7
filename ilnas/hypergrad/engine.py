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

Each method is one module of ``ilnas/hypergrad/methods/``, a function of a ``HypergradState`` registered under
its name (``registry.py``; the names' one home is ``names.py``); what they share (the unroll, the step back,
the central differences) lives in ``_common.py``. :func:`hypergradient` looks the name up in the registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ilnas.hypergrad._common import FD_EPS, HypergradResult, HypergradState, unroll
from ilnas.hypergrad.methods import REGISTRY
from ilnas.hypergrad.names import METHODS
from ilnas.hypergrad.problem import InnerHParams, Params, Problem, Stage

__all__ = ["FD_EPS", "METHODS", "HypergradResult", "HypergradState", "hypergradient", "unroll"]


def hypergradient(method: str, problem: Problem, params: Params, stages: Sequence[Stage],
                  val_batches: Sequence[Any], hp: InnerHParams, val_on: str = "final",
                  fd_eps: float = FD_EPS) -> HypergradResult:
    """d/dA of the summed validation loss after the unrolled stages. ``fd_eps``: DARTS' 0.01 (/||u||).

    ``method`` names a registered method (``names.METHODS``). ``val_on`` chooses the encoder each task is
    validated on (its own last stage's, or the final one), for every method; ``stagewise`` differentiates each
    term through the stage that produced that encoder only.

    ReLU networks are only piecewise smooth: at DARTS' eps the central differences also see kinks the
    exact (autograd) chain ignores, so the two agree closely on larger batches and exactly as eps -> 0.
    """
    if method not in REGISTRY:
        raise ValueError(f"unknown hypergradient method {method!r}; allowed: {list(METHODS)}")
    if val_on not in ("final", "own"):
        raise ValueError(f"unknown val_on {val_on!r}; allowed: ['final', 'own']")
    hypers = problem.hypers()
    params = {n: p.detach() for n, p in params.items()}
    state = HypergradState(problem, params, stages, val_batches, hp, hypers, val_on, fd_eps)
    return REGISTRY[method](state)
