"""Architecture search: configuration, the search loop, checkpoints."""

from ilnas.search.checkpoint import CheckpointError
from ilnas.search.config import HYPERGRAD_METHODS, LFMConfig, SearchConfig
from ilnas.search.runner import SearchResult, SearchRun, derive_genotype_from_file, run_search

__all__ = ["HYPERGRAD_METHODS", "CheckpointError", "LFMConfig", "SearchConfig", "SearchResult", "SearchRun",
           "derive_genotype_from_file", "run_search"]
