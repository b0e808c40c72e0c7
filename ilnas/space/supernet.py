"""The DARTS search supernet as a shared encoder plus one linear head per task.

``Supernet(x, arch_weights, task)``: the architecture is an input, never a member, so the same
module serves real steps, virtual (functional) steps and every hypergradient method.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ilnas.space.fused import batch_norm_scaled, cropped_conv, pointwise
from ilnas.space.ops import OPS, PRIMITIVES, FactorizedReduce, ReLUConvBN


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class MixedOp(nn.Module):
    """Weighted sum of every candidate op; with ``q > 1`` only 1/q of the channels go through (PC-DARTS).

    The candidates live in ``ops`` exactly as DARTS builds them (same parameters, buffers and state-dict
    keys); :meth:`forward` computes the same numbers as :meth:`reference_forward`, the plain weighted sum,
    with less work (profiled on CPU: depthwise convolutions, pools and BatchNorm dominate):

    * one ReLU of the input shared by every convolutional candidate (DARTS applies it once per candidate);
    * the mixing weight folded into each candidate's final BatchNorm as its scale (no separate multiply);
    * ``none`` skipped: it adds exactly zero, and zero gradient;
    * kernel taps that can only ever read padding on small maps left out (see :func:`ilnas.space.fused.reachable_crop`).

    ``primitives``: the candidate set, in the order of the weights' columns (default the DARTS 8).
    ``aux_skip``: DARTS-' auxiliary skip (Chu et al. 2021), ``aux * skip(x)`` added outside the weights; on a
    stride-2 edge the skip is a FactorizedReduce of its own (github Meituan-AutoML/DARTS-,
    src/search/model_search.py:17-43).
    """

    def __init__(self, channels: int, stride: int, q: int = 1, primitives: Sequence[str] = PRIMITIVES,
                 aux_skip: bool = False):
        super().__init__()
        if channels % q:
            raise ValueError(f"partial_channels={q} must divide the channel count {channels}")
        self.q, self.stride, self.primitives = q, stride, tuple(primitives)
        self.ops = nn.ModuleList(OPS[p](channels // q, stride, False) for p in self.primitives)
        for i, name in enumerate(self.primitives):
            if "pool" in name:
                self.ops[i] = nn.Sequential(self.ops[i], nn.BatchNorm2d(channels // q, affine=False))
        # "none" contributes exactly zero (and zero gradient): skip computing it
        self._active = [i for i, p in enumerate(self.primitives) if p != "none"]
        self._kind = [p.rsplit("_", 1)[0] if p.startswith(("sep_conv", "dil_conv")) else p for p in self.primitives]
        self._needs_relu = any(p not in ("max_pool_3x3", "avg_pool_3x3", "noise", "none") for p in self.primitives)
        self.aux_op = FactorizedReduce(channels // q, channels // q, affine=False) if aux_skip and stride == 2 \
            else None

    def forward(self, x: torch.Tensor, weights: torch.Tensor, aux: torch.Tensor | None = None) -> torch.Tensor:
        return self._partial(x, weights, self._mix, aux)

    def reference_forward(self, x: torch.Tensor, weights: torch.Tensor,
                          aux: torch.Tensor | None = None) -> torch.Tensor:
        """The plain DARTS mixed op, ``sum_i weights[i] * ops[i](h)``: the definition :meth:`forward` keeps."""
        return self._partial(x, weights, lambda h, w: sum(w[i] * self.ops[i](h) for i in self._active), aux)

    def _partial(self, x: torch.Tensor, weights: torch.Tensor, mix, aux: torch.Tensor | None) -> torch.Tensor:
        c = x.shape[1] // self.q
        xa = x if self.q == 1 else x[:, :c]
        out = mix(xa, weights)
        if aux is not None:
            out = out + aux * (xa if self.stride == 1 else self._aux_reduce(xa))
        if self.q == 1:
            return out
        xb = x[:, c:]
        if self.stride == 2:
            xb = nn.functional.max_pool2d(xb, 2, 2, ceil_mode=True)
        return channel_shuffle(torch.cat([out, xb], dim=1), self.q)

    def _aux_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.aux_op is None:
            raise RuntimeError("an auxiliary skip weight reached a stride-2 mixed op built without aux_skip")
        return self.aux_op(x)

    def _mix(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        # one contiguous row of per-channel scales per candidate (see batch_norm_scaled on why contiguous); unbind is
        # one op forward and backward where a select per candidate costs a zero-filled gradient each
        scale = weights[:, None].expand(-1, x.shape[1]).contiguous().unbind(0)
        r = F.relu(x) if self._needs_relu else x
        out = None
        for i in self._active:  # the candidates' order: the same sum, term by term, as reference_forward
            term = self._term(i, x, r, weights, scale)
            out = term if out is None else out + term
        return out

    def _term(self, i: int, x: torch.Tensor, r: torch.Tensor, weights: torch.Tensor,
              scale: Sequence[torch.Tensor]) -> torch.Tensor:
        """Candidate ``i`` times its weight, fused (the ReLU ``r`` of ``x`` shared, the weight as BN scale)."""
        name, op, s = self._kind[i], self.ops[i], self.stride
        if name == "max_pool_3x3":
            return batch_norm_scaled(op[1], F.max_pool2d(x, 3, s, 1), scale[i])
        if name == "avg_pool_3x3":
            return batch_norm_scaled(op[1], F.avg_pool2d(x, 3, s, 1, count_include_pad=False), scale[i])
        if name == "skip_connect":
            return batch_norm_scaled(op.bn, op.convolve(r), scale[i]) if isinstance(op, FactorizedReduce) \
                else weights[i] * x
        if name == "sep_conv":
            first, second = op
            mid = batch_norm_scaled(first[3], pointwise(first[2], cropped_conv(first[1], r, s)), None)
            y = pointwise(second[2], cropped_conv(second[1], F.relu(mid), 1))
            return batch_norm_scaled(second[3], y, scale[i])
        if name == "dil_conv":
            return batch_norm_scaled(op[3], pointwise(op[2], cropped_conv(op[1], r, s)), scale[i])
        return weights[i] * op(x)  # noise: a fresh draw, weighted


class SearchCell(nn.Module):
    def __init__(self, nodes: int, multiplier: int, c_pp: int, c_p: int, c: int, reduction: bool,
                 reduction_prev: bool, q: int = 1, primitives: Sequence[str] = PRIMITIVES, aux_skip: bool = False):
        super().__init__()
        self.reduction, self.nodes, self.multiplier = reduction, nodes, multiplier
        self.preprocess0 = FactorizedReduce(c_pp, c, affine=False) if reduction_prev else \
            ReLUConvBN(c_pp, c, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(c_p, c, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList(
            MixedOp(c, 2 if reduction and j < 2 else 1, q, primitives, aux_skip)
            for i in range(nodes) for j in range(2 + i)
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
                edge_weights: torch.Tensor | None, aux: torch.Tensor | None = None) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        rows = weights.unbind(0)  # one op (and one backward) for all edges instead of a select per edge
        offset = 0
        for _ in range(self.nodes):
            terms = []
            for j, h in enumerate(states):
                y = self.edges[offset + j](h, rows[offset + j], aux)
                terms.append(y if edge_weights is None else edge_weights[offset + j] * y)
            offset += len(states)
            node = terms[0]
            for t in terms[1:]:
                node = node + t
            states.append(node)
        return torch.cat(states[-self.multiplier :], dim=1)


class Encoder(nn.Module):
    """Stem + search cells + global pooling: the representation shared by all tasks."""

    def __init__(self, in_channels: int = 3, channels: int = 16, cells: int = 8, nodes: int = 4,
                 multiplier: int = 4, stem_multiplier: int = 3, q: int = 1, primitives: Sequence[str] = PRIMITIVES,
                 aux_skip: bool = False):
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
            self.cells.append(SearchCell(nodes, multiplier, c_pp, c_p, c_curr, reduction, reduction_prev, q,
                                         primitives, aux_skip))
            reduction_prev = reduction
            c_pp, c_p = c_p, multiplier * c_curr
        self.out_channels = c_p
        self.memory_format = torch.contiguous_format  # Supernet(channels_last=True) sets torch.channels_last

    def forward(self, x: torch.Tensor, arch_weights: dict[str, torch.Tensor]) -> torch.Tensor:
        # the stem's output fixes every later activation's layout (convolutions, pools and BatchNorm keep
        # their input's). Set it explicitly: with one input channel the stem weight's layout is ambiguous, and
        # a virtual step's weights (p - xi * g) come out NCHW-strided, which silently ran a virtual pass in NCHW
        s0 = s1 = self.stem(x.contiguous(memory_format=self.memory_format)).contiguous(memory_format=self.memory_format)
        aux = arch_weights.get("aux_skip")  # DARTS-' auxiliary skip weight (absent: off)
        for cell in self.cells:
            kind = "reduce" if cell.reduction else "normal"
            s0, s1 = s1, cell(s0, s1, arch_weights[kind], arch_weights.get(f"edge_{kind}"), aux)
        return nn.functional.adaptive_avg_pool2d(s1, 1).flatten(1)


class Supernet(nn.Module):
    """Shared encoder + K task heads. Parameter names: ``encoder.*`` (W) and ``heads.<k>.*`` (H_k).

    ``channels_last`` (default) stores the convolution weights, and runs the encoder, in NHWC layout:
    oneDNN's depthwise convolutions and the pooling kernels run 1.2-2x faster that way on CPU (measured per
    mixed op, one thread); parameter names, shapes and values are unchanged.

    ``primitives`` (the candidate set of every edge) and ``aux_skip`` (DARTS-: a stride-2 edge gets its own
    auxiliary FactorizedReduce) fix the modules; the weights of one forward come in ``arch_weights``.
    """

    def __init__(self, num_classes: list[int], in_channels: int = 3, channels: int = 16, cells: int = 8,
                 nodes: int = 4, multiplier: int | None = None, stem_multiplier: int = 3, q: int = 1,
                 channels_last: bool = True, primitives: Sequence[str] = PRIMITIVES, aux_skip: bool = False):
        super().__init__()
        self.primitives = tuple(primitives)
        self.encoder = Encoder(in_channels, channels, cells, nodes, multiplier or nodes, stem_multiplier, q,
                               self.primitives, aux_skip)
        self.heads = nn.ModuleList(nn.Linear(self.encoder.out_channels, n) for n in num_classes)
        if channels_last:
            self.to(memory_format=torch.channels_last)
            self.encoder.memory_format = torch.channels_last

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
