"""One frame for every density grid: the crystal's standard primitive cell, whatever cell the grid came on.

A CHGCAR (VASP, MP, a user's) lives on whatever cell its run used: axes in another order, the origin
elsewhere, a supercell, a conventional cell. The same crystal then gives grids that differ by a permutation,
a roll or a tiling, and a convolutional density encoder sees different inputs. When the structure is known,
``canonical_density`` resamples the grid onto one cell chosen by a rule that depends on the crystal only:

* **cell**: the primitive cell (spglib, in the input's Cartesian frame, no rotation), Niggli-reduced, so
  every setting of the crystal gives a cell of the same shape;
* **axes and origin**: among the bases of that shape (the lattice's proper automorphisms: axis orders and
  signs) and the sites of the heaviest element as origin, the frame in which the crystal's sorted
  (Z, fractional position) list is smallest. Symmetry-equivalent frames tie and hold the same density;
  spglib's own standard setting is not enough (a polar axis may come out reversed, a space group allows
  several origins: Na or Cl in rock salt);
* **grid**: ``DENSITY_GRID``³ points on that cell, values interpolated from the source grid (periodic cubic
  B-spline, ``scipy.ndimage.map_coordinates`` with ``grid-wrap``), in the source's units.

The result is what the store keeps; ``DensityData.lattice`` records the 3×3 cell (Å, rows a, b, c) the grid
lives on, so a grid and its cell never part. Cells spglib cannot analyse (symprec too tight, disordered)
use the input cell in place of the primitive one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mlcm_core.data.conventions import DENSITY_GRID

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from mlcm_core.data.record import DensityData

__all__ = ["CANONICAL_NOTE", "CanonicalDensity", "SYMPREC", "canonical_cell", "canonical_density", "canonicalize",
           "resample_onto_cell", "structure_on_canonical_cell"]

CANONICAL_NOTE = "; on the crystal's canonical cell (mlcm_core.data.density_frame)"
SYMPREC = 1e-3  # Å, spglib's tolerance (MP cells carry 8 digits; relaxed cells break symmetry at ~1e-4)


@dataclass(frozen=True)
class CanonicalDensity:
    """A density on the crystal's canonical cell: grid (n, n, n) float32, lattice (3, 3) Å rows a, b, c, and
    origin (3,) Å, the canonical cell's origin in the input structure's Cartesian frame."""

    grid: np.ndarray
    lattice: np.ndarray
    origin: np.ndarray


def _fingerprint(lattice: np.ndarray, cart: np.ndarray, numbers: np.ndarray, origin: np.ndarray) -> tuple:
    """Sorted (Z, fractional position) of every atom in the frame (lattice, origin), rounded to ~1e-3."""
    frac = (cart - origin) @ np.linalg.inv(lattice)
    frac = np.round(np.mod(np.round(frac, 3), 1.0), 3) % 1.0
    return tuple(sorted(zip(numbers.tolist(), *(frac.T.tolist()), strict=True)))


def canonical_cell(structure: Structure, symprec: float = SYMPREC) -> tuple[np.ndarray, np.ndarray]:
    """(lattice (3, 3) Å, origin (3,) Å in the structure's Cartesian frame) of the canonical cell.

    The primitive cell (spglib, in the input's frame), Niggli-reduced (a unique cell shape), then among every
    basis of that shape (the lattice's automorphisms: axis orders, signs) and every site of the heaviest
    element as origin, the frame in which the sorted list of (Z, fractional position) is smallest. Frames
    that tie are related by a symmetry of the crystal and hold the same density.
    """
    import spglib
    from pymatgen.core import Lattice

    lattice = np.asarray(structure.lattice.matrix, dtype=float)
    frac = np.asarray(structure.frac_coords, dtype=float)
    numbers = np.asarray(structure.atomic_numbers, dtype=int)
    std = spglib.standardize_cell((lattice, frac, numbers), to_primitive=True, no_idealize=True, symprec=symprec)
    if std is not None:
        prim_lattice, prim_frac, numbers = (np.asarray(a) for a in std)
        cart = prim_frac @ prim_lattice  # no_idealize: the input's Cartesian frame and origin
    else:  # spglib cannot analyse the cell: the input cell itself
        prim_lattice, cart = lattice, frac @ lattice
    niggli = Lattice(prim_lattice).get_niggli_reduced_lattice()
    bases = [np.asarray(m[0].matrix) for m in niggli.find_all_mappings(niggli, ltol=1e-4, atol=1e-2)]
    bases = [b for b in bases if np.linalg.det(b) > 0] or [np.asarray(niggli.matrix)]  # keep handedness
    anchors = cart[numbers == numbers.max()]
    best = min(((_fingerprint(b, cart, numbers, o), i, j) for i, b in enumerate(bases) for j, o in enumerate(anchors)),
               key=lambda t: t[0])
    return bases[best[1]], anchors[best[2]]


def resample_onto_cell(grid: np.ndarray, source_lattice: np.ndarray, target_lattice: np.ndarray,
                       target_origin: np.ndarray, n: int = DENSITY_GRID) -> np.ndarray:
    """Values of a periodic grid on ``source_lattice`` at the n³ fractional grid points of another cell.

    Both cells are in one Cartesian frame; ``target_origin`` (Å) is the target cell's origin there. Any
    target cell works (a sub- or supercell, another setting): every target point is mapped into the source
    cell and interpolated there (periodic cubic B-spline).
    """
    from scipy import ndimage

    grid = np.asarray(grid, dtype=float)
    frac_t = np.stack(np.meshgrid(*(np.arange(n) / n,) * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    cart = frac_t @ np.asarray(target_lattice, dtype=float) + np.asarray(target_origin, dtype=float)
    frac_s = cart @ np.linalg.inv(np.asarray(source_lattice, dtype=float))
    coords = (np.mod(frac_s, 1.0) * np.array(grid.shape)).T
    values = ndimage.map_coordinates(grid, coords, order=3, mode="grid-wrap")
    return values.reshape(n, n, n).astype(np.float32)


def canonical_density(structure: Structure, grid: np.ndarray, lattice: np.ndarray | None = None,
                      n: int = DENSITY_GRID, symprec: float = SYMPREC) -> CanonicalDensity:
    """The density ``grid`` (on ``lattice``, default the structure's cell) on the crystal's canonical cell.

    ``lattice`` may differ from the structure's cell when the grid came on another cell of the same crystal
    (a supercell, another setting): the structure fixes the canonical cell, the lattice says where the grid
    lives. Values keep their units (e/Å³ stays e/Å³; VASP's rho·V must be divided by its own volume first).
    """
    source = np.asarray(structure.lattice.matrix if lattice is None else lattice, dtype=float)
    target, origin = canonical_cell(structure, symprec)
    return CanonicalDensity(grid=resample_onto_cell(grid, source, target, origin, n), lattice=target,
                            origin=origin)


def canonicalize(density: DensityData, structure: Structure, lattice: np.ndarray | None = None) -> DensityData:
    """A DensityData moved onto the crystal's canonical cell (lattice recorded, convention noted).

    ``lattice``: the cell the grid lives on, if not ``density.lattice`` or the structure's own cell.
    """
    from mlcm_core.data.record import DensityData

    source = lattice if lattice is not None else density.lattice
    canon = canonical_density(structure, density.grid, source)
    convention = density.convention if density.convention.endswith(CANONICAL_NOTE) else density.convention + CANONICAL_NOTE
    return DensityData(grid=canon.grid, units=density.units, theory=density.theory, convention=convention,
                       integral=density.integral, lattice=canon.lattice)


def structure_on_canonical_cell(structure: Structure, symprec: float = SYMPREC) -> Structure:
    """The structure expressed on its canonical cell (same atoms, the canonical lattice and origin), so that
    atoms drawn with a canonical density grid sit where its charge is."""
    from pymatgen.core import Structure as _Structure

    lattice, origin = canonical_cell(structure, symprec)
    cart = np.asarray(structure.cart_coords) - origin
    return _Structure(lattice, structure.species, cart, coords_are_cartesian=True, to_unit_cell=True)
