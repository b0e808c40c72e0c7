"""Strategy names and the registry, without importing any strategy (or torch).

Validating a config must stay cheap: a strategy module declares its name with ``@register_strategy("<name>")``,
and :func:`builtin_strategies` finds those decorators in the package's sources with ``ast``. This module imports
nothing of the project, so ``ilnas.search.config`` asks it for the names; ``ilnas.search.strategies.get_strategy``
imports the one module a search needs.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
NOT_STRATEGIES = ("__init__", "base", "registry")  # modules of this package that define no strategy

REGISTRY: dict[str, Any] = {}  # name -> strategy class, filled as strategy modules are imported


def register_strategy(name: str):
    """Class decorator ``@register_strategy("name")``; write the name literally (it is read from the source)."""

    def decorate(cls):
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"strategy {name!r} is registered twice")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return decorate


def declared_names(source: str) -> list[str]:
    """The ``name`` of every ``@register_strategy("name")`` class decorator in ``source``."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        for deco in node.decorator_list:
            func = deco.func if isinstance(deco, ast.Call) else None
            called = getattr(func, "id", None) or getattr(func, "attr", None)
            if called == "register_strategy" and deco.args and isinstance(deco.args[0], ast.Constant):
                names.append(str(deco.args[0].value))
    return names


@functools.cache
def builtin_strategies() -> dict[str, str]:
    """``{strategy name: module}`` for every strategy module of this package (private ``_*`` modules skipped)."""
    found: dict[str, str] = {}
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        if path.stem.startswith("_") or path.stem in NOT_STRATEGIES:
            continue
        for name in declared_names(path.read_text()):
            if name in found:
                raise ValueError(f"strategy {name!r} is declared twice: in {found[name]} and {path.stem}")
            found[name] = f"ilnas.search.strategies.{path.stem}"
    return found


def available_strategies() -> list[str]:
    """Every strategy name: the built-in modules' (none imported) and any registered at run time."""
    return sorted(set(builtin_strategies()) | set(REGISTRY))
