"""The architecture as its own module: DARTS alphas (and PC-DARTS edge betas), nothing else.

Kept apart from the supernet (Betty-style ``supernet(x, arch_weights)``) so the weight optimizer
can never see an architecture parameter.
"""

from __future__ import annotations

import torch
from torch import nn

from ilnas.space.ops import PRIMITIVES


def num_edges(nodes: int) -> int:
    return sum(2 + i for i in range(nodes))


class Architecture(nn.Module):
    """Owns ``alphas_{normal,reduce}`` (edges x ops) and, with partial channels, ``betas_{normal,reduce}``."""

    def __init__(self, nodes: int = 4, edge_normalization: bool = False, init_scale: float = 1e-3,
                 num_ops: int = len(PRIMITIVES), multiplier: int | None = None):
        super().__init__()
        self.nodes = nodes
        self.multiplier = multiplier or nodes  # nodes the search cell concatenates: the genotype's concat
        self.edge_normalization = edge_normalization
        edges = num_edges(nodes)
        self.alphas_normal = nn.Parameter(init_scale * torch.randn(edges, num_ops))
        self.alphas_reduce = nn.Parameter(init_scale * torch.randn(edges, num_ops))
        if edge_normalization:
            self.betas_normal = nn.Parameter(init_scale * torch.randn(edges))
            self.betas_reduce = nn.Parameter(init_scale * torch.randn(edges))

    def _edge_weights(self, betas: torch.Tensor) -> torch.Tensor:
        """Softmax of betas over each node's incoming edges (PC-DARTS edge normalization)."""
        out, start = [], 0
        for i in range(self.nodes):
            n = 2 + i
            out.append(torch.softmax(betas[start : start + n], dim=-1))
            start += n
        return torch.cat(out)

    def forward(self) -> dict[str, torch.Tensor]:
        weights = {
            "normal": torch.softmax(self.alphas_normal, dim=-1),
            "reduce": torch.softmax(self.alphas_reduce, dim=-1),
        }
        if self.edge_normalization:
            weights["edge_normal"] = self._edge_weights(self.betas_normal)
            weights["edge_reduce"] = self._edge_weights(self.betas_reduce)
        return weights

    def derive(self):
        from ilnas.space.genotype import derive_genotype

        with torch.no_grad():
            w = self()
            return derive_genotype(
                self.alphas_normal, self.alphas_reduce, steps=self.nodes,
                edge_weights_normal=w.get("edge_normal"), edge_weights_reduce=w.get("edge_reduce"),
                multiplier=self.multiplier,
            )

    def raw_snapshot(self) -> dict[str, torch.Tensor]:
        """Detached copies of every parameter: enough to derive this epoch's genotype exactly later."""
        return {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}

    def softmax_snapshot(self) -> dict[str, list]:
        """Plain-list softmaxed weights: one row of the alpha history."""
        with torch.no_grad():
            return {k: v.detach().float().cpu().tolist() for k, v in self().items()}
