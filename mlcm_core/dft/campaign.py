"""DFT campaigns on dask.distributed: one idempotent task per material, on a local or a remote cluster.

Why Dask and not a pool of our own: DFT is cluster work. The same task runs on a ``LocalCluster`` (the
default of ``mlcm dft run``), on any running scheduler (``--scheduler tcp://HOST:8786``) and on SLURM
through dask-jobqueue (``slurm_cluster`` below, docs/scale.md), and Dask brings what a home-made pool had
to reimplement: a task whose worker dies (kill -9, OOM, a lost node) is rerun on another worker, the
dashboard shows every worker, and workers can be added while a campaign runs.

A task is idempotent: it writes ``<id>.npz`` atomically (the GPAW worker's temp file + ``os.replace``) or
``<id>.failed``, and returns at once when either is already there, so a rerun after a lost worker, or of
the whole command, never computes or records a material twice. The output directory must be shared by the
client and every worker (a cluster filesystem on HPC).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "TaskOutcome",
    "campaign_client",
    "cancel_event",
    "exclusive_campaign",
    "forget_cancel",
    "material_task",
    "remove_stale_temporaries",
    "set_cancel",
    "slurm_cluster",
]

# -- cancellation, per worker process ------------------------------------------------------------
# A running Dask task cannot be interrupted from outside, but its GPAW subprocess can: the client calls
# set_cancel(token) on every worker (client.run) and the tasks of that campaign kill their GPAW process group.
_CANCELS: dict[str, threading.Event] = {}
_CANCELS_LOCK = threading.Lock()


def cancel_event(token: str) -> threading.Event:
    """This worker process's cancel flag for one campaign (created on first use)."""
    with _CANCELS_LOCK:
        return _CANCELS.setdefault(token, threading.Event())


def set_cancel(token: str) -> None:
    """Run on every worker by the client (``client.run``) to cancel a campaign's running materials."""
    cancel_event(token).set()


def forget_cancel(token: str) -> None:
    """Drop a finished campaign's flag, so a long-lived worker does not collect them."""
    with _CANCELS_LOCK:
        _CANCELS.pop(token, None)


# -- the task ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskOutcome:
    """What one material's task did, and where: the fault test checks that a rerun happened elsewhere."""

    status: str  # "done" (an .npz, now or by an earlier attempt) or "failed" (an .failed, with the reason)
    worker: str  # the Dask worker's address ("" outside a worker)
    pid: int  # that worker's process id
    seconds: float  # wall time inside the task


def _worker_memory_limit() -> tuple[str, int | None]:
    """The address and memory limit (bytes) of the Dask worker this task runs on, if it runs on one."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return "", None
    return worker.address, (worker.memory_manager.memory_limit or None)


def material_task(job: dict[str, Any], timeout: float | None, token: str) -> TaskOutcome:
    """Compute one material unless its result or failure is already recorded; record a failure as .failed.

    The GPAW subprocess is held to the worker's memory limit (Dask itself only watches the worker process,
    not the children where GPAW's memory lives). Cancellation raises ``Cancelled`` and records nothing, so a
    later run retries the material.
    """
    from mlcm_core.dft.engine import Cancelled, run_worker, write_failed

    start = time.monotonic()
    address, memory_limit = _worker_memory_limit()
    out = Path(job["out"])
    failed = out.with_suffix(".failed")

    def outcome(status: str) -> TaskOutcome:
        return TaskOutcome(status, address, os.getpid(), time.monotonic() - start)

    if out.exists():
        return outcome("done")
    if failed.exists():
        return outcome("failed")
    cancel = cancel_event(token)
    if cancel.is_set():
        raise Cancelled(job.get("id", ""))
    if job.get("log"):
        Path(job["log"]).parent.mkdir(parents=True, exist_ok=True)
    try:
        run_worker(job, timeout, cancel, memory_limit=memory_limit)
    except Cancelled:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, the campaign goes on
        write_failed(failed, f"{type(exc).__name__}: {exc}\n")
        return outcome("failed")
    return outcome("done")


@contextlib.contextmanager
def exclusive_campaign(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir/logs/.campaign.lock`` for the campaign: a second campaign on the same directory refuses
    to start (it would compute the same materials twice, and its start would remove the first's temp files).

    An flock: released by the kernel when the holder dies, so a kill -9 never leaves the directory locked.
    """
    import fcntl

    from mlcm_core.dft.engine import DFTError

    path = Path(out_dir) / "logs" / ".campaign.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DFTError(f"another campaign is running on {out_dir} (it holds {path})") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def remove_stale_temporaries(out_dir: Path) -> list[Path]:
    """Delete the hidden temp files a killed GPAW worker can leave (``.tmp-*.npz``); never results.

    Called under ``exclusive_campaign`` when no task of the campaign runs (before submitting, after the last
    result), so nothing that a live writer still holds is removed.
    """
    removed = []
    for path in Path(out_dir).glob(".tmp-*"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


# -- clusters ------------------------------------------------------------------------------------
def campaign_client(workers: int = 1, scheduler: str | None = None,
                    memory_limit: str | int = "auto") -> contextlib.AbstractContextManager[Any]:
    """A Dask client for a campaign: ``mlcm_core.scale.dask_client``, shared with ``mlcm embed``.

    One thread per worker means one GPAW run per worker (GPAW itself single-threaded: protocol.threads);
    run_worker gives each GPAW session the worker's niceness, which it inherits from the caller.
    """
    from mlcm_core.scale import dask_client

    return dask_client(workers, scheduler, memory_limit)


def slurm_cluster(*, cores: int = 32, memory: str = "120GB", walltime: str = "12:00:00",
                  queue: str | None = None, account: str | None = None, python: str | None = None,
                  setup: tuple[str, ...] = (), log_directory: str | None = None, **kwargs: Any) -> Any:
    """A dask-jobqueue SLURMCluster for a GPAW campaign: each SLURM job is one node-sized allocation that
    runs ``cores`` single-threaded Dask workers (one GPAW run each) sharing ``memory``.

    ``setup`` lines run before the worker starts (``module load ...``, ``source .venv/bin/activate``);
    BLAS/OpenMP are pinned to one thread there, as on a LocalCluster. Scale with ``cluster.scale(jobs=N)``
    or ``cluster.adapt(maximum_jobs=N)``, then ``mlcm dft run --scheduler cluster.scheduler_address``
    (or pass the address to ``run_many``). See docs/scale.md.
    """
    from dask_jobqueue import SLURMCluster

    prologue = ["export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1", *setup]
    return SLURMCluster(cores=cores, processes=cores, memory=memory, walltime=walltime, queue=queue,
                        account=account, python=python, job_script_prologue=prologue,
                        log_directory=log_directory, scheduler_options={"dashboard_address": ":0"}, **kwargs)
