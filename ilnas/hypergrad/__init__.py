"""Architecture hypergradients for interleaved multi-level problems.

Lazy: ``ilnas.search.config`` reads the method names from ``ilnas.hypergrad.names`` while validating params,
which must not import torch; the engine and the problem (torch) load on first use of their names.
"""

from __future__ import annotations

from ilnas.utils.lazy import lazy_exports

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


__getattr__ = lazy_exports(__name__, _LAZY)
