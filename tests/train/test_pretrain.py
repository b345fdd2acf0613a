"""Pre-training on a tiny store: batching, the model's masking, learning, train-only rows, exact resume."""

from __future__ import annotations

import csv
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from mlcm_core.featurize.dataset import MultimodalDataset, collate_multimodal
from mlcm_core.models.multimodal import MultimodalConfig, MultimodalModel
from mlcm_core.models.checkpoint import load_weights, read_checkpoint_info
from mlcm_core.train.pretrain import compute_loss, pretrain, select_rows

from .conftest import TINY_MODEL


def _all_ids(store):
    return store.table["id"].tolist()


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return MultimodalModel(MultimodalConfig.cpu().with_overrides(TINY_MODEL))


def test_dataset_and_collate(tiny_store, tmp_path):
    t = tiny_store.table.set_index("id")
    ids = _all_ids(tiny_store)
    ds = MultimodalDataset(tiny_store, ids, cache_dir=tmp_path, progress=False)
    batch = collate_multimodal([ds[k] for k in range(len(ds))])
    b = len(ids)
    assert batch.dos.shape == (b, 601) and batch.density.shape == (b, 32, 32, 32)
    for key, col in [("has_crystal", "has_structure"), ("has_dos", "has_dos"), ("has_density", "has_charge_density")]:
        assert batch.masks[key].dtype == torch.bool
        assert batch.masks[key].tolist() == t.loc[ids, col].astype(bool).tolist()
    # graphs only for rows with a structure, mapped back by graph_index
    assert batch.graphs.num_graphs == int(batch.masks["has_crystal"].sum())
    assert batch.graph_index.tolist() == np.flatnonzero(batch.masks["has_crystal"].numpy()).tolist()
    k = int(batch.graph_index[3])
    assert batch.graphs[3].num_nodes == int(t.at[ids[k], "nsites"])
    # zeros where missing, the stored values where present
    assert batch.dos[~batch.masks["has_dos"]].abs().sum() == 0
    assert batch.density[~batch.masks["has_density"]].abs().sum() == 0
    j = int(np.flatnonzero(batch.masks["has_density"].numpy())[0])
    assert torch.allclose(batch.density[j], torch.from_numpy(tiny_store.density(ids[j])[0]))
    # labels: NaN where missing
    fe = batch.labels["formation_energy_per_atom_mp_pbe"]
    assert torch.isnan(fe).tolist() == t.loc[ids, "formation_energy_per_atom_mp_pbe"].isna().tolist()
    # the graph cache is hit the second time (no featurization) and gives identical graphs
    ds2 = MultimodalDataset(tiny_store, ids, cache_dir=tmp_path, progress=False)
    assert torch.equal(ds2[0].graph.edge_potentials, ds[0].graph.edge_potentials)
    assert len(list(tmp_path.rglob("*.pt"))) == batch.graphs.num_graphs


def test_model_encodes_only_present_rows(tiny_store, tiny_model, tmp_path):
    ids = _all_ids(tiny_store)
    ds = MultimodalDataset(tiny_store, ids, cache_dir=tmp_path, progress=False)
    batch = collate_multimodal([ds[k] for k in range(len(ds))])
    tiny_model.eval()
    out = tiny_model(batch)
    for m, key in [("crystal", "has_crystal"), ("dos", "has_dos"), ("density", "has_density")]:
        z, mask = out[m], batch.masks[key]
        assert z.shape == (len(ids), 16)
        assert torch.allclose(z[mask].norm(dim=1), torch.ones(int(mask.sum())), atol=1e-5)
        assert z[~mask].abs().sum() == 0
    # .embed on raw inputs reproduces the batch rows
    k = int(batch.graph_index[0])
    assert torch.allclose(tiny_model.embed("crystal", tiny_store.structure(ids[k]))[0], out["crystal"][k], atol=1e-5)
    j = int(np.flatnonzero(batch.masks["has_dos"].numpy())[0])
    assert torch.allclose(tiny_model.embed("dos", batch.dos[j])[0], out["dos"][j], atol=1e-5)
    # the temperature is clamped at scale 100
    with torch.no_grad():
        tiny_model.logit_scale.fill_(10.0)
    assert float(tiny_model(batch)["logit_scale"].detach()) == pytest.approx(math.log(100))
    tiny_model.clamp_logit_scale_()
    assert float(tiny_model.logit_scale.detach()) == pytest.approx(math.log(100))


def test_loss_decreases_on_a_fixed_batch(tiny_store, tiny_model, tmp_path):
    ids = select_rows(tiny_store, "train", ("crystal", "dos", "density"), 2)
    ds = MultimodalDataset(tiny_store, ids, cache_dir=tmp_path, progress=False)
    batch = collate_multimodal([ds[k] for k in range(8)])
    opt = torch.optim.AdamW(tiny_model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss, _ = compute_loss(tiny_model, batch, "all_pairs_clip", {}, ("crystal", "dos", "density"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        tiny_model.clamp_logit_scale_()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0], losses


def test_select_rows_train_only(tiny_store):
    t = tiny_store.table.set_index("id")
    ids = select_rows(tiny_store, "train", ("crystal", "dos", "density"), 2)
    assert ids and all(t.at[i, "split"] == "train" for i in ids)
    assert "mp-10182" not in ids  # structure only: one modality
    assert set(ids) == set(t.index[(t["split"] == "train")]) - {"mp-10182"}
    assert select_rows(tiny_store, "train", ("crystal", "dos"), 2, max_rows=3) == \
        select_rows(tiny_store, "train", ("crystal", "dos"), 2, max_rows=3)
    assert len(select_rows(tiny_store, "train", ("crystal", "dos"), 2, max_rows=3)) == 3


def test_pretrain_sees_only_train_rows_and_logs(tiny_store, tiny_config, monkeypatch):
    import mlcm_core.train.pretrain as pt

    split = tiny_store.table.set_index("id")["split"]
    trained, collated = set(), set()
    real_step, real_collate = pt._Pretrainer._train_step, pt.collate_multimodal

    def spy_step(self, batch):
        trained.update(batch.ids)
        return real_step(self, batch)

    def spy_collate(items):
        collated.update(it.id for it in items)
        return real_collate(items)

    monkeypatch.setattr(pt._Pretrainer, "_train_step", spy_step)
    monkeypatch.setattr(pt, "collate_multimodal", spy_collate)
    ckpt = pretrain(tiny_store, tiny_config, progress=False)
    assert trained and {split[i] for i in trained} == {"train"}
    assert {split[i] for i in collated} == {"train", "val"}  # val only for the validation loss; test never read
    info = read_checkpoint_info(ckpt)
    assert info.epoch == 2 and info.extra["train_rows"] == len(trained)
    with open(tiny_config.out_dir + "/log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    val = [r for r in rows if r["phase"] == "val"]
    assert len(val) == 2 and all(math.isfinite(float(r["loss"])) for r in val)
    train = [r for r in rows if r["phase"] == "train"]
    assert all(float(r["samples_per_s"]) > 0 and 0 < float(r["scale"]) <= 100 for r in train)
    with pytest.raises(FileExistsError):  # never overwrite a run by accident
        pretrain(tiny_store, tiny_config, progress=False)


@pytest.mark.parametrize("stop_at", [3, 2])  # 3 = end of epoch 1 (steps per epoch: 3); 2 = mid-epoch
def test_resume_equals_uninterrupted(tiny_store, tiny_config, tmp_path, stop_at):
    straight = pretrain(tiny_store, tiny_config, progress=False)
    cfg = replace(tiny_config, out_dir=str(tmp_path / "interrupted"))
    first = pretrain(tiny_store, cfg, stop_after_steps=stop_at, progress=False)
    assert read_checkpoint_info(first).step == stop_at
    resumed = pretrain(tiny_store, cfg, resume=True, progress=False)
    assert read_checkpoint_info(resumed).step == read_checkpoint_info(straight).step
    a, b = load_weights(straight), load_weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6, rtol=1e-5), k
    with open(tiny_config.out_dir + "/log.csv") as f1, open(cfg.out_dir + "/log.csv") as f2:
        r1 = [(r["step"], r["phase"], r["loss"], r["lr"]) for r in csv.DictReader(f1)]
        r2 = [(r["step"], r["phase"], r["loss"], r["lr"]) for r in csv.DictReader(f2)]
    assert [x[:2] for x in r1] == [x[:2] for x in r2]  # no duplicated or missing log rows
    assert np.allclose([float(x[2]) for x in r1], [float(x[2]) for x in r2], atol=1e-5)


def test_unpaired_rows_join_every_batch_as_negatives(tiny_store, tiny_config, monkeypatch):
    """unpaired_per_batch: each training batch = its paired rows + k train rows with one modality (the
    structure-only mp-10182 here), drawn reproducibly; the trained-row count and the paired rows are as before."""
    import mlcm_core.train.pretrain as pt

    seen: list[list[str]] = []
    real_step = pt._Pretrainer._train_step

    def spy_step(self, batch):
        seen.append(list(batch.ids))
        return real_step(self, batch)

    monkeypatch.setattr(pt._Pretrainer, "_train_step", spy_step)
    cfg = replace(tiny_config, unpaired_per_batch=1, loss_options={"unpaired_negatives": True})
    assert pt.select_unpaired_rows(tiny_store, "train", cfg.modalities, cfg.min_modalities) == ["mp-10182"]
    pretrain(tiny_store, cfg, progress=False)
    paired = set(select_rows(tiny_store, "train", cfg.modalities, cfg.min_modalities))
    assert seen and all(b[-1] == "mp-10182" and set(b[:-1]) <= paired for b in seen)
    plain: list[list[str]] = []
    monkeypatch.setattr(pt._Pretrainer, "_train_step", lambda self, batch: (plain.append(list(batch.ids)),
                                                                          real_step(self, batch))[1])
    pretrain(tiny_store, replace(tiny_config, out_dir=tiny_config.out_dir + "-plain"), progress=False)
    assert [b[:-1] for b in seen] == plain  # the paired permutation is unchanged by the option
