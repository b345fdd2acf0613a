"""Check the engine against a reference DOS: compute one material and score the curve shape.

The score is deliberately shape-only (area-normalised in a window around the reference energy) so that
DOS from codes with different band counts, broadening or units per cell can still be compared.
"""

from __future__ import annotations

import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlcm_core.data.conventions import DOS_ENERGIES
from mlcm_core.data.record import MaterialRecord
from mlcm_core.dft.engine import CostEstimate, compute, estimate_cost
from mlcm_core.dft.protocol import PROTOCOL, DFTProtocol

__all__ = ["ValidationResult", "check_target_dos", "chgcar_density", "density_correlation", "dos_mae",
           "read_target_dos", "validate"]


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


def check_target_dos(target: Any, window: tuple[float, float] = (-5.0, 5.0), what: str = "target DOS") -> np.ndarray:
    """A (601,) target on DOS_ENERGIES that dos_mae can score: finite, >= 0, with area in ``window``.

    Checked before any calculation, so a bad target fails in milliseconds, not after the GPAW run.
    """
    arr = np.asarray(target, dtype=float)
    if arr.shape != DOS_ENERGIES.shape:
        raise ValueError(f"{what} has shape {arr.shape}; expected {DOS_ENERGIES.shape} values on DOS_ENERGIES "
                         "(or give (energy, DOS) columns)")
    if not np.all(np.isfinite(arr)):
        first = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ValueError(f"{what} contains NaN or infinite values (first at point {first})")
    if np.any(arr < 0):
        k = int(np.flatnonzero(arr < 0)[0])
        raise ValueError(f"{what} has a negative value at point {k} ({arr[k]:g}); a DOS is >= 0")
    inside = (DOS_ENERGIES >= window[0] - 1e-9) & (DOS_ENERGIES <= window[1] + 1e-9)
    if not np.any(arr[inside] > 0):
        raise ValueError(f"{what} is zero everywhere on the scored window {window[0]:g}..{window[1]:g} eV")
    return arr


def read_target_dos(path: str | Path) -> np.ndarray:
    """A target DOS file as (601,) on DOS_ENERGIES: 601 values, or (energy eV, DOS) rows on any increasing grid.

    Comma-separated for ``.csv``, else whitespace; ``#`` comments and one header line allowed. Raises
    ValueError naming the file and the problem (unreadable, wrong length or columns, NaN, negative values,
    energies not increasing).
    """
    from mlcm_core.data.conventions import standardize_dos

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: target DOS file not found")
    delimiter = "," if path.suffix.lower() == ".csv" else None
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8-sig").splitlines()
                 if ln.strip() and not ln.lstrip().startswith("#")]
        if lines:
            try:
                float(lines[0].split(delimiter)[0])
            except ValueError:
                lines = lines[1:]  # a header line such as "energy_eV,dos"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # numpy's "empty input": reported below
            table = np.loadtxt(lines, delimiter=delimiter, ndmin=2)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a table of numbers ({str(e).splitlines()[0][:160]})") from e
    if table.size == 0:
        raise ValueError(f"{path}: no values")
    if table.shape[1] == 1:
        return check_target_dos(table[:, 0], what=f"{path}: target DOS")
    if table.shape[1] != 2 or len(table) < 2:
        raise ValueError(f"{path}: {table.shape[0]} rows of {table.shape[1]} columns; expected 601 values or "
                         ">= 2 rows of (energy eV, DOS)")
    energy, dos = table[:, 0], table[:, 1]
    if not np.all(np.isfinite(table)):
        row = int(np.flatnonzero(~np.isfinite(table).all(axis=1))[0]) + 1
        raise ValueError(f"{path}: NaN or infinite value in row {row}")
    if np.any(dos < 0):
        k = int(np.flatnonzero(dos < 0)[0])
        raise ValueError(f"{path}: negative DOS value {dos[k]:g} at {energy[k]:g} eV (row {k + 1}); a DOS is >= 0")
    if not np.all(np.diff(energy) > 0):
        k = int(np.flatnonzero(np.diff(energy) <= 0)[0])
        raise ValueError(f"{path}: energies are not strictly increasing "
                         f"(row {k + 2}: {energy[k]:g} -> {energy[k + 1]:g} eV)")
    return check_target_dos(standardize_dos(energy, dos, reference_energy=0.0), what=f"{path}: target DOS")


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
    target_dos = check_target_dos(target_dos)  # before the (possibly hour-long) run, not after it
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
