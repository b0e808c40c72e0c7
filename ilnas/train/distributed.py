"""Re-export: the process-group plumbing moved to :mod:`ilnas.utils.distributed` (the search shares it)."""

from ilnas.utils.distributed import DistContext, all_reduce_sum, barrier, setup_distributed

__all__ = ["DistContext", "all_reduce_sum", "barrier", "setup_distributed"]
