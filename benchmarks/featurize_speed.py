"""Featurizer speed on real Materials Project structures, ours vs PotNet's reference potential sums.

    PYTHONPATH=. python benchmarks/featurize_speed.py [--n 500] [--potnet PATH] [--encoder]

Structures: a seeded random sample of the MP structures in ../shared/data/sources/matminer-0.3.9/flla_2015.csv.gz
(parsing excluded from the timings). ``--potnet`` names a PotNet checkout (the folder with algorithm.py, whose
functions/ extension has been built as its README says); its featurizer's potential step is then timed on the
same structures exactly as its data.py calls it: for all N² ordered atom pairs, zeta(p=0.5), zeta(p=3) and
exp(α=3) with R=3 (PotNet's jarvis neighbour graph is not timed, which favours the reference).
``--encoder`` also times CrystalEncoder training steps (batch 64) on the featurized graphs and extrapolates
10k structures × 10 epochs.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FLLA = ROOT.parent / "shared" / "data" / "sources" / "matminer-0.3.9" / "flla_2015.csv.gz"


def load_mp_structures(n: int, seed: int = 0, path: Path = FLLA):
    """(material_id, Structure) for a seeded random sample of n rows of the FLLA 2015 MP set."""
    import pandas as pd
    from pymatgen.core import Structure

    with gzip.open(path, "rt") as f:
        first = f.readline()
        if not first.startswith("# ref:"):
            f.seek(0)
        df = pd.read_csv(f)
    rows = np.random.default_rng(seed).choice(len(df), size=min(n, len(df)), replace=False)
    return [(df["material_id"].iat[r], Structure.from_dict(ast.literal_eval(df["structure"].iat[r]))) for r in rows]


def time_ours(structures, config) -> tuple[float, float, list]:
    from mlcm_core.featurize.crystal_graph import structure_to_graph

    for s in structures[:5]:
        structure_to_graph(s, config)  # warm-up (element table, imports)
    wall, cpu = time.perf_counter(), time.process_time()
    graphs = [structure_to_graph(s, config) for s in structures]
    return time.perf_counter() - wall, time.process_time() - cpu, graphs


def potnet_potentials(algorithm, structure, R: int = 3) -> np.ndarray:
    """What PotNet's data.py (load_infinite_graphs.atoms_to_graph) computes: all N² ordered pairs u, v."""
    n = len(structure)
    u = np.repeat(np.arange(n), n)
    v = np.tile(np.arange(n), n)
    cart = structure.cart_coords
    vecs = cart[u] - cart[v]
    lattice = structure.lattice.matrix.astype(np.double)
    return np.stack([getattr(algorithm, f)(vecs, lattice, param=p, R=R)
                     for f, p in zip(["zeta", "zeta", "exp"], [0.5, 3.0, 3.0], strict=True)], 1)


def import_potnet(path: str):
    sys.path.insert(0, str(Path(path).resolve()))
    import algorithm

    return algorithm


def time_encoder(graphs, preset: str, batch_size: int = 64, epochs: int = 2) -> tuple[float, float, int]:
    import torch

    from mlcm_core.featurize.crystal_graph import collate_graphs
    from mlcm_core.models.crystal import CrystalEncoder, CrystalEncoderConfig

    torch.manual_seed(0)
    model = CrystalEncoder(CrystalEncoderConfig.preset(preset)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = [collate_graphs(graphs[i : i + batch_size]) for i in range(0, len(graphs), batch_size)]

    def step(b):
        z = model(b)
        loss = z.pow(2).mean()  # stand-in loss: the cost is the encoder's forward + backward + AdamW step
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(batches[0])
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        for b in batches:
            step(b)
    return time.perf_counter() - wall, time.process_time() - cpu, epochs * len(graphs)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--potnet", help="path to PotNet's folder (with algorithm.py and the built functions/)")
    ap.add_argument("--ref-n", type=int, default=None, help="time the reference on the first N structures only")
    ap.add_argument("--encoder", action="store_true", help="also time CrystalEncoder training steps")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for --encoder")
    args = ap.parse_args(argv)

    from mlcm_core.featurize.crystal_graph import CrystalGraphConfig

    items = load_mp_structures(args.n, args.seed)
    structures = [s for _, s in items]
    sizes = np.array([len(s) for s in structures])
    print(f"{len(structures)} MP structures (seed {args.seed}): atoms/structure mean {sizes.mean():.1f}, "
          f"max {sizes.max()}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    wall, cpu, graphs = time_ours(structures, CrystalGraphConfig())
    edges = np.array([g.edge_index.shape[1] for g in graphs])
    print(f"ours (default: edges + node sums over all N(N+1)/2 pairs): {len(structures) / wall:8.1f} structures/s "
          f"wall, {len(structures) / cpu:8.1f} per CPU-second; edges/structure {edges.mean():.0f}")
    wall_e, cpu_e, _ = time_ours(structures, CrystalGraphConfig(node_potentials=False))
    print(f"ours (edge pairs only, node_potentials=False):            {len(structures) / wall_e:8.1f} structures/s "
          f"wall, {len(structures) / cpu_e:8.1f} per CPU-second")

    if args.potnet:
        try:
            algorithm = import_potnet(args.potnet)
        except Exception as exc:  # noqa: BLE001
            print(f"PotNet reference not run: {type(exc).__name__}: {exc}")
        else:
            ref = structures[: args.ref_n] if args.ref_n else structures
            potnet_potentials(algorithm, ref[0])
            w0, c0 = time.perf_counter(), time.process_time()
            for s in ref:
                potnet_potentials(algorithm, s)
            w, c = time.perf_counter() - w0, time.process_time() - c0
            ours_rate = len(structures) / wall
            print(f"PotNet reference (algorithm.zeta/zeta/exp, R=3, N² pairs) on {len(ref)} of them: "
                  f"{len(ref) / w:8.2f} structures/s wall, {len(ref) / c:8.2f} per CPU-second")
            print(f"speed-up ours/reference: {ours_rate / (len(ref) / w):.0f}x wall, "
                  f"{(len(structures) / cpu) / (len(ref) / c):.0f}x CPU")

    if args.encoder:
        import torch

        torch.set_num_threads(args.threads)
        for preset in ("cpu", "paper"):
            w, c, n = time_encoder(graphs, preset)
            print(f"encoder '{preset}' training (batch 64, {torch.get_num_threads()} thread(s)): {n / w:7.1f} "
                  f"graphs/s wall, {n / c:7.1f} per CPU-second -> 10k structures x 10 epochs ≈ "
                  f"{1e5 / (n / w) / 60:.1f} min wall ({1e5 / (n / c) / 60:.1f} CPU-min)")


if __name__ == "__main__":
    main()
