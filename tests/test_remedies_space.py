"""Collapse remedies in the search space: primitives, noise op, edge normalization, DARTS- skip, Fair DARTS sigmoid."""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch

import ilnas.nets  # noqa: F401  (registers ilnas_cifar in timm)
from ilnas.space.architecture import Architecture, num_edges
from ilnas.space.genotype import Genotype, GenotypeError, derive_genotype
from ilnas.space.primitives import RDARTS_SPACES, check_primitives, derived_primitives
from ilnas.space.remedies import aux_skip_rate, zero_one_loss
from ilnas.space.supernet import MixedOp, SearchCell, Supernet


def _forward_and_grads(op: MixedOp, x: torch.Tensor, w: torch.Tensor, fused: bool, aux=None) -> list[torch.Tensor]:
    x, w = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    torch.manual_seed(7)  # the noise op draws: the same draws for both forwards
    out = op(x, w, aux) if fused else op.reference_forward(x, w, aux)
    grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out).double()).sum(),
                                [x, w, *op.parameters()], allow_unused=True)
    return [out.detach(), *[g if g is not None else torch.zeros(()) for g in grads]]


@pytest.mark.parametrize("space", ["s2", "s3", "s4"])
@pytest.mark.parametrize("stride", [1, 2])
def test_primitive_subset_changes_the_candidates_and_keeps_the_weighted_sum(space, stride):
    primitives = RDARTS_SPACES[space]
    torch.manual_seed(0)
    op = MixedOp(4, stride, primitives=primitives).double()
    assert len(op.ops) == len(primitives)  # one candidate per listed op, not the DARTS 8
    x = torch.randn(3, 4, 6, 6, dtype=torch.float64)
    w = torch.softmax(torch.randn(len(primitives), dtype=torch.float64), 0)
    got = _forward_and_grads(op, x, w, fused=True)
    want = _forward_and_grads(copy.deepcopy(op), x, w, fused=False)
    for a, b in zip(got, want, strict=True):
        assert torch.allclose(a, b, atol=1e-12)


def test_noise_op_outputs_standard_normal_noise_not_the_input():
    op = MixedOp(4, 1, primitives=("noise",)).double()
    x = torch.full((64, 4, 8, 8), 5.0, dtype=torch.float64)
    out = op(x, torch.ones(1, dtype=torch.float64))
    assert abs(float(out.mean())) < 0.05 and abs(float(out.std()) - 1) < 0.05
    assert op(x[:, :, :7, :7], torch.ones(1, dtype=torch.float64)).shape == (64, 4, 7, 7)
    strided = MixedOp(4, 2, primitives=("noise",))
    assert strided(torch.zeros(2, 4, 7, 7), torch.ones(1)).shape == (2, 4, 4, 4)


def test_architecture_and_genotype_of_a_subset_name_only_its_ops():
    arch = Architecture(nodes=3, primitives=RDARTS_SPACES["s3"])
    assert arch.alphas_normal.shape == (num_edges(3), 3)
    with torch.no_grad():
        arch.alphas_normal[:, 0] = 10.0  # 'none' strongest everywhere: derivation still never picks it
    genotype = arch.derive()
    assert {op for op, _ in genotype.normal + genotype.reduce} <= {"skip_connect", "sep_conv_3x3"}
    assert genotype.primitives == ("none", "skip_connect", "sep_conv_3x3")
    assert Genotype.from_json(genotype.to_json()) == genotype
    assert genotype.to_dict()["primitives"] == ["none", "skip_connect", "sep_conv_3x3"]
    with pytest.raises(GenotypeError, match=r"normal\[0\].op.*'sep_conv_5x5'.*allowed: \['skip_connect'"):
        Genotype(normal=(("sep_conv_5x5", 0), ("skip_connect", 1)), normal_concat=(2,),
                 reduce=(("skip_connect", 0), ("skip_connect", 1)), reduce_concat=(2,),
                 primitives=RDARTS_SPACES["s2"])
    old = {k: v for k, v in genotype.to_dict().items() if k != "primitives"}  # a file from before the field
    assert Genotype.from_dict(old).primitives == tuple(Architecture().primitives)


def test_bad_primitives_name_the_key_and_the_allowed_ops():
    with pytest.raises(ValueError, match=r"search.primitives: unknown op\(s\) \['conv_9x9'\]; allowed: \[.*'noise'"):
        check_primitives(["skip_connect", "conv_9x9"], "search.primitives")
    with pytest.raises(ValueError, match="more than once"):
        check_primitives(["skip_connect", "skip_connect"])
    with pytest.raises(ValueError, match="at least one op other than 'none'"):
        check_primitives(["none"])
    assert derived_primitives(RDARTS_SPACES["s4"]) == ("noise", "sep_conv_3x3")


def test_a_retrained_network_builds_the_noise_op_of_an_s4_genotype():
    genotype = Genotype(normal=(("noise", 0), ("sep_conv_3x3", 1)), normal_concat=(2,),
                        reduce=(("sep_conv_3x3", 0), ("noise", 1)), reduce_concat=(2,),
                        primitives=RDARTS_SPACES["s4"])
    net = timm.create_model("ilnas_cifar", genotype=genotype.to_json(), num_classes=3, in_chans=1, channels=4,
                            cells=3, auxiliary=False)
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_edge_normalization_multiplies_each_edge_by_its_beta_and_betas_get_gradients():
    torch.manual_seed(0)
    cell = SearchCell(nodes=2, multiplier=2, c_pp=4, c_p=4, c=4, reduction=False, reduction_prev=False).double()
    arch = Architecture(nodes=2, edge_normalization=True, init_scale=1.0).double()
    w = arch()
    s0, s1 = torch.randn(2, 4, 5, 5, dtype=torch.float64), torch.randn(2, 4, 5, 5, dtype=torch.float64)
    out = cell(s0, s1, w["normal"], w["edge_normal"])
    # written out: node 2 = sum_j beta_j edge_j(s_j), node 3 = sum_j beta_j edge_j(s_j) over s0, s1, node 2
    with torch.no_grad():
        states = [cell.preprocess0(s0), cell.preprocess1(s1)]
        betas = torch.cat([torch.softmax(arch.betas_normal[:2], 0), torch.softmax(arch.betas_normal[2:], 0)])
        assert torch.allclose(betas, w["edge_normal"])
        node2 = sum(betas[j] * cell.edges[j](states[j], w["normal"][j]) for j in range(2))
        states.append(node2)
        node3 = sum(betas[2 + j] * cell.edges[2 + j](states[j], w["normal"][2 + j]) for j in range(3))
    assert torch.allclose(out, torch.cat([node2, node3], 1), atol=1e-12)
    plain = cell(s0, s1, w["normal"], None)
    assert not torch.allclose(out, plain)  # the betas change the output
    (out ** 2).sum().backward()
    assert arch.betas_normal.grad is not None and float(arch.betas_normal.grad.abs().sum()) > 0


def test_derivation_ranks_edges_by_alpha_times_beta():
    """PC-DARTS model_search.py:194-198: the op weights of an edge times its normalized beta."""
    alphas = torch.zeros(5, 8)
    alphas[2, 4], alphas[3, 4], alphas[4, 4] = 3.0, 2.0, 1.0  # node 3: edge 2 strongest, then 3, then 4
    plain = derive_genotype(alphas, alphas, steps=2)
    assert [j for _, j in plain.normal[2:]] == [0, 1]
    edge = torch.tensor([0.5, 0.5, 0.05, 0.5, 0.45])  # edge 2's beta small: node 3 takes edges 3 and 4
    weighted = derive_genotype(alphas, alphas, steps=2, edge_weights_normal=edge)
    assert [j for _, j in weighted.normal[2:]] == [1, 2]


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_darts_minus_skip_weight_follows_its_schedule_and_vanishes_at_the_end(schedule):
    epochs = 8
    rates = [aux_skip_rate(schedule, e, epochs) for e in range(epochs + 1)]
    assert rates[0] == 1.0 and rates[-1] == pytest.approx(0.0, abs=1e-15)
    assert all(a > b for a, b in zip(rates, rates[1:]))
    want = [(epochs - e) / epochs if schedule == "linear" else (1 + math.cos(math.pi * e / epochs)) / 2
            for e in range(epochs + 1)]
    assert rates == pytest.approx(want)
    assert aux_skip_rate("none", 3, epochs) is None


@pytest.mark.parametrize("stride", [1, 2])
def test_darts_minus_skip_adds_beta_times_the_skip_outside_the_alphas(stride):
    torch.manual_seed(0)
    op = MixedOp(4, stride, aux_skip=True).double()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    w = torch.softmax(torch.randn(8, dtype=torch.float64), 0)
    skip = x if stride == 1 else op.aux_op(x)  # stride 2: its own FactorizedReduce (DARTS- model_search.py:18-19)
    beta = torch.tensor(0.3, dtype=torch.float64)
    assert torch.allclose(op(x, w, beta), op(x, w) + 0.3 * skip, atol=1e-12)
    assert torch.equal(op(x, w, torch.tensor(0.0, dtype=torch.float64)), op(x, w))  # vanished: the plain op
    got = _forward_and_grads(op, x, w, fused=True, aux=beta)
    want = _forward_and_grads(copy.deepcopy(op), x, w, fused=False, aux=beta)
    for a, b in zip(got, want, strict=True):
        assert torch.allclose(a, b, atol=1e-12)


def test_the_architecture_carries_the_skip_weight_to_every_edge_not_as_a_parameter():
    torch.manual_seed(0)
    net = Supernet([3], 1, channels=4, cells=3, nodes=2, aux_skip=True).double()
    arch = Architecture(nodes=2).double()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    plain = net(x, arch())
    arch.aux_skip = 0.5
    assert "aux_skip" in arch() and len(list(arch.parameters())) == 2
    assert not torch.allclose(net(x, arch()), plain)
    arch.aux_skip = 0.0
    assert torch.allclose(net(x, arch()), plain, atol=1e-12)
    assert "aux_skip" not in arch.softmax_snapshot()


def test_sigmoid_weights_are_independent_and_the_zero_one_loss_pushes_them_to_0_or_1():
    arch = Architecture(nodes=2, activation="sigmoid")
    with torch.no_grad():
        arch.alphas_normal.copy_(torch.linspace(-2, 2, arch.alphas_normal.numel()).view_as(arch.alphas_normal))
    w = arch()
    assert torch.allclose(w["normal"], torch.sigmoid(arch.alphas_normal))
    assert not torch.allclose(w["normal"].sum(-1), torch.ones(num_edges(2)))  # no simplex
    loss = zero_one_loss([w["normal"], w["reduce"]])
    (grad,) = torch.autograd.grad(loss, [arch.alphas_normal])
    above = w["normal"].detach() > 0.5
    below = w["normal"].detach() < 0.5
    # gradient descent raises alphas whose sigmoid is above 0.5 and lowers those below: towards 1 and 0
    assert bool((grad[above] < 0).all()) and bool((grad[below] > 0).all())


def test_sigmoid_derivation_ranks_edges_by_sigmoid_weights():
    """Across edges softmax and sigmoid rank differently: an edge with two strong ops loses under softmax only."""
    alphas = torch.full((5, 8), -10.0)
    alphas[:, 0] = 0.0
    alphas[2, 4], alphas[2, 5] = 3.0, 3.0  # node 3, edge from state 0: two strong ops (softmax ~0.5 each)
    alphas[3, 4] = 2.5
    alphas[4, 4] = 2.8
    soft = derive_genotype(alphas, alphas, steps=2)
    sig = derive_genotype(alphas, alphas, steps=2, activation="sigmoid")
    assert [j for _, j in soft.normal[2:]] == [1, 2]
    assert [j for _, j in sig.normal[2:]] == [0, 2]
    with pytest.raises(GenotypeError, match="activation"):
        derive_genotype(alphas, alphas, steps=2, activation="tanh")
