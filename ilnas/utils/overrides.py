"""``--set key.sub=value`` / ``-S`` overrides on nested config dicts (values parsed as YAML, so types survive)."""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

from ilnas.utils.io import safe_load_bounded


class OverrideError(ValueError):
    """An override that cannot be applied: the message quotes it and says why."""


_INDEX = re.compile(r"\[(\d+)\]")


def split_key(key: str) -> list[str | int]:
    """``search.tasks[0].name`` or ``search.tasks.0.name`` -> ['search', 'tasks', 0, 'name']."""
    parts: list[str | int] = []
    for part in _INDEX.sub(r".\1", key.strip().lstrip("+")).split("."):
        if not part:
            raise OverrideError(f"override key {key!r}: empty component")
        parts.append(int(part) if part.isdigit() else part)
    return parts


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``key.sub=value`` edits (values parsed as YAML, like ``dvc exp run -S``) on a copy of ``data``."""
    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise OverrideError(f"override {item!r} must look like key.sub=value")
        parts = split_key(key)
        node: Any = out
        for i, part in enumerate(parts[:-1]):
            where = ".".join(map(str, parts[: i + 1]))
            if isinstance(node, dict):
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
            else:
                raise OverrideError(f"override {item!r}: {where} is not a section or list index")
        last = parts[-1]
        value = safe_load_bounded(raw, f"override {key.strip()[:80]!r}", OverrideError) if raw.strip() else None
        if isinstance(node, list):
            if not isinstance(last, int) or last >= len(node):
                raise OverrideError(f"override {item!r}: index {last} out of range (length {len(node)})")
            node[last] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise OverrideError(f"override {item!r}: parent of {last!r} is not a section")
    return out
