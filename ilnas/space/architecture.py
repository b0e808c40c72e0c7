"""The architecture as its own module: DARTS alphas (and PC-DARTS edge betas), nothing else.

Kept apart from the supernet (Betty-style ``supernet(x, arch_weights)``) so the weight optimizer
can never see an architecture parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ilnas.space.primitives import PRIMITIVES, check_primitives

ACTIVATIONS = ("softmax", "sigmoid")


def num_edges(nodes: int) -> int:
    return sum(2 + i for i in range(nodes))


class Architecture(nn.Module):
    """Owns ``alphas_{normal,reduce}`` (edges x ops) and, with edge normalization, ``betas_{normal,reduce}``.

    ``activation``: how the alphas of an edge become its op weights: ``softmax`` (DARTS) or an independent
    ``sigmoid`` per op (Fair DARTS, Chu et al. 2020; github xiaomi-automl/FairDARTS fairdarts/model_search.py:
    104-111). ``primitives`` names the alphas' columns. ``aux_skip``: the weight of DARTS-' auxiliary skip
    (a schedule the search sets each epoch, never a parameter); ``None`` = no auxiliary skip.
    """

    def __init__(self, nodes: int = 4, edge_normalization: bool = False, init_scale: float = 1e-3,
                 num_ops: int | None = None, multiplier: int | None = None,
                 primitives: Sequence[str] | None = None, activation: str = "softmax"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: got {activation!r}; allowed: {list(ACTIVATIONS)}")
        self.primitives = check_primitives(primitives if primitives is not None else PRIMITIVES[:num_ops],
                                           "primitives")
        if num_ops is not None and num_ops != len(self.primitives):
            raise ValueError(f"num_ops: got {num_ops}, but {len(self.primitives)} primitives {self.primitives}")
        self.nodes = nodes
        self.multiplier = multiplier or nodes  # nodes the search cell concatenates: the genotype's concat
        self.edge_normalization = edge_normalization
        self.activation = activation
        self.aux_skip: float | None = None
        edges, ops = num_edges(nodes), len(self.primitives)
        self.alphas_normal = nn.Parameter(init_scale * torch.randn(edges, ops))
        self.alphas_reduce = nn.Parameter(init_scale * torch.randn(edges, ops))
        if edge_normalization:
            self.betas_normal = nn.Parameter(init_scale * torch.randn(edges))
            self.betas_reduce = nn.Parameter(init_scale * torch.randn(edges))

    def spec(self) -> dict[str, Any]:
        """What, beside the tensors, rebuilds this architecture (derivation reads it from alphas.pt)."""
        return {"primitives": list(self.primitives), "activation": self.activation}

    def _edge_weights(self, betas: torch.Tensor) -> torch.Tensor:
        """Softmax of betas over each node's incoming edges (PC-DARTS edge normalization)."""
        out, start = [], 0
        for i in range(self.nodes):
            n = 2 + i
            out.append(torch.softmax(betas[start : start + n], dim=-1))
            start += n
        return torch.cat(out)

    def op_weights(self, alphas: torch.Tensor) -> torch.Tensor:
        """The mixing weights of ``alphas`` (edges x ops) under this architecture's activation."""
        return torch.softmax(alphas, dim=-1) if self.activation == "softmax" else torch.sigmoid(alphas)

    def forward(self) -> dict[str, torch.Tensor]:
        weights = {"normal": self.op_weights(self.alphas_normal), "reduce": self.op_weights(self.alphas_reduce)}
        if self.edge_normalization:
            weights["edge_normal"] = self._edge_weights(self.betas_normal)
            weights["edge_reduce"] = self._edge_weights(self.betas_reduce)
        if self.aux_skip is not None:
            weights["aux_skip"] = torch.tensor(float(self.aux_skip), dtype=self.alphas_normal.dtype,
                                               device=self.alphas_normal.device)
        return weights

    def derive(self):
        from ilnas.space.genotype import derive_genotype

        with torch.no_grad():
            w = self()
            return derive_genotype(
                self.alphas_normal, self.alphas_reduce, steps=self.nodes,
                edge_weights_normal=w.get("edge_normal"), edge_weights_reduce=w.get("edge_reduce"),
                primitives=self.primitives, multiplier=self.multiplier, activation=self.activation,
            )

    def raw_snapshot(self) -> dict[str, torch.Tensor]:
        """Detached copies of every parameter: enough to derive this epoch's genotype exactly later."""
        return {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}

    def softmax_snapshot(self) -> dict[str, list]:
        """Plain-list op weights (softmaxed or sigmoided, as the search mixes them): one row of the alpha history."""
        with torch.no_grad():
            return {k: v.detach().float().cpu().tolist() for k, v in self().items() if k != "aux_skip"}
