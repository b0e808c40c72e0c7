"""Genotypes from a search's ``alphas.pt``: the last epoch's alphas or those of the best validation epoch.

The alphas file carries everything derivation needs (nodes, the cell's ``multiplier``, the final alphas
and one raw snapshot per epoch with that epoch's validation loss), so ``derive`` never guesses.

Optional prior (P-DARTS, Chen et al. 2019; DARTS+): cap the skip connections and/or parameter-free edges of
the derived *normal* cell. As P-DARTS' ``delete_min_sk_prob`` / ``keep_1_on`` / ``keep_2_branches``
(github chenxin061/pdarts, train_search.py:247-262 and 407-460): while the cell exceeds the cap, the weakest
capped edge's op weight is set to 0 (not renormalised) and the DARTS rule runs again, which may pick another
op or another input for that node. A derivation that used the prior says so (``prior_applied``, ``replaced``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ilnas.search.checkpoint import CheckpointError, load_state_file
from ilnas.space.architecture import Architecture
from ilnas.space.genotype import PARAMETER_FREE_OPS, Genotype, derive_genotype

Select = Literal["last", "best_val"]
SELECT_CHOICES = ("last", "best_val")
ALPHAS_FORMAT = 2  # 2: multiplier and per-epoch snapshots travel with the alphas


@dataclass(frozen=True)
class Derivation:
    genotype: Genotype
    select: str
    epoch: int | None  # the epoch (1-based) whose alphas were used; None for an alphas file without history
    val_loss_mean: float | None
    prior_applied: bool = False  # a cap on skip / parameter-free edges changed the cell
    replaced: list[str] = field(default_factory=list)  # the edges the cap removed, "normal: op<-input (node n)"


@dataclass(frozen=True)
class Caps:
    """Derivation priors on the normal cell; None = off."""

    max_skip_connect: int | None = None
    max_parameter_free: int | None = None

    def capped_ops(self, genotype: Genotype) -> tuple[str, ...] | None:
        """The ops of the first cap the normal cell exceeds (skips first, as P-DARTS), or None."""
        ops = [op for op, _ in genotype.normal]
        if self.max_skip_connect is not None and ops.count("skip_connect") > self.max_skip_connect:
            return ("skip_connect",)
        if self.max_parameter_free is not None and \
                sum(op in PARAMETER_FREE_OPS for op in ops) > self.max_parameter_free:
            return PARAMETER_FREE_OPS
        return None


def derive_capped(arch: Architecture, caps: Caps) -> tuple[Genotype, list[str]]:
    """The DARTS rule with P-DARTS' cap on the normal cell: the genotype and the edges the cap removed."""
    genotype = arch.derive()
    if caps.capped_ops(genotype) is None:
        return genotype, []
    with torch.no_grad():
        w = arch()
        weights = w["normal"].detach().float().cpu().clone()
        edge_w = w.get("edge_normal")
    replaced: list[str] = []
    while (ops := caps.capped_ops(genotype)) is not None:
        starts = [sum(2 + i for i in range(node)) for node in range(arch.nodes)]
        chosen = [(weights[starts[i // 2] + j, arch.primitives.index(op)], starts[i // 2] + j, op, i // 2, j)
                  for i, (op, j) in enumerate(genotype.normal) if op in ops]
        _, eid, op, node, j = min(chosen, key=lambda c: float(c[0]))
        weights[eid, arch.primitives.index(op)] = 0.0
        replaced.append(f"normal: {op}<-{j} (node {node + 2})")
        genotype = _derive_from_weights(arch, weights, edge_w)
    return genotype, replaced


def _derive_from_weights(arch: Architecture, normal: torch.Tensor, edge_w: torch.Tensor | None) -> Genotype:
    """The DARTS rule on given (already softmaxed, possibly zeroed) normal weights, reduce from the alphas.

    ``derive_genotype`` softmaxes logits; ``softmax(log w) * sum(w) = w`` feeds it ``w`` exactly, un-renormalised.
    """
    logits = torch.log(normal.clamp_min(0.0))
    scale = normal.sum(-1)
    edge = scale if edge_w is None else scale * edge_w.detach().float().cpu()
    base = arch.derive()
    normal_cell = derive_genotype(logits, arch.alphas_reduce, arch.nodes, edge, multiplier=arch.multiplier,
                                  primitives=arch.primitives).normal
    return Genotype(normal=normal_cell, normal_concat=base.normal_concat, reduce=base.reduce,
                    reduce_concat=base.reduce_concat, primitives=base.primitives)


def alphas_payload(arch: Architecture, snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """What ``alphas.pt`` holds: format, nodes, multiplier, primitives and activation, final parameters,
    per-epoch snapshots."""
    return {"alphas_format": ALPHAS_FORMAT, "nodes": arch.nodes, "multiplier": arch.multiplier, **arch.spec(),
            **arch.raw_snapshot(), "snapshots": snapshots}


def _genotype(path: Path, nodes: int, multiplier: int, tensors: dict[str, Any],
              caps: Caps, spec: dict[str, Any]) -> tuple[Genotype, list[str]]:
    try:  # spec: the search space's primitives and activation (older files: the DARTS 8, softmax)
        arch = Architecture(nodes, edge_normalization="betas_normal" in tensors, multiplier=multiplier, **spec)
        arch.load_state_dict(tensors)
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a valid alphas file ({type(exc).__name__}: {exc})") from exc
    return derive_capped(arch, caps)


def derive_from_alphas_file(path: str | os.PathLike, select: Select = "last", caps: Caps | None = None) -> Derivation:
    """Derive with the DARTS rule (and the ``caps`` prior) from ``alphas.pt``; errors name the file and the
    allowed values."""
    if select not in SELECT_CHOICES:
        raise ValueError(f"derive.select: got {select!r}; allowed: {list(SELECT_CHOICES)}")
    path = Path(path)
    state = load_state_file(path)
    if state.get("alphas_format") != ALPHAS_FORMAT:
        raise CheckpointError(f"{path}: alphas file format {state.get('alphas_format')!r}, expected "
                              f"{ALPHAS_FORMAT} (written by an older ilnas: rerun the search)")
    try:
        nodes, multiplier, snapshots = int(state["nodes"]), int(state["multiplier"]), list(state["snapshots"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a valid alphas file (lacks {exc})") from exc
    names = ("alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce")
    spec = {k: state[k] for k in ("primitives", "activation") if k in state}
    if select == "last" or not snapshots:
        if select == "best_val":
            raise CheckpointError(f"{path}: holds no per-epoch snapshots, so derive.select: best_val cannot be "
                                  "honoured; use last")
        last = snapshots[-1] if snapshots else {}
        tensors = {k: v for k, v in state.items() if k in names}
        genotype, replaced = _genotype(path, nodes, multiplier, tensors, caps or Caps(), spec)
        return Derivation(genotype, "last", last.get("epoch"), last.get("val_loss_mean"), bool(replaced), replaced)
    best = min(snapshots, key=lambda s: (s["val_loss_mean"], s["epoch"]))  # earliest among ties
    tensors = {k: v for k, v in best.items() if k in names}
    genotype, replaced = _genotype(path, nodes, multiplier, tensors, caps or Caps(), spec)
    return Derivation(genotype, "best_val", int(best["epoch"]), float(best["val_loss_mean"]), bool(replaced),
                      replaced)


def derive_genotype_from_file(path: str | os.PathLike, select: Select = "last") -> Genotype:
    """Genotype from a search's ``alphas.pt`` (the DARTS rule); errors name the file."""
    return derive_from_alphas_file(path, select).genotype
