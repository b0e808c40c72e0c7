"""Safe artifact files: atomic writes (a reader never sees half a file) and verified reads of torch files.

* :func:`atomic_write` writes a temp file beside the target and renames it. The temp name carries the
  writer's pid, so the next write to the same target removes what an interrupted (killed) writer left
  behind without touching a live writer's file. The result gets the mode a plain ``open(path, "w")`` would
  give (the existing file's mode, else ``0o666 & ~umask``), not the temp file's private 0600, so a group
  that shares the results can read them.
* :func:`verify_zip_members` checks every member's CRC-32 of a ``torch.save`` file. ``torch.load`` does not:
  a flipped byte inside tensor data loads silently as a wrong number. Every checkpoint and alphas file the
  project reads goes through it first.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ilnas.errors import IntegrityError, OutputError

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    with _UMASK_LOCK:  # reading the umask means setting it; keep other threads out meanwhile
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _target_mode(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers are from an earlier failed attempt (the live one is not created yet)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete temp files of interrupted writes to ``path`` (``.<name>.<pid>.*.tmp`` of dead writers)."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\.[^.]+\.tmp$")
    legacy = re.compile(rf"^\.{re.escape(path.name)}\.[^.]+\.tmp$")  # before the pid was in the name
    removed = []
    if not path.parent.is_dir():
        return removed
    for entry in path.parent.iterdir():
        match = pattern.match(entry.name)
        if (match and not _pid_alive(int(match.group(1)))) or (not match and legacy.match(entry.name)):
            try:
                entry.unlink()
                removed.append(entry)
            except FileNotFoundError:
                pass
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temp file onto ``path`` (same directory, so rename is atomic)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        mode = _target_mode(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc}); the previous file, if any, is "
                          "unchanged") from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    import torch

    return atomic_write(path, lambda p: torch.save(obj, p))


def verify_zip_members(path: str | os.PathLike) -> None:
    """Every member of a ``torch.save`` zip file matches its stored CRC-32; :class:`IntegrityError` otherwise.

    A file that is not a zip archive (the legacy torch format is never written here) is refused too.
    """
    path = Path(path)
    if path.is_file() and not zipfile.is_zipfile(path):
        raise IntegrityError(f"{path}: not a file written by torch.save (no zip archive: truncated, damaged or "
                             "another format); it was not loaded")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise IntegrityError(f"{path}: damaged file, the zip archive cannot be read ({type(exc).__name__}: "
                             f"{exc}); delete it (or restore it) and rerun") from None
    if bad is not None:
        raise IntegrityError(f"{path}: damaged file, member {bad!r} does not match its CRC-32 (a flipped or "
                             "truncated byte); it was not loaded; delete it (or restore it) and rerun")


def short_reason(exc: BaseException) -> str:
    """``Type: first line`` of an exception (torch's load errors run to a page of advice that does not apply)."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first[:240]}"
