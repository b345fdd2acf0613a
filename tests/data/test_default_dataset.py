"""The shipped default dataset holds what the sources hold, with the conventions applied."""

from __future__ import annotations

import numpy as np
import pytest

from mlcm_core.data.conventions import DOS_ENERGIES


def test_counts(default_store):
    t = default_store.table
    info = default_store.info()
    mp = t[t["source"] == "matminer-0.3.9"]
    assert mp["id"].nunique() == len(mp) == 6317
    assert (t["source"] == "cdvae-perov_5").sum() == 7572
    assert (t["source"] == "cdvae-carbon_24").sum() == 4062
    assert (t["source"] == "multimat-mp").sum() == 335
    assert info["materials"] == 6317 + 11634 + 335  # MultiMat ids have no structure offline: disjoint
    assert info["modalities"]["structure"] == 6317 + 11634
    assert t["id"].is_unique


def test_label_columns_never_mix_sources(default_store):
    t = default_store.table
    assert t.loc[t["source"] == "cdvae-perov_5", "band_gap_mp_pbe"].isna().all()
    assert t.loc[t["source"] == "matminer-0.3.9", "gap_direct_castelli_gllbsc"].isna().all()
    assert t.loc[t["source"] == "cdvae-carbon_24", "formation_energy_per_atom_mp_pbe"].isna().all()
    carbon = t.loc[t["source"] == "cdvae-carbon_24", "total_energy_per_atom_carbon24_pbe"]
    assert carbon.notna().all() and carbon.between(-160, -150).all()  # total energies, not formation energies
    gan = t.set_index("id").loc["mp-830"]  # zinc-blende GaN: MP PBE gap 1.57 eV (Petousis 2016 set)
    assert gan["formula"] == "GaN" and gan["crystal_system"] == "cubic" and gan["spacegroup_number"] == 216
    assert gan["band_gap_mp_pbe"] == pytest.approx(1.57)


def test_multimat_entries_are_flagged(default_store):
    t = default_store.table
    mm = t[t["source"] == "multimat-mp"]
    assert not mm["has_structure"].any() and mm["formula"].isna().all()
    assert mm["has_dos"].sum() == 263  # 264 in the source, one with broken energies dropped
    assert mm["has_charge_density"].sum() == 323
    assert mm.loc[mm["has_dos"], "dos_convention"].str.contains("spin-up channel only").all()
    assert mm.loc[mm["has_charge_density"], "density_units"].str.contains("rho\\*V_cell").all()


def test_multimat_dos_zero_at_vbm_when_gapped(default_store):
    t = default_store.table
    gapped = t[(t["source"] == "multimat-mp") & (t["dos_band_gap"] > 0.8)].head(20)
    assert len(gapped) > 5
    dos = default_store.dos(gapped["id"].tolist())
    for curve, gap in zip(dos, gapped["dos_band_gap"]):
        inside = (DOS_ENERGIES > 0.25) & (DOS_ENERGIES < gap - 0.25)  # source grid: steps of 0.1 eV, doubled at some edges
        assert curve[inside].max() < 1e-2  # empty gap above the VBM
        assert curve[(DOS_ENERGIES > -0.5) & (DOS_ENERGIES <= 0)].max() > 1e-2  # states just below


def test_split_is_grouped_and_balanced(default_store):
    t = default_store.table
    frac = t["split"].value_counts(normalize=True)
    assert frac["train"] == pytest.approx(0.8, abs=0.02)
    assert frac["val"] == pytest.approx(0.1, abs=0.02) and frac["test"] == pytest.approx(0.1, abs=0.02)
    assert t.groupby("dedup_group")["split"].nunique().max() == 1
    assert (t.groupby("dedup_group").size() > 1).sum() > 0  # real duplicates were found


def test_densities_load_lazily_as_float(default_store):
    t = default_store.table
    mm = t[t["has_charge_density"] & (t["source"] == "multimat-mp")].head(3)
    d = default_store.density(mm["id"].tolist())
    assert d.shape == (3, 32, 32, 32) and d.dtype == np.float32
    # VASP rho*V convention: the grid mean is the valence electron count
    assert np.allclose(d.mean(axis=(1, 2, 3)), mm["density_integral"], rtol=2e-3)


def test_gpaw_densities_are_in_e_per_A3(default_store):
    t = default_store.table
    gp = t[t["has_charge_density"] & t["density_source"].isin(["dft-seed", "gpaw-engine"])].head(10)
    assert len(gp) == 10 and (gp["density_units"] == "e/Å^3").all()
    rho = default_store.density(gp["id"].tolist())
    electrons = rho.mean(axis=(1, 2, 3)) * gp["volume"].to_numpy()  # integral over the cell
    np.testing.assert_allclose(electrons, gp["density_integral"], rtol=5e-3)
