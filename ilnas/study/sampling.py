"""Random cells from the same space the search derives from: the baseline of Li & Talwalkar (2019).

A derived DARTS cell gives every intermediate node two distinct inputs among its predecessors (the two
cell inputs and the earlier nodes) and one non-``none`` operation per input. Sampling the input pair
uniformly among the pairs and each op uniformly among ``DERIVED_PRIMITIVES`` is uniform over exactly the
cells ``derive_genotype`` can produce.
"""

from __future__ import annotations

import numpy as np

from ilnas.space.genotype import DERIVED_PRIMITIVES, EDGES_PER_NODE, Edge, Genotype
from ilnas.space.ops import PRIMITIVES

# fixed salts so the random arm's stream differs from every other use of the search seed, and the reference
# distribution's cells (indices 0..N-1) from the random arm's
SALT = 0x5EED
REFERENCE_SALT = 0x4EF0


def sample_genotype(seed: int, nodes: int = 4, primitives: tuple[str, ...] = DERIVED_PRIMITIVES,
                    salt: int = SALT) -> Genotype:
    """A uniformly random normal and reduction cell; the same ``seed`` (and ``salt``) always gives the same cell."""
    unknown = [p for p in primitives if p not in PRIMITIVES or p == "none"]
    if unknown or not primitives:
        raise ValueError(f"primitives: {unknown or 'empty'} not allowed; allowed: {list(DERIVED_PRIMITIVES)}")
    if nodes < 1:
        raise ValueError(f"nodes: got {nodes}; allowed: >= 1")
    rng = np.random.default_rng([salt, int(seed)])

    def cell() -> tuple[Edge, ...]:
        edges: list[Edge] = []
        for node in range(nodes):
            inputs = sorted(int(i) for i in rng.choice(node + 2, size=EDGES_PER_NODE, replace=False))
            edges.extend((str(primitives[int(rng.integers(len(primitives)))]), i) for i in inputs)
        return tuple(edges)

    concat = tuple(range(2, 2 + nodes))
    normal = cell()
    return Genotype(normal=normal, normal_concat=concat, reduce=cell(), reduce_concat=concat)


def reference_genotype(index: int, nodes: int = 4, primitives: tuple[str, ...] = DERIVED_PRIMITIVES) -> Genotype:
    """Cell ``index`` of the reference distribution of random cells (the same sampler, its own stream)."""
    return sample_genotype(index, nodes, primitives, salt=REFERENCE_SALT)
