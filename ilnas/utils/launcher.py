"""torchrun's launcher and its ranks: a rank stops when its launcher dies; the stages launch torchrun in-process.

* :func:`watch_launcher` (called by :func:`ilnas.utils.distributed.setup_distributed` on every rank): when the
  torchrun launcher is killed, its ranks stop within a second instead of holding the devices.
* :func:`launch_torchrun`: torchrun run inside the calling process (the stages use it), so that a refusal
  every rank printed ends with the ranks' exit code (2) and without torchrun's failure report.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Sequence

WATCH_INTERVAL_S = 0.2  # a getppid() call five times a second
_WATCHED: dict[str, int] = {}


def watch_launcher(interval_s: float = WATCH_INTERVAL_S) -> bool:
    """Under torchrun: a daemon thread ends this rank when its launcher (the parent process) is gone.

    Why: ``kill -9`` of torchrun leaves its ranks running (SIGKILL gives it no chance to stop them), holding the
    devices and writing checkpoints nobody will read. Checkpoints are written
    atomically (temp file + rename), so ending a rank at any point leaves the last one as it was. Polling
    ``os.getppid()`` (reparented once the parent dies) rather than ``PR_SET_PDEATHSIG``, which fires when the
    parent *thread* that started the rank exits. Returns whether a watch is running (once per process)."""
    if "LOCAL_RANK" not in os.environ:
        return False
    if "parent" in _WATCHED:
        return True
    parent = _WATCHED["parent"] = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        sys.stderr.write(f"rank {os.environ.get('RANK', '?')}: its torchrun launcher (pid {parent}) is gone; "
                         "stopping (the last checkpoint stays as it was)\n")
        sys.stderr.flush()
        os._exit(1)

    threading.Thread(target=watch, name="ilnas-launcher-watch", daemon=True).start()
    return True


def launch_torchrun(torchrun_args: Sequence[str]) -> int:
    """``torchrun <torchrun_args>`` in this process (torch.distributed.run's parser and elastic agent); returns
    the exit code of the first rank that failed (2 when the ranks refused their input), 0 when all succeeded.

    The ranks print their own error (one block, rank 0 only); torchrun's failure report (a ChildFailedError
    traceback, ~40 lines) and its per-rank log lines are left out unless ``--debug`` / ``ILNAS_DEBUG=1``. A rank
    killed by a signal is named here, since it printed nothing itself."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from ilnas.errors import debug_enabled

    elastic = logging.getLogger("torch.distributed.elastic")
    previous = elastic.level
    elastic.setLevel(logging.WARNING if debug_enabled() else logging.CRITICAL)
    try:
        run(parse_args(list(torchrun_args)))
    except ChildFailedError as exc:
        if debug_enabled():
            raise
        rank, failure = exc.get_first_failure()
        if failure.exitcode < 0:
            print(f"torchrun: rank {rank} (pid {failure.pid}) was killed by {failure.signal_name()}",
                  file=sys.stderr, flush=True)
            return 1
        return failure.exitcode
    finally:
        elastic.setLevel(previous)
    return 0
