"""Architecture search: configuration, the search loop, evaluation, derivation, checkpoints.

Lazy: validating params imports ``ilnas.search.config`` only, so a typo fails before torch is imported.
"""

from __future__ import annotations

from ilnas.utils.lazy import lazy_exports

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


__getattr__ = lazy_exports(__name__, _LAZY)
