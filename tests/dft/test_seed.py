"""The GPAW seed reads into valid MaterialRecords, and its band-coverage audit finds the known cases."""

from __future__ import annotations

import numpy as np
import pytest

from mlcm_core.dft.seed import SEED_DIR, band_coverage_audit, load_seed, seed_index, seed_structures

pytestmark = pytest.mark.skipif(not (SEED_DIR / "structures.json").exists(), reason=f"seed not present at {SEED_DIR}")


@pytest.fixture(scope="module")
def records():
    return {r.id: r for r in load_seed()}


def test_every_seed_npz_becomes_a_record(records) -> None:
    npz = {p.stem for p in SEED_DIR.glob("*.npz")}
    assert set(records) == npz and len(records) == 139
    assert all(r.source == "dft-seed" and r.id.startswith("mp-") for r in records.values())


def test_structure_and_labels(records) -> None:
    index = seed_index()
    si = records["mp-149"] if "mp-149" in records else records["mp-27"]
    assert si.structure.composition.reduced_formula == "Si"
    for mid, r in records.items():
        assert len(r.structure) == int(index[mid]["nsites"])
        gap = float(index[mid]["band_gap"])
        assert r.labels["band_gap_gpaw_pbe"] == pytest.approx(gap if gap > 0.05 else 0.0, abs=1e-3)
        assert r.dos.reference == ("vbm" if gap > 0.05 else "efermi")
        assert "magmom_gpaw_pbe" not in r.labels
    assert sum(r.dos.reference == "vbm" for r in records.values()) == 42  # README: 42 with a gap > 0.05 eV


def test_density_integral_is_pseudo_integral(records) -> None:
    for r in records.values():
        integral = float(r.density.grid.mean()) * r.structure.volume
        assert integral == pytest.approx(r.density.integral, rel=1e-4)
        assert r.density.units == "e/Å^3"


def test_structures_rebuilt_from_json() -> None:
    structures = seed_structures()
    assert structures["mp-10"].composition.reduced_formula == "As"
    assert np.allclose(structures["mp-10"].frac_coords[1], [0.75, 0.75, 0.75])


def test_band_coverage_audit_flags_cs() -> None:
    audit = {a.material_id: a for a in band_coverage_audit()}
    assert len(audit) == 139
    assert audit["mp-11832"].truncated and audit["mp-11832"].edge_ev < 5  # Cs: DOS ends at +4.4 eV
    assert sum(a.truncated for a in audit.values()) == 2
    assert sum(a.top_band_below for a in audit.values()) == 12
    assert not audit["mp-22906"].top_band_below
