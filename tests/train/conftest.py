"""Fixtures for the training tests: a tiny multimodal store and a tiny model.

The store is built once per session in a temporary directory from the shipped default dataset:

* 20 real Materials Project structures (with their real MP labels), 12 train / 4 val / 4 test in the store's
  own split (the tiny store re-derives the same split: same seed, each material its own de-dup group).
  Their DOS and charge densities are SYNTHETIC TEST FIXTURES, computed deterministically from the structure
  (Gaussian peaks placed by atomic number; periodic Gaussian atoms on the 32^3 grid) and labelled as such in
  every theory/provenance field. They are not physics: they only give the contrastive loss something
  learnable (each DOS/density is a function of its structure).
* 4 real MultiMat materials with their real DOS and density (no structure), to mix in realistic arrays and
  rows with a missing modality.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mlcm_core.data.conventions import DENSITY_GRID, DOS_ENERGIES
from tests.conftest import TINY_MODEL

FIXTURE_TAG = "SYNTHETIC TEST FIXTURE (not physics)"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def synthetic_dos(structure) -> np.ndarray:
    """Test fixture: one Gaussian per site at an energy set by Z (not a physical DOS)."""
    dos = np.full(DOS_ENERGIES.shape, 0.05)
    for site in structure:
        z = site.specie.Z
        centre = -9.0 + (0.73 * z) % 18.0
        dos += np.exp(-0.5 * ((DOS_ENERGIES - centre) / 0.4) ** 2)
    return dos.astype(np.float32)


def synthetic_density(structure) -> np.ndarray:
    """Test fixture: periodic Gaussian 'atoms' of weight Z on the fractional 32^3 grid (not a real density)."""
    g = (np.arange(DENSITY_GRID) + 0.5) / DENSITY_GRID
    grid = np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)  # (32^3, 3) fractional
    rho = np.full(len(grid), 1e-3)
    for site in structure:
        d = grid - site.frac_coords
        d -= np.round(d)  # minimum image
        r2 = np.einsum("ij,ij->i", d @ structure.lattice.matrix, d @ structure.lattice.matrix)
        rho += site.specie.Z * np.exp(-r2 / (2 * 0.6**2))
    return rho.reshape((DENSITY_GRID,) * 3).astype(np.float32)


def _pick(table, split: str, n: int):
    mp = table[(table["source"] == "matminer-0.3.9") & (table["id"] == table["dedup_group"])
               & table["formation_energy_per_atom_mp_pbe"].notna() & (table["nsites"] <= 6)]
    return mp[mp["split"] == split].sort_values("id").head(n)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, default_store):
    from mlcm_core.data.record import DensityData, DOSData, MaterialRecord
    from mlcm_core.data.store import DatasetStore

    t = default_store.table
    label_cols = ["formation_energy_per_atom_mp_pbe", "band_gap_mp_pbe", "k_vrh_mp_pbe", "g_vrh_mp_pbe"]
    records = []
    for split, n in (("train", 12), ("val", 4), ("test", 4)):
        for k, r in enumerate(_pick(t, split, n).itertuples()):
            s = default_store.structure(r.id)
            labels = {c: float(getattr(r, c)) for c in label_cols if not np.isnan(getattr(r, c))}
            with_dos = not (split == "train" and k == 11)  # one structure-only row
            with_density = not (split == "train" and k >= 10)  # one structure+DOS row
            records.append(MaterialRecord(
                id=r.id, source="test-fixture", structure=s, labels=labels, provenance=FIXTURE_TAG,
                dos=DOSData(total=synthetic_dos(s), reference="efermi", theory=FIXTURE_TAG, broadening=FIXTURE_TAG,
                            convention=FIXTURE_TAG) if with_dos else None,
                density=DensityData(grid=synthetic_density(s), units="arbitrary", theory=FIXTURE_TAG,
                                    convention=FIXTURE_TAG) if with_density else None))
    mm = t[(t["source"] == "multimat-mp") & t["has_dos"].astype(bool) & t["has_charge_density"].astype(bool)]
    mm = mm.sort_values("id")
    mm = pd.concat([mm[mm["split"] == s].head(n) for s, n in (("train", 2), ("val", 1), ("test", 1))])
    dos, dens = default_store.dos(mm["id"].tolist()), default_store.density(mm["id"].tolist())
    for k, r in enumerate(mm.itertuples()):
        records.append(MaterialRecord(
            id=r.id, source=r.source, provenance="real MultiMat arrays (copied from the default store)",
            dos=DOSData(total=dos[k], reference=r.dos_reference, theory=r.dos_theory, broadening=r.dos_broadening),
            density=DensityData(grid=dens[k], units=r.density_units, theory=r.density_theory,
                                convention=r.density_convention)))
    store = DatasetStore.create(tmp_path_factory.mktemp("tiny") / "store", description=FIXTURE_TAG)
    store.append(records, "fixture", {"source": FIXTURE_TAG})
    return store


@pytest.fixture
def tiny_config(tmp_path):
    from mlcm_core.train.config import TrainConfig

    return TrainConfig(model="cpu", model_overrides=TINY_MODEL, epochs=2, batch_size=4, lr=3e-3, warmup_steps=2,
                       weight_decay=0.01, seed=1, out_dir=str(tmp_path / "run"), log_every=1, checkpoint_every=3,
                       keep_last=0, device="cpu", graph_cache_dir=str(tmp_path / "graphs"))
