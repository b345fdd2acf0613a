"""Property heads: build from real fine-tuning runs, load verified, predict = the ensemble's mean ± std.

Small but real: two-member ensembles of a tiny crystal encoder, fine-tuned for 2 epochs on the real MP labels
of the tiny explorer store (tests/explore/conftest.py). The values are not good predictions; the tests check
what must hold for any heads: a structure's prediction is the mean and spread of its members' outputs, stored
gallery predictions equal live ones, the log10 moduli come back in GPa, corruption is refused.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch


def _members_by_hand(store, heads_dir, target, material_id):
    """Each member's prediction for one structure, loaded and run without PropertyPredictor."""
    from mlcm_core.featurize.crystal_graph import CrystalGraphConfig, collate_graphs, structure_to_graph
    from mlcm_core.models.crystal import CrystalEncoderConfig
    from mlcm_core.models.checkpoint import load_weights, read_checkpoint_info
    from mlcm_core.train.finetune import PropertyRegressor

    out = []
    for member in sorted((heads_dir / target).glob("model-*")):
        info = read_checkpoint_info(member)
        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in info.model_config.items()}
        model = PropertyRegressor(CrystalEncoderConfig(**cfg), info.extra["head_hidden"], info.extra["head_layers"],
                                  info.extra["head_dropout"])
        model.load_state_dict(load_weights(member))
        model.eval()
        graph = structure_to_graph(store.structure(material_id), CrystalGraphConfig(**info.extra["graph_config"]))
        with torch.no_grad():
            z = float(model(collate_graphs([graph]))[0])
        out.append(z * info.extra["y_std"] + info.extra["y_mean"])
    return np.array(out)


def test_manifest_records_metrics_and_checksums(heads):
    _, pre = heads
    manifest = json.loads((pre / "heads" / "manifest.json").read_text())
    assert [t["name"] for t in manifest["targets"]] == ["formation_energy_per_atom", "log10_k_vrh"]
    fe = manifest["targets"][0]
    assert fe["unit"] == "eV/atom" and len(fe["members"]) == 2
    m = fe["metrics"]
    assert m["n_train"] > 0 and set(m) >= {"test_mae", "within_1sigma", "within_2sigma", "spearman_abs_error_vs_sigma"}
    assert "predictions.npz" in manifest["files"] and len(manifest["files"]) == 2 * 2 * 2 + 1
    assert manifest["store"]["predicted"] == 27  # every structure of the tiny store


def test_prediction_is_the_ensemble_mean_and_spread(heads):
    from mlcm_core.explore.predict import PropertyPredictor

    store, pre = heads
    predictor = PropertyPredictor.load(pre / "heads")
    material_id = store.table.loc[store.table["has_structure"].astype(bool), "id"].iloc[0]
    live = predictor.predict(store.structure(material_id)).set_index("target")
    stored = predictor.lookup([material_id]).set_index("target")
    for target in ("formation_energy_per_atom", "log10_k_vrh"):
        members = _members_by_hand(store, pre / "heads", target, material_id)
        assert live.loc[target, "mean"] == pytest.approx(members.mean(), abs=1e-5)
        assert live.loc[target, "std"] == pytest.approx(members.std(), abs=1e-5)
        assert stored.loc[target, "mean"] == pytest.approx(members.mean(), abs=1e-4)  # float32 storage
        assert stored.loc[target, "std"] == pytest.approx(members.std(), abs=1e-4)
    k = live.loc["log10_k_vrh"]
    assert k["unit"] == "GPa" and k["transformed_unit"] == "log10(GPa)" and k["quantity"] == "k_vrh"
    assert k["value"] == pytest.approx(10 ** k["mean"])
    assert k["low_1sigma"] == pytest.approx(10 ** (k["mean"] - k["std"]))
    assert k["high_1sigma"] == pytest.approx(10 ** (k["mean"] + k["std"]))
    assert "2-member ensemble" in k["theory"]
    assert predictor.lookup(["not-a-material"]).empty


def test_sigma_scale_multiplies_the_spread(heads, tmp_path):
    from mlcm_core.explore.predict import PropertyPredictor

    store, pre = heads
    manifest = json.loads((pre / "heads" / "manifest.json").read_text())
    for spec in manifest["targets"]:  # the tiny store has < 10 validation rows per target: no scale is fitted
        assert spec["sigma_scale"] == 1.0 and spec["metrics"]["sigma_scale_fitted_on"].endswith("validation rows")
    copy = tmp_path / "heads"
    shutil.copytree(pre / "heads", copy)
    manifest["targets"][0]["sigma_scale"] = 2.5
    (copy / "manifest.json").write_text(json.dumps(manifest))  # the manifest itself is not in its checksum list
    structure = store.structure(store.table.loc[store.table["has_structure"].astype(bool), "id"].iloc[0])
    base = PropertyPredictor.load(pre / "heads").predict(structure).set_index("target")
    scaled = PropertyPredictor.load(copy).predict(structure).set_index("target")
    name = manifest["targets"][0]["name"]
    assert scaled.loc[name, "std"] == pytest.approx(2.5 * base.loc[name, "std"])
    assert scaled.loc[name, "mean"] == pytest.approx(base.loc[name, "mean"])
    assert "× 2.5" in scaled.loc[name, "theory"]


def test_explorer_predicts_and_candidates_carry_predictions(heads, tmp_path):
    from mlcm_core.explore import Explorer

    store, pre = heads
    ex = Explorer.load(pre, store=store, export_root=tmp_path)
    material_id = ex.embeddings.ids[0]
    by_id = ex.predict(material_id=material_id).set_index("target")
    by_structure = ex.predict(structure=store.structure(material_id)).set_index("target")
    np.testing.assert_allclose(by_id["mean"], by_structure["mean"], atol=1e-4)
    cands = ex.query(material_id=material_id, k=5)
    assert {"pred_formation_energy_per_atom", "pred_formation_energy_per_atom_std", "pred_log10_k_vrh"} <= set(cands)
    first = cands.set_index("id").loc[material_id]
    assert first["pred_log10_k_vrh"] == pytest.approx(by_id.loc["log10_k_vrh", "mean"], abs=1e-6)
    with pytest.raises(ValueError, match="exactly one"):
        ex.predict()
    # the exploration hint: ensemble std in units of each target's test MAE, averaged over targets
    spread = ex.density_hint().prediction_spread
    maes = by_id["test_mae"]
    assert spread[material_id] == pytest.approx(float((by_id["std"] / maes).mean()), rel=1e-4)
    assert cands.set_index("id").loc[material_id, "prediction_spread"] == pytest.approx(spread[material_id])
    no_structure = ex.table.loc[~ex.table["has_structure"].astype(bool), "id"]
    assert spread[no_structure].isna().all() and spread.notna().sum() == 27


def test_explorer_without_heads_says_so(tiny, tmp_path):
    from mlcm_core.explore import Explorer, ExplorerError

    store, _, pre = tiny
    ex = Explorer.load(pre, store=store, export_root=tmp_path)
    assert ex.predictor is None and "no property heads" in ex.predictor_status
    with pytest.raises(ExplorerError, match="no property heads"):
        ex.predict(material_id=ex.embeddings.ids[0])
    assert not any(c.startswith("pred_") for c in ex.query(material_id=ex.embeddings.ids[0], k=3))
    assert ex.density_hint().prediction_spread.isna().all()


def test_corrupt_heads_are_refused(heads, tmp_path):
    from mlcm_core.explore.predict import HeadsError, PropertyPredictor

    _, pre = heads
    copy = tmp_path / "heads"
    shutil.copytree(pre / "heads", copy)
    weights = copy / "log10_k_vrh" / "model-1" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(HeadsError, match="checksum mismatch.*model-1"):
        PropertyPredictor.load(copy)
    with pytest.raises(HeadsError, match="no property heads"):
        PropertyPredictor.load(tmp_path / "nowhere")


def test_corrupt_heads_stop_the_explorer_and_the_app(heads, tmp_path, monkeypatch, capsys):
    """A corrupted file in precomputed/heads: Explorer.load and `mlcm app` refuse, naming the file."""
    from mlcm_core.cli import check_precomputed, main
    from mlcm_core.explore import Explorer, ExplorerError

    store, pre = heads
    copy = tmp_path / "precomputed"
    shutil.copytree(pre, copy)
    assert check_precomputed(store.root, copy / "explore") is None
    victim = copy / "heads" / "predictions.npz"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ExplorerError, match=f"checksum mismatch for {victim}"):
        Explorer.load(copy, store=store)
    assert f"checksum mismatch for {victim}" in check_precomputed(store.root, copy / "explore")
    monkeypatch.setenv("MLCM_DATASET", str(store.root))
    monkeypatch.setenv("MLCM_EXPLORE", str(copy / "explore"))
    started = []
    monkeypatch.setattr("subprocess.call", lambda cmd: started.append(cmd) or 0)
    assert main(["app"]) == 2 and not started
    assert f"checksum mismatch for {victim}" in capsys.readouterr().err


def test_calibration_counts_errors_within_sigma():
    from mlcm_core.explore.predict import calibration

    c = calibration(np.zeros(4), np.array([0.5, 1.5, 0.5, 3.0]), np.ones(4))
    assert c["within_1sigma"] == 0.5 and c["within_2sigma"] == 0.75
    c = calibration(np.zeros(4), np.array([0.1, 0.2, 0.3, 0.4]), np.array([1.0, 2.0, 3.0, 4.0]))
    assert c["spearman_abs_error_vs_sigma"] == pytest.approx(1.0)


def test_mlcm_predict_prints_the_same_values(heads, tmp_path, capsys):
    from pymatgen.io.cif import CifWriter

    from mlcm_core.cli import main
    from mlcm_core.explore.predict import PropertyPredictor

    store, pre = heads
    material_id = store.table.loc[store.table["has_structure"].astype(bool), "id"].iloc[1]
    cif = tmp_path / "x.cif"
    cif.write_text(str(CifWriter(store.structure(material_id))))
    assert main(["predict", str(cif), "--heads", str(pre / "heads"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    expected = PropertyPredictor.load(pre / "heads").predict(store.structure(material_id)).set_index("target")
    assert [r["target"] for r in rows] == ["formation_energy_per_atom", "log10_k_vrh"]
    for r in rows:
        assert r["file"] == str(cif)
        assert r["mean"] == pytest.approx(expected.loc[r["target"], "mean"], abs=1e-4)  # CIF rounding of positions


def test_stored_predictions_need_no_torch_and_members_load_on_first_predict(heads):
    """The map and the cards read stored predictions: opening the heads and looking them up imports neither
    torch nor torch-geometric (seconds on a cold machine, in the first page's path); predicting a new structure
    then loads the members and gives the same values as the stored ones."""
    import subprocess
    import sys

    store, pre = heads
    mid = str(store.table.loc[store.table["has_structure"].astype(bool), "id"].iloc[0])
    code = ("import sys, json; from mlcm_core.explore.predict import PropertyPredictor; "
            f"p = PropertyPredictor.load({str(pre / 'heads')!r}); rows = p.lookup([{mid!r}]); "
            "print(json.dumps({'rows': len(rows), 'torch': 'torch' in sys.modules, "
            "'pyg': 'torch_geometric' in sys.modules, 'theory': rows['theory'].iloc[0]}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["rows"] == 2 and not seen["torch"] and not seen["pyg"] and "2-member ensemble" in seen["theory"]

    from mlcm_core.explore.predict import PropertyPredictor

    p = PropertyPredictor.load(pre / "heads")
    assert p._members is None
    fresh = p.predict(store.structure(mid)).set_index("target")["mean"]
    assert p._members is not None and len(p.members["log10_k_vrh"]) == 2
    stored = p.lookup([mid]).set_index("target")["mean"]
    np.testing.assert_allclose(fresh.loc[stored.index].to_numpy(), stored.to_numpy(), rtol=1e-4, atol=1e-5)
