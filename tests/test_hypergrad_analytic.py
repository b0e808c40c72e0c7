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


def analytic(problem: RidgeTasks, params, stages, val_batches, hp: InnerHParams, val_on: str) -> float:
    """d/da of the summed validation loss after the unrolled stages, by forward sensitivities."""
    K = len(val_batches)
    names = ["W"] + [f"H{k}" for k in range(K)]
    theta = {n: params[n].detach().clone() for n in names}
    sens = {n: torch.zeros_like(theta[n]) for n in names}
    bufs = {n: b.clone() for n, b in hp.momentum_buffers.items()}
    ea = torch.exp(problem.a.detach()[0])
    own = {}
    for si, st in enumerate(stages):
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
        if si == max(i for i, s in enumerate(stages) if s.task == st.task):
            own[st.task] = (theta["W"].clone(), sens["W"].clone())
    total = 0.0
    for k, (X, y) in enumerate(val_batches):
        W, sW = own[k] if val_on == "own" else (theta["W"], sens["W"])
        H, sH = theta[f"H{k}"], sens[f"H{k}"]
        r = X @ W + H - y
        total += float((r * (X @ sW + sH)).mean() + ea * (W @ sW) + 0.5 * ea * (W @ W))
    return total


def make_case(K: int, R: int, T: int, lam: float, momentum_init: bool):
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
    val = [problem.data[k][2:] for k in range(K)]
    return problem, params, stages, val, hp


@pytest.mark.parametrize("method", ["finite_difference", "exact"])
@pytest.mark.parametrize("K,R,T,lam,val_on", [
    (1, 1, 1, 0.0, "final"),
    (2, 1, 1, 0.0, "final"),
    (2, 2, 3, 0.5, "final"),
    (2, 2, 3, 0.5, "own"),
    (3, 1, 2, 1.0, "own"),
])
def test_unrolled_methods_match_analytic(method, K, R, T, lam, val_on):
    problem, params, stages, val, hp = make_case(K, R, T, lam, momentum_init=True)
    expected = analytic(problem, params, stages, val, hp, val_on)
    got = hypergradient(method, problem, params, stages, val, hp, val_on).grads[0].item()
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-9)


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
