"""The protocol's numbers and per-material rules, and the worker's pure helpers (no GPAW needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlcm_core.data.conventions import DOS_ENERGIES, resample_density
from mlcm_core.dft import worker
from mlcm_core.dft.protocol import PROTOCOL, DFTProtocol, mp_kpts
from mlcm_core.dft.validate import dos_mae


def test_production_values() -> None:
    p = PROTOCOL
    assert (p.xc, p.ecut_ev, p.occupations, p.smearing_ev) == ("PBE", 500.0, "fermi-dirac", 0.05)
    assert (p.kpt_density_scf, p.kpt_density_dos, p.kpt_max_dos, p.dos_symmetry) == (2.5, 4.5, 12, "irreducible")
    assert (p.dos_sigma_ev, p.band_margin_ev, p.density_grid) == (0.1, 10.0, 32)
    assert np.allclose(np.linspace(p.dos_emin_ev, p.dos_emax_ev, p.dos_npoints), DOS_ENERGIES)
    assert dict(p.hubbard_u) == {"Co": 3.32, "Cr": 3.7, "Fe": 5.3, "Mn": 3.9, "Mo": 4.38, "Ni": 6.2, "V": 3.25, "W": 6.2}


def test_round_trip_through_json() -> None:
    d = json.loads(json.dumps(PROTOCOL.to_dict()))
    assert DFTProtocol.from_dict(d) == PROTOCOL
    with pytest.raises(ValueError):
        DFTProtocol.from_dict({**d, "ecutt": 1})


def test_spin_and_magmoms_follow_mp() -> None:
    assert PROTOCOL.magmoms(["Si", "Si"]) is None
    assert PROTOCOL.magmoms(["Fe", "Fe", "O", "O", "O"]) == [5.0, 5.0, 0.6, 0.6, 0.6]
    assert PROTOCOL.magmoms(["Co", "V", "O"]) == [0.6, 5.0, 0.6]
    assert PROTOCOL.magmoms(["V", "O"]) is None  # V alone is not spin-polarised by this protocol


@pytest.mark.parametrize("symbols, setups", [
    (["Fe", "O"], {"Fe": ":d,5.3"}),
    (["Fe", "F", "F"], {"Fe": ":d,5.3"}),
    (["Mo", "O", "O", "O"], {"Mo": ":d,4.38"}),
    (["Fe", "O", "Cl"], {"Fe": ":d,5.3"}),  # O is the most electronegative: MP applies U
    (["Fe", "S"], {}),
    (["Fe", "Al"], {}),
    (["Ti", "O", "O"], {}),
])
def test_hubbard_u_only_for_oxides_and_fluorides(symbols: list[str], setups: dict[str, str]) -> None:
    assert PROTOCOL.setups(symbols) == setups
    assert ("+U" in PROTOCOL.theory(symbols)) == bool(setups)


def test_kpts_rule_matches_worker_and_ase_formula() -> None:
    cell = np.array([[0, 2.73, 2.73], [2.73, 0, 2.73], [2.73, 2.73, 0]])
    assert mp_kpts(cell, 2.5) == tuple(worker.mp_kpts(cell, 2.5)) == (5, 5, 5)
    assert PROTOCOL.kpts_dos(cell) == (9, 9, 9)
    assert PROTOCOL.kpts_dos(cell / 3) == (12, 12, 12)  # capped


def test_fourier_resample_matches_conventions() -> None:
    rng = np.random.default_rng(0)
    for shape in [(20, 27, 36), (45, 45, 45), (16, 40, 33)]:
        grid = rng.random(shape)
        ours = worker.fourier_resample(grid, 32)
        assert np.allclose(ours, resample_density(grid), atol=1e-5)
        assert abs(ours.mean() - grid.mean()) < 1e-12


def test_band_helpers_on_synthetic_eigenvalues() -> None:
    w = np.array([0.25, 0.75])
    insulator = np.array([[[-5.0, 0.0, 2.0, 6.0], [-4.0, -0.5, 1.5, 7.0]]])  # 1 spin, 2 k, 4 bands
    ef = worker.fermi_level(insulator, w, n_electrons=4.0, width=0.05)
    assert 0.0 < ef < 1.5
    gap, vbm, cbm = worker.band_edges(insulator, ef)
    assert (gap, vbm, cbm) == (1.5, 0.0, 1.5)
    metal = np.array([[[-5.0, -0.2, 2.0], [-4.0, 0.4, 2.5]]])
    ef = worker.fermi_level(metal, w, n_electrons=3.0, width=0.05)
    assert worker.band_edges(metal, ef)[0] == 0.0  # band 1 crosses E_F
    e = np.linspace(-20, 20, 4001)
    dos = worker.gaussian_dos(insulator, w, e, 0.1)
    assert dos.shape == (1, 4001) and abs(np.trapezoid(dos[0], e) - 8.0) < 1e-6  # 2 e per band


def test_dos_mae_is_shape_only() -> None:
    e = DOS_ENERGIES
    a = np.exp(-((e - 1) ** 2))
    assert dos_mae(a, a) == 0.0
    assert dos_mae(a, 3 * a) < 1e-12
    b = np.exp(-((e + 1) ** 2))
    assert 0 < dos_mae(a, b) < 0.2
    far_a, far_b = (np.abs(e + 4) < 0.5).astype(float), (np.abs(e - 4) < 0.5).astype(float)
    assert dos_mae(far_a, far_b) == pytest.approx(0.2, rel=0.05)
    with pytest.raises(ValueError):
        dos_mae(a[:600], a[:600])


def _tight_binding(n: int) -> np.ndarray:
    """(1, n³, 1) eigenvalues of a simple-cubic s band, -2 sum cos(2πk), on the full Γ-centred grid (C order)."""
    k = 2 * np.pi * np.stack(np.unravel_index(np.arange(n**3), (n, n, n)), axis=1) / n
    return (-2.0 * np.cos(k).sum(axis=1))[None, :, None]


def test_tetrahedron_dos_beats_gaussian_sums_on_a_coarse_mesh() -> None:
    e = DOS_ENERGIES
    rcell = np.eye(3) / 3.0
    fine = worker.tetrahedron_dos(_tight_binding(24), worker.tetrahedra((24,) * 3, rcell), e, 0.1)
    tet = worker.tetrahedra((8,) * 3, rcell)
    assert tet.shape == (6 * 512, 4)
    coarse_tet = worker.tetrahedron_dos(_tight_binding(8), tet, e, 0.1)
    coarse_gauss = worker.gaussian_dos(_tight_binding(8), np.full(512, 1 / 512), e, 0.1)
    assert abs(np.trapezoid(coarse_tet[0], e) - 2.0) < 1e-6  # 2 electrons per band, all inside the window
    assert dos_mae(coarse_tet[0], fine[0]) < 0.3 * dos_mae(coarse_gauss[0], fine[0])
    # half filling of the particle-hole symmetric band: E_F = 0; a full band plus a gap: E_F mid-gap
    assert abs(worker.tetrahedron_fermi_level(_tight_binding(8), tet, 1.0)) < 1e-6
    two = np.concatenate([_tight_binding(8), _tight_binding(8) + 20.0], axis=2)
    assert abs(worker.tetrahedron_fermi_level(two, tet, 2.0) - 10.0) < 1e-6
    assert abs(worker.tetrahedron_count(two, tet, 10.0) - 2.0) < 1e-9


def test_k_grid_map_and_eigensolver_spec() -> None:
    size = (3, 4, 2)
    idx = np.stack(np.unravel_index(np.arange(24), size), axis=1)
    frac = (idx / np.array(size) + 0.5) % 1.0 - 0.5  # GPAW-style points in [-0.5, 0.5)
    order = np.random.default_rng(1).permutation(24)
    grid = worker.k_grid_map(frac[order], np.arange(24)[order] // 2, size)
    assert (grid == np.arange(24) // 2).all()
    assert worker.eigensolver_arg(None) is None
    assert worker.eigensolver_arg("rmm-diis") == {"name": "rmm-diis"}
    assert worker.eigensolver_arg("dav:niter=1") == {"name": "dav", "niter": 1}
