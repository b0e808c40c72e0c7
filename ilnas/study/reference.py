"""The reference distribution of random cells, and random search over it (Li & Talwalkar 2019).

``reference.cells`` cells are drawn by :func:`ilnas.study.sampling.reference_genotype` (shaped exactly like a
derived DARTS cell) and each is evaluated once by the study's protocol (:mod:`ilnas.study.proxy`, seed =
the cell's index). Every searched cell is then placed among them as a percentile. Random search at equal
compute samples ``candidates`` of these cells per search seed, ranks them by *validation* accuracy and keeps
the best; its kept cell is retrained with the same retrain seeds as every other arm, so only the selection
reads the reference's numbers, and only on validation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ilnas.space.genotype import Genotype
from ilnas.study.sampling import reference_genotype

SEARCH_SALT = 0x5EA4


def reference_cells(cells: int, nodes: int, space: tuple[str, ...] | None = None) -> list[tuple[int, Genotype]]:
    """The reference's cells ``0..cells-1`` of the searched space (default the DARTS 8)."""
    return [(i, reference_genotype(i, nodes, *((space,) if space else ()))) for i in range(cells)]


def random_search_pick(records: list[dict[str, Any]], candidates: int, seed: int) -> dict[str, Any]:
    """The best of ``candidates`` reference records drawn (without replacement) for ``seed``, by val top-1."""
    if candidates > len(records):
        raise ValueError(f"candidates: {candidates} > the reference's {len(records)} cells; allowed: "
                         f"1..{len(records)}")
    rng = np.random.default_rng([SEARCH_SALT, int(seed)])
    drawn = [records[int(i)] for i in rng.choice(len(records), size=candidates, replace=False)]
    best = max(drawn, key=lambda r: (r["val_top1"], -r["val_loss"]))
    return {**best, "candidates": [r["index"] for r in drawn]}


def reference_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What the report and MLflow show of the reference: size, cost and quantiles of val and test top-1."""
    out: dict[str, Any] = {"cells": len(records),
                           "wall_s_per_eval": float(np.mean([r["wall_s"] for r in records])) if records else 0.0}
    for split in ("val", "test"):
        values = np.array([r[f"{split}_top1"] for r in records], dtype=float)
        if len(values):
            q = np.percentile(values, [5, 25, 50, 75, 95])
            out[split] = {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                          **{f"p{p}": float(v) for p, v in zip((5, 25, 50, 75, 95), q, strict=True)}}
    return out


def load_reference(path: Path, cells: int) -> list[dict[str, Any]] | None:
    """The stored reference when it holds at least ``cells`` cells (its first ``cells``), else None."""
    try:
        records = json.loads(path.read_text())["records"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return records[:cells] if len(records) >= cells else None


def save_reference(path: Path, protocol: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """Write the reference distribution (atomically), with its protocol and the retraining code's version."""
    from ilnas.study.proxy import retrain_code_version
    from ilnas.utils.io import atomic_write_json

    atomic_write_json(path, {"protocol": protocol, "retrain_code": retrain_code_version(),
                             "summary": reference_summary(records), "records": records})
