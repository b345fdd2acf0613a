"""Campaigns on Dask: the local cluster's shape, idempotent tasks, memory cap, cancel, attach by address,
the CLI option, and the SLURM job script of docs/scale.md (built without SLURM)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mlcm_core.dft import campaign
from mlcm_core.dft.campaign import TaskOutcome, material_task, slurm_cluster
from mlcm_core.dft.engine import Cancelled, DFTError, build_job, gpaw_available, run_many, run_worker
from mlcm_core.dft.protocol import LOW_PROTOCOL
from tests.conftest import skip_unless_ci
from tests.dft.test_engine import si2

ROOT = Path(__file__).resolve().parents[2]


def _needs_gpaw() -> None:
    reason = gpaw_available()
    if reason:
        skip_unless_ci(f"no GPAW: {reason}")


def test_local_cluster_workers_are_single_threaded_capped_and_niced():
    """Started from a niced process, every worker has 1 thread, a memory limit, BLAS pinned to 1 thread and
    the caller's niceness (a niced campaign must not take CPU from interactive work)."""
    code = textwrap.dedent("""
        import os
        from mlcm_core.dft.campaign import campaign_client
        if __name__ == "__main__":
            caller = os.nice(3)
            with campaign_client(workers=2, memory_limit="1GiB") as client:
                info = client.scheduler_info(n_workers=-1)["workers"].values()
                nice = client.run(os.nice, 0)
                omp = client.run(lambda: os.environ.get("OMP_NUM_THREADS"))
                print(caller, sorted(w["nthreads"] for w in info), sorted(w["memory_limit"] for w in info),
                      sorted(set(nice.values())), sorted(set(omp.values())), "dashboard" if client.dashboard_link else "")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         timeout=120).stdout.strip().splitlines()[-1]
    caller = out.split(" ", 1)[0]
    assert out == f"{caller} [1, 1] [{2**30}, {2**30}] [{caller}] ['1'] dashboard", out


def test_material_task_is_idempotent(tmp_path: Path):
    """A task finds its material's result or failure already recorded and returns without running GPAW
    (what makes a rerun after a lost worker, or of the whole command, safe)."""
    job = build_job(si2(), tmp_path / "si.npz", LOW_PROTOCOL, "si")
    (tmp_path / "si.npz").write_bytes(b"result")
    outcome = material_task(job, 1.0, "t1")
    assert isinstance(outcome, TaskOutcome) and outcome.status == "done" and outcome.pid == os.getpid()
    assert outcome.worker == "" and (tmp_path / "si.npz").read_bytes() == b"result"
    (tmp_path / "si.npz").unlink()
    (tmp_path / "si.failed").write_text("old failure")
    assert material_task(job, 1.0, "t1").status == "failed"
    assert (tmp_path / "si.failed").read_text() == "old failure" and not (tmp_path / "si.npz").exists()
    campaign.set_cancel("t2")  # a cancelled campaign's queued task records nothing
    (tmp_path / "si.failed").unlink()
    with pytest.raises(Cancelled):
        material_task(job, 1.0, "t2")
    assert not list(tmp_path.glob("si.*"))
    campaign.forget_cancel("t2")
    assert not campaign.cancel_event("t2").is_set()
    campaign.forget_cancel("t2")


def test_stale_temporaries_are_removed_and_results_kept(tmp_path: Path):
    (tmp_path / ".tmp-abc.npz").write_bytes(b"half")
    (tmp_path / "a.npz").write_bytes(b"full")
    assert [p.name for p in campaign.remove_stale_temporaries(tmp_path)] == [".tmp-abc.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz"]


def test_one_campaign_per_output_directory(tmp_path: Path):
    """A second campaign on a directory in use refuses to start; the lock goes with the first."""
    with campaign.exclusive_campaign(tmp_path):
        with pytest.raises(DFTError, match="another campaign is running"):
            run_many({"si": si2()}, tmp_path, protocol=LOW_PROTOCOL, progress=False)
        assert not list(tmp_path.glob("si.*"))
    with campaign.exclusive_campaign(tmp_path):
        pass


def test_worker_over_the_memory_limit_is_killed(tmp_path: Path):
    """A Dask worker's memory limit does not see GPAW (a child process): run_worker enforces it itself."""
    hog = tmp_path / "hog-python"
    hog.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'b = b\"x\" * (400 * 2**20); import time; time.sleep(60)'\n")
    hog.chmod(hog.stat().st_mode | stat.S_IEXEC)
    job = build_job(si2(), tmp_path / "si.npz", LOW_PROTOCOL, "si")
    start = time.monotonic()
    with pytest.raises(DFTError, match=r"memory limit: 0\.\d\d GiB > 0\.20 GiB"):
        run_worker(job, timeout=60, python=str(hog), memory_limit=200 * 2**20)
    assert time.monotonic() - start < 30


@pytest.mark.slow
def test_cancel_kills_running_gpaw_and_records_nothing(tmp_path: Path):
    import psutil

    _needs_gpaw()
    structures = {"si": si2(), "si-b": si2().copy()}
    structures["si-b"].scale_lattice(si2().volume * 1.05)
    cancel = threading.Event()
    me = psutil.Process()

    def gpaw_running() -> list:
        return [p for p in me.children(recursive=True) if "worker.py" in " ".join(p.cmdline())]

    def trip() -> None:
        end = time.monotonic() + 120
        while time.monotonic() < end and not gpaw_running():
            time.sleep(0.05)
        cancel.set()

    threading.Thread(target=trip, daemon=True).start()
    start = time.monotonic()
    summary = run_many(structures, tmp_path, workers=1, protocol=LOW_PROTOCOL, cancel=cancel, progress=False)
    assert sorted(summary.cancelled) == ["si", "si-b"] and not summary.done and not summary.failed
    assert not list(tmp_path.glob("*.npz")) and not list(tmp_path.glob("*.failed")) and not gpaw_running()
    assert time.monotonic() - start < 60


@pytest.mark.slow
def test_attach_to_a_running_cluster_by_address(tmp_path: Path):
    """``scheduler=ADDRESS`` sends the tasks to that cluster, leaves it running, and a relative out_dir is
    given to the workers as an absolute path."""
    from distributed import Client, LocalCluster

    from mlcm_core.dft.engine import record_from_npz

    _needs_gpaw()
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster:
        addr = cluster.scheduler_address
        worker_addr = next(iter(cluster.scheduler_info["workers"]))
        os.chdir(tmp_path)
        try:
            summary = run_many({"si": si2()}, "out", protocol=LOW_PROTOCOL, progress=False, scheduler=addr)
        finally:
            os.chdir(ROOT)
        assert summary.done == ["si"] and summary.ran_on["si"][0] == worker_addr
        with Client(addr) as client:  # still there, with its worker
            assert list(client.scheduler_info()["workers"]) == [worker_addr]
    rec = record_from_npz(tmp_path / "out" / "si.npz", "si", si2(), protocol=LOW_PROTOCOL)
    assert 0.3 < rec.labels["band_gap_gpaw_pbe"] < 0.9 and np.isfinite(rec.dos.total).all()


def test_cli_passes_the_scheduler_address(monkeypatch, tmp_path: Path, capsys):
    from mlcm_core.cli import main
    from mlcm_core.dft import engine
    from mlcm_core.dft.engine import RunSummary

    calls = []

    def fake_run_many(structures, out, **kwargs):
        calls.append((sorted(structures), out, kwargs))
        return RunSummary(done=sorted(structures))

    monkeypatch.setattr(engine, "run_many", fake_run_many)
    monkeypatch.setattr(engine, "gpaw_available", lambda: None)
    store = ROOT / "precomputed" / "dataset"
    assert main(["dft", "run", "--store", str(store), "--out", str(tmp_path), "--limit", "2", "--max-sites", "2",
                 "--scheduler", "tcp://10.0.0.5:8786"]) == 0
    ids, out, kwargs = calls[-1]
    assert len(ids) == 2 and out == tmp_path and kwargs["scheduler"] == "tcp://10.0.0.5:8786"
    assert "done 2, failed 0" in capsys.readouterr().out
    monkeypatch.setattr("mlcm_core.cli._density_backfill_pool", lambda store: {"x": si2()})
    assert main(["dft", "backfill-density", "--out", str(tmp_path), "--scheduler", "tcp://h:1"]) == 0
    assert calls[-1][0] == ["x"] and calls[-1][2]["scheduler"] == "tcp://h:1" and calls[-1][2]["stages"] == "scf"


def test_slurm_job_script_for_a_gpaw_campaign():
    """The docs/scale.md SLURM cluster, checked without SLURM: its job script asks for one node's cores and
    memory, pins BLAS to one thread, and starts one single-threaded Dask worker per core."""
    pytest.importorskip("dask_jobqueue")
    cluster = slurm_cluster(cores=16, memory="64GB", walltime="04:00:00", queue="compute", account="matsci",
                            python="/opt/mlcm/.venv/bin/python", setup=("source /opt/mlcm/.venv/bin/activate",))
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    lines = script.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    for directive in ("#SBATCH -p compute", "#SBATCH -A matsci", "#SBATCH -n 1", "#SBATCH --cpus-per-task=16",
                      "#SBATCH --mem=60G", "#SBATCH -t 04:00:00"):
        assert directive in lines, (directive, script)
    assert "export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1" in lines
    assert "source /opt/mlcm/.venv/bin/activate" in lines
    command = lines[-1]
    assert command.startswith("/opt/mlcm/.venv/bin/python -m distributed.cli.dask_worker tcp://"), command
    assert "--nthreads 1" in command and "--nworkers 16" in command and "--memory-limit 3.73GiB" in command
    assert lines.index("source /opt/mlcm/.venv/bin/activate") < len(lines) - 1
