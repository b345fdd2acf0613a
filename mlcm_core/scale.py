"""One way to get a Dask client, for every job that spreads over processes or machines (docs/scale.md).

Why one helper: DFT campaigns (``mlcm dft run``) and embedding builds (``mlcm embed``) both run either on a
``LocalCluster`` started for the command or on a running cluster given by its address; the cluster settings
(processes, one task thread each, memory limit per worker, niceness inherited, dashboard on a free port)
belong in one place so that the two commands behave the same.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

__all__ = ["LOCAL_CLUSTER_CONFIG", "dask_client"]

# Dask's diagnostics for a LocalCluster whose tasks mostly wait (on a GPAW subprocess, or in torch): the
# defaults (a 10 ms statistical profiler in every worker, a 20 ms event-loop tick, a 0.5 s system monitor
# with GIL and disk sampling) used 2.07 CPU-s per 10 s of four waiting tasks on 2 workers, 5 % of a
# 2-core machine taken from GPAW; these settings use 0.31 (measured 2026-12-03, distributed 2026.8.0).
# The dashboard still works; only its profile page stays empty.
LOCAL_CLUSTER_CONFIG: dict[str, Any] = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.admin.system-monitor.disk": False,
    "distributed.admin.system-monitor.gil.enabled": False,
    "distributed.worker.memory.monitor-interval": "1s",
}


@contextlib.contextmanager
def dask_client(workers: int = 1, scheduler: str | None = None,
                memory_limit: str | int = "auto") -> Iterator[Any]:
    """A Dask client attached to ``scheduler`` (an address) or to a new LocalCluster.

    The LocalCluster has ``workers`` processes with one thread each (one task per worker at a time: a GPAW
    run, or a chunk of materials to embed), a memory limit per worker ("auto": the machine's memory split
    between them), and a dashboard on a free port. Worker processes inherit the caller's niceness, so
    ``nice mlcm ...`` stays nice. The cluster is closed on exit (its workers with it); an attached cluster
    is left running. Dask's own diagnostics are thinned on a LocalCluster (LOCAL_CLUSTER_CONFIG).
    """
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        client = Client(scheduler, set_as_default=False)
        try:
            yield client
        finally:
            client.close()
        return
    with dask.config.set(LOCAL_CLUSTER_CONFIG):  # the nannies pass it on to the worker processes
        cluster = LocalCluster(n_workers=max(1, workers), threads_per_worker=1, processes=True,
                               memory_limit=memory_limit, dashboard_address=":0", silence_logs=logging.ERROR)
        try:
            client = Client(cluster, set_as_default=False)
            try:
                yield client
            finally:
                client.close()
        finally:
            cluster.close()

