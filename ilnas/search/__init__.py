"""Architecture search: configuration, the search loop, evaluation, derivation, checkpoints.

Lazy: validating params imports ``ilnas.search.config`` only, so a typo fails before torch is imported.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "HYPERGRAD_METHODS": "ilnas.search.config",
    "LFMConfig": "ilnas.search.config",
    "SearchConfig": "ilnas.search.config",
    "CheckpointError": "ilnas.search.checkpoint",
    "Derivation": "ilnas.search.derivation",
    "derive_from_alphas_file": "ilnas.search.derivation",
    "derive_genotype_from_file": "ilnas.search.derivation",
    "SearchResult": "ilnas.search.runner",
    "SearchRun": "ilnas.search.runner",
    "run_search": "ilnas.search.runner",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ilnas.search' has no attribute {name!r}")
