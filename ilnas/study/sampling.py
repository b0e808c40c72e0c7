"""Random cells from the same space the search derives from: the baseline of Li & Talwalkar (2019).

A derived DARTS cell gives every intermediate node two distinct inputs among its predecessors (the two
cell inputs and the earlier nodes) and one non-``none`` operation per input. Sampling the input pair
uniformly among the pairs and each op uniformly among the space's non-``none`` ops (``search.primitives``;
default the DARTS 8) is uniform over exactly the cells ``derive_genotype`` can produce from that space.
"""

from __future__ import annotations

import numpy as np

from ilnas.space.genotype import EDGES_PER_NODE, Edge, Genotype
from ilnas.space.primitives import PRIMITIVES, check_primitives, derived_primitives

# fixed salts so the random arm's stream differs from every other use of the search seed, and the reference
# distribution's cells (indices 0..N-1) from the random arm's
SALT = 0x5EED
REFERENCE_SALT = 0x4EF0


def sample_genotype(seed: int, nodes: int = 4, space: tuple[str, ...] = PRIMITIVES, salt: int = SALT) -> Genotype:
    """A uniformly random normal and reduction cell of ``space`` (the searched primitives); the same ``seed``
    (and ``salt``) always gives the same cell."""
    primitives = derived_primitives(check_primitives(space, "primitives"))
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
    return Genotype(normal=normal, normal_concat=concat, reduce=cell(), reduce_concat=concat, primitives=tuple(space))


def reference_genotype(index: int, nodes: int = 4, space: tuple[str, ...] = PRIMITIVES) -> Genotype:
    """Cell ``index`` of the reference distribution of random cells (the same sampler, its own stream)."""
    return sample_genotype(index, nodes, space, salt=REFERENCE_SALT)
