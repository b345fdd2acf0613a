"""Our GPAW density vs a real VASP CHGCAR of the same cell (issue 15, cross-source check 5a).

Run: python benchmarks/density_vs_vasp.py [--chgcar ../shared/data/sources/vasp-si/CHGCAR.gz] [--low].
Computes the SCF of the CHGCAR's own structure (same cell, so the grids align) with the production
protocol (``--low``: the test protocol) and prints, for the stored VASP-like density and for the older
smooth pseudo density side by side: Pearson r on the 32³ grid after dividing each grid by its mean (raw),
after the density encoder's input transform (asinh of the mean-normalised grid), and max/mean (VASP's own
in the header line). Needs Debian's /usr/bin/python3 with GPAW 22.8.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from mlcm_core.dft.engine import build_job, gpaw_available, run_worker
from mlcm_core.dft.protocol import LOW_PROTOCOL, PROTOCOL
from mlcm_core.dft.validate import chgcar_density, density_correlation

DEFAULT_CHGCAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "sources" / "vasp-si" / "CHGCAR.gz"


def asinh_r(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation after the encoder's transform: asinh of each grid divided by its mean."""
    return float(np.corrcoef(np.arcsinh(a / a.mean()).ravel(), np.arcsinh(b / b.mean()).ravel())[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chgcar", type=Path, default=DEFAULT_CHGCAR)
    parser.add_argument("--low", action="store_true", help="the cheap test protocol instead of production")
    args = parser.parse_args()
    reason = gpaw_available()
    if reason:
        raise SystemExit(reason)
    structure, vasp = chgcar_density(args.chgcar)
    protocol = LOW_PROTOCOL if args.low else PROTOCOL
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        run_worker(build_job(structure, Path(tmp) / "x.npz", protocol, "x", stages="scf"))
        seconds = time.time() - t0
        z = np.load(Path(tmp) / "x.npz", allow_pickle=False)
        grids = {"VASP-like (stored)": z["charge_density"], "smooth pseudo (before)": z["pseudo_density"]}
        print(f"{structure.composition.reduced_formula}, {len(structure)} sites, {'low' if args.low else 'production'} "
              f"protocol, SCF {seconds:.0f} s; VASP CHGCAR max/mean {vasp.max() / vasp.mean():.1f}")
        for name, grid in grids.items():
            print(f"  {name:24s} r raw {density_correlation(grid, vasp):.3f}   r asinh {asinh_r(grid, vasp):.3f}   "
                  f"max/mean {grid.max() / grid.mean():.1f}")


if __name__ == "__main__":
    main()
