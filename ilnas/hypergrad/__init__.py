"""Architecture hypergradients for interleaved multi-level problems.

Lazy: ``ilnas.search.config`` reads the method names from ``ilnas.hypergrad.names`` while validating params,
which must not import torch; the engine and the problem (torch) load on first use of their names.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "METHODS": "ilnas.hypergrad.names",
    "HypergradMethod": "ilnas.hypergrad.names",
    "HypergradResult": "ilnas.hypergrad.engine",
    "HypergradState": "ilnas.hypergrad.engine",
    "hypergradient": "ilnas.hypergrad.engine",
    "unroll": "ilnas.hypergrad.engine",
    "InnerHParams": "ilnas.hypergrad.problem",
    "Problem": "ilnas.hypergrad.problem",
    "Stage": "ilnas.hypergrad.problem",
    "SupernetProblem": "ilnas.hypergrad.problem",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ilnas.hypergrad' has no attribute {name!r}")
