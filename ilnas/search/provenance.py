"""Which code wrote a search checkpoint: a fingerprint of the search's source files.

A checkpoint written by other code must never be resumed: the resumed run would mix two algorithms
(and DVC reruns the stage precisely because the code changed). The fingerprint covers every package the
search imports, the same set the search stage lists as DVC dependencies.
"""

from __future__ import annotations

import functools
from pathlib import Path

import ilnas
from ilnas.utils.fingerprint import source_digest

# the ilnas packages a search runs (keep in step with the search stage's deps in dvc.yaml)
SEARCH_PACKAGES = ("search", "space", "strategies", "hypergrad", "data", "utils")
SEARCH_FILES = ("__init__.py",)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """sha256 (first 12 hex digits) over the paths and bytes of the search's Python sources."""
    root = Path(ilnas.__file__).parent
    files = [root / f for f in SEARCH_FILES] + sorted(p for pkg in SEARCH_PACKAGES for p in (root / pkg).rglob("*.py"))
    return source_digest(root, files)
