"""Grids that survive any cell setting: one canonical cell per crystal (mlcm_core.data.density_frame)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from mlcm_core.data.conventions import resample_density
from mlcm_core.data.density_frame import canonical_cell, canonical_density, structure_on_canonical_cell
from mlcm_core.data.store import DatasetStore
from tests.conftest import DEFAULT_STORE, ROOT

# real stored densities: hexagonal polar (AlAs, P6_3mc: c and -c differ), rock salt-like fcc (ZrC: two
# origins), a 4-site cubic cell (YPd3)
MATERIALS = ["mp-8881", "mp-2795", "mp-559"]


def settings(structure: Structure, grid: np.ndarray):
    """The same crystal and density in 6 axis orders, 3 origin shifts and as a 2x1x1 supercell."""
    lat = structure.lattice.matrix
    for perm in itertools.permutations(range(3)):
        yield f"axes {perm}", Structure(Lattice(lat[list(perm)]), structure.species,
                                        structure.frac_coords[:, perm]), np.transpose(grid, perm)
    for shift in [(5, 0, 0), (3, 11, 7), (16, 16, 16)]:
        moved = Structure(structure.lattice, structure.species, (structure.frac_coords + np.array(shift) / 32) % 1)
        yield f"origin {shift}", moved, np.roll(grid, shift, axis=(0, 1, 2))
    big = structure.copy()
    big.make_supercell([2, 1, 1])
    yield "2x1x1 supercell", big, resample_density(np.tile(grid, (2, 1, 1)))  # stored as 32³ of the supercell


@pytest.fixture(scope="module")
def store():
    return DatasetStore.open(DEFAULT_STORE)


@pytest.mark.parametrize("mid", MATERIALS)
def test_every_setting_gives_the_same_canonical_grid_and_embedding(store, mid):
    from mlcm_core.explore import Explorer

    structure, grid = store.structure(mid), store.density(mid)[0].astype(float)
    ref = canonical_density(structure, grid)
    model = Explorer.load(ROOT / "precomputed").model
    z_ref = model.embed("density", ref.grid).numpy().ravel()
    for name, s, g in settings(structure, grid):
        c = canonical_density(s, g)
        np.testing.assert_allclose(c.lattice, ref.lattice, atol=1e-3, err_msg=name)
        assert np.corrcoef(c.grid.ravel(), ref.grid.ravel())[0, 1] > 0.99, name
        z = model.embed("density", c.grid).numpy().ravel()
        cos = float(z @ z_ref / np.linalg.norm(z) / np.linalg.norm(z_ref))
        assert cos > 0.95, f"{mid} {name}: cosine {cos:.3f}"
    # without the canonical frame the same settings are different inputs (the test is not vacuous)
    raw = [np.corrcoef(g.ravel(), grid.ravel())[0, 1] for name, _, g in settings(structure, grid)
           if name.startswith("origin")]
    assert min(raw) < 0.9


def test_canonical_cell_keeps_the_crystal(store):
    """Same atoms in the canonical frame (an atom at the origin), same volume per formula unit."""
    s = store.structure("mp-8881")
    lattice, origin = canonical_cell(s)
    assert abs(np.linalg.det(lattice)) == pytest.approx(s.volume, rel=1e-6)  # primitive already
    moved = structure_on_canonical_cell(s)
    assert moved.composition == s.composition
    assert np.min(np.linalg.norm(moved.frac_coords - np.round(moved.frac_coords), axis=1)) < 1e-6
    assert moved.matches(s)


def test_a_larger_cell_of_the_crystal_maps_to_the_canonical_cell(store):
    """A density given on a 4x cell of rock-salt ZrC (the conventional cell's size, another shape) lands on
    the same 2-atom canonical cell with the same grid."""
    from mlcm_core.data.density_frame import resample_onto_cell

    s = store.structure("mp-2795")
    grid = store.density("mp-2795")[0].astype(float)
    ref = canonical_density(s, grid)
    big = s.copy()
    big.make_supercell([[-1, 1, 1], [1, -1, 1], [1, 1, -1]])
    assert len(big) == 4 * len(s)
    big_grid = resample_onto_cell(grid, s.lattice.matrix, big.lattice.matrix, np.zeros(3))
    c = canonical_density(big, big_grid)
    np.testing.assert_allclose(c.lattice, ref.lattice, atol=1e-3)
    assert np.corrcoef(c.grid.ravel(), ref.grid.ravel())[0, 1] > 0.98
