"""Search strategies, registered by name: a new strategy is one new module in this package.

Lazy: names come from the modules' sources (:mod:`ilnas.search.strategies.registry`), so listing or validating a
strategy name imports no strategy and no torch; :func:`get_strategy` imports the one module it needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ilnas.search.strategies.registry import REGISTRY, available_strategies, builtin_strategies, register_strategy

if TYPE_CHECKING:
    from ilnas.search.strategies.base import SearchStrategy

__all__ = ["available_strategies", "get_strategy", "register_strategy"]


def get_strategy(name: str) -> type[SearchStrategy]:
    """The strategy class registered as ``name``; imports its module on first use."""
    if name not in REGISTRY and name in builtin_strategies():
        importlib.import_module(builtin_strategies()[name])
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; allowed: {available_strategies()}") from None
