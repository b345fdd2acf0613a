"""The modality registry: a fourth modality added by ``register`` alone goes from the store to a query.

The extra modality is a powder X-ray diffraction pattern ("xrd"): 64 bins of 2θ from 10 to 90° (Cu Kα,
pymatgen's ``XRDCalculator``), max-normalised, computed from each stored structure by its spec's ``read``.
Its encoder is a two-layer MLP defined here. Nothing outside this file knows about it: the store, dataset,
model, losses, training loop, embedding table and explorer all take it from the registry. The fixture
unregisters it afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch
from torch import Tensor, nn

from mlcm_core import modalities
from mlcm_core.modalities import ModalitySpec
from tests.conftest import TINY_MODEL

XRD_BINS = 64


@dataclass(frozen=True)
class XRDEncoderConfig:
    n_bins: int = XRD_BINS
    hidden: int = 32
    out_dim: int = 128


class XRDEncoder(nn.Module):
    """(B, n_bins) pattern -> (B, out_dim)."""

    def __init__(self, config: XRDEncoderConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(config.n_bins, config.hidden), nn.GELU(), nn.Linear(config.hidden, config.out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def read_xrd(store, ids) -> np.ndarray:
    """(n, 64) float32 binned powder patterns of the stored structures."""
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    calc = XRDCalculator()
    edges = np.linspace(10.0, 90.0, XRD_BINS + 1)
    out = np.zeros((len(ids), XRD_BINS), np.float32)
    for k, i in enumerate(ids):
        pattern = calc.get_pattern(store.structure(i), two_theta_range=(10.0, 90.0))
        out[k], _ = np.histogram(pattern.x, bins=edges, weights=pattern.y)
        out[k] /= max(float(out[k].max()), 1e-12)
    return out


XRD = ModalitySpec(name="xrd", kind="array", store_flag="has_structure", store_column="structure_json",
                   mask_key="has_xrd", encoder=XRDEncoder, config=XRDEncoderConfig, shape=(XRD_BINS,),
                   units="intensity / max intensity", label="powder XRD (Cu Kα)", read=read_xrd)
MODS = ("crystal", "dos", "xrd")


@pytest.fixture
def xrd():
    modalities.register(XRD)
    try:
        yield XRD
    finally:
        modalities.unregister("xrd")


@pytest.fixture(scope="module")
def small_store(tmp_path_factory, default_store):
    """14 real materials of the default store: 8 with structure + DOS (+ density), 6 with a structure only."""
    from mlcm_core.data.record import DensityData, DOSData, MaterialRecord
    from mlcm_core.data.store import DatasetStore

    t = default_store.table
    mp = t[(t["source"] == "matminer-0.3.9") & (pd.to_numeric(t["nsites"]).fillna(99) <= 4)].sort_values("id")
    rich = mp[mp["has_dos"].astype(bool) & mp["has_charge_density"].astype(bool)].head(8)
    plain = mp[~mp["has_dos"].astype(bool)].head(6)
    records = []
    for r in rich.itertuples():
        records.append(MaterialRecord(
            id=r.id, source=r.source, structure=default_store.structure(r.id), provenance="copied from the default store",
            dos=DOSData(total=default_store.dos(r.id)[0], reference=r.dos_reference, theory=r.dos_theory,
                        broadening=r.dos_broadening, convention=r.dos_convention or "total DOS"),
            density=DensityData(grid=default_store.density(r.id)[0], units=r.density_units, theory=r.density_theory,
                                convention=r.density_convention)))
    for r in plain.itertuples():
        records.append(MaterialRecord(id=r.id, source=r.source, structure=default_store.structure(r.id),
                                      provenance="copied from the default store"))
    store = DatasetStore.create(tmp_path_factory.mktemp("modalities") / "store")
    store.append(records, "fixture", {"source": "tests/test_modalities.py: real materials from the default store"})
    return store


def test_builtin_registry_matches_the_store_and_batch_names():
    assert modalities.modality_names() == modalities.MODALITIES == ("crystal", "dos", "density")
    assert [s.store_flag for s in modalities.specs()] == ["has_structure", "has_dos", "has_charge_density"]
    assert [s.mask_key for s in modalities.specs()] == ["has_crystal", "has_dos", "has_density"]
    with pytest.raises(ValueError, match="already registered"):
        modalities.register(modalities.get("dos"))
    with pytest.raises(ValueError, match="cannot be unregistered"):
        modalities.unregister("dos")
    with pytest.raises(KeyError, match="unknown modality 'xrd'"):
        modalities.get("xrd")


def test_extra_modality_end_to_end(xrd, small_store, tmp_path):
    from mlcm_core.explore.build import build_precomputed
    from mlcm_core.explore.embed import EmbeddingTable, embed_store
    from mlcm_core.explore.explorer import Explorer
    from mlcm_core.featurize.dataset import MultimodalDataset, collate_multimodal
    from mlcm_core.models.multimodal import MultimodalConfig, MultimodalModel
    from mlcm_core.models.checkpoint import read_checkpoint_info
    from mlcm_core.train.config import TrainConfig
    from mlcm_core.train.pretrain import compute_loss, pretrain

    torch.manual_seed(0)
    store = small_store
    ids = store.table["id"].astype(str).tolist()

    # store -> arrays -> batch
    patterns = xrd.read(store, ids)
    assert patterns.shape == (len(ids), XRD_BINS) and np.isfinite(patterns).all() and (patterns.max(1) == 1).all()
    ds = MultimodalDataset(store, ids, cache_dir=tmp_path / "graphs", modalities=MODS, labels=[], progress=False)
    assert ds.modality_counts() == {"crystal": 14, "dos": 8, "density": 0, "xrd": 14}
    batch = collate_multimodal([ds[k] for k in range(len(ds))])
    assert batch.inputs["xrd"].shape == (14, XRD_BINS) and batch.masks["has_xrd"].all()
    assert torch.equal(batch.inputs["xrd"], torch.from_numpy(patterns))
    assert set(batch.modality_masks()) == {"crystal", "dos", "density", "xrd"}

    # a pre-training step: finite loss, gradient reaches the xrd encoder, a few steps lower the loss
    config = TrainConfig(modalities=MODS, model_overrides=TINY_MODEL, loss="all_pairs_clip")
    mcfg = config.model_config()
    assert mcfg.modalities == MODS and mcfg.encoder_config("xrd") == XRDEncoderConfig(out_dim=16)
    model = MultimodalModel(mcfg)
    assert isinstance(model.encoders["xrd"], XRDEncoder)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss, out = compute_loss(model, batch, "all_pairs_clip", {}, MODS)
        assert out["xrd"].shape == (14, 16) and torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        grads = [p.grad for p in model.encoders["xrd"].parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]

    # the real training loop, its checkpoint (the xrd config under its own name) and a reload
    run = tmp_path / "run"
    ckpt = pretrain(store, TrainConfig(modalities=MODS, model_overrides=TINY_MODEL, epochs=1, batch_size=8,
                                       warmup_steps=1, min_modalities=2, out_dir=str(run), graph_cache_dir=str(tmp_path / "graphs")),
                    progress=False)
    info = read_checkpoint_info(ckpt)
    assert info.model_config["modalities"] == list(MODS) and info.model_config["xrd"]["out_dim"] == 16
    assert "encoders" not in info.model_config
    log = pd.read_csv(run / "log.csv")
    assert np.isfinite(log["loss"]).all()
    reloaded = MultimodalModel.from_checkpoint(ckpt)
    assert isinstance(reloaded.encoders["xrd"], XRDEncoder)
    assert MultimodalConfig.from_dict(info.model_config) == reloaded.config

    # embed: the table holds an xrd embedding for every structure, and survives a save/load
    table = embed_store(store, ckpt, cache_dir=tmp_path / "graphs")
    assert table.modalities == MODS and len(table.rows["xrd"]) == 14
    mid = ids[3]
    direct = reloaded.embed("xrd", patterns[3]).numpy()[0]
    np.testing.assert_allclose(table.get(mid, "xrd"), direct, atol=2e-3)
    assert EmbeddingTable.load(table.save(tmp_path / "emb")).modalities == MODS

    # query: the explorer searches the xrd gallery, by stored material and by a new pattern
    pre = tmp_path / "precomputed"
    build_precomputed(store.root, ckpt, pre, cache_dir=tmp_path / "graphs", progress=False, verify_store=False)
    explorer = Explorer.load(pre, store=store)
    hits = explorer.neighbours(mid, k=5, gallery="xrd")
    assert mid not in set(hits["id"]) and len(hits) == 5
    found = explorer.query(inputs={"xrd": patterns[3]}, gallery="xrd", k=3)
    assert found["sim_xrd"].iloc[0] > 0.99 and mid in set(found["id"])
    fused = explorer.query(inputs={"xrd": patterns[3]}, material_id=ids[0], weights={"xrd": 1, "material_id": 0},
                           gallery="xrd", k=3)
    assert found["id"].tolist() == fused["id"].tolist()


def test_unregistered_modality_is_refused_again(xrd):
    from mlcm_core.models.multimodal import MultimodalConfig

    data = MultimodalConfig.cpu(embed_dim=16).with_overrides({"modalities": MODS}).to_dict()
    assert data["xrd"] == {"n_bins": XRD_BINS, "hidden": 32, "out_dim": 16}
    modalities.unregister("xrd")
    try:
        with pytest.raises(ValueError, match="unknown MultimodalConfig fields"):
            MultimodalConfig.from_dict(data)
        with pytest.raises(ValueError, match="modalities must be a non-empty subset"):
            MultimodalConfig(modalities=MODS)
    finally:
        modalities.register(XRD)  # the fixture unregisters it
