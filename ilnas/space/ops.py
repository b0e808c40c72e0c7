"""The candidate operations: a tiny name -> constructor table (the DARTS set plus R-DARTS' ``noise``).

Every constructor takes ``(C, stride, affine)``; search cells build ops with
``affine=False`` (as DARTS does), derived networks with ``affine=True``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ilnas.space.primitives import KNOWN_PRIMITIVES, PRIMITIVES

__all__ = ["KNOWN_PRIMITIVES", "OPS", "PRIMITIVES", "DilConv", "FactorizedReduce", "NoiseOp", "ReLUConvBN",
           "SepConv", "Zero"]


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class DilConv(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int,
                 affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride, padding, dilation=dilation, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked dilated-separable convolutions (DARTS' ``sep_conv``)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            DilConv(c_in, c_in, kernel, stride, padding, 1, affine),
            DilConv(c_in, c_out, kernel, 1, padding, 1, affine),
        )


class Zero(nn.Module):
    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class NoiseOp(nn.Module):
    """R-DARTS' ``noise`` (space S4): standard normal noise shaped like the (strided) input, never the input.

    As github ruocwang/darts-pt sota/cnn/operations.py:29-43 (mean 0, std 1, a fresh draw every call).
    """

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shaped = x if self.stride == 1 else x[:, :, :: self.stride, :: self.stride]
        return torch.randn_like(shaped)


class FactorizedReduce(nn.Module):
    """Halve the resolution without losing half the pixels: two offset 1x1 convs."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__()
        assert c_out % 2 == 0, "FactorizedReduce needs an even number of output channels"
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.convolve(self.relu(x)))

    def convolve(self, x: torch.Tensor) -> torch.Tensor:
        """The two offset convolutions of a rectified input, before BatchNorm (the fused mixed op shares the ReLU)."""
        # pad so odd spatial sizes (e.g. 8x8 -> 4x4 -> 2x2 -> 1x1) still align
        shifted = x[:, :, 1:, 1:] if x.shape[-1] > 1 else x
        y1 = self.conv_1(x)
        y2 = self.conv_2(shifted)
        if y2.shape[-2:] != y1.shape[-2:]:
            y2 = nn.functional.pad(y2, (0, y1.shape[-1] - y2.shape[-1], 0, y1.shape[-2] - y2.shape[-2]))
        return torch.cat([y1, y2], dim=1)


OpFactory = Callable[[int, int, bool], nn.Module]

OPS: dict[str, OpFactory] = {
    "none": lambda C, stride, affine: Zero(stride),
    "max_pool_3x3": lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "avg_pool_3x3": lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "skip_connect": lambda C, stride, affine: nn.Identity() if stride == 1 else FactorizedReduce(C, C, affine),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine),
    "noise": lambda C, stride, affine: NoiseOp(stride),
}
assert tuple(OPS) == KNOWN_PRIMITIVES
