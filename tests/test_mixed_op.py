"""The fused mixed op computes the plain DARTS weighted sum: same output, gradients and BatchNorm statistics."""

from __future__ import annotations

import copy

import pytest
import torch

from ilnas.space.fused import reachable_crop as _reachable_crop
from ilnas.space.ops import OPS, PRIMITIVES
from ilnas.space.supernet import MixedOp, Supernet


def plain_darts_sum(op: MixedOp, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """DARTS' MixedOp written out: every candidate (``none`` included) applied to x, weighted and summed."""
    return sum(w * candidate(x) for w, candidate in zip(weights, op.ops, strict=True))


def outputs_and_grads(op: MixedOp, x: torch.Tensor, weights: torch.Tensor, forward) -> list[torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    weights = weights.detach().clone().requires_grad_(True)
    out = forward(op, x, weights)
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    grads = torch.autograd.grad((out * cotangent).sum(), [x, weights, *op.parameters()])
    return [out.detach(), *grads]


# (channels, spatial size, stride, partial channels): every map size a search meets (8x8 digits go 8 -> 4 -> 2,
# CIFAR 32 -> 16 -> 8), odd sizes, and 1x1 maps, where most taps of a 5x5 or dilated kernel read only padding
CASES = [(4, 8, 1, 1), (4, 8, 2, 1), (4, 4, 1, 1), (4, 4, 2, 1), (4, 2, 1, 1), (4, 2, 2, 1), (4, 1, 1, 1),
         (4, 7, 1, 1), (4, 5, 2, 1), (3, 16, 1, 1), (8, 6, 2, 2), (8, 4, 1, 4)]


@pytest.mark.parametrize("channels,size,stride,q", CASES)
def test_fused_mixed_op_equals_the_plain_weighted_sum_of_darts_ops(channels, size, stride, q):
    torch.manual_seed(0)
    fused = MixedOp(channels, stride, q).double()
    plain = copy.deepcopy(fused)
    x = torch.randn(6, channels, size, size, dtype=torch.float64)
    weights = torch.softmax(torch.randn(len(PRIMITIVES), dtype=torch.float64), 0)
    if q == 1:
        reference = plain_darts_sum
    else:  # PC-DARTS: the plain sum on the sampled channels, as reference_forward writes it
        def reference(op, h, w):
            return op.reference_forward(h, w)
    got = outputs_and_grads(fused, x, weights, lambda op, h, w: op(h, w))
    want = outputs_and_grads(plain, x, weights, reference)
    names = ["output", "d/dx", "d/dweights"] + [n for n, _ in fused.named_parameters()]
    for name, a, b in zip(names, got, want, strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), (name, float((a - b).abs().max()))
    # training-mode BatchNorm statistics move exactly as DARTS' modules move them
    for (name, a), b in zip(fused.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.allclose(a.double(), b.double(), rtol=1e-12, atol=1e-14), name


def test_fused_mixed_op_in_eval_mode_and_with_cumulative_statistics():
    """Eval mode uses the running statistics; momentum=None (BatchNorm recalibration) averages cumulatively."""
    torch.manual_seed(0)
    fused = MixedOp(4, 1).double()
    for m in fused.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    plain = copy.deepcopy(fused)
    weights = torch.softmax(torch.randn(len(PRIMITIVES), dtype=torch.float64), 0)
    with torch.no_grad():
        for seed in range(3):
            x = torch.randn(5, 4, 6, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            assert torch.allclose(fused(x, weights), plain_darts_sum(plain, x, weights), atol=1e-12)
        fused.eval()
        plain.eval()
        assert torch.allclose(fused(x, weights), plain_darts_sum(plain, x, weights), atol=1e-12)
    for (name, a), b in zip(fused.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b) if a.dtype == torch.long else torch.allclose(a, b, atol=1e-14), name


def test_unreachable_taps_are_only_cropped_when_they_read_padding_alone():
    # dil_conv_5x5 (k=5, d=2, p=4): on 8x8 every tap is used, on 4x4 the outer ring never is, on 2x2 only the centre
    assert _reachable_crop(5, 2, 4, 8, 1) == 0
    assert _reachable_crop(5, 2, 4, 4, 1) == 1
    assert _reachable_crop(5, 2, 4, 2, 1) == 2
    # sep_conv_5x5 (k=5, p=2) with stride 2 on a 2x2 map: output 1x1 reads offsets 0..1: a 3x3 kernel remains
    assert _reachable_crop(5, 1, 2, 2, 2) == 1
    assert _reachable_crop(3, 1, 1, 32, 1) == 0


def test_supernet_keeps_its_state_dict_keys_and_runs_channels_last():
    """Checkpoints written before the fused op load unchanged; the layout is an internal choice."""
    fast = Supernet([3], 1, 4, 3, 2)
    plain = Supernet([3], 1, 4, 3, 2, channels_last=False)
    assert list(fast.state_dict()) == list(plain.state_dict())
    plain.load_state_dict(fast.state_dict())
    assert fast.encoder.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    for m in plain.modules():
        if isinstance(m, MixedOp):
            m.forward = m.reference_forward
    x = torch.randn(8, 1, 8, 8)
    weights = {"normal": torch.softmax(torch.randn(5, len(OPS)), -1), "reduce": torch.softmax(torch.randn(5, 8), -1)}
    assert torch.allclose(fast(x, weights), plain(x, weights), atol=1e-5)


def test_virtual_step_weights_keep_the_channels_last_layout():
    """A virtual step's weights (p - xi * g: NCHW strides for 1-input-channel kernels) must not switch the
    supernet back to NCHW activations (that ran every virtual pass ~1.5x slower on CPU)."""
    from torch.func import functional_call

    net = Supernet([3], 1, 4, 3, 2)
    seen = []
    for m in net.modules():
        if isinstance(m, MixedOp):
            m.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    stepped = {n: p.detach() - 0.1 * torch.ones_like(p) for n, p in net.named_parameters()}
    weights = {"normal": torch.softmax(torch.randn(5, 8), -1), "reduce": torch.softmax(torch.randn(5, 8), -1)}
    functional_call(net, stepped, (torch.randn(8, 1, 8, 8), weights))
    assert seen and all(x.stride(1) == 1 for x in seen), [x.stride() for x in seen[:3]]
