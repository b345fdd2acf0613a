"""Faults: kill -9 in the middle of pre-training and of a DFT run, and a corrupted file in a store.

(a) ``mlcm pretrain`` is SIGKILLed right after its first checkpoint appears; ``--resume`` must continue at
    that checkpoint's step: the log holds every step exactly once, the history before the checkpoint is kept,
    and the final checkpoint loads.
(b) ``run_many`` (the engine behind ``mlcm dft run``) is SIGKILLed while its third material is in flight; the
    worker must not outlive it (it enforces no timeout of its own), a restart recomputes only the material that
    was in flight, every result .npz loads, and temporary files never count as results (also for ``mlcm dft
    ingest``).
(c) a corrupted file in a copy of a store: opening (and ``mlcm data info``) names that file.
(d) one worker process of the campaign's Dask LocalCluster is SIGKILLed while its material is in flight: Dask
    reruns that task on another worker, every material ends exactly once, nothing half-written is left, and a
    rerun does nothing new.

(a), (b) and (d) start real subprocesses (about 20-40 s each on 2 shared cores); everything runs in tmp_path.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import skip_unless_ci

from .conftest import ROOT, TINY_MODEL, copy_tree, simple_structures, tree_digest


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return env


def _wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None and not predicate():
            out = proc.stdout.read().decode(errors="replace")[-3000:] if proc.stdout else ""
            pytest.fail(f"process exited ({proc.returncode}) before {what}:\n{out}")
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL one process we started (by its pid) and reap it."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


# ---- (a) pre-training ------------------------------------------------------------------------------


def _log_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_kill9_during_pretrain_then_resume_continues_at_the_checkpoint(tiny_store, tmp_path):
    from mlcm_core.models.multimodal import MultimodalModel
    from mlcm_core.models.checkpoint import latest_checkpoint, read_checkpoint_info
    from mlcm_core.train.config import TrainConfig

    run, epochs = tmp_path / "run", 10
    config = TrainConfig(model="cpu", model_overrides=TINY_MODEL, epochs=epochs, batch_size=4, lr=3e-3, warmup_steps=2,
                         seed=1, log_every=1, checkpoint_every=2, keep_last=0, device="cpu",
                         graph_cache_dir=str(tmp_path / "graphs"))
    config.to_yaml(tmp_path / "tiny.yaml")
    cmd = [sys.executable, "-m", "mlcm_core.cli", "pretrain", "--config", str(tmp_path / "tiny.yaml"),
           "--store", str(tiny_store.root), "--out", str(run)]

    proc = subprocess.Popen(cmd, env=_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: latest_checkpoint(run) is not None, 240, proc, "the first checkpoint")
        assert proc.poll() is None, "the run finished before it could be killed"
    finally:
        _kill(proc)
    assert proc.returncode == -signal.SIGKILL
    killed_at = read_checkpoint_info(latest_checkpoint(run)).step
    rows_at_kill = [r for r in _log_rows(run) if int(r["step"]) <= killed_at]

    resumed = subprocess.run([*cmd, "--resume"], check=False, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    final = read_checkpoint_info(latest_checkpoint(run))
    total = final.extra["total_steps"]
    assert final.step == total and final.epoch == epochs
    assert 0 < killed_at < total, (killed_at, total)
    print(f"killed at checkpoint step {killed_at} of {total}; log rows then: {len(rows_at_kill)}")
    rows = _log_rows(run)
    train_steps = [int(r["step"]) for r in rows if r["phase"] == "train"]
    assert train_steps == list(range(1, total + 1)), "duplicate or missing steps in log.csv after the resume"
    assert [int(r["epoch"]) for r in rows if r["phase"] == "val"] == list(range(1, epochs + 1))
    assert rows[: len(rows_at_kill)] == rows_at_kill, "the history up to the checkpoint was rewritten"
    first_new = rows[len(rows_at_kill)]
    assert int(first_new["step"]) in (killed_at, killed_at + 1)  # a val row of step k, or train step k + 1
    model = MultimodalModel.from_checkpoint(final.path)
    assert model.config.embed_dim == 16
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert all(latest_checkpoint(run).name != name for name in leftovers)


# ---- (b) DFT run ----------------------------------------------------------------------------------

DFT_IDS = ("mp-test-al", "mp-test-li", "mp-test-nial")  # ~2 s, ~2 s, then ~10 s (spin-polarized) at LOW settings
IN_FLIGHT = "mp-test-nial"  # the dearest runs last: it is the one killed

_RUNNER = textwrap.dedent("""
    import sys
    from tests.hardening.conftest import simple_structures
    from mlcm_core.dft.engine import run_many
    from mlcm_core.dft.protocol import LOW_PROTOCOL
    ids = sys.argv[2:]
    structures = {k: v for k, v in simple_structures().items() if k in ids}
    s = run_many(structures, sys.argv[1], workers=1, protocol=LOW_PROTOCOL, progress=False, timeout=300)
    print("done", s.done, "skipped", s.skipped, "failed", s.failed)
""")


def _descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.slow
def test_kill9_during_dft_run_loses_only_the_material_in_flight(tiny_store, tmp_path, monkeypatch, capsys):
    import psutil

    from mlcm_core.dft.engine import gpaw_available, record_from_npz, run_many
    from mlcm_core.dft.protocol import LOW_PROTOCOL

    reason = gpaw_available()
    if reason:
        skip_unless_ci(f"no GPAW: {reason}")
    out = tmp_path / "dft"
    proc = subprocess.Popen([sys.executable, "-c", _RUNNER, str(out), *DFT_IDS], env=_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    workers: list = []

    def results() -> list[Path]:
        return sorted(p for p in out.glob("*.npz") if not p.name.startswith("."))

    try:  # kill when the two cheap materials are done and the third has started (its GPAW log exists)
        _wait_for(lambda: (out / "logs" / f"{IN_FLIGHT}.txt").exists(), 300, proc, f"{IN_FLIGHT} to start")
        workers = _descendants(proc.pid)  # the GPAW worker in flight (and its MPI helper)
        assert sorted(p.stem for p in results()) == sorted(set(DFT_IDS) - {IN_FLIGHT})
        assert any("worker.py" in " ".join(w.cmdline()) for w in workers)
    finally:
        _kill(proc)
    try:  # the worker notices its parent is gone (it would otherwise run on with no timeout)
        _gone, alive = psutil.wait_procs(workers, timeout=5)
        assert not alive, f"workers outlived the killed run by > 5 s: {[p.pid for p in alive]}"
    finally:
        for w in workers:  # only processes this test started
            try:
                w.kill()
            except psutil.NoSuchProcess:
                pass
    assert not (out / f"{IN_FLIGHT}.npz").exists()
    before = {p.stem: p.read_bytes() for p in results()}
    # what a worker killed while writing leaves: a hidden temporary file, never a result
    (out / ".tmp-killed.npz").write_bytes(next(iter(before.values()))[:1000])

    structures = {k: v for k, v in simple_structures().items() if k in DFT_IDS}
    summary = run_many(structures, out, workers=1, protocol=LOW_PROTOCOL, progress=False, timeout=300)
    assert sorted(summary.skipped) == sorted(before) and summary.done == [IN_FLIGHT] and not summary.failed
    assert all((out / f"{k}.npz").read_bytes() == v for k, v in before.items()), "a finished result was recomputed"
    assert sorted(p.stem for p in results()) == sorted(DFT_IDS)
    for p in results():
        rec = record_from_npz(p, p.stem, structures[p.stem], protocol=LOW_PROTOCOL)
        assert rec.dos.total.shape == (601,) and rec.density.grid.shape == (32, 32, 32)

    # mlcm dft ingest takes the three results and nothing else (cwd = tmp: its failure list is relative)
    from mlcm_core.cli import main
    from mlcm_core.data.store import DatasetStore

    store = copy_tree(tiny_store.root, tmp_path / "store")
    monkeypatch.chdir(tmp_path)
    assert main(["dft", "ingest", "--results", str(out), "--store", str(store)]) == 0
    assert "added 3 materials" in capsys.readouterr().out
    s = DatasetStore.open(store)
    newest = s.manifest["shards"][-1]
    assert newest["n_rows"] == 3 and newest["name"].startswith("gpaw-")
    assert set(s.table.loc[s.table["dos_source"] == "gpaw-engine", "id"]) == set(DFT_IDS)


# ---- (c) a corrupted file in a copy of a store --------------------------------------------------------


@pytest.mark.parametrize("victim", ["materials.parquet", "arrays.zarr.zip"])
def test_corrupted_store_file_is_named_on_open(tiny_store, tmp_path, victim, capsys):
    from mlcm_core.cli import main
    from mlcm_core.data.store import ChecksumError, DatasetStore

    store = copy_tree(tiny_store.root, tmp_path / "store")
    path = store / "shards" / "fixture" / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    before = tree_digest(store)
    with pytest.raises(ChecksumError, match=f"checksum mismatch for {path}"):
        DatasetStore.open(store)
    assert main(["data", "info", str(store)]) == 2
    assert f"checksum mismatch for {path}" in capsys.readouterr().err
    assert tree_digest(store) == before  # opening never "repairs" or rewrites anything
    # the intact original still opens, and the manifest of the copy still says what the file should be
    assert DatasetStore.open(tiny_store.root).info()["materials"] == 16
    assert json.loads((store / "manifest.json").read_text())["shards"][0]["files"][f"shards/fixture/{victim}"]


# ---- (d) a Dask worker of a campaign ------------------------------------------------------------------

CAMPAIGN_IDS = ("mp-test-al", "mp-test-li", "mp-test-c", "mp-test-cu", "mp-test-w", "mp-test-si")  # ~2-3 s each


@pytest.mark.slow
def test_kill9_of_a_dask_worker_reruns_its_material_elsewhere(tmp_path):
    import threading

    import psutil

    from mlcm_core.dft.engine import gpaw_available, record_from_npz, run_many
    from mlcm_core.dft.protocol import LOW_PROTOCOL

    reason = gpaw_available()
    if reason:
        skip_unless_ci(f"no GPAW: {reason}")
    out = tmp_path / "dft"
    structures = {k: v for k, v in simple_structures().items() if k in CAMPAIGN_IDS}
    me = psutil.Process()
    killed: dict = {}

    def in_flight() -> tuple | None:
        """(GPAW process, its Dask worker, material id) of a material running with another already done."""
        if not any(out.glob("*.npz")):
            return None
        for proc in me.children(recursive=True):
            try:
                if "worker.py" not in " ".join(proc.cmdline()):
                    continue
                logs = [Path(f.path) for f in proc.open_files() if Path(f.path).parent == out / "logs"]
                worker = proc.parent()
            except psutil.NoSuchProcess:
                continue
            if logs and worker is not None and worker.ppid() == me.pid and not (out / f"{logs[0].stem}.npz").exists():
                return proc, worker, logs[0].stem
        return None

    def killer() -> None:  # kills one worker process this test's cluster started, by its pid
        end = time.monotonic() + 300
        while time.monotonic() < end:
            found = in_flight()
            if found:
                gpaw, worker, mid = found
                os.kill(worker.pid, signal.SIGKILL)
                killed.update(gpaw=gpaw, pid=worker.pid, id=mid)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    summary = run_many(structures, out, workers=2, protocol=LOW_PROTOCOL, progress=False, timeout=300)
    thread.join(timeout=5)
    assert killed, "no worker was killed: the campaign ended before a material was in flight"
    _gone, alive = psutil.wait_procs([killed["gpaw"]], timeout=5)
    assert not alive, "the killed worker's GPAW process outlived it"

    # every material ended exactly once, the killed one on another worker process
    assert sorted(summary.done) == sorted(CAMPAIGN_IDS) and len(summary.done) == len(CAMPAIGN_IDS)
    assert not summary.failed and not summary.cancelled and not summary.skipped
    assert killed["id"] in summary.done and summary.ran_on[killed["id"]][1] != killed["pid"]
    assert killed["pid"] not in {pid for _, pid in summary.ran_on.values()}
    # nothing half-written: one loadable result per material and nothing else
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == sorted(f"{k}.npz" for k in CAMPAIGN_IDS)
    for k in CAMPAIGN_IDS:
        rec = record_from_npz(out / f"{k}.npz", k, structures[k], protocol=LOW_PROTOCOL)
        assert rec.dos.total.shape == (601,) and rec.density.grid.shape == (32, 32, 32)

    before = {p.name: p.read_bytes() for p in out.glob("*.npz")}
    start = time.monotonic()
    again = run_many(structures, out, workers=2, protocol=LOW_PROTOCOL, progress=False, timeout=300)
    assert sorted(again.skipped) == sorted(CAMPAIGN_IDS) and not again.done and not again.failed
    assert time.monotonic() - start < 5  # nothing to do: no cluster is even started
    assert {p.name: p.read_bytes() for p in out.glob("*.npz")} == before
