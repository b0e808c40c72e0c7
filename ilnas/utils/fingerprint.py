"""Content fingerprints: one home for the hashes that key resumable work and name code versions.

A config's digest keys a search's work directory (an unchanged config resumes, a changed one starts fresh);
a source digest names the code that wrote a checkpoint (other code's checkpoint is never resumed).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def json_digest(data: Mapping[str, Any] | list | tuple, length: int = 12) -> str:
    """sha256 of the canonical JSON of ``data`` (sorted keys; other objects as ``str``), first ``length`` hex digits."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:length]


def source_digest(root: str | os.PathLike, files: Iterable[Path], length: int = 12) -> str:
    """sha256 over each file's path relative to ``root`` and its bytes, in the order given (a renamed or moved
    file changes the digest as an edited one does)."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in files:
        digest.update(Path(path).relative_to(root).as_posix().encode() + b"\0")
        digest.update(Path(path).read_bytes() + b"\0")
    return digest.hexdigest()[:length]
