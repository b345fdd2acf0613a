"""Si (2-atom primitive cell) at the full production protocol: prints the PBE gap (expect ≈0.6 eV) and seconds.

Run: PYTHONPATH=. python benchmarks/dft_si_gap.py [--out DIR]. Needs Debian's /usr/bin/python3 with GPAW 22.8.
The cell is MP's Si (mp-149, a = 5.468 Å, close to the PBE lattice constant); the PBE gap of Si is
about 0.6 eV (indirect, Γ -> ~0.85 X), the DOS mesh (9x9x9) resolves it to a few 0.01 eV.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
from pymatgen.core import Lattice, Structure

from mlcm_core.dft.engine import compute, estimate_cost, gpaw_available
from mlcm_core.dft.protocol import PROTOCOL


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=None, help="keep the npz here (default: temporary directory)")
    args = parser.parse_args()
    reason = gpaw_available()
    if reason:
        raise SystemExit(reason)
    a = 5.468
    si = Structure(Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]]), ["Si", "Si"],
                   [[0, 0, 0], [0.25, 0.25, 0.25]])
    print("estimate:", estimate_cost(si, PROTOCOL))
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        start = time.time()
        rec = compute(si, "si-benchmark", out, PROTOCOL)
        wall = time.time() - start
        z = np.load(f"{out}/si-benchmark.npz")
        result = {"band_gap_eV": round(rec.labels["band_gap_gpaw_pbe"], 3), "expected_eV": 0.6,
                  "seconds_wall": round(wall, 1), "seconds_scf": round(float(z["seconds_scf"]), 1),
                  "seconds_dos": round(float(z["seconds_dos"]), 1), "kpts_scf": z["kpts_scf"].tolist(),
                  "kpts_dos": z["kpts_dos"].tolist(), "nbands": int(z["nbands"]),
                  "band_top_min_eV": round(float(z["band_top_min"]), 2)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
