"""Lazy package exports: a package's ``__init__`` names what it offers without importing it.

Validating params must not import torch or timm, yet ``ilnas.search``, ``ilnas.hypergrad`` and ``ilnas.train``
offer torch-backed names from their top level; each one's ``__getattr__`` comes from :func:`lazy_exports`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``where[name]`` (a module path) on first use of ``name``."""

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(importlib.import_module(where[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
