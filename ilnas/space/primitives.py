"""Names of the candidate operations, without torch: the params check validates ``search.primitives`` here.

``PRIMITIVES`` is the DARTS set (the default search space). ``KNOWN_PRIMITIVES`` adds what other published
spaces use: ``noise`` (R-DARTS' space S4, Zela et al. 2020: ``noise`` + ``sep_conv_3x3``; an op that outputs
standard normal noise of its input's shape, github ruocwang/darts-pt sota/cnn/operations.py:6 and 29-43).
"""

from __future__ import annotations

from collections.abc import Sequence

PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
KNOWN_PRIMITIVES: tuple[str, ...] = (*PRIMITIVES, "noise")

# R-DARTS' uniform spaces (every edge the same set; S1 differs per edge and is not expressible as one list),
# github ruocwang/darts-pt sota/cnn/spaces.py (primitives_2 .. primitives_4)
RDARTS_SPACES: dict[str, tuple[str, ...]] = {
    "s2": ("skip_connect", "sep_conv_3x3"),
    "s3": ("none", "skip_connect", "sep_conv_3x3"),
    "s4": ("noise", "sep_conv_3x3"),
}


def check_primitives(primitives: Sequence[str], key: str | None = None) -> tuple[str, ...]:
    """Distinct known op names with at least one that derivation can pick (not ``none``); else a clear error
    (naming ``key`` when given; pydantic names the field itself)."""
    names = tuple(primitives)
    where = f"{key}: " if key else ""
    unknown = [p for p in names if p not in KNOWN_PRIMITIVES]
    if unknown:
        raise ValueError(f"{where}unknown op(s) {unknown}; allowed: {list(KNOWN_PRIMITIVES)}")
    repeated = sorted({p for p in names if names.count(p) > 1})
    if repeated:
        raise ValueError(f"{where}{repeated} listed more than once; allowed: each op at most once")
    if not derived_primitives(names):
        raise ValueError(f"{where}got {list(names)}; allowed: at least one op other than 'none' "
                         f"(from {list(KNOWN_PRIMITIVES[1:])})")
    return names


def derived_primitives(primitives: Sequence[str] = PRIMITIVES) -> tuple[str, ...]:
    """The ops a derived cell (and a random cell of the same space) can hold: every candidate but ``none``."""
    return tuple(p for p in primitives if p != "none")
