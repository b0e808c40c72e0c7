"""ilnas: Interleaving Learning for neural architecture search."""

__version__ = "0.1.0"
