"""The tiny explorer fixture shared by the explore tests (see test_explorer.py's docstring)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch

from mlcm_core.data.conventions import LABELS
from tests.conftest import TINY_MODEL


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory, default_store):
    """(store, checkpoint dir, precomputed dir) built once for the module."""
    from mlcm_core.data.record import DensityData, DOSData, MaterialRecord
    from mlcm_core.data.store import DatasetStore
    from mlcm_core.models.multimodal import MultimodalConfig, MultimodalModel

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("explore")
    t = default_store.table
    small = pd.to_numeric(t["nsites"]).fillna(99) <= 4
    mp = t[(t["source"] == "matminer-0.3.9") & small].sort_values("id")
    with_arrays = mp[mp["has_dos"].astype(bool) & mp["has_charge_density"].astype(bool)].head(10)
    plain = mp[~mp["has_dos"].astype(bool) & mp["formation_energy_per_atom_mp_pbe"].notna()]
    plain = pd.concat([plain[plain["band_gap_mp_pbe"].notna()].head(11), plain[plain["band_gap_mp_pbe"].isna()].head(6)])
    mm = t[(t["source"] == "multimat-mp") & t["has_dos"].astype(bool) & t["has_charge_density"].astype(bool)]
    mm = mm.sort_values("id").head(3)

    def labels(r) -> dict[str, float]:
        return {c: float(getattr(r, c)) for c in LABELS if c in t.columns and pd.notna(getattr(r, c))}

    def arrays(r, with_structure: bool) -> dict:
        dos, dens = default_store.dos(r.id)[0], default_store.density(r.id)[0]
        return {"dos": DOSData(total=dos, reference=r.dos_reference, theory=r.dos_theory, broadening=r.dos_broadening,
                               convention=r.dos_convention or "total DOS"),
                "density": DensityData(grid=dens, units=r.density_units, theory=r.density_theory,
                                       convention=r.density_convention)}

    records = []
    for r in with_arrays.itertuples():
        records.append(MaterialRecord(id=r.id, source=r.source, structure=default_store.structure(r.id),
                                      labels=labels(r), provenance="copied from the default store", **arrays(r, True)))
    for r in plain.itertuples():
        records.append(MaterialRecord(id=r.id, source=r.source, structure=default_store.structure(r.id),
                                      labels=labels(r), provenance="copied from the default store"))
    for r in mm.itertuples():
        records.append(MaterialRecord(id=r.id, source=r.source, provenance="copied from the default store",
                                      **arrays(r, False)))
    store = DatasetStore.create(root / "store")
    store.append(records, "fixture", {"source": "tests/explore fixture: real materials from the default store"})

    torch.manual_seed(0)
    model = MultimodalModel(MultimodalConfig.cpu().with_overrides(TINY_MODEL))
    ckpt = model.save_checkpoint(root / "ckpt")

    from mlcm_core.explore.build import build_precomputed

    pre = root / "precomputed"
    build_precomputed(store.root, ckpt, pre, cache_dir=root / "graphs", progress=False, verify_store=False)
    return store, ckpt, pre


@pytest.fixture(scope="session")
def heads(tiny, tmp_path_factory):
    """(store, precomputed dir with explore/ + heads/) — a copy, so the shared fixture stays without heads."""
    from mlcm_core.explore.predict import build_heads
    from mlcm_core.train.config import FinetuneConfig
    from mlcm_core.train.finetune import finetune

    store, _, pre = tiny
    root = tmp_path_factory.mktemp("heads")
    shutil.copytree(pre, root / "precomputed")
    runs = {}
    for target in ("formation_energy_per_atom", "log10_k_vrh"):
        cfg = FinetuneConfig(model="cpu", model_overrides={k: TINY_MODEL[k] for k in ("embed_dim", "crystal")},
                             epochs=2, ensemble=2, patience=0, warmup_steps=1, batch_size=8,
                             out_dir=str(root / "runs" / target), graph_cache_dir=str(root / "graphs"))
        finetune(store, cfg, target, progress=False)
        runs[target] = root / "runs" / target
    build_heads(store, runs, root / "precomputed" / "heads", cache_dir=root / "graphs", progress=False)
    return store, root / "precomputed"
