"""The fused mixed op's kernels: convolutions that skip never-reached taps, small-map 1x1 convolutions as matrix
products, and BatchNorm with the mixing weight as its scale (profiled on CPU; same numbers as the plain ops).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def reachable_crop(kernel: int, dilation: int, padding: int, size: int, stride: int) -> int:
    """How many outer rings of a centred ``kernel`` can never touch the input (they only ever meet padding).

    An output pixel i reads input ``stride * i + a * dilation - padding`` for tap a; on a small map (8x8 images
    reach 2x2 after two reductions) the outer taps of a 5x5 or dilated kernel read only padding zeros. Dropping
    them (and as much padding) changes no number and skips their work; the reference computes them.
    """
    out = (size - 1) // stride + 1
    lo, hi = -stride * (out - 1), size - 1  # offsets some output pixel can reach inside the input
    rings = 0
    while kernel - 2 * rings > 1:
        first, last = rings * dilation - padding, (kernel - 1 - rings) * dilation - padding
        if lo <= first <= hi or lo <= last <= hi:
            break
        rings += 1
    return rings


def cropped_conv(conv: nn.Conv2d, x: torch.Tensor, stride: int) -> torch.Tensor:
    """``conv(x)`` (a depthwise k x k conv of a DARTS op) with its never-reached outer taps left out.

    A dilation-2 kernel with "same" padding reads one pixel parity only: at stride 2 the even rows and
    columns (a plain conv of ``x[..., ::2, ::2]``), at stride 1 each of the four parity sub-images on its
    own (space-to-batch). oneDNN's dilated depthwise backward was 2-5x slower than the plain one on CPU.
    """
    k, d, p = conv.kernel_size[0], conv.dilation[0], conv.padding[0]
    h, w = x.shape[-2:]
    rings = min(reachable_crop(k, d, p, h, stride), reachable_crop(k, d, p, w, stride))
    k, p = k - 2 * rings, p - d * rings
    weight = conv.weight if not rings else conv.weight[:, :, rings : rings + k, rings : rings + k]
    if k == 1:  # one tap per channel: a per-channel scale (a convolution call costs ~10x more on tiny maps)
        return (x if stride == 1 else x[:, :, ::stride, ::stride]) * weight.reshape(1, -1, 1, 1)
    if d == 2 and p == k - 1 and x.device.type == "cpu":
        if stride == 2:
            return F.conv2d(x[:, :, ::2, ::2], weight, None, 1, p // 2, 1, conv.groups)
        # measured per call (fwd + bwd, one thread): on 8x8 maps the 3x3 runs faster dilated as it is
        if stride == 1 and h % 2 == 0 and w % 2 == 0 and x.stride(1) == 1 and (k > 3 or h * w < 64):
            return space_to_batch_conv(x, weight, p // 2, conv.groups)
    return F.conv2d(x, weight, None, stride, p, d, conv.groups)


def space_to_batch_conv(x: torch.Tensor, weight: torch.Tensor, padding: int, groups: int) -> torch.Tensor:
    """A dilation-2 "same" convolution of a channels-last map as a plain one on its four pixel-parity sub-images.

    In NHWC the parity split and its inverse are one copy each (permutes of the ``(n, h/2, 2, w/2, 2, c)`` view).
    """
    n, c, h, w = x.shape
    nhwc = x.permute(0, 2, 3, 1).reshape(n, h // 2, 2, w // 2, 2, c)
    phases = nhwc.permute(2, 4, 0, 1, 3, 5).reshape(4 * n, h // 2, w // 2, c).permute(0, 3, 1, 2)
    y = F.conv2d(phases, weight, None, 1, padding, 1, groups)
    c = y.shape[1]
    y = y.permute(0, 2, 3, 1).reshape(2, 2, n, h // 2, w // 2, c).permute(2, 3, 0, 4, 1, 5).reshape(n, h, w, c)
    return y.permute(0, 3, 1, 2)


def pointwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a bias-free 1x1 convolution; on small channels-last maps one matrix product.

    Channels-last, the pixels are rows of an ``(N*H*W, C)`` matrix, so the convolution is ``F.linear`` on a
    permuted view (no copy). On maps of up to 16 pixels oneDNN's per-call cost dominates and the product
    measured 2x faster forward + backward (one thread, C = 16..32); at 8x8 the two are even.
    """
    if x.shape[-1] * x.shape[-2] > 16 or x.stride(1) != 1 or x.shape[1] == 1:
        return conv(x)
    weight = conv.weight.reshape(conv.out_channels, conv.in_channels)
    return F.linear(x.permute(0, 2, 3, 1), weight).permute(0, 3, 1, 2)


def batch_norm_scaled(bn: nn.BatchNorm2d, x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """``scale * bn(x)`` in one call: nn.BatchNorm2d's own train/eval and running-statistics rules, with the
    mixing weight passed as the (otherwise absent, ``affine=False``) BatchNorm weight.

    ``scale`` must be contiguous: torch 2.14's CPU batch_norm backward returns a wrong input gradient for a
    stride-0 (``expand``-ed) weight on 1x1 maps (tests/test_mixed_op.py covers that size).
    """
    scaled = getattr(bn, "scaled", None)  # a BatchNorm with statistics of its own (data-parallel search)
    if scaled is not None:
        return scaled(x, scale)
    factor = 0.0
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch = bn.training or (bn.running_mean is None and bn.running_var is None)
    track = not bn.training or bn.track_running_stats
    return F.batch_norm(x, bn.running_mean if track else None, bn.running_var if track else None, scale, None,
                        use_batch, factor, bn.eps)
