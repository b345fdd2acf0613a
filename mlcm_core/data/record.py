"""MaterialRecord: what every source produces and the store consumes.

A record carries one material's modalities already in the project conventions (see conventions.py),
with the provenance that says how each value was made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from mlcm_core.data.conventions import DENSITY_GRID, DOS_N_POINTS, LABELS

if TYPE_CHECKING:
    from pymatgen.core import Structure

__all__ = ["DOSData", "DensityData", "MaterialRecord"]


@dataclass
class DOSData:
    """A DOS on DOS_ENERGIES: total states/eV per cell, both spins summed.

    Attributes:
        total: (601,) states/eV per cell.
        spin: (2, 601) up/down channels when spin-polarized, else None.
        reference: where the zero is: "vbm" (gapped) or "efermi".
        band_gap: eV, as the source reports it (eigenvalues when available), None if unknown.
        theory: level of theory, e.g. "PBE(+U), VASP (Materials Project)".
        broadening: e.g. "Gaussian 0.1 eV" or "none added (source's tetrahedron DOS)".
        convention: the source's own convention, e.g. "spin-up channel only".
    """

    total: np.ndarray
    reference: Literal["vbm", "efermi"]
    theory: str
    broadening: str
    convention: str = "total DOS, both spins, states/eV per cell"
    band_gap: float | None = None
    spin: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.total = np.asarray(self.total, dtype=np.float32)
        if self.total.shape != (DOS_N_POINTS,):
            raise ValueError(f"DOS must have shape ({DOS_N_POINTS},), got {self.total.shape}")
        if not np.all(np.isfinite(self.total)):
            raise ValueError("DOS contains NaN or infinite values")
        if self.spin is not None:
            self.spin = np.asarray(self.spin, dtype=np.float32)
            if self.spin.shape != (2, DOS_N_POINTS):
                raise ValueError(f"spin DOS must have shape (2, {DOS_N_POINTS}), got {self.spin.shape}")


@dataclass
class DensityData:
    """Valence charge density on the cell's 32³ fractional grid, index order (a, b, c).

    Attributes:
        grid: (32, 32, 32) float32.
        units: "e/Å^3" or, when the source does not allow conversion, its own (e.g. "rho*V_cell (VASP CHGCAR), e").
        theory: level of theory.
        convention: what the grid holds (e.g. "smooth pseudo valence density, no PAW compensation").
        integral: electrons in the cell from the source's own grid, None if unknown.
        lattice: (3, 3) Å, rows a, b, c: the cell the grid lives on (the crystal's canonical cell,
            ``mlcm_core.data.density_frame``, when the structure was known); None if the source gives none.
    """

    grid: np.ndarray
    units: str
    theory: str
    convention: str
    integral: float | None = None
    lattice: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.grid = np.asarray(self.grid, dtype=np.float32)
        if self.lattice is not None:
            self.lattice = np.asarray(self.lattice, dtype=float)
            if self.lattice.shape != (3, 3) or not np.all(np.isfinite(self.lattice)) \
                    or abs(np.linalg.det(self.lattice)) < 1e-6:
                raise ValueError(f"density lattice must be a finite, non-degenerate (3, 3) cell, got {self.lattice}")
        shape = (DENSITY_GRID,) * 3
        if self.grid.shape != shape:
            raise ValueError(f"density must have shape {shape}, got {self.grid.shape}")
        if not np.all(np.isfinite(self.grid)):
            raise ValueError("density contains NaN or infinite values")


@dataclass
class MaterialRecord:
    """One material from one source. `id` is namespaced by source (mp-149, perov5:3961, ...)."""

    id: str
    source: str
    structure: Structure | None = None
    labels: dict[str, float] = field(default_factory=dict)
    dos: DOSData | None = None
    density: DensityData | None = None
    provenance: str = ""
    formula: str | None = None  # for records without a structure

    def __post_init__(self) -> None:
        unknown = set(self.labels) - set(LABELS)
        if unknown:
            raise ValueError(f"unknown label columns {sorted(unknown)}; register them in conventions.LABELS")
        if self.structure is not None:
            if not self.structure.is_ordered:
                raise ValueError(f"{self.id}: structure has partial occupancies; only ordered structures are supported")
            if len(self.structure) == 0:
                raise ValueError(f"{self.id}: structure has no sites")
