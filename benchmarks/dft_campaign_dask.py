"""The same 20 cheap GPAW materials (LOW_PROTOCOL, 1-2 atom cells) on the old thread pool and on Dask.

Run: PYTHONPATH=. python benchmarks/dft_campaign_dask.py [--workers 2] [--n 20] [--repeats 2]. Needs GPAW (Debian's
/usr/bin/python3). Prints, as JSON:

* the wall time and throughput (materials/s) of the thread pool that ``run_many`` used before the Dask
  campaign (reimplemented here as the baseline: a ThreadPoolExecutor of ``workers`` threads, each running
  ``run_worker``, cheapest first) and of ``run_many`` on a ``workers``-process LocalCluster;
* the throughput ratio Dask / pool, end to end (cluster start and stop included) and steady-state (without
  them: a long campaign's view), and the cluster's start+stop seconds;
* the scheduling overhead per task: the round trip of a no-op task on the same LocalCluster (submit ->
  result), and the extra wall seconds per material of the Dask campaign beyond the pool's.

Each run writes into its own temporary directory, so every run computes every material. With
``--repeats 2`` the order is pool, Dask, Dask, pool (ABBA) and the times are averaged, so a load that
drifts during the benchmark weighs on both alike. On a shared machine the numbers scatter with the load of
other processes; compare within one run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from pymatgen.core import Lattice, Structure

from mlcm_core.dft.engine import build_job, estimate_cost, gpaw_available, run_many, run_worker
from mlcm_core.dft.protocol import LOW_PROTOCOL, DFTProtocol


def _prim(kind: str, species: list[str], a: float) -> Structure:
    fcc = [[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]]
    if kind == "bcc":
        return Structure(Lattice([[-a / 2, a / 2, a / 2], [a / 2, -a / 2, a / 2], [a / 2, a / 2, -a / 2]]),
                         species, [[0, 0, 0]])
    if kind == "fcc":
        return Structure(Lattice(fcc), species, [[0, 0, 0]])
    frac = [[0, 0, 0], [0.25, 0.25, 0.25]] if kind == "diamond" else [[0, 0, 0], [0.5, 0.5, 0.5]]
    return Structure(Lattice(fcc), species, frac)


CANDIDATES = {  # non-magnetic, 1-2 atoms: a few seconds each at LOW_PROTOCOL
    "al": ("fcc", ["Al"], 4.04), "cu": ("fcc", ["Cu"], 3.61), "ag": ("fcc", ["Ag"], 4.09),
    "au": ("fcc", ["Au"], 4.08), "pb": ("fcc", ["Pb"], 4.95), "li": ("bcc", ["Li"], 3.49),
    "na": ("bcc", ["Na"], 4.23), "k": ("bcc", ["K"], 5.23), "w": ("bcc", ["W"], 3.16),
    "mo": ("bcc", ["Mo"], 3.15), "ta": ("bcc", ["Ta"], 3.30), "c": ("diamond", ["C", "C"], 3.57),
    "si": ("diamond", ["Si", "Si"], 5.47), "ge": ("diamond", ["Ge", "Ge"], 5.66),
    "mgo": ("rocksalt", ["Mg", "O"], 4.21), "nacl": ("rocksalt", ["Na", "Cl"], 5.64),
    "lif": ("rocksalt", ["Li", "F"], 4.03), "kcl": ("rocksalt", ["K", "Cl"], 6.29),
    "cao": ("rocksalt", ["Ca", "O"], 4.81), "lih": ("rocksalt", ["Li", "H"], 4.08),
    "naf": ("rocksalt", ["Na", "F"], 4.63), "sic": ("diamond", ["Si", "C"], 4.36),
}


def cheap_materials(n: int, protocol: DFTProtocol = LOW_PROTOCOL) -> dict[str, Structure]:
    """The n cheapest non-spin-polarised candidates by the engine's own cost estimate."""
    costs = []
    for mid, (kind, species, a) in CANDIDATES.items():
        st = _prim(kind, species, a)
        try:
            est = estimate_cost(st, protocol)
        except Exception:  # noqa: BLE001 - a missing setup just drops the candidate
            continue
        if not est.spin:
            costs.append((est.seconds, mid, st))
    costs.sort(key=lambda c: (c[0], c[1]))
    return {mid: st for _, mid, st in costs[:n]}


def old_pool(structures: dict[str, Structure], out_dir: Path, workers: int, protocol: DFTProtocol) -> float:
    """The campaign pool run_many used before Dask: threads, each driving one GPAW subprocess, cheapest first."""
    order = sorted(structures, key=lambda m: estimate_cost(structures[m], protocol).seconds)
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_worker, build_job(structures[m], out_dir / f"{m}.npz", protocol, m,
                                                     out_dir / "logs" / f"{m}.txt"), 600) for m in order]
        for fut in as_completed(futures):
            fut.result()
    return time.perf_counter() - start


def _noop(x: int) -> int:
    return x


def dask_overheads(workers: int, n_tasks: int = 200) -> dict[str, float]:
    """Cluster start+stop seconds, and the submit->result round trip of a no-op task, one at a time."""
    from mlcm_core.dft.campaign import campaign_client

    t0 = time.perf_counter()
    with campaign_client(workers) as client:
        t_up = time.perf_counter() - t0
        client.submit(_noop, -1, pure=False).result()  # warm the function cache
        t1 = time.perf_counter()
        for i in range(n_tasks):
            client.submit(_noop, i, pure=False).result()
        roundtrip = (time.perf_counter() - t1) / n_tasks
        t2 = time.perf_counter()
    t_down = time.perf_counter() - t2
    return {"cluster_start_s": t_up, "cluster_stop_s": t_down, "noop_task_roundtrip_ms": roundtrip * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each; 2 or more: ABBA order, averaged")
    args = parser.parse_args()
    reason = gpaw_available()
    if reason:
        raise SystemExit(reason)
    structures = cheap_materials(args.n)
    if len(structures) < args.n:
        raise SystemExit(f"only {len(structures)} candidates have PBE setups")
    est = sum(estimate_cost(s, LOW_PROTOCOL).seconds for s in structures.values())
    print(f"{len(structures)} materials ({', '.join(structures)}), estimated {est:.0f} s on one core", flush=True)
    over = dask_overheads(args.workers)
    pool_times: list[float] = []
    dask_times: list[float] = []
    order = ["pool", "dask", "dask", "pool"] * ((args.repeats + 1) // 2)
    with tempfile.TemporaryDirectory() as tmp:
        for i, kind in enumerate(order[: 2 * args.repeats]):
            out = Path(tmp) / f"{kind}-{i}"
            if kind == "pool":
                pool_times.append(old_pool(structures, out, args.workers, LOW_PROTOCOL))
            else:
                t0 = time.perf_counter()
                summary = run_many(structures, out, workers=args.workers, protocol=LOW_PROTOCOL, progress=False,
                                   timeout=600)
                dask_times.append(time.perf_counter() - t0)
                assert sorted(summary.done) == sorted(structures), summary
            print(f"{kind}: {(pool_times if kind == 'pool' else dask_times)[-1]:.1f} s", flush=True)
    n = len(structures)
    t_pool, t_dask = sum(pool_times) / len(pool_times), sum(dask_times) / len(dask_times)
    steady = t_dask - over["cluster_start_s"] - over["cluster_stop_s"]
    result: dict[str, Any] = {
        "materials": n, "workers": args.workers, "repeats": args.repeats,
        "pool_s": [round(x, 1) for x in pool_times], "dask_s": [round(x, 1) for x in dask_times],
        "pool_materials_per_s": round(n / t_pool, 3), "dask_materials_per_s": round(n / t_dask, 3),
        "throughput_ratio_end_to_end": round(t_pool / t_dask, 3),
        "throughput_ratio_steady_state": round(t_pool / steady, 3),
        "cluster_start_s": round(over["cluster_start_s"], 2), "cluster_stop_s": round(over["cluster_stop_s"], 2),
        "noop_task_roundtrip_ms": round(over["noop_task_roundtrip_ms"], 2),
        "extra_wall_s_per_material_steady": round((steady - t_pool) / n, 3),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
