"""Read the GPAW seed results (/work/shared/data/dft-seed) into MaterialRecords, and audit them.

The seed was produced by an earlier run of the same protocol (see its README); it differs from the engine
in one known way that matters: it used nbands = nocc + max(8, nocc) without checking that the highest
band covers E_ref + 10 eV, so `band_coverage_audit` looks for DOS curves that die out before +10 eV.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlcm_core.data.conventions import DOS_ENERGIES
from mlcm_core.data.record import MaterialRecord
from mlcm_core.dft.engine import record_from_npz
from mlcm_core.dft.protocol import PROTOCOL

__all__ = [
    "SEED_DIR",
    "SEED_SOURCE",
    "CoverageAudit",
    "band_coverage_audit",
    "load_seed",
    "seed_index",
    "seed_structures",
]

SEED_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "dft-seed"  # ../shared beside the checkout
SEED_SOURCE = "dft-seed"


def seed_structures(seed_dir: str | Path = SEED_DIR) -> dict[str, Any]:
    """MP id -> pymatgen Structure rebuilt from structures.json (cell in Å, fractional coordinates)."""
    from pymatgen.core import Lattice, Structure

    entries = json.loads((Path(seed_dir) / "structures.json").read_text())
    return {e["material_id"]: Structure(Lattice(e["cell"]), e["symbols"], e["frac"]) for e in entries}


def seed_index(seed_dir: str | Path = SEED_DIR) -> dict[str, dict[str, str]]:
    """index.csv rows keyed by material_id (read by header name: the README's column order is not the file's)."""
    with open(Path(seed_dir) / "index.csv", newline="") as fh:
        return {row["material_id"]: row for row in csv.DictReader(fh)}


def load_seed(seed_dir: str | Path = SEED_DIR) -> list[MaterialRecord]:
    """One MaterialRecord per seed npz (failures skipped), id = MP id, source 'dft-seed'.

    magmom is not set: the seed was not spin-polarised (its materials have no Cr/Mn/Fe/Co/Ni).
    """
    seed_dir = Path(seed_dir)
    structures = seed_structures(seed_dir)
    records = []
    for mid, st in sorted(structures.items()):
        npz = seed_dir / f"{mid}.npz"
        if npz.exists():
            rec = record_from_npz(npz, mid, st, source=SEED_SOURCE, protocol=PROTOCOL)
            rec.provenance = "dft-seed (GPAW 22.8, seed protocol: nbands = nocc + max(8, nocc)); " + rec.provenance
            records.append(rec)
    return records


@dataclass(frozen=True)
class CoverageAudit:
    """Band coverage of one seed DOS (the seed kept no eigenvalues, so this reads the DOS only).

    edge_ev: highest energy (eV vs reference) where the DOS exceeds `tol`.
    truncated: the DOS is below `tol` over the whole top `top_ev` of the window: bands ran out.
    states_0_10: states in [0, +10] eV; capacity: empty states the seed's nbands hold, 2*nbands - n_valence.
    top_band_below: states_0_10 > capacity - 2 + slack, i.e. more states below +10 eV than all bands but
        the highest can supply, so the highest band dips below +10 eV somewhere and the DOS near the top
        of the window misses the states above it (a sufficient, not necessary, sign).
    """

    material_id: str
    edge_ev: float
    truncated: bool
    states_0_10: float
    capacity: float
    top_band_below: bool


def band_coverage_audit(seed_dir: str | Path = SEED_DIR, tol: float = 1e-3, top_ev: float = 0.5,
                        slack: float = 0.5) -> list[CoverageAudit]:
    """Audit every seed npz for too few bands, assuming its README's nbands = nocc + max(8, nocc)."""
    out = []
    for npz in sorted(Path(seed_dir).glob("*.npz")):
        z = np.load(npz)
        dos = np.asarray(z["dos"], dtype=float)
        above = np.where(dos > tol)[0]
        edge = float(DOS_ENERGIES[above[-1]]) if above.size else float("nan")
        n_val = float(z["n_valence"])
        nocc = int(np.ceil(n_val / 2))
        capacity = 2 * (nocc + max(8, nocc)) - n_val
        window = DOS_ENERGIES >= 0
        states = float(np.trapezoid(dos[window], DOS_ENERGIES[window]))
        out.append(CoverageAudit(npz.stem, edge, bool(edge < DOS_ENERGIES[-1] - top_ev), states, capacity,
                                 bool(states > capacity - 2 + slack)))
    return out
