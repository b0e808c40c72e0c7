"""Safe artifact files: atomic writes (a reader never sees half a file) and verified reads of torch files.

* :func:`atomic_write` writes a temp file beside the target and renames it. The temp name carries the
  writer's pid, so the next write to the same target removes what an interrupted (killed) writer left
  behind without touching a live writer's file. The result gets the mode a plain ``open(path, "w")`` would
  give (the existing file's mode, else ``0o666 & ~umask``), not the temp file's private 0600, so a group
  that shares the results can read them.
* :func:`verify_zip_members` checks every member's CRC-32 of a ``torch.save`` file. ``torch.load`` does not:
  a flipped byte inside tensor data loads silently as a wrong number. Every checkpoint and alphas file the
  project reads goes through it first.
* :func:`read_yaml_bounded` / :func:`safe_load_bounded` read the YAML a user hands in (params files, study
  specs, ``-S`` values) with bounds on size, nesting and alias expansion, so a hostile file (a "billion
  laughs" alias bomb, a gigabyte of text) is refused in milliseconds instead of exhausting memory later.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
import tempfile
import threading
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ilnas.errors import InputError, IntegrityError, OutputError

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


def atomic_write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Rows as CSV, written atomically: the columns in first-seen order (a key a row lacks is a blank cell),
    ``\n`` line endings. The one CSV writer of the project (search and training histories, DVC metrics)."""
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


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


# -- bounded YAML ----------------------------------------------------------------------------------------------
# A params file or study spec is a few KiB and a few hundred nodes; these bounds are far above any real one.
# (PyYAML's pure-Python parser reads ~100 KiB/s on a loaded core: the size bound keeps a refusal or a parse
# of the largest accepted file under a second)
MAX_YAML_BYTES = 64 * 1024
MAX_YAML_NODES = 20_000  # scalars + collections after alias expansion (what a consumer would walk)
MAX_YAML_DEPTH = 64


def _depth_bounded_loader(source: str, error: type[Exception]) -> type:
    """A SafeLoader whose (recursive) composer stops at ``MAX_YAML_DEPTH`` levels instead of Python's limit."""
    import yaml

    class Loader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            self.depth += 1
            if self.depth > MAX_YAML_DEPTH:
                raise error(f"{source}: nested more than {MAX_YAML_DEPTH} levels deep; refused (a params "
                            "file is a few levels deep)")
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return Loader


def _expanded_size(root: Any, source: str, error: type[Exception]) -> int:
    """Nodes of the document once every alias is expanded, counted without expanding (memoised per node)."""
    import yaml

    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # on the current path: meeting one again is a recursive alias
    stack: list[tuple[Any, int, bool]] = [(root, 1, False)]
    while stack:  # iterative post-order: a deep document must not hit Python's recursion limit
        node, depth, done = stack.pop()
        if id(node) in sizes:
            continue
        if not done and id(node) in open_nodes:
            raise error(f"{source}: a recursive alias (a node that contains itself); refused")
        if depth > MAX_YAML_DEPTH:
            raise error(f"{source}: nested more than {MAX_YAML_DEPTH} levels deep; refused (a params file "
                        "is a few levels deep)")
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            sizes[id(node)] = 1
            continue
        if not done:
            open_nodes.add(id(node))
            stack.append((node, depth, True))
            stack.extend((child, depth + 1, False) for child in children if id(child) not in sizes)
            continue
        open_nodes.discard(id(node))
        sizes[id(node)] = 1 + sum(sizes.get(id(child), 0) for child in children)
        if sizes[id(node)] > MAX_YAML_NODES:
            break
    return sizes.get(id(root), MAX_YAML_NODES + 1)


def _check_flow_depth(text: str, source: str, error: type[Exception]) -> None:
    """Refuse deep ``[[[...`` / ``{{{...`` before scanning: PyYAML's scanner is quadratic in flow depth.

    Brackets inside quoted strings count too, so the bound is conservative (no real file nests 64 deep).
    """
    depth = 0
    for char in re.sub(r"[^\[\]{}]", "", text):
        depth += 1 if char in "[{" else -1
        if depth > MAX_YAML_DEPTH:
            raise error(f"{source}: nested more than {MAX_YAML_DEPTH} levels deep; refused (a params file is a "
                        "few levels deep)")


def safe_load_bounded(text: str, source: str, error: type[Exception] = InputError) -> Any:
    """``yaml.safe_load`` with bounds: size, nesting depth and nodes after alias expansion.

    Why: ``safe_load`` builds an alias bomb in microseconds (shared references), but everything that walks
    the result afterwards (validation, ``repr`` in an error message) pays the expanded size, which grows
    exponentially. The composed node graph is measured first, before a single Python object is built.
    ``error`` is the exception type raised (the caller's own, so its exit code and handling stay).
    """
    import yaml

    if len(text) > MAX_YAML_BYTES:
        raise error(f"{source}: {len(text)} characters; refused (at most {MAX_YAML_BYTES}: a params file or "
                    "study spec is a few KiB)")
    _check_flow_depth(text, source, error)
    # libyaml's loader where PyYAML has it (3x faster); the pure-Python one stops at the depth bound itself
    loader_cls = getattr(yaml, "CSafeLoader", None) or _depth_bounded_loader(source, error)
    loader = loader_cls(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, source, error)
        if size > MAX_YAML_NODES:
            raise error(f"{source}: more than {MAX_YAML_NODES} values once its aliases (*name) are expanded; "
                        "refused (an alias bomb, or far larger than any params file)")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise error(f"{source}: not valid YAML ({' '.join(str(exc).split())[:400]})") from None
    finally:
        loader.dispose()


def read_yaml_bounded(path: str | os.PathLike, what: str = "file", error: type[Exception] = InputError) -> Any:
    """Read a user's YAML file (params, study spec) within the bounds of :func:`safe_load_bounded`.

    The size is checked on the file before it is read; every way the read fails is ``error`` naming the path.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if path.is_file() and size > MAX_YAML_BYTES:
            raise error(f"{path}: {what} of {size} bytes; refused (at most {MAX_YAML_BYTES} bytes: a params "
                        "file or study spec is a few KiB)")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory; give the path of a YAML {what}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not a UTF-8 text file (byte {exc.start}: {exc.reason}); "
                    f"a {what} must be UTF-8 YAML") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    return safe_load_bounded(text, str(path), error)
