"""Genotypes from a search's ``alphas.pt``: the last epoch's alphas or those of the best validation epoch.

The alphas file carries everything derivation needs (nodes, the cell's ``multiplier``, the final alphas
and one raw snapshot per epoch with that epoch's validation loss), so ``derive`` never guesses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ilnas.search.checkpoint import CheckpointError, load_state_file
from ilnas.space.architecture import Architecture
from ilnas.space.genotype import Genotype

Select = Literal["last", "best_val"]
SELECT_CHOICES = ("last", "best_val")
ALPHAS_FORMAT = 2  # 2: multiplier and per-epoch snapshots travel with the alphas


@dataclass(frozen=True)
class Derivation:
    genotype: Genotype
    select: str
    epoch: int | None  # the epoch (1-based) whose alphas were used; None for an alphas file without history
    val_loss_mean: float | None


def alphas_payload(arch: Architecture, snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """What ``alphas.pt`` holds: format, nodes, multiplier, final parameters, per-epoch snapshots."""
    return {"alphas_format": ALPHAS_FORMAT, "nodes": arch.nodes, "multiplier": arch.multiplier,
            **arch.raw_snapshot(), "snapshots": snapshots}


def _genotype(path: Path, nodes: int, multiplier: int, tensors: dict[str, Any]) -> Genotype:
    try:
        arch = Architecture(nodes, edge_normalization="betas_normal" in tensors, multiplier=multiplier)
        arch.load_state_dict(tensors)
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a valid alphas file ({type(exc).__name__}: {exc})") from exc
    return arch.derive()


def derive_from_alphas_file(path: str | os.PathLike, select: Select = "last") -> Derivation:
    """Derive with the DARTS rule from ``alphas.pt``; errors name the file and the allowed values."""
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
    if select == "last" or not snapshots:
        if select == "best_val":
            raise CheckpointError(f"{path}: holds no per-epoch snapshots, so derive.select: best_val cannot be "
                                  "honoured; use last")
        last = snapshots[-1] if snapshots else {}
        tensors = {k: v for k, v in state.items() if k in names}
        return Derivation(_genotype(path, nodes, multiplier, tensors), "last", last.get("epoch"),
                          last.get("val_loss_mean"))
    best = min(snapshots, key=lambda s: (s["val_loss_mean"], s["epoch"]))  # earliest among ties
    tensors = {k: v for k, v in best.items() if k in names}
    return Derivation(_genotype(path, nodes, multiplier, tensors), "best_val", int(best["epoch"]),
                      float(best["val_loss_mean"]))


def derive_genotype_from_file(path: str | os.PathLike, select: Select = "last") -> Genotype:
    """Genotype from a search's ``alphas.pt`` (the DARTS rule); errors name the file."""
    return derive_from_alphas_file(path, select).genotype
