"""VASP source on real Si outputs (tests/files/vasp-si), checked against pymatgen and VASP's own numbers."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from mlcm_core.data.conventions import DOS_ENERGIES, dos_gap_and_vbm, standardize_dos
from mlcm_core.data.sources.vasp import (
    VaspInputError,
    density_from_chgcar,
    dos_from_complete_dos,
    dos_from_doscar,
    dos_from_vasprun,
    read_vasp_dir,
)

VASP_SI = Path(__file__).parents[2] / "files" / "vasp-si"


def _window_integral(dos: np.ndarray, lo: float, hi: float) -> float:
    mask = (DOS_ENERGIES >= lo) & (DOS_ENERGIES <= hi)
    return float(np.trapezoid(dos[mask], DOS_ENERGIES[mask]))


def _doscar_block() -> np.ndarray:
    """The DOSCAR's total block read with plain numpy: energy, up, down, int. up, int. down."""
    return np.loadtxt(VASP_SI / "DOSCAR.gz", skiprows=6, max_rows=301)


@pytest.fixture(scope="module")
def vasprun():
    from pymatgen.io.vasp import Vasprun

    return Vasprun(str(VASP_SI / "vasprun.xml.gz"), parse_potcar_file=False)


@pytest.fixture(scope="module")
def record():
    return read_vasp_dir(VASP_SI)


def test_record_identity_and_structure(record, vasprun):
    assert record.id == "vasp:vasp-si"
    assert record.source == "vasp"
    assert record.formula == "Si"
    assert len(record.structure) == 8
    assert record.structure.lattice.abc == pytest.approx((5.523145, 5.468728, 5.468728), abs=1e-6)
    assert record.structure.volume == pytest.approx(vasprun.final_structure.volume)
    assert "vasprun.xml.gz (structure, DOS, gap from eigenvalues)" in record.provenance
    assert "CHGCAR (density)" in record.provenance
    assert record.labels == {}


def test_gap_from_eigenvalues_matches_pymatgen(record, vasprun):
    gap, _cbm, _vbm, _direct = vasprun.eigenvalue_band_properties
    assert record.dos.band_gap == pytest.approx(gap, abs=1e-9)
    assert record.dos.band_gap == pytest.approx(0.5796, abs=1e-4)
    assert record.dos.reference == "vbm"
    assert "eigenvalues" in record.dos.convention


def test_dos_is_zero_inside_the_gap_and_not_below(record):
    gap = record.dos.band_gap
    total = record.dos.total
    inside = (DOS_ENERGIES > 0.05) & (DOS_ENERGIES < gap - 0.05)
    assert inside.sum() > 5
    assert np.abs(total[inside]).max() < 1e-3 * total.max()
    valence_top = (DOS_ENERGIES > -1.0) & (DOS_ENERGIES < -0.3)
    assert total[valence_top].min() > 0.5  # states/eV per cell: the valence band ends at the zero


def test_dos_window_integral_matches_vasp_integrated_dos(record, vasprun):
    from pymatgen.electronic_structure.core import Spin

    _gap, _cbm, vbm, _direct = vasprun.eigenvalue_band_properties
    idos = vasprun.idos
    counted = idos.densities[Spin.up] + idos.densities[Spin.down]
    assert np.interp(vbm, idos.energies, counted) == pytest.approx(32.0, abs=0.05)  # 8 Si x 4 valence e
    expected = np.interp(vbm, idos.energies, counted) - np.interp(vbm - 10.0, idos.energies, counted)
    assert expected == pytest.approx(29.71, abs=0.01)  # Si's valence band is ~12 eV wide: the window cuts its bottom
    assert _window_integral(record.dos.total, -10.0, 0.0) == pytest.approx(expected, rel=0.03)


def test_spin_channels_kept_and_summed(record):
    assert record.dos.spin is not None and record.dos.spin.shape == (2, 601)
    np.testing.assert_allclose(record.dos.spin.sum(axis=0), record.dos.total, rtol=1e-5, atol=1e-5)
    peak = record.dos.total.max()
    np.testing.assert_allclose(record.dos.spin[0], record.dos.spin[1], atol=0.05 * peak)  # non-magnetic Si


def test_theory_and_broadening_read_from_the_run(record):
    assert record.dos.theory == "PBE, VASP 5.4.4"
    assert "tetrahedron" in record.dos.broadening and "ISMEAR=-5" in record.dos.broadening
    assert record.density.theory == "PBE, VASP 5.4.4"


def test_dos_from_vasprun_equals_record_dos(record):
    dos = dos_from_vasprun(VASP_SI / "vasprun.xml.gz")
    np.testing.assert_array_equal(dos.total, record.dos.total)
    assert dos.band_gap == record.dos.band_gap


def test_density_integrates_to_32_valence_electrons(record):
    density = record.density
    assert density.units == "e/Å^3"
    assert density.grid.shape == (32, 32, 32)
    assert density.integral == pytest.approx(32.0, rel=0.01)
    assert float(density.grid.mean()) * record.structure.volume == pytest.approx(32.0, rel=0.01)


def test_density_is_the_chgcar_on_the_canonical_cell(record):
    """The 8-atom CHGCAR (48x42x42) is stored on Si's 2-atom canonical cell; mapped back onto the CHGCAR's
    own cell it is the CHGCAR again (its charge piles up at the Si-Si bond centres)."""
    from pymatgen.io.vasp import Chgcar

    from mlcm_core.data.conventions import resample_density
    from mlcm_core.data.density_frame import canonical_cell, resample_onto_cell

    chg = Chgcar.from_file(str(VASP_SI / "CHGCAR.gz"))
    original = resample_density(chg.data["total"] / chg.structure.volume)
    lattice, origin = canonical_cell(chg.structure)
    np.testing.assert_allclose(record.density.lattice, lattice)
    assert abs(np.linalg.det(lattice)) == pytest.approx(chg.structure.volume / 4, rel=1e-6)
    back = resample_onto_cell(record.density.grid, lattice, chg.structure.lattice.matrix, -origin)
    assert np.corrcoef(back.ravel(), original.ravel())[0, 1] > 0.99
    assert np.abs(back - original).max() < 0.05 * original.max()
    assert back[4, 4, 4] > 0.95 * back.max()  # midpoint of the Si(0,0,0)-Si(1/4,1/4,1/4) bond


def test_density_from_chgcar_without_theory():
    density = density_from_chgcar(VASP_SI / "CHGCAR.gz")
    assert density.integral == pytest.approx(32.0, rel=0.01)
    assert "not recorded" in density.theory


def test_doscar_parsed_and_its_bad_scale_warned():
    block = _doscar_block()
    with pytest.warns(UserWarning, match=r"0\.323 states below E_F for 8 ions"):
        dos = dos_from_doscar(VASP_SI / "DOSCAR.gz")
    assert dos.spin is not None
    assert "from the DOS" in dos.convention and "not recorded" in dos.theory
    total = block[:, 1] + block[:, 2]
    gap, vbm = dos_gap_and_vbm(block[:, 0], total, 5.60379091)
    assert dos.band_gap == pytest.approx(gap)
    idos = block[:, 3] + block[:, 4]
    expected = np.interp(vbm, block[:, 0], idos) - np.interp(vbm - 10.0, block[:, 0], idos)
    assert _window_integral(dos.total, -10.0, 0.0) == pytest.approx(expected, rel=0.03)


def test_doscar_is_one_99th_of_the_vasprun_dos(vasprun):
    """Pins the quirk of this DOSCAR that the warning above reports."""
    from pymatgen.electronic_structure.core import Spin

    block = _doscar_block()
    np.testing.assert_allclose(block[:, 0], vasprun.tdos.energies, atol=6e-4)
    occupied = block[:, 1] > 1e-3
    ratio = vasprun.tdos.densities[Spin.up][occupied] / block[occupied, 1]
    assert np.median(ratio) == pytest.approx(99.0, rel=1e-3)


def test_doscar_ion_count_checked_against_structure(record):
    from pymatgen.core import Structure

    two_atoms = Structure(record.structure.lattice, ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    with pytest.raises(VaspInputError, match="8 ions but the structure has 2 sites"):
        dos_from_doscar(VASP_SI / "DOSCAR.gz", two_atoms)


def test_dir_with_doscar_and_poscar_only(tmp_path, record):
    from pymatgen.io.vasp import Poscar

    run = tmp_path / "si-doscar"
    run.mkdir()
    shutil.copy(VASP_SI / "DOSCAR.gz", run / "DOSCAR.gz")
    Poscar(record.structure).write_file(run / "POSCAR")
    with pytest.warns(UserWarning, match="DOS scale looks wrong"):
        rec = read_vasp_dir(run)
    assert rec.id == "vasp:si-doscar"
    assert rec.density is None
    assert len(rec.structure) == 8
    assert "DOSCAR.gz (DOS, gap from the DOS)" in rec.provenance


def test_plain_doscar_and_fortran_exponents(tmp_path):
    """An uncompressed DOSCAR whose tiny values lost the 'E' (VASP writes 0.1234-100)."""
    with gzip.open(VASP_SI / "DOSCAR.gz", "rt") as handle:
        lines = handle.read().splitlines()
    lines[7] = "     -7.233  0.1000-100  0.0000E+00  0.0000E+00  0.0000E+00"
    (tmp_path / "DOSCAR").write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning):
        dos = dos_from_doscar(tmp_path / "DOSCAR")
    assert dos.total.shape == (601,)


def test_gap_from_the_dos_alone_is_within_one_grid_step(vasprun, record):
    step = float(np.diff(vasprun.complete_dos.energies).max())
    dos = dos_from_complete_dos(vasprun.complete_dos)
    assert "gap from the DOS" in dos.convention
    assert record.dos.band_gap <= dos.band_gap <= record.dos.band_gap + step


def test_metal_reference_is_the_fermi_level(vasprun):
    from pymatgen.electronic_structure.core import Spin

    complete = vasprun.complete_dos
    dos = dos_from_complete_dos(complete, eigenvalue_gap=(0.0, 0.0))
    assert dos.reference == "efermi" and dos.band_gap == 0.0
    total = complete.densities[Spin.up] + complete.densities[Spin.down]
    np.testing.assert_allclose(dos.total, standardize_dos(complete.energies, total, complete.efermi), rtol=1e-6)


def test_chgcar_from_another_cell_is_refused(tmp_path, record):
    from pymatgen.io.vasp import Chgcar, Poscar

    run = tmp_path / "mixed"
    run.mkdir()
    shutil.copy(VASP_SI / "vasprun.xml.gz", run / "vasprun.xml.gz")
    other = record.structure.copy()
    other.scale_lattice(other.volume * 1.1)
    Chgcar(Poscar(other), {"total": np.full((8, 8, 8), 32.0)}).write_file(run / "CHGCAR")
    with pytest.raises(VaspInputError, match="different cell"):
        read_vasp_dir(run)


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(VaspInputError, match=r"no vasprun\.xml, DOSCAR or CHGCAR"):
        read_vasp_dir(tmp_path)
    with pytest.raises(VaspInputError, match="not a folder"):
        read_vasp_dir(tmp_path / "absent")
