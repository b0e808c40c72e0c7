"""The DARTS search supernet as a shared encoder plus one linear head per task.

``Supernet(x, arch_weights, task)``: the architecture is an input, never a member, so the same
module serves real steps, virtual (functional) steps and every hypergradient method.
"""

from __future__ import annotations

import torch
from torch import nn

from ilnas.space.ops import OPS, PRIMITIVES, FactorizedReduce, ReLUConvBN


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class MixedOp(nn.Module):
    """Weighted sum of every candidate op; with ``q > 1`` only 1/q of the channels go through (PC-DARTS)."""

    def __init__(self, channels: int, stride: int, q: int = 1):
        super().__init__()
        if channels % q:
            raise ValueError(f"partial_channels={q} must divide the channel count {channels}")
        self.q, self.stride = q, stride
        self.ops = nn.ModuleList(OPS[p](channels // q, stride, False) for p in PRIMITIVES)
        for name, op in zip(PRIMITIVES, self.ops, strict=True):
            if "pool" in name:
                self.ops[PRIMITIVES.index(name)] = nn.Sequential(op, nn.BatchNorm2d(channels // q, affine=False))
        # "none" contributes exactly zero (and zero gradient): skip computing it
        self._active = [i for i, p in enumerate(PRIMITIVES) if p != "none"]

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.q == 1:
            return sum(weights[i] * self.ops[i](x) for i in self._active)
        c = x.shape[1] // self.q
        xa, xb = x[:, :c], x[:, c:]
        out = sum(weights[i] * self.ops[i](xa) for i in self._active)
        if self.stride == 2:
            xb = nn.functional.max_pool2d(xb, 2, 2, ceil_mode=True)
        return channel_shuffle(torch.cat([out, xb], dim=1), self.q)


class SearchCell(nn.Module):
    def __init__(self, nodes: int, multiplier: int, c_pp: int, c_p: int, c: int, reduction: bool,
                 reduction_prev: bool, q: int = 1):
        super().__init__()
        self.reduction, self.nodes, self.multiplier = reduction, nodes, multiplier
        self.preprocess0 = FactorizedReduce(c_pp, c, affine=False) if reduction_prev else \
            ReLUConvBN(c_pp, c, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(c_p, c, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList(
            MixedOp(c, 2 if reduction and j < 2 else 1, q) for i in range(nodes) for j in range(2 + i)
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
                edge_weights: torch.Tensor | None) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self.nodes):
            terms = []
            for j, h in enumerate(states):
                y = self.edges[offset + j](h, weights[offset + j])
                terms.append(y if edge_weights is None else edge_weights[offset + j] * y)
            offset += len(states)
            states.append(sum(terms))
        return torch.cat(states[-self.multiplier :], dim=1)


class Encoder(nn.Module):
    """Stem + search cells + global pooling: the representation shared by all tasks."""

    def __init__(self, in_channels: int = 3, channels: int = 16, cells: int = 8, nodes: int = 4,
                 multiplier: int = 4, stem_multiplier: int = 3, q: int = 1):
        super().__init__()
        c_curr = stem_multiplier * channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr))
        c_pp, c_p, c_curr = c_curr, c_curr, channels
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(cells):
            reduction = cells >= 3 and i in (cells // 3, 2 * cells // 3)
            if reduction:
                c_curr *= 2
            self.cells.append(SearchCell(nodes, multiplier, c_pp, c_p, c_curr, reduction, reduction_prev, q))
            reduction_prev = reduction
            c_pp, c_p = c_p, multiplier * c_curr
        self.out_channels = c_p

    def forward(self, x: torch.Tensor, arch_weights: dict[str, torch.Tensor]) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            kind = "reduce" if cell.reduction else "normal"
            s0, s1 = s1, cell(s0, s1, arch_weights[kind], arch_weights.get(f"edge_{kind}"))
        return nn.functional.adaptive_avg_pool2d(s1, 1).flatten(1)


class Supernet(nn.Module):
    """Shared encoder + K task heads. Parameter names: ``encoder.*`` (W) and ``heads.<k>.*`` (H_k)."""

    def __init__(self, num_classes: list[int], in_channels: int = 3, channels: int = 16, cells: int = 8,
                 nodes: int = 4, multiplier: int | None = None, stem_multiplier: int = 3, q: int = 1):
        super().__init__()
        self.encoder = Encoder(in_channels, channels, cells, nodes, multiplier or nodes, stem_multiplier, q)
        self.heads = nn.ModuleList(nn.Linear(self.encoder.out_channels, n) for n in num_classes)

    def forward(self, x: torch.Tensor, arch_weights: dict[str, torch.Tensor], task: int = 0) -> torch.Tensor:
        return self.heads[task](self.encoder(x, arch_weights))

    def encoder_names(self) -> list[str]:
        return list(self._names()["encoder"])

    def head_names(self, task: int) -> list[str]:
        return list(self._names()[f"heads.{task}"])

    def _names(self) -> dict[str, list[str]]:
        # walked once: named_parameters() over hundreds of mixed ops is costly on every search step
        if not hasattr(self, "_name_groups"):
            groups: dict[str, list[str]] = {}
            for n, _ in self.named_parameters():
                key = "encoder" if n.startswith("encoder.") else ".".join(n.split(".")[:2])
                groups.setdefault(key, []).append(n)
            self._name_groups = groups
        return self._name_groups
