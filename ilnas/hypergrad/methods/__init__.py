"""The four hypergradient methods, one module each; importing this package registers all of them.

Each module holds one function of a ``HypergradState`` decorated ``@register_method("<name>")`` (Betty's
layout: one method per file behind a mapping); what they share lives in ``ilnas/hypergrad/_common.py``.
"""

from ilnas.hypergrad.methods import exact, finite_difference, first_order, stagewise
from ilnas.hypergrad.registry import REGISTRY

__all__ = ["REGISTRY", "exact", "finite_difference", "first_order", "stagewise"]
