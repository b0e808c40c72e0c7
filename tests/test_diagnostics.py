"""Collapse diagnostics: alpha entropy, displacement, parameter-free share, the Hessian's dominant eigenvalue."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader

from ilnas.data.spec import TaskConfig
from ilnas.data.tasks import build_task
from ilnas.search import SearchConfig, SearchRun
from ilnas.search.diagnostics import alpha_diagnostics, dominant_eigenvalue, edge_entropy, hessian_eigenvalue
from ilnas.space.architecture import Architecture
from ilnas.space.calibration import calibration_subset
from ilnas.space.ops import PRIMITIVES
from ilnas.space.supernet import Supernet

TINY = dict(channels=4, cells=3, nodes=2, batch_size=16, deterministic=True, iterations_per_epoch=2, epochs=2)


def test_uniform_alphas_have_entropy_ln8_per_edge():
    arch = Architecture(nodes=4)
    with torch.no_grad():
        arch.alphas_normal.zero_()
        arch.alphas_reduce.fill_(3.0)  # any constant row is uniform after the softmax
    for alphas in (arch.alphas_normal, arch.alphas_reduce):
        assert edge_entropy(alphas) == pytest.approx(torch.full((14,), math.log(len(PRIMITIVES))), abs=1e-6)
    # Fair DARTS' independent sigmoids, equal: uniform once normalised
    assert edge_entropy(torch.full((3, 8), -2.0), "sigmoid") == pytest.approx(torch.full((3,), math.log(8)))
    row = alpha_diagnostics(arch, arch.raw_snapshot(), arch.derive())
    assert row["alpha_entropy/normal"] == pytest.approx(math.log(8))
    assert row["alpha_displacement_l2/normal"] == 0 and row["alpha_displacement_max/reduce"] == 0


def test_displacement_and_parameter_free_share():
    arch = Architecture(nodes=2)
    alpha0 = arch.raw_snapshot()
    with torch.no_grad():
        arch.alphas_normal[:, PRIMITIVES.index("skip_connect")] += 3.0  # every normal edge: a skip
        arch.alphas_normal[0, 0] += 4.0  # and a 3-4-5 displacement on edge 0
    row = alpha_diagnostics(arch, alpha0, arch.derive())
    assert row["alpha_displacement_max/normal"] == pytest.approx(4.0)
    assert row["alpha_displacement_l2/normal"] == pytest.approx(math.sqrt(5 * 9 + 16))
    assert row["param_free_share/normal"] == 1.0
    assert row["alpha_entropy/normal"] < math.log(8)


@pytest.mark.parametrize("eigs", [(3.0, 1.0, 0.5, -0.2), (2.0, -1.0, -5.0, 0.1)])
def test_power_iteration_matches_the_closed_form_of_a_quadratic(eigs):
    """L = x^T A x / 2 has Hessian A: its largest eigenvalue, also when a negative one is larger in magnitude."""
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    a = q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(0.5 * x @ a @ x, x, create_graph=True)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        return torch.autograd.grad(g @ v, x, retain_graph=True)[0]

    expected = float(torch.linalg.eigvalsh(a).max())
    assert dominant_eigenvalue(hvp, 4, iterations=500, tol=1e-12) == pytest.approx(expected, rel=1e-6)


def one_task() -> list[TaskConfig]:
    return [TaskConfig(name="digits_0_4", dataset="digits", classes=[0, 1, 2, 3, 4])]


def test_supernet_hessian_matches_the_full_hessian_and_moves_nothing():
    """On a supernet: the power-iteration eigenvalue equals the largest eigenvalue of the full Hessian
    (torch.autograd.functional.hessian), and BatchNorm statistics and the global RNG come out unchanged."""
    torch.manual_seed(0)
    task = build_task(one_task()[0], seed=0, val_fraction=0.5)
    model, arch = Supernet([5], task.in_channels, 4, 3, 1, 1), Architecture(1)
    with torch.no_grad():  # away from uniform: a Hessian with a clear top eigenvalue
        arch.alphas_normal.normal_(0, 1)
        arch.alphas_reduce.normal_(0, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    lam = hessian_eigenvalue(model, arch, [task], torch.device("cpu"), 4, iterations=300, seed=0, tol=1e-6)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    x, y = next(iter(DataLoader(calibration_subset(task.val, 4, 0), batch_size=4)))  # the batch it used
    n = arch.alphas_normal.numel()

    def loss(flat: torch.Tensor) -> torch.Tensor:
        w = {"normal": torch.softmax(flat[:n].view(2, -1), -1), "reduce": torch.softmax(flat[n:].view(2, -1), -1)}
        return torch.nn.functional.cross_entropy(model(x, w, 0), y)

    model.train()
    flat = torch.cat([arch.alphas_normal.detach().reshape(-1), arch.alphas_reduce.detach().reshape(-1)])
    eigs = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat).double())
    assert eigs[0] < 0 < eigs[-1]  # indefinite: the largest, not the largest in magnitude, is asked for
    assert lam == pytest.approx(float(eigs[-1]), rel=1e-3)


def test_search_history_carries_the_diagnostics(tmp_path):
    cfg = SearchConfig(tasks=one_task(), hessian_every=2, hessian_iterations=5, **TINY)
    result = SearchRun(cfg, tmp_path).run(progress=False)
    first, last = result.history
    for key in ("alpha_entropy/normal", "alpha_entropy/reduce", "alpha_displacement_l2/normal",
                "alpha_displacement_max/reduce", "param_free_share/normal"):
        assert key in first and key in last
    assert "hessian_eigenvalue" not in first and math.isfinite(last["hessian_eigenvalue"])
    assert len(result.alpha_rows[-1]["entropy_normal"]) == 5  # 2 nodes: 2 + 3 edges
    assert last["alpha_entropy/normal"] < math.log(8)  # the alphas moved away from (nearly) uniform
    header = result.history_csv.read_text().splitlines()[0].split(",")
    assert "hessian_eigenvalue" in header and "alpha_entropy/normal" in header
