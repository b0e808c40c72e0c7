"""The hypergradient methods by name: each method module registers its function with ``@register_method``.

A method is a function of one :class:`~ilnas.hypergrad._common.HypergradState`; ``hypergradient`` looks it up
here. Only the names in ``ilnas/hypergrad/names.py`` are accepted, so the config's ``Literal`` and this
mapping cannot drift apart. Importing ``ilnas.hypergrad.methods`` fills :data:`REGISTRY`.
"""

from __future__ import annotations

from collections.abc import Callable

from ilnas.hypergrad._common import HypergradResult, HypergradState
from ilnas.hypergrad.names import METHODS

MethodFn = Callable[[HypergradState], HypergradResult]

REGISTRY: dict[str, MethodFn] = {}  # method name -> function, filled as the method modules are imported


def register_method(name: str) -> Callable[[MethodFn], MethodFn]:
    """Function decorator ``@register_method("name")``: ``name`` must be one of ``names.METHODS``."""
    if name not in METHODS:
        raise ValueError(f"hypergradient method {name!r} is not in ilnas/hypergrad/names.py: {list(METHODS)}")

    def decorate(fn: MethodFn) -> MethodFn:
        if name in REGISTRY and REGISTRY[name] is not fn:
            raise ValueError(f"hypergradient method {name!r} is registered twice")
        REGISTRY[name] = fn
        return fn

    return decorate
