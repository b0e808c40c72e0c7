"""The project's error types and the one wrapper every entry point ends through.

Why: a known error (bad params, a damaged checkpoint or genotype, a diverged run) already carries a
complete message: what is wrong, which file or key, what is allowed or how to fix it. Wrapping it in a
traceback hides that message. Every entry point (``ilnas``, ``python -m stages.*``, ``python -m flows.*``,
``python -m ilnas.params``) therefore runs through :func:`guarded`, which prints the message as one block
on stderr and exits non-zero: 2 for input errors (the user must change something they gave), 1 for
failures of a run. ``--debug`` or ``ILNAS_DEBUG=1`` re-raises instead, so the traceback shows. An
unexpected exception (a bug) is never caught here: its traceback is what a bug report needs.

Error types defined in modules that predate this one (``GenotypeError``, ``ManifestError``,
``SearchDivergedError``) are recognised by name so that this module imports nothing of the project.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from typing import NoReturn, TypeVar

T = TypeVar("T")

ENV_DEBUG = "ILNAS_DEBUG"
EXIT_INPUT = 2
EXIT_FAILURE = 1
MAX_MESSAGE_CHARS = 6000  # a message block never grows past this (a hostile value is cut, not rendered)


class IlnasError(Exception):
    """A known error whose message is complete on its own; ``exit_code`` says how the process ends."""

    exit_code = EXIT_FAILURE


class InputError(IlnasError, ValueError):
    """Something the user gave (params, overrides, a path, a file) cannot be used: exit 2."""

    exit_code = EXIT_INPUT


class IntegrityError(InputError):
    """A file the project wrote was damaged or does not match its recorded content hash."""


class DataError(InputError):
    """A dataset a task names cannot be used as given (a class id out of range, an unknown class folder)."""


class DataMissingError(IlnasError, FileNotFoundError):
    """A dataset root, split, class folder or image set a task needs is not on disk: the message names the path."""

    exit_code = EXIT_INPUT


class DataDamagedError(IlnasError, RuntimeError):
    """Dataset files are on disk but damaged or not the expected release (a failed integrity check)."""

    exit_code = EXIT_INPUT


class DamagedImageError(DataDamagedError):
    """An image of a dataset cannot be decoded (truncated, not an image): the message names the file and dataset.

    Raised inside a DataLoader worker it reaches the main process as ``DamagedImageError("Caught ... in
    DataLoader worker process N. Original Traceback ...")`` (torch's ``ExceptionWrapper.reraise`` builds it
    from the formatted traceback); the original message is taken back out of that text, so the user sees the
    file and the dataset and no worker traceback.
    """

    def __init__(self, message: str) -> None:
        marker = f"{type(self).__module__}.{type(self).__qualname__}: "
        if message.startswith("Caught ") and marker in message:
            message = message[message.rindex(marker) + len(marker):].strip()
        super().__init__(message)


class RunFailed(IlnasError, RuntimeError):
    """A run that started from valid input failed for a known reason (divergence, a stage that failed)."""

    exit_code = EXIT_FAILURE


class OutputError(IlnasError, OSError):
    """An output file or directory cannot be written (disk full, a file where a directory should be, ...)."""

    exit_code = EXIT_FAILURE


# known error types of other modules, by "module.Class" (no imports here: this module must stay a leaf)
KNOWN_BY_NAME: dict[str, int] = {
    "ilnas.space.genotype.GenotypeError": EXIT_INPUT,
    "ilnas.data.prepare.ManifestError": EXIT_INPUT,
    "ilnas.utils.overrides.OverrideError": EXIT_INPUT,
    "ilnas.search.strategies.base.SearchDivergedError": EXIT_FAILURE,
    "ilnas.study.spec.StudySpecError": EXIT_INPUT,
    "flows.pipeline.StageFailed": EXIT_FAILURE,
    "flows.dvc_repo.DvcError": EXIT_FAILURE,  # a DVC command the flow needs failed; the message is DVC's
    "builtins.FloatingPointError": EXIT_FAILURE,  # the training loops' non-finite-loss stop (message names epoch)
}


def exit_code_of(exc: BaseException) -> int | None:
    """The exit code of a known error, or None for an unexpected exception (which keeps its traceback)."""
    if isinstance(exc, IlnasError):
        return exc.exit_code
    for cls in type(exc).__mro__:
        code = KNOWN_BY_NAME.get(f"{cls.__module__}.{cls.__qualname__}")
        if code is not None:
            return code
    return None


def debug_enabled(argv: list[str] | None = None) -> bool:
    """``--debug`` on the command line or ``ILNAS_DEBUG`` set to anything but '', '0', 'false'."""
    if "--debug" in (sys.argv if argv is None else argv):
        return True
    return os.environ.get(ENV_DEBUG, "").strip().lower() not in ("", "0", "false", "no")


def bounded_repr(value: object, limit: int = 120) -> str:
    """``repr`` that never renders more than ``limit`` characters, nor walks more than a few levels and items.

    Why: an error message quotes the offending value; a hostile one (an expanded alias bomb, a megabyte
    string) must cost microseconds to quote, not minutes and all memory as a plain ``repr`` does.
    """
    import reprlib

    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother = 3, limit, limit
    short.maxlist = short.maxtuple = short.maxdict = short.maxset = short.maxfrozenset = 6
    text = short.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_error(prog: str, exc: BaseException) -> str:
    """One block: ``<prog>: error: <message>`` (continuation lines indented) and how to see more."""
    message = str(exc).strip() or type(exc).__name__
    if len(message) > MAX_MESSAGE_CHARS:
        message = f"{message[:MAX_MESSAGE_CHARS]}\n... ({len(message) - MAX_MESSAGE_CHARS} more characters)"
    lines = message.splitlines()
    body = "\n".join([lines[0], *("  " + line if not line.startswith(" ") else line for line in lines[1:])])
    return f"{prog}: error: {body}\n  (traceback: rerun with --debug or {ENV_DEBUG}=1)"


def torchrun_place() -> tuple[int, int] | None:
    """``(rank, world size)`` when this process is one of several torchrun ranks, else None."""
    try:
        world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    except ValueError:
        return None
    return (rank, world) if world > 1 and "LOCAL_RANK" in os.environ else None


AGREE_TIMEOUT_S = 5.0  # how long a rank waits for the others to reach the same refusal


def _every_rank_refuses(world: int) -> bool | None:
    """Whether all ``world`` ranks reached :func:`fail` within ``AGREE_TIMEOUT_S``, counted in the torchrun agent's
    store (None: no agent store to ask). A refusal of the input is reached by every rank; a rank-local failure
    (one rank's damaged file) is not, and that rank then speaks for itself."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or not addr or not port:
        return None
    try:
        from datetime import timedelta

        from torch.distributed import TCPStore

        store = TCPStore(addr, int(port), is_master=False, timeout=timedelta(seconds=AGREE_TIMEOUT_S))
        key = (f"ilnas/refusal/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/"
               f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}")
        count, deadline = store.add(key, 1), time.monotonic() + AGREE_TIMEOUT_S
        while count < world and time.monotonic() < deadline:
            time.sleep(0.05)
            count = store.add(key, 0)
        return count >= world
    except Exception:  # noqa: BLE001 - no agreement possible: every rank speaks for itself
        return None


def fail(prog: str, exc: BaseException) -> NoReturn:
    """Print ``exc`` as one block on stderr and exit with its code.

    Under torchrun every rank meets the same refusal: rank 0 prints it, the others print nothing once all
    ranks have reached it, and every rank exits with the code: SIGTERM, which torchrun's agent sends the others
    as soon as the first rank has exited, is ignored from here on (the agent's SIGKILL still ends a hung rank)."""
    code = exit_code_of(exc) or EXIT_FAILURE
    place = torchrun_place()
    if place is None:
        print(format_error(prog, exc), file=sys.stderr, flush=True)
        raise SystemExit(code)
    rank, world = place
    try:  # ignored, not handled: Python resets handled signals to their default while it exits
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except ValueError:  # not the main thread
        pass
    if rank == 0:
        print(format_error(prog, exc), file=sys.stderr, flush=True)
    if not _every_rank_refuses(world) and rank != 0:
        print(format_error(f"{prog} [rank {rank}]", exc), file=sys.stderr, flush=True)
    raise SystemExit(code)


def guarded(fn: Callable[[], T], prog: str) -> T:
    """Run an entry point's body; a known error ends the process as one block (see the module docstring)."""
    try:
        return fn()
    except Exception as exc:
        if exit_code_of(exc) is None or debug_enabled():
            raise
        fail(prog, exc)


def strip_debug_flag(argv: list[str]) -> list[str]:
    """Remove ``--debug`` from an argument list (setting ``ILNAS_DEBUG``), for parsers that do not know it."""
    if "--debug" in argv:
        os.environ[ENV_DEBUG] = "1"
        return [a for a in argv if a != "--debug"]
    return argv
