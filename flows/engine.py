"""Where study work runs: Prefect tasks on Dask (``prefect-dask``), with a trials-done counter on the console.

Shared by the study flow (search trials, reference cells) and the calibration flow (proxy evaluations).
Dask owns placement (a ``LocalCluster`` of one-thread worker processes, or a running scheduler by address;
``resources`` such as ``{GPU: 1}`` annotate each task); Prefect owns the task states and run history.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from prefect import task
from prefect.cache_policies import NONE
from prefect.futures import as_completed

QUIET_LOGGERS = ("distributed", "distributed.nanny", "distributed.scheduler", "distributed.core",
                 "distributed.worker", "distributed.http.proxy", "bokeh", "tornado")


def quiet_dask() -> None:
    """Dask's INFO lines (ports, workers starting) drown the study's own progress: warnings only."""
    import dask

    dask.config.set({"logging.distributed": "warning"})
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def dask_runner(address: str | None = None, workers: int | None = None,
                resources: dict[str, float] | None = None) -> Any:
    """Prefect's Dask task runner: attach to ``address``, or a local cluster of one-thread worker processes.

    Local default: one worker per core (2 here), one thread each: a trial is a single-threaded torch job,
    and two threads per worker ran slower than one on these shared cores. ``resources`` are given to every
    local worker so that tasks annotated with them can be scheduled.
    """
    from prefect_dask import DaskTaskRunner

    quiet_dask()
    if address:
        return DaskTaskRunner(address=address)
    kwargs: dict[str, Any] = {"n_workers": workers or max(1, os.cpu_count() or 1), "threads_per_worker": 1,
                              "processes": True, "dashboard_address": ":0", "silence_logs": logging.WARNING}
    if resources:
        kwargs["resources"] = dict(resources)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=kwargs)


def share_api_url() -> str | None:
    """Point the Dask workers (new processes, started after this) at this flow's Prefect API.

    Without it each worker of a local cluster would start an ephemeral Prefect server of its own (10-60 s
    each here), and its task runs would land in a database nobody reads.
    """
    from prefect.client.orchestration import get_client

    try:
        url = str(get_client(sync_client=True).api_url).rstrip("/")
    except Exception:  # noqa: BLE001 - the workers then fall back to their own settings
        return None
    if url.startswith("http") and "ephemeral-prefect" not in url:
        os.environ["PREFECT_API_URL"] = url
        return url
    return None


@task(name="proxy-evaluation", cache_policy=NONE, persist_result=False, retries=0)
def proxy_task(genotype: dict[str, Any], protocol: dict[str, Any], seed: int, cache: str) -> dict[str, Any]:
    """One proxy evaluation of a cell on a Dask worker (cached on disk; a failure is returned, not raised)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from ilnas.space.genotype import Genotype
    from ilnas.study.proxy import evaluate_cell

    try:
        return {"status": "ok", **evaluate_cell(Genotype.from_dict(genotype), protocol, seed, cache)}
    except Exception as exc:  # noqa: BLE001 - one failed evaluation must not stop the others
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000], "seed": seed}


class Progress:
    """``label: done/total, ETA`` lines on stderr, at most every 10 s (and the last one)."""

    def __init__(self, label: str, total: int, stream: Any = None):
        self.label, self.total, self.done = label, total, 0
        self.started = self.last = time.perf_counter()
        self.stream = stream or sys.stderr

    def tick(self, note: str = "") -> None:
        self.done += 1
        now = time.perf_counter()
        if now - self.last < 10 and self.done < self.total:
            return
        self.last = now
        elapsed = now - self.started
        eta = elapsed / self.done * (self.total - self.done)
        print(f"{self.label}: {self.done}/{self.total} done, {elapsed:.0f} s, ETA {eta:.0f} s"
              + (f" ({note})" if note else ""), file=self.stream, flush=True)


def gather(futures: dict[Any, Any], progress: Progress, on_result: Callable[[Any, dict[str, Any]], None]) -> None:
    """Collect futures as they finish; a future that raises (a dead worker) becomes a ``failed`` result."""
    for future in as_completed(list(futures)):
        item = futures[future]
        try:
            result = future.result()
        except Exception as exc:  # noqa: BLE001
            result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000]}
        on_result(item, result)
        progress.tick()


def annotated(resources: dict[str, float] | None) -> Any:
    import dask

    return dask.annotate(resources=resources) if resources else contextlib.nullcontext()
