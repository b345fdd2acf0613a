"""Check the engine against a reference DOS: compute one material and score the curve shape.

The score is deliberately shape-only (area-normalised in a window around the reference energy) so that
DOS from codes with different band counts, broadening or units per cell can still be compared.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlcm_core.data.conventions import DOS_ENERGIES
from mlcm_core.data.record import MaterialRecord
from mlcm_core.dft.engine import CostEstimate, compute, estimate_cost
from mlcm_core.dft.protocol import PROTOCOL, DFTProtocol

__all__ = ["ValidationResult", "chgcar_density", "density_correlation", "dos_mae", "validate"]


def dos_mae(a: np.ndarray, b: np.ndarray, window: tuple[float, float] = (-5.0, 5.0),
            energies: np.ndarray = DOS_ENERGIES) -> float:
    """Area-normalised DOS MAE on `window` (eV), in 1/eV.

    Each curve (on DOS_ENERGIES, 601 points) is restricted to the window and divided by its own integral
    over it (trapezoid rule), so only the shape counts, not states per cell or band counts; the result is
    the mean absolute difference over the window's grid points. 0 = identical shapes; for a 10 eV window
    two shapes with no overlap score about 0.2 (= 2/10 eV).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != energies.shape or b.shape != energies.shape:
        raise ValueError(f"DOS curves must have shape {energies.shape}, got {a.shape} and {b.shape}")
    mask = (energies >= window[0] - 1e-9) & (energies <= window[1] + 1e-9)
    e = energies[mask]
    curves = []
    for c in (a[mask], b[mask]):
        area = float(np.trapezoid(c, e))
        if not area > 0:
            raise ValueError("a DOS curve has no area in the window")
        curves.append(c / area)
    return float(np.mean(np.abs(curves[0] - curves[1])))


def density_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two densities on the same fractional grid, each divided by its mean.

    Dividing by the mean removes units and per-cell electron counts (e.g. GPAW's pseudo density vs VASP's
    CHGCAR with compensation charges), so only where the charge sits is compared.
    """
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"grids differ: {a.shape} vs {b.shape}")
    return float(np.corrcoef(a / a.mean(), b / b.mean())[0, 1])


def chgcar_density(path: str | Path) -> tuple[Any, np.ndarray]:
    """(structure, 32³ density in e/Å³) from a VASP CHGCAR: VASP stores rho*V_cell, so divide by volume."""
    from pymatgen.io.vasp import Chgcar

    from mlcm_core.data.conventions import resample_density

    chg = Chgcar.from_file(str(path))
    structure = chg.poscar.structure
    return structure, resample_density(chg.data["total"] / structure.volume)


@dataclass
class ValidationResult:
    """Outcome of `validate`: the score, the estimate made before the run, and what was computed."""

    mae: float
    estimate: CostEstimate
    record: MaterialRecord
    seconds: float


def validate(structure: Any, target_dos: np.ndarray, material_id: str = "validate",
             out_dir: str | Path | None = None, protocol: DFTProtocol = PROTOCOL, timeout: float | None = None,
             cancel: threading.Event | None = None, report: Callable[[str], None] = print) -> ValidationResult:
    """Compute the DOS of `structure` with the engine and score it against `target_dos` (601,) with dos_mae.

    The cost estimate is reported before the (possibly long) run starts, so a caller can cancel in time.
    out_dir defaults to a temporary directory (nothing kept); pass one to keep or reuse the npz.
    """
    estimate = estimate_cost(structure, protocol)
    report(f"estimated cost: {estimate}")
    start = time.time()
    if out_dir is None:
        with tempfile.TemporaryDirectory(prefix="mlcm-validate-") as tmp:
            record = compute(structure, material_id, tmp, protocol, timeout, cancel)
    else:
        record = compute(structure, material_id, out_dir, protocol, timeout, cancel)
    assert record.dos is not None
    mae = dos_mae(record.dos.total, target_dos)
    seconds = time.time() - start
    report(f"DOS MAE (area-normalised, [-5, 5] eV): {mae:.4f} /eV after {seconds:.0f} s")
    return ValidationResult(mae, estimate, record, seconds)
