"""Architecture search: configuration, the search loop, evaluation, derivation, checkpoints."""

from ilnas.search.checkpoint import CheckpointError
from ilnas.search.config import HYPERGRAD_METHODS, LFMConfig, SearchConfig
from ilnas.search.derivation import Derivation, derive_from_alphas_file, derive_genotype_from_file
from ilnas.search.runner import SearchResult, SearchRun, run_search

__all__ = ["HYPERGRAD_METHODS", "CheckpointError", "Derivation", "LFMConfig", "SearchConfig", "SearchResult",
           "SearchRun", "derive_from_alphas_file", "derive_genotype_from_file", "run_search"]
