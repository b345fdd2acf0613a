"""Fine-tuning on the tiny store: finite test MAE, fitted on train rows only, pre-trained encoder, uncertainty."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from mlcm_core.train.config import FinetuneConfig
from mlcm_core.train.finetune import finetune, resolve_target

from .conftest import TINY_MODEL


@pytest.fixture
def ft_config(tmp_path):
    return FinetuneConfig(model="cpu", model_overrides=TINY_MODEL, epochs=3, batch_size=4, lr=3e-3, warmup_steps=1,
                          head_hidden=16, patience=0, seed=0, out_dir=str(tmp_path / "ft"), device="cpu",
                          graph_cache_dir=str(tmp_path / "graphs"))


def test_targets():
    spec = resolve_target("k_vrh")
    assert (spec.column, spec.transform) == ("k_vrh_mp_pbe", "log10")
    y, keep = spec.apply(np.array([100.0, 0.0, -3.0, np.nan, 10.0]))
    assert keep.tolist() == [True, False, False, False, True]
    assert y[keep].tolist() == pytest.approx([2.0, 1.0])
    assert resolve_target("formation_energy").column == "formation_energy_per_atom_mp_pbe"
    assert resolve_target("band_gap").transform == "identity"
    assert resolve_target("g_vrh_mpapi_pbe").transform == "log10"
    with pytest.raises(KeyError):
        resolve_target("nonsense")


def test_finetune_from_scratch_train_rows_only(tiny_store, ft_config, monkeypatch):
    import mlcm_core.train.finetune as ft

    fitted: set[str] = set()
    real = ft._train_member

    def spy(member, cfg, enc_cfg, weights, train, val, *args):
        fitted.update(train.dataset.ids[k] for k in train.indices)
        return real(member, cfg, enc_cfg, weights, train, val, *args)

    monkeypatch.setattr(ft, "_train_member", spy)
    result = finetune(tiny_store, ft_config, "formation_energy_per_atom", progress=False)
    split = tiny_store.table.set_index("id")["split"]
    assert math.isfinite(result.test_mae) and math.isfinite(result.val_mae)
    assert (result.n_train, result.n_val, result.n_test) == (12, 4, 4)
    assert {split[i] for i in fitted} == {"train"} and fitted == set(result.train_ids)
    assert {split[i] for i in result.val_ids} == {"val"} and {split[i] for i in result.test_ids} == {"test"}
    assert result.predictions["id"].tolist() == result.test_ids
    assert (result.out_dir / "result.json").exists() and (result.checkpoints[0] / "model.safetensors").exists()


def test_finetune_from_pretrained_with_uncertainty(tiny_store, tiny_config, ft_config):
    from mlcm_core.train.pretrain import pretrain

    ckpt = pretrain(tiny_store, replace(tiny_config, epochs=1), progress=False)
    cfg = replace(ft_config, epochs=2, mc_dropout=4, ensemble=2, head_dropout=0.2)
    result = finetune(tiny_store, cfg, "formation_energy", pretrained=ckpt, progress=False)
    assert math.isfinite(result.test_mae) and len(result.checkpoints) == 2
    assert np.all(np.isfinite(result.predictions["y_std"])) and (result.predictions["y_std"] > 0).all()


def test_pretrained_without_crystal_encoder_is_rejected(tiny_store, tiny_config, ft_config):
    from mlcm_core.train.pretrain import pretrain

    cfg = replace(tiny_config, epochs=1, modalities=("dos", "density"))
    ckpt = pretrain(tiny_store, cfg, progress=False)
    with pytest.raises(ValueError, match="no crystal encoder"):
        finetune(tiny_store, ft_config, "band_gap", pretrained=ckpt, progress=False)


def test_interrupted_ensemble_resumes_its_finished_members(tiny_store, ft_config, monkeypatch):
    """A member saved by an earlier run of the same config is reused (not retrained); the result is the same."""
    import shutil

    import mlcm_core.train.finetune as ft

    cfg = replace(ft_config, ensemble=2)
    first = finetune(tiny_store, cfg, "formation_energy_per_atom", progress=False)
    weights0 = (first.out_dir / "model-0" / "model.safetensors").read_bytes()
    shutil.rmtree(first.out_dir / "model-1")  # as if the run had stopped while training member 1
    (first.out_dir / "result.json").unlink()

    trained: list[int] = []
    real = ft._train_member

    def spy(member, *args):
        trained.append(member)
        return real(member, *args)

    monkeypatch.setattr(ft, "_train_member", spy)
    again = finetune(tiny_store, cfg, "formation_energy_per_atom", progress=False)
    assert trained == [1]
    assert (again.out_dir / "model-0" / "model.safetensors").read_bytes() == weights0
    assert again.best_epochs == first.best_epochs and again.val_mae == pytest.approx(first.val_mae)
    np.testing.assert_allclose(again.predictions["y_pred"], first.predictions["y_pred"], rtol=1e-5, atol=1e-6)
    assert [r["member"] for r in again.history].count(0) == cfg.epochs  # member 0's history came back too

    with pytest.raises(ValueError, match="another fine-tuning"):
        finetune(tiny_store, replace(cfg, lr=1e-3), "formation_energy_per_atom", progress=False)


def test_band_gap_training_rows_take_our_gpaw_pbe_gap_where_mp_has_none(default_store):
    """Training rows only, MP materials only; validation and test rows stay MP's own PBE gaps."""
    from mlcm_core.train.finetune import split_rows

    spec = resolve_target("band_gap")
    t = default_store.table.set_index("id")
    ids, y = split_rows(default_store, spec, "train")
    mp = t.loc[ids, "band_gap_mp_pbe"]
    filled = mp.isna().to_numpy()
    assert int((~filled).sum()) == 846 and int(filled.sum()) >= 348  # MP's gaps + our GPAW PBE gaps of MP materials
    np.testing.assert_array_equal(y[filled], t.loc[ids, "band_gap_gpaw_pbe"].to_numpy(float)[filled])
    np.testing.assert_array_equal(y[~filled], mp.to_numpy(float)[~filled])
    assert set(t.loc[ids, "source"][filled]) == {"matminer-0.3.9"}  # no hypothetical perov_5 cell
    for split, n in (("val", 100), ("test", 110)):
        ids, y = split_rows(default_store, spec, split)
        assert len(ids) == n and t.loc[ids, "band_gap_mp_pbe"].notna().all()
