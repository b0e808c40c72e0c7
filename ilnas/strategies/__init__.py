"""Search strategies, registered by name: a new strategy is one new module in this package."""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ilnas.strategies.base import SearchStrategy

_REGISTRY: dict[str, type[SearchStrategy]] = {}
_LOADED = False


def register_strategy(name: str):
    def decorate(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"strategy {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _load_builtin() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for mod in pkgutil.iter_modules(__path__):
            if not mod.name.startswith("_") and mod.name != "base":
                importlib.import_module(f"{__name__}.{mod.name}")


def available_strategies() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_strategy(name: str) -> type[SearchStrategy]:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; allowed: {sorted(_REGISTRY)}") from None
