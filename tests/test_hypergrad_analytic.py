"""Every hypergradient method against the analytic hypergradient of a closed-form interleaved problem.

Tasks are ridge regressions sharing an encoder W (a weight vector) with a bias head H_k each; the
ridge strength exp(a) plays the architecture. The inner dynamics are linear in theta, so the
sensitivity d theta / d a follows a closed-form forward recursion, computed here independently of
the engine.
"""

from __future__ import annotations

import pytest
import torch

from ilnas.hypergrad import InnerHParams, Stage, hypergradient
from ilnas.hypergrad.engine import unroll

D, N = 5, 12


class RidgeTasks:
    def __init__(self, k_tasks: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.a = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
        self.data = [
            tuple(torch.randn(N, D, generator=g, dtype=torch.float64) if i % 2 == 0
                  else torch.randn(N, generator=g, dtype=torch.float64) for i in range(4))
            for _ in range(k_tasks)
        ]  # (X_tr, y_tr, X_val, y_val) per task

    def hypers(self):
        return [self.a]

    def _loss(self, params, task, X, y):
        W, H = params["W"], params[f"H{task}"]
        r = X @ W + H - y
        return 0.5 * (r * r).mean() + 0.5 * torch.exp(self.a[0]) * (W * W).sum()

    def train_loss(self, params, task, batch):
        return self._loss(params, task, *batch)

    val_loss = train_loss


def _val_derivative(problem: RidgeTasks, X, y, W, sW, H, sH) -> float:
    """d/da of one task's validation loss given the sensitivities of its encoder and head."""
    ea = torch.exp(problem.a.detach()[0])
    r = X @ W + H - y
    return float((r * (X @ sW + sH)).mean() + ea * (W @ sW) + 0.5 * ea * (W @ W))


def analytic(problem: RidgeTasks, params, stages, val_batches, hp: InnerHParams, val_on: str,
             stagewise: bool = False) -> float:
    """d/da of the summed validation loss after the unrolled stages, by forward sensitivities.

    Momentum buffers are per model (task) when ``hp.task_momentum_buffers`` is given. ``stagewise``: the
    sensitivities restart at zero at every stage (what a stage is handed is a constant) and each task's
    term is taken at the end of the stage whose encoder it validates (own: the task's last; final: the last).
    """
    K = len(val_batches)
    names = ["W"] + [f"H{k}" for k in range(K)]
    theta = {n: params[n].detach().clone() for n in names}
    sens = {n: torch.zeros_like(theta[n]) for n in names}
    per_model = hp.task_momentum_buffers is not None
    if per_model:
        task_bufs = {k: {n: b.clone() for n, b in hp.task_momentum_buffers.get(k, {}).items()} for k in range(K)}
    shared_bufs = {n: b.clone() for n, b in hp.momentum_buffers.items()}
    ea = torch.exp(problem.a.detach()[0])
    own = {}
    stagewise_total = 0.0
    for si, st in enumerate(stages):
        if stagewise:
            sens = {n: torch.zeros_like(theta[n]) for n in names}
        bufs = task_bufs[st.task] if per_model else shared_bufs
        anchor, anchor_s = theta["W"].clone(), sens["W"].clone()
        hk = f"H{st.task}"
        for (X, y), xi in zip(st.batches, st.lrs):
            W, H = theta["W"], theta[hk]
            n = X.shape[0]
            r = X @ W + H - y
            gW = X.T @ r / n + ea * W + hp.weight_decay * W + hp.lam * (W - anchor)
            gH = r.mean() + hp.weight_decay * H
            # sensitivities: d/da of gW and gH (momentum buffers held constant)
            dr = X @ sens["W"] + sens[hk]
            dgW = X.T @ dr / n + ea * sens["W"] + ea * W + hp.weight_decay * sens["W"] \
                + hp.lam * (sens["W"] - anchor_s)
            dgH = dr.mean() + hp.weight_decay * sens[hk]
            for name, g in (("W", gW), (hk, gH)):
                step = g if name not in bufs else hp.momentum * bufs[name] + g
                bufs[name] = step
            theta["W"], theta[hk] = W - xi * bufs["W"], H - xi * bufs[hk]
            sens["W"], sens[hk] = sens["W"] - xi * dgW, sens[hk] - xi * dgH
        if stagewise:  # the objective's terms that validate this stage's encoder
            for k in range(K):
                if si == (max(i for i, s in enumerate(stages) if s.task == k) if val_on == "own" else len(stages) - 1):
                    X, y = val_batches[k]
                    stagewise_total += _val_derivative(problem, X, y, theta["W"], sens["W"], theta[f"H{k}"],
                                                       sens[f"H{k}"])
        if si == max(i for i, s in enumerate(stages) if s.task == st.task):
            own[st.task] = (theta["W"].clone(), sens["W"].clone())
    if stagewise:
        return stagewise_total
    total = 0.0
    for k, (X, y) in enumerate(val_batches):
        W, sW = own[k] if val_on == "own" else (theta["W"], sens["W"])
        total += _val_derivative(problem, X, y, W, sW, theta[f"H{k}"], sens[f"H{k}"])
    return total


def make_case(K: int, R: int, T: int, lam: float, momentum_init: bool, per_model: bool = False):
    problem = RidgeTasks(K)
    g = torch.Generator().manual_seed(1)
    params = {"W": torch.randn(D, generator=g, dtype=torch.float64)}
    params.update({f"H{k}": torch.randn((), generator=g, dtype=torch.float64) for k in range(K)})
    stages = [
        Stage(task=k, names=["W", f"H{k}"], anchored=["W"],
              batches=[problem.data[k][:2]] * T, lrs=[0.05 * (1 + 0.1 * t) for t in range(T)], round=r)
        for r in range(R) for k in range(K)
    ]
    bufs = {n: 0.1 * torch.randn_like(p) for n, p in params.items()} if momentum_init else {}
    hp = InnerHParams(momentum=0.9, weight_decay=3e-3, lam=lam, momentum_buffers=bufs)
    if per_model:  # model k: its own encoder buffer (different per k) and its head's
        hp.task_momentum_buffers = {
            k: {"W": 0.1 * torch.randn(D, generator=g, dtype=torch.float64), f"H{k}": bufs[f"H{k}"]}
            if momentum_init else {} for k in range(K)}
    val = [problem.data[k][2:] for k in range(K)]
    return problem, params, stages, val, hp


CASES = [
    (1, 1, 1, 0.0, "final"),
    (2, 1, 1, 0.0, "final"),
    (2, 2, 3, 0.5, "final"),
    (2, 2, 3, 0.5, "own"),
    (3, 1, 2, 1.0, "own"),
]


@pytest.mark.parametrize("per_model", [False, True], ids=["shared_state", "per_model_state"])
@pytest.mark.parametrize("method", ["finite_difference", "exact"])
@pytest.mark.parametrize("K,R,T,lam,val_on", CASES)
def test_unrolled_methods_match_analytic(method, K, R, T, lam, val_on, per_model):
    problem, params, stages, val, hp = make_case(K, R, T, lam, momentum_init=True, per_model=per_model)
    expected = analytic(problem, params, stages, val, hp, val_on)
    got = hypergradient(method, problem, params, stages, val, hp, val_on).grads[0].item()
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("per_model", [False, True], ids=["shared_state", "per_model_state"])
@pytest.mark.parametrize("K,R,T,lam,val_on", CASES)
def test_stagewise_matches_its_closed_form(K, R, T, lam, val_on, per_model):
    problem, params, stages, val, hp = make_case(K, R, T, lam, momentum_init=True, per_model=per_model)
    expected = analytic(problem, params, stages, val, hp, val_on, stagewise=True)
    got = hypergradient("stagewise", problem, params, stages, val, hp, val_on).grads[0].item()
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-9)
    if K > 1:  # and it is a different quantity from the chained hypergradient
        chained = analytic(problem, params, stages, val, hp, val_on)
        assert abs(expected - chained) > 1e-6


def test_k1_single_step_stagewise_is_darts_second_order():
    """K = 1, R = 1, T = 1: one stage, so the stagewise and the chained hypergradients coincide."""
    problem, params, stages, val, hp = make_case(1, 1, 1, 0.0, momentum_init=True)
    a = hypergradient("stagewise", problem, params, stages, val, hp).grads[0].item()
    b = hypergradient("finite_difference", problem, params, stages, val, hp).grads[0].item()
    assert a == pytest.approx(b, rel=1e-9)


def test_per_model_state_changes_the_hypergradient():
    """The per-model momentum is not a relabelling: with different encoder buffers the answer moves."""
    shared = make_case(2, 2, 2, 0.0, momentum_init=True, per_model=False)
    per_model = make_case(2, 2, 2, 0.0, momentum_init=True, per_model=True)
    g_shared = hypergradient("exact", *shared[:4], shared[4]).grads[0].item()
    g_model = hypergradient("exact", *per_model[:4], per_model[4]).grads[0].item()
    assert abs(g_shared - g_model) > 1e-6


def test_lam_matters_only_with_several_inner_steps():
    grads = {}
    for T in (1, 3):
        for lam in (0.0, 2.0):
            problem, params, stages, val, hp = make_case(2, 1, T, lam, momentum_init=False)
            grads[T, lam] = hypergradient("exact", problem, params, stages, val, hp).grads[0].item()
    assert grads[1, 0.0] == pytest.approx(grads[1, 2.0], rel=1e-12)
    assert abs(grads[3, 0.0] - grads[3, 2.0]) > 1e-6


def test_first_order_is_the_partial_derivative_at_current_weights():
    problem, params, stages, val, hp = make_case(2, 2, 2, 0.5, momentum_init=True)
    ea = torch.exp(problem.a.detach()[0])
    expected = sum(float(0.5 * ea * (params["W"] @ params["W"])) for _ in range(2))
    got = hypergradient("first_order", problem, params, stages, val, hp).grads[0].item()
    assert got == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("val_on", ["own", "final"])
def test_stagewise_r2_counts_only_the_objectives_terms(val_on):
    """R = 2: round 1's encoders are validated by no term of the objective, so they add nothing.

    Without momentum the rounds do not share state, so the answer is the stagewise hypergradient of round 2
    alone, started from where round 1 left the weights; summing round 1's terms too (as before) differs.
    """
    problem, params, stages, val, hp = make_case(2, 2, 2, 0.5, momentum_init=False)
    hp.momentum = 0.0
    got = hypergradient("stagewise", problem, params, stages, val, hp, val_on)
    after_round1 = {n: p.detach() for n, p in unroll(problem, params, stages[:2], hp)[0].items()}
    round2 = hypergradient("stagewise", problem, after_round1, stages[2:], val, hp, val_on)
    assert got.grads[0].item() == pytest.approx(round2.grads[0].item(), rel=1e-9)
    assert got.val_losses == pytest.approx(round2.val_losses, rel=1e-12)
    round1 = hypergradient("stagewise", problem, params, stages[:2], val, hp, val_on)
    assert abs(round1.grads[0].item()) > 1e-3  # the every-round sum would be off by this much
