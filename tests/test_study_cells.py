"""Cell collapse and stability across seeds, on cells whose answers are known by hand."""

from __future__ import annotations

import math

from ilnas.space.genotype import DARTS_V2
from ilnas.study.cells import cell_stats, edit_distance

DARTS = DARTS_V2.to_dict()


def _cell(normal: list[tuple[str, int]]) -> dict:
    return {**DARTS, "normal": [list(e) for e in normal]}


SKIPS = _cell([("skip_connect", 0), ("skip_connect", 1)] * 4)
POOLS = _cell([("max_pool_3x3", 0), ("avg_pool_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 1),
               ("sep_conv_3x3", 0), ("dil_conv_3x3", 2), ("sep_conv_5x5", 1), ("dil_conv_5x5", 3)])


def test_edit_distance_counts_changed_edges_and_ignores_the_order_of_a_nodes_inputs() -> None:
    assert edit_distance(DARTS, DARTS) == 0
    swapped = _cell([tuple(e) for e in DARTS["normal"][1::-1]] + [tuple(e) for e in DARTS["normal"][2:]])
    assert edit_distance(DARTS, swapped) == 0
    one_changed = _cell([("max_pool_3x3", DARTS["normal"][0][1])] + [tuple(e) for e in DARTS["normal"][1:]])
    assert edit_distance(DARTS, one_changed) == edit_distance(one_changed, DARTS) == 1
    moved = _cell([tuple(e) for e in POOLS["normal"][2:4]] + [tuple(e) for e in POOLS["normal"][:2]]
                  + [tuple(e) for e in POOLS["normal"][4:]])
    assert edit_distance(POOLS, moved) == 4  # the same ops feeding another node are other edges


def test_cell_stats_of_an_arm() -> None:
    stats = cell_stats([SKIPS, SKIPS, POOLS])
    assert stats["normal_edges"] == 8
    assert stats["param_free_normal_mean"] == (8 + 8 + 3) / 3
    assert stats["cells_within_bound"] == 1                  # only POOLS has at most 4 of 8
    d = edit_distance(SKIPS, POOLS)
    assert stats["edit_distance_mean"] == (0 + d + d) / 3
    assert stats["shared_edges_mean"] == 8 - stats["edit_distance_mean"]
    assert stats["majority_edges"] == 8                      # SKIPS' eight edges, each in 2 of 3 cells
    single = cell_stats([DARTS])
    assert math.isnan(single["edit_distance_mean"]) and single["majority_edges"] == 8
    assert cell_stats([]) == {}
