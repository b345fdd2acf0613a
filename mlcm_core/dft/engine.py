"""Run the GPAW protocol on pymatgen structures: cost estimate, worker subprocess, npz -> MaterialRecord.

GPAW only imports under Debian's /usr/bin/python3, so every calculation is a subprocess running
worker.py; this module (project interpreter) prepares the job, enforces the timeout, can cancel, and
turns the worker's .npz into the project's MaterialRecord. Outputs live in one directory, one
`<id>.npz` or `<id>.failed` per material, which is what makes `run_many` resumable. `run_many` runs a
campaign as Dask tasks (mlcm_core/dft/campaign.py): on a LocalCluster, or on a running cluster by address.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from mlcm_core.data.conventions import DENSITY_GRID, DOS_ENERGIES
from mlcm_core.data.record import DensityData, DOSData, MaterialRecord
from mlcm_core.dft.protocol import PROTOCOL, DFTProtocol
from mlcm_core.io import atomic_write_text

__all__ = [
    "GPAW_PYTHON",
    "WORKER",
    "Cancelled",
    "CostEstimate",
    "DFTError",
    "RunSummary",
    "build_job",
    "compute",
    "density_from_npz",
    "estimate_cost",
    "gpaw_available",
    "missing_setups",
    "order_pool",
    "record_from_npz",
    "run_many",
    "run_worker",
    "setup_valence",
    "write_failed",
]

GPAW_PYTHON = "/usr/bin/python3"
WORKER = Path(__file__).with_name("worker.py")
SOURCE = "gpaw-engine"
# Seconds per unit of `work` = irreducible k-points x bands x plane waves x (1 + bands/64), calibrated on
# 24 full-protocol runs on this 2-core machine, one thread per worker (docs/dft.md); each stage's iteration
# count is folded in. Runs scatter by about x1.8 around it: good for ordering and ETAs, not for deadlines.
SECONDS_PER_WORK_SCF = 1.5e-5
SECONDS_PER_WORK_DOS = 6.0e-6
SPIN_FACTOR = 7.0  # measured (5 magnetic cells): two channels, slower magnetic SCF, spin-split DOS run
SECONDS_OVERHEAD = 2.0


class DFTError(RuntimeError):
    """A material that could not be computed (worker error, timeout, missing setups)."""


class Cancelled(DFTError):
    """The run was cancelled; nothing is recorded so a later run retries it."""


# -- setups and cost ---------------------------------------------------------------------------
@cache
def setup_valence(element: str, setup_dir: str = PROTOCOL.setup_dir) -> float | None:
    """Valence electrons of the default PBE setup (from its XML header), None if there is no setup."""
    from mlcm_core.dft import worker

    if not (Path(setup_dir) / f"{element}.PBE.gz").exists():
        return None
    return worker.setup_valence(element, setup_dir)


def missing_setups(structure: Any, protocol: DFTProtocol = PROTOCOL) -> list[str]:
    """Elements of the structure without a default PBE setup in protocol.setup_dir."""
    return sorted({el.symbol for el in structure.composition.elements
                   if setup_valence(el.symbol, protocol.setup_dir) is None})


@dataclass(frozen=True)
class CostEstimate:
    """What a run will cost, known before it starts: sizes and an order-of-magnitude wall time."""

    nsites: int
    n_valence: float
    spin: bool
    hubbard: bool
    kpts_scf: tuple[int, int, int]
    kpts_dos: tuple[int, int, int]
    nk_scf_ibz: int
    nk_dos_ibz: int
    n_planewaves: int
    nbands_scf: int
    nbands_dos: int
    seconds: float

    def __str__(self) -> str:
        return (f"{self.nsites} sites, {self.n_valence:g} e, spin={'yes' if self.spin else 'no'}, "
                f"U={'yes' if self.hubbard else 'no'}, SCF k {self.kpts_scf} ({self.nk_scf_ibz} irr), "
                f"DOS k {self.kpts_dos} ({self.nk_dos_ibz} irr), ~{self.n_planewaves} PWs, "
                f"{self.nbands_dos} bands -> ~{_fmt_seconds(self.seconds)} on one core")


def _fmt_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else (f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h")


def _n_irreducible(structure: Any, mesh: tuple[int, int, int]) -> int:
    """Irreducible k-points as GPAW 22.8 counts them (symmetry tolerance 1e-4).

    spglib without its extra time-reversal reduction matched GPAW's own count on all 139 seed cells;
    with it, spglib undercounts non-centrosymmetric cells by ~1.6x.
    """
    import spglib

    cell = (structure.lattice.matrix, structure.frac_coords, [site.specie.Z for site in structure])
    try:
        mapping, _ = spglib.get_ir_reciprocal_mesh(list(mesh), cell, is_shift=[0, 0, 0],
                                                   is_time_reversal=False, symprec=1e-3)
        return len(set(mapping.tolist()))
    except Exception:  # noqa: BLE001 - spglib fails in several ways; assume no symmetry beyond k = -k
        return math.ceil(int(np.prod(mesh)) / 2)


def estimate_cost(structure: Any, protocol: DFTProtocol = PROTOCOL) -> CostEstimate:
    """Cost from sizes: plane waves x bands x irreducible k-points per stage, x7 when spin-polarised (measured).

    Uses the worker's own free-electron band count (all bands treated as valence-like), so the estimate
    grows with volume and electron count the way the real run does.
    """
    from mlcm_core.dft.worker import BOHR_A, HARTREE_EV

    symbols = [site.specie.symbol for site in structure]
    cell = structure.lattice.matrix
    missing = missing_setups(structure, protocol)
    if missing:
        raise DFTError(f"no PBE setup for {missing}")
    n_val = float(sum(setup_valence(s, protocol.setup_dir) or 0.0 for s in symbols))
    kscf, kdos = protocol.kpts_scf(cell), protocol.kpts_dos(cell)
    nks, nkd = _n_irreducible(structure, kscf), _n_irreducible(structure, kdos)
    vol = structure.volume / BOHR_A**3
    npw = int(vol * (2 * protocol.ecut_ev / HARTREE_EV) ** 1.5 / (6 * math.pi**2))
    ef0 = 0.5 * (3 * math.pi**2 * n_val / vol) ** (2 / 3)
    kmax = math.sqrt(2 * (ef0 + protocol.band_margin_ev / HARTREE_EV))
    nb_dos = math.ceil(1.2 * vol * kmax**3 / (6 * math.pi**2)) + 4
    nb_dos += max(4, math.ceil(0.1 * nb_dos))
    nb_scf = math.ceil(0.6 * n_val) + 4
    spin = protocol.spin_polarized(symbols)

    def work(nk: int, nb: int) -> float:
        return nk * nb * npw * (1 + nb / 64)

    stages = SECONDS_PER_WORK_SCF * work(nks, nb_scf) + SECONDS_PER_WORK_DOS * work(nkd, nb_dos)
    seconds = SECONDS_OVERHEAD + (SPIN_FACTOR if spin else 1.0) * stages
    return CostEstimate(len(symbols), n_val, spin, protocol.uses_hubbard(symbols), kscf, kdos, nks, nkd,
                        npw, nb_scf, nb_dos, float(seconds))


def order_pool(structures: dict[str, Any], max_sites: int = 10,
               protocol: DFTProtocol = PROTOCOL) -> list[tuple[str, CostEstimate]]:
    """Eligible pool (≤ max_sites, ordered, every element with a PBE setup), cheapest first."""
    pool = []
    for mid, st in structures.items():
        if len(st) > max_sites or not st.is_ordered or missing_setups(st, protocol):
            continue
        pool.append((mid, estimate_cost(st, protocol)))
    return sorted(pool, key=lambda item: (item[1].seconds, item[0]))


# -- running ---------------------------------------------------------------------------------------
STAGES = ("scf+dos", "scf")  # a full result, or the SCF and densities only (density backfill)


def build_job(structure: Any, out_path: str | Path, protocol: DFTProtocol = PROTOCOL,
              material_id: str = "", log_path: str | Path | None = None, stages: str = "scf+dos") -> dict[str, Any]:
    """The JSON job the worker reads: geometry, protocol dict, the per-material spin/U choices, the stages."""
    if stages not in STAGES:
        raise ValueError(f"stages must be one of {STAGES}, got {stages!r}")
    symbols = [site.specie.symbol for site in structure]
    return {
        "id": material_id, "cell": structure.lattice.matrix.tolist(), "symbols": symbols,
        "frac": structure.frac_coords.tolist(), "protocol": protocol.to_dict(),
        "setups": protocol.setups(symbols), "magmoms": protocol.magmoms(symbols),
        "out": str(out_path), "log": str(log_path) if log_path else None, "stages": stages,
    }


def gpaw_available(python: str = GPAW_PYTHON) -> str | None:
    """None when `python` imports gpaw, else the reason (used by tests to skip with a clear message)."""
    if not Path(python).exists():
        return f"{python} not found"
    proc = subprocess.run([python, "-c", "import gpaw, ase; print(gpaw.__version__)"], capture_output=True,
                          text=True, env=_worker_env(1), timeout=120, check=False)
    return None if proc.returncode == 0 else f"{python} cannot import gpaw: {proc.stderr.strip()[-300:]}"


def _worker_env(threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


def run_worker(job: dict[str, Any], timeout: float | None = None, cancel: threading.Event | None = None,
               python: str = GPAW_PYTHON, memory_limit: int | None = None) -> Path:
    """Run worker.py on `job` in its own process group; kill the group on timeout, cancel or memory limit.

    ``memory_limit`` (bytes) caps the resident memory of the worker's process tree: a Dask worker's limit
    only covers the worker process itself, and GPAW's memory lives in this subprocess.
    Raises DFTError (with the worker's stderr tail) on failure, timeout or memory, Cancelled on cancel.
    """
    threads = int(job["protocol"].get("threads", 1))
    timeout = timeout or float(job["protocol"].get("timeout_s", PROTOCOL.timeout_s))
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([python, str(WORKER), "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=err, env=_worker_env(threads), start_new_session=True)
        _inherit_niceness(proc.pid)
        assert proc.stdin is not None
        proc.stdin.write(json.dumps({**job, "parent_pid": os.getpid()}).encode())  # the worker exits if we die
        proc.stdin.close()
        start, reason, polls = time.monotonic(), None, 0
        while proc.poll() is None:
            if cancel is not None and cancel.is_set():
                reason = "cancelled"
            elif time.monotonic() - start > timeout:
                reason = f"timeout after {timeout:.0f} s"
            elif memory_limit and polls % 5 == 0 and (rss := _tree_rss(proc.pid)) > memory_limit:
                reason = f"memory limit: {rss / 2**30:.2f} GiB > {memory_limit / 2**30:.2f} GiB"
            if reason:
                _kill_group(proc)
                break
            polls += 1
            time.sleep(0.2)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if reason == "cancelled":
        raise Cancelled(job.get("id", ""))
    if reason:
        raise DFTError(f"{reason}\n{stderr[-4000:]}")
    if proc.returncode != 0 or not Path(job["out"]).exists():
        raise DFTError(f"worker exit code {proc.returncode}\n{stderr[-8000:]}")
    return Path(job["out"])


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and its descendants (GPAW may start helpers); 0 once it is gone."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += p.memory_info().rss
    return total


def _inherit_niceness(pid: int) -> None:
    """Keep ``nice mlcm dft run`` nice: the worker's new session is its own scheduler autogroup, where a
    process's nice value only ranks it within that group, so a niced campaign would still take a full share
    of the CPU from an interactive session. Give the worker's autogroup the parent's niceness instead."""
    niceness = os.nice(0)
    if niceness > 0:
        with contextlib.suppress(OSError):  # no autogroups (kernel option off, other OS): plain nice applies
            Path(f"/proc/{pid}/autogroup").write_text(str(min(niceness, 19)))


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the worker's own process group (it was started with start_new_session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


DENSITY_CONVENTIONS = {
    "valence_plus_compensation": "VASP-CHGCAR-like valence density: GPAW valence pseudo density (no pseudo-core) "
                                 "plus electronic PAW compensation charges, Fourier-resampled to 32³ fractional grid",
    "smooth_pseudo": "GPAW smooth pseudo valence density (incl. smooth core, no PAW compensation), "
                     "Fourier-resampled to 32³ fractional grid",
}


def density_from_npz(z: Any, theory: str, structure: Any = None) -> DensityData:
    """The stored density of a worker/seed npz, with its convention (npz without the key: smooth pseudo).

    With the structure the npz was computed on, the grid is moved onto the crystal's canonical cell
    (``mlcm_core.data.density_frame``), as every density of known structure is stored.
    """
    from mlcm_core.data.density_frame import canonicalize

    grid = z["charge_density"]
    if grid.shape != (DENSITY_GRID,) * 3:
        raise DFTError(f"density grid {grid.shape}")
    kind = str(z["density_convention"]) if "density_convention" in z.files else "smooth_pseudo"
    integral = z["density_integral"] if "density_integral" in z.files else z["pseudo_integral"]
    density = DensityData(grid=grid, units="e/Å^3", theory=theory, convention=DENSITY_CONVENTIONS[kind],
                          integral=float(integral))
    return canonicalize(density, structure) if structure is not None else density


def record_from_npz(path: str | Path, material_id: str, structure: Any = None, source: str = SOURCE,
                    protocol: DFTProtocol | None = None) -> MaterialRecord:
    """MaterialRecord from a worker (or seed) npz: gap/energy/magmom labels, DOS and density.

    A density-only npz (stages "scf", the backfill) gives a record with the density alone and no structure:
    appended to the store, it replaces the material's earlier density and keeps everything else.
    """
    z = np.load(path)
    if protocol is None:
        protocol = DFTProtocol.from_dict(json.loads(str(z["protocol"]))) if "protocol" in z.files else PROTOCOL
    symbols = [site.specie.symbol for site in structure] if structure is not None else None
    theory = protocol.theory(symbols)
    if "dos" not in z.files:
        formula = structure.composition.reduced_formula if structure is not None else None
        return MaterialRecord(id=material_id, source=source, density=density_from_npz(z, theory, structure),
                              formula=formula,
                              provenance=f"{theory}; density backfill (SCF only); " +
                                         json.dumps({"file": Path(path).name, "seconds": float(z["seconds"])}))
    if not np.allclose(z["energy_grid"], DOS_ENERGIES):
        raise DFTError(f"{path}: energy grid differs from DOS_ENERGIES")
    gap = float(z["band_gap"])
    gap = gap if gap > protocol.gap_threshold_ev else 0.0  # the seed kept sub-threshold gaps (1e-5 eV)
    labels = {"band_gap_gpaw_pbe": gap, "total_energy_gpaw_pbe": float(z["total_energy"])}
    if "magmom" in z.files:
        labels["magmom_gpaw_pbe"] = float(z["magmom"])
    dos = DOSData(total=z["dos"], reference="vbm" if gap > protocol.gap_threshold_ev else "efermi",
                  theory=theory, broadening=("linear tetrahedra, " if protocol.dos_method == "tetrahedron" else "")
                  + f"Gaussian sigma {protocol.dos_sigma_ev:g} eV", band_gap=gap,
                  spin=z["dos_spin"] if "dos_spin" in z.files else None)
    density = density_from_npz(z, theory, structure)
    prov = {k: (z[k].tolist() if z[k].ndim else z[k].item()) for k in
            ("kpts_scf", "kpts_dos", "nbands", "band_top_min", "seconds", "n_valence") if k in z.files}
    prov["file"] = Path(path).name
    formula = structure.composition.reduced_formula if structure is not None else None
    return MaterialRecord(id=material_id, source=source, structure=structure, labels=labels, dos=dos,
                          density=density, provenance=f"{theory}; " + json.dumps(prov), formula=formula)


def compute(structure: Any, material_id: str, out_dir: str | Path, protocol: DFTProtocol = PROTOCOL,
            timeout: float | None = None, cancel: threading.Event | None = None) -> MaterialRecord:
    """One material end to end; reuses `<id>.npz` in out_dir if it is already there."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    npz = out_dir / f"{material_id}.npz"
    if not npz.exists():
        missing = missing_setups(structure, protocol)
        if missing:
            raise DFTError(f"no PBE setup for {missing}")
        job = build_job(structure, npz, protocol, material_id, out_dir / "logs" / f"{material_id}.txt")
        (out_dir / "logs").mkdir(exist_ok=True)
        run_worker(job, timeout, cancel)
    return record_from_npz(npz, material_id, structure, protocol=protocol)


@dataclass
class RunSummary:
    """Ids by outcome of one run_many call (skipped = already had an .npz or .failed)."""

    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    ran_on: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (Dask worker address, pid) that ended it


def write_failed(path: Path, text: str) -> None:
    """Record a failure atomically: a `.failed` is a result too (never retried by a resumed run)."""
    atomic_write_text(path, text)


def run_many(structures: dict[str, Any], out_dir: str | Path, workers: int = 1, timeout: float | None = None,
             protocol: DFTProtocol = PROTOCOL, cancel: threading.Event | None = None,
             progress: bool = True, stages: str = "scf+dos", scheduler: str | None = None,
             keep_order: bool = False) -> RunSummary:
    """Compute many materials cheapest first, resumably, as Dask tasks; failures become `<id>.failed`.

    Without ``scheduler`` a LocalCluster of ``workers`` processes runs the campaign (one thread each, a
    memory limit each, the caller's niceness); with one (``tcp://host:8786``) the tasks go to that running
    cluster, whose workers must see ``out_dir`` and import mlcm_core (docs/scale.md). Each material is one
    idempotent task (mlcm_core/dft/campaign.py): a task whose worker dies is rerun elsewhere by Dask and
    never records a material twice. Ids with an `.npz` or `.failed` are skipped; with nothing to do no
    cluster is started. ``stages="scf"`` computes the SCF and densities only (the density backfill).
    ``keep_order``: run in the order of ``structures`` instead of cheapest first.

    Results are collected as they finish. The tqdm bar counts estimated seconds, so its ETA accounts for
    materials getting dearer down the list; the Dask dashboard address is printed above it.
    Ctrl-C (or `cancel.set()`) kills running GPAW processes and records nothing for them. A second
    campaign on the same out_dir while one runs raises DFTError (mlcm_core.dft.campaign.exclusive_campaign).
    """
    from mlcm_core.dft import campaign

    out_dir = Path(out_dir).resolve()  # workers may run elsewhere, with another working directory
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    cancel = cancel or threading.Event()
    summary = RunSummary()
    todo: list[tuple[str, float]] = []
    for mid, st in structures.items():
        if any((out_dir / n).exists() for n in (f"{mid}.npz", f"{mid}.failed", f"{mid}.npz.failed")):
            summary.skipped.append(mid)
            continue
        try:
            todo.append((mid, estimate_cost(st, protocol).seconds))
        except DFTError as exc:
            write_failed(out_dir / f"{mid}.failed", f"DFTError: {exc}\n")
            summary.failed.append(mid)
    if not keep_order:  # else the caller's order (e.g. mlcm_core.dft.pool.diverse_order) is the priority
        todo.sort(key=lambda t: t[1])
    if not todo:
        return summary
    with campaign.exclusive_campaign(out_dir):
        _run_tasks(todo, structures, out_dir, workers, timeout, protocol, cancel, progress, stages, scheduler,
                   summary)
    return summary


def _run_tasks(todo: list[tuple[str, float]], structures: dict[str, Any], out_dir: Path, workers: int,
               timeout: float | None, protocol: DFTProtocol, cancel: threading.Event, progress: bool, stages: str,
               scheduler: str | None, summary: RunSummary) -> None:
    """Submit one Dask task per material (cheapest first) and file each outcome as it finishes."""
    from tqdm import tqdm

    from mlcm_core.dft import campaign

    campaign.remove_stale_temporaries(out_dir)  # no writer of ours is alive: the campaign holds the lock
    token = uuid.uuid4().hex[:12]
    bar = tqdm(total=round(sum(t for _, t in todo)), unit="est-s", disable=not progress, smoothing=0.1)
    with campaign.campaign_client(workers, scheduler) as client:
        if progress:
            n = len(client.scheduler_info(n_workers=-1).get("workers", {}))
            bar.write(f"Dask: {n} workers at {client.scheduler.address}; dashboard {client.dashboard_link}")
        futures: dict[Any, tuple[str, float]] = {}
        for rank, (mid, est) in enumerate(todo):  # cheapest first: Dask runs higher priority first
            job = build_job(structures[mid], out_dir / f"{mid}.npz", protocol, mid,
                            out_dir / "logs" / f"{mid}.txt", stages=stages)
            fut = client.submit(campaign.material_task, job, timeout, token, key=f"mlcm-dft-{token}-{rank}",
                                priority=len(todo) - rank, pure=False)
            futures[fut] = (mid, est)
        pending = set(futures)
        try:
            while pending:
                if cancel.is_set():
                    _cancel_campaign(client, token, pending)
                    break
                finished = [f for f in pending if f.done()]
                if not finished:
                    time.sleep(0.05)
                    continue
                for fut in finished:
                    pending.discard(fut)
                    mid, est = futures[fut]
                    _collect(fut, mid, out_dir, summary)
                    bar.update(round(est))
                    bar.set_postfix(done=len(summary.done), failed=len(summary.failed))
        except KeyboardInterrupt:
            cancel.set()
            _cancel_campaign(client, token, pending)
            raise
        finally:
            for fut in pending:  # cancelled, or still running when a Ctrl-C came: nothing recorded
                mid, _ = futures[fut]
                if _collect(fut, mid, out_dir, summary) is None:
                    summary.cancelled.append(mid)
            with contextlib.suppress(Exception):
                client.run(campaign.forget_cancel, token)
            bar.close()
    campaign.remove_stale_temporaries(out_dir)  # every task has ended: what a killed writer left is stale


def _collect(fut: Any, mid: str, out_dir: Path, summary: RunSummary) -> str | None:
    """File one finished task's outcome in the summary; None while it has not finished."""
    from mlcm_core.dft.campaign import TaskOutcome

    if not fut.done():
        return None
    if fut.cancelled():
        summary.cancelled.append(mid)
        return "cancelled"
    exc = fut.exception()
    if exc is None:
        outcome: TaskOutcome = fut.result()
        summary.ran_on[mid] = (outcome.worker, outcome.pid)
        (summary.done if outcome.status == "done" else summary.failed).append(mid)
        return outcome.status
    if isinstance(exc, Cancelled):
        summary.cancelled.append(mid)
        return "cancelled"
    # what the task could not record itself: e.g. KilledWorker (it took down `allowed-failures` workers)
    write_failed(out_dir / f"{mid}.failed", f"{type(exc).__name__}: {exc}\n")
    summary.failed.append(mid)
    return "failed"


def _cancel_campaign(client: Any, token: str, pending: set[Any], wait_s: float = 30.0) -> None:
    """Stop a campaign: queued tasks are dropped, running ones kill their GPAW process group and end."""
    from mlcm_core.dft import campaign

    with contextlib.suppress(Exception):
        client.run(campaign.set_cancel, token)
    running = _running_keys(client)
    client.cancel([f for f in pending if f.key not in running])
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and not all(f.done() for f in pending):
        time.sleep(0.1)


def _running_keys(client: Any) -> set[str]:
    """Keys of tasks executing on some worker now (their GPAW run must end by the cancel flag, not be dropped)."""
    try:
        processing = client.processing()
    except Exception:  # noqa: BLE001 - a lost scheduler: nothing to keep
        return set()
    return {str(k) for keys in processing.values() for k in keys}
