"""Networks built from a derived genotype (DARTS' NetworkCIFAR / NetworkImageNet), registered in timm.

``timm.create_model("ilnas_cifar", genotype=..., num_classes=...)`` and ``"ilnas_imagenet"`` build them; the
genotype may be a :class:`Genotype`, a path to genotype.json, or its JSON text (default: DARTS_V2).

In training mode with an auxiliary head, ``forward`` returns ``(logits, aux_logits)`` (as DARTS does); in
eval mode, or without the head, it returns the logits only. Drop path uses timm's ``drop_path`` with the
probability held in ``model.drop_path_prob`` so the trainer can ramp it linearly over epochs (DARTS).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import drop_path
from timm.models import register_model
from torch import nn

from ilnas.space.genotype import DARTS_V2, Genotype, load_genotype
from ilnas.space.ops import OPS, FactorizedReduce, ReLUConvBN

GenotypeLike = Genotype | str | os.PathLike


class Cell(nn.Module):
    """A derived cell: each intermediate node sums two chosen ops over earlier states."""

    def __init__(self, genotype: Genotype, c_prev_prev: int, c_prev: int, c: int, reduction: bool,
                 reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(c_prev_prev, c)
        else:
            self.preprocess0 = ReLUConvBN(c_prev_prev, c, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(c_prev, c, 1, 1, 0)
        edges = genotype.reduce if reduction else genotype.normal
        self.concat = genotype.reduce_concat if reduction else genotype.normal_concat
        self.steps = len(edges) // 2
        self.multiplier = len(self.concat)
        self.indices = [idx for _, idx in edges]
        self.ops = nn.ModuleList(
            OPS[name](c, 2 if reduction and idx < 2 else 1, True) for name, idx in edges
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self.steps):
            outs = []
            for j in (2 * i, 2 * i + 1):
                op = self.ops[j]
                h = op(states[self.indices[j]])
                if self.training and drop_prob > 0 and not isinstance(op, nn.Identity):
                    h = drop_path(h, drop_prob, self.training)
                outs.append(h)
            states.append(outs[0] + outs[1])
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """DARTS' auxiliary classifier at 2/3 depth; pooling adapts so small inputs (8x8 digits) work too.

    ``second_norm=False`` is DARTS' ImageNet head, which has no BatchNorm after the 768-channel conv
    (quark0/darts cnn/model.py, AuxiliaryHeadImageNet, lines 98-100: omitted in the paper's experiments).
    """

    def __init__(self, c: int, num_classes: int, stride: int = 3, second_norm: bool = True):
        super().__init__()
        self.stride = stride
        self.second_norm = second_norm
        self.features = nn.Sequential(
            nn.Conv2d(c, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            *([nn.BatchNorm2d(768)] if second_norm else []),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        if min(x.shape[-2:]) >= 5:  # DARTS: 8x8 -> 2x2 (CIFAR), 14x14 -> 5x5 (ImageNet)
            x = F.avg_pool2d(x, 5, stride=self.stride, count_include_pad=False)
        x = F.adaptive_avg_pool2d(x, 2)
        x = self.features(x)
        return self.classifier(torch.flatten(x, 1))


class _DerivedNetwork(nn.Module):
    """Shared body: stem -> cells (reductions at 1/3 and 2/3 depth) -> global pool -> linear."""

    stem: nn.Module
    aux_second_norm = True  # DARTS' CIFAR auxiliary head; its ImageNet head has no second BatchNorm

    def __init__(self, genotype: GenotypeLike, num_classes: int, in_chans: int, channels: int, cells: int,
                 auxiliary: bool, drop_path_rate: float, drop_rate: float, stem_out: int, reduction_prev: bool,
                 aux_stride: int):
        super().__init__()
        self.genotype = load_genotype(genotype)
        if cells < 3:
            raise ValueError(f"cells: got {cells}, need at least 3 (two of them are reduction cells)")
        if channels % 2:
            raise ValueError(f"channels: got {channels}, must be even")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.channels = channels
        self.num_cells = cells
        self.drop_path_rate = drop_path_rate  # the target; the trainer ramps drop_path_prob up to it
        self.drop_path_prob = drop_path_rate
        self.drop_rate = drop_rate
        self.aux_index = 2 * cells // 3
        c_pp, c_p, c_curr = stem_out, stem_out, channels
        self.cells = nn.ModuleList()
        c_aux = None
        for i in range(cells):
            reduction = i in (cells // 3, 2 * cells // 3)
            if reduction:
                c_curr *= 2
            cell = Cell(self.genotype, c_pp, c_p, c_curr, reduction, reduction_prev)
            reduction_prev = reduction
            self.cells.append(cell)
            c_pp, c_p = c_p, cell.multiplier * c_curr
            if i == self.aux_index:
                c_aux = c_p
        self.num_features = self.head_hidden_size = c_p
        self.auxiliary_head = (AuxiliaryHead(c_aux, num_classes, aux_stride, self.aux_second_norm)
                               if auxiliary and num_classes else None)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes) if num_classes else nn.Identity()

    # -- timm model interface -------------------------------------------------------------------------
    def _stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        if self.auxiliary_head is not None:
            c_aux = self.auxiliary_head.features[0].in_channels
            self.auxiliary_head = AuxiliaryHead(c_aux, num_classes, self.auxiliary_head.stride,
                                               self.aux_second_norm) if num_classes else None

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        s0, s1 = self._stem(x)
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_index and self.auxiliary_head is not None and self.training:
                aux = self.auxiliary_head(s1)
        return s1, aux

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._features(x)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.global_pool(x), 1)
        if self.drop_rate > 0:
            x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        feats, aux = self._features(x)
        logits = self.forward_head(feats)
        if aux is not None:
            return logits, aux
        return logits

    def depth_groups(self) -> list[list[nn.Parameter]]:
        """Parameters grouped by depth, input first: [stem], cell 0 .. cell n-1, [classifier].

        The auxiliary head sits with the cell right after the one it reads (it is one step deeper).
        Used by LeRaC (learning rates highest at the input).
        """
        groups: list[list[nn.Parameter]] = [list(self._stem_modules_parameters())]
        groups += [list(c.parameters()) for c in self.cells]
        groups.append(list(self.classifier.parameters()))
        if self.auxiliary_head is not None:
            groups[self.aux_index + 2].extend(self.auxiliary_head.parameters())
        return [g for g in groups if g]

    def _stem_modules_parameters(self):
        raise NotImplementedError

    def non_auxiliary_parameters(self) -> list[nn.Parameter]:
        aux = {id(p) for p in self.auxiliary_head.parameters()} if self.auxiliary_head is not None else set()
        return [p for p in self.parameters() if id(p) not in aux]


class NetworkCIFAR(_DerivedNetwork):
    """DARTS' CIFAR network: one 3x3 stem (3*C channels), 20 cells / 36 channels at paper scale."""

    def __init__(self, genotype: GenotypeLike = DARTS_V2, num_classes: int = 10, in_chans: int = 3,
                 channels: int = 36, cells: int = 20, auxiliary: bool = True, drop_path_rate: float = 0.2,
                 drop_rate: float = 0.0, stem_multiplier: int = 3):
        stem_out = stem_multiplier * channels
        super().__init__(genotype, num_classes, in_chans, channels, cells, auxiliary, drop_path_rate, drop_rate,
                         stem_out=stem_out, reduction_prev=False, aux_stride=3)
        self.stem = nn.Sequential(nn.Conv2d(in_chans, stem_out, 3, padding=1, bias=False), nn.BatchNorm2d(stem_out))

    def _stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.stem(x)
        return s, s

    def _stem_modules_parameters(self):
        return self.stem.parameters()


class NetworkImageNet(_DerivedNetwork):
    """DARTS' ImageNet network (mobile setting): two stride-2 stems, 14 cells / 48 channels at paper scale."""

    aux_second_norm = False  # quark0/darts cnn/model.py AuxiliaryHeadImageNet: no BatchNorm after the 768 conv

    def __init__(self, genotype: GenotypeLike = DARTS_V2, num_classes: int = 1000, in_chans: int = 3,
                 channels: int = 48, cells: int = 14, auxiliary: bool = False, drop_path_rate: float = 0.0,
                 drop_rate: float = 0.0):
        super().__init__(genotype, num_classes, in_chans, channels, cells, auxiliary, drop_path_rate, drop_rate,
                         stem_out=channels, reduction_prev=True, aux_stride=2)
        c = channels
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_chans, c // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(c // 2, c, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c),
        )

    def _stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s0 = self.stem0(x)
        return s0, self.stem1(s0)

    def _stem_modules_parameters(self):
        return [*self.stem0.parameters(), *self.stem1.parameters()]


_TIMM_ONLY = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def _build(cls: type[_DerivedNetwork], pretrained: bool, kwargs: dict[str, Any]) -> _DerivedNetwork:
    if pretrained:
        raise ValueError("ilnas networks have no pretrained weights; pass pretrained=False "
                         "(or checkpoint_path=... to timm.create_model)")
    for key in _TIMM_ONLY:
        kwargs.pop(key, None)
    for alias, name in (("layers", "cells"), ("init_channels", "channels"), ("C", "channels")):
        if alias in kwargs:
            kwargs[name] = kwargs.pop(alias)
    return cls(**kwargs)


@register_model
def ilnas_cifar(pretrained: bool = False, **kwargs: Any) -> NetworkCIFAR:
    """CIFAR-style derived network (defaults: 36 channels, 20 cells, auxiliary head, drop path 0.2)."""
    return _build(NetworkCIFAR, pretrained, kwargs)


@register_model
def ilnas_imagenet(pretrained: bool = False, **kwargs: Any) -> NetworkImageNet:
    """ImageNet-style derived network, mobile setting (defaults: 48 channels, 14 cells, 224x224 input)."""
    return _build(NetworkImageNet, pretrained, kwargs)
