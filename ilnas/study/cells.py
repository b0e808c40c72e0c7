"""What an arm's cells look like across search seeds: how collapsed (parameter-free edges) and how stable.

A search that finds something should find it again from another seed. Stability is measured on the normal
cell's edges, each an ``(intermediate node, input state, op)`` triple (the order of a node's two inputs does
not matter): two cells share the edges present in both, and their edit distance is the number of edges one
would have to change to turn one into the other (0: the same cell, 8: nothing in common, for 4 nodes).
Random cells of the same space are the baseline for both numbers.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from typing import Any

from ilnas.space.genotype import Genotype, collapse_counts

MAX_PARAM_FREE_SHARE = 0.5  # the collapse bound the defaults are held to: at most half the normal edges


def normal_edges(genotype: dict[str, Any]) -> Counter[tuple[int, int, str]]:
    """The normal cell's edges as a multiset of ``(node, input, op)``; edges 2i and 2i+1 feed node i."""
    return Counter((i // 2, int(idx), str(op)) for i, (op, idx) in enumerate(genotype["normal"]))


def edit_distance(a: dict[str, Any], b: dict[str, Any]) -> int:
    """Edges of ``a``'s normal cell that ``b``'s lacks (symmetric: both cells have the same number of edges)."""
    return sum((normal_edges(a) - normal_edges(b)).values())


def cell_stats(genotypes: list[dict[str, Any]]) -> dict[str, float]:
    """Collapse and stability of one arm's normal cells (one per search seed)."""
    if not genotypes:
        return {}
    edges = len(genotypes[0]["normal"])
    free = [collapse_counts(Genotype.from_dict(g))["param_free_edges/normal"] for g in genotypes]
    pairs = [edit_distance(a, b) for a, b in itertools.combinations(genotypes, 2)]
    seen = Counter(e for g in genotypes for e in set(normal_edges(g)))
    majority = sum(1 for n in seen.values() if n > len(genotypes) / 2)
    return {"normal_edges": edges,
            "param_free_normal_mean": sum(free) / len(free),
            "cells_within_bound": sum(1 for f in free if f <= MAX_PARAM_FREE_SHARE * edges),
            "edit_distance_mean": sum(pairs) / len(pairs) if pairs else math.nan,
            "shared_edges_mean": edges - sum(pairs) / len(pairs) if pairs else math.nan,
            "majority_edges": majority}
