"""The hybrid predictions: a forest stored as arrays (== scikit-learn), added to real heads, blended as documented.

Real data: descriptors of real MP materials of the default store; the heads are the tiny two-member ensembles
of tests/explore/conftest.py (2 epochs on real labels), to which ``add_classical`` adds a 20-tree forest.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest


@pytest.fixture(scope="module")
def real_descriptors(default_store):
    """(x, y): descriptors and formation energies (eV/atom) of 120 real MP materials of the default store."""
    from mlcm_core.featurize.descriptors import descriptors

    t = default_store.table
    rows = t[(t["source"] == "matminer-0.3.9") & t["formation_energy_per_atom_mp_pbe"].notna()
             & t["has_structure"].astype(bool)].sort_values("id").head(120)
    x = descriptors([default_store.structure(i) for i in rows["id"]])
    return x, rows["formation_energy_per_atom_mp_pbe"].to_numpy(float)


def test_descriptors_of_real_structures(default_store, real_descriptors):
    from mlcm_core.featurize.descriptors import STRUCTURE_FEATURES, descriptor_names, structure_features

    x, _ = real_descriptors
    assert x.shape == (120, 132 + len(STRUCTURE_FEATURES)) and len(descriptor_names()) == x.shape[1]
    t = default_store.table.set_index("id")
    mid = t.index[(t["source"] == "matminer-0.3.9") & (t["formula"] == "Si")][0]
    s = default_store.structure(mid)
    nsites, vpa, density, sg, packing = structure_features([s])[0]
    assert nsites == len(s) and vpa == pytest.approx(s.volume / len(s)) and density == pytest.approx(s.density)
    assert 0 < packing < 1 and 1 <= sg <= 230


def test_numpy_forest_equals_sklearn(real_descriptors, tmp_path):
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.impute import SimpleImputer

    from mlcm_core.explore.forest import TreeForest, load_forest, save_forest

    x, y = real_descriptors
    x = SimpleImputer(strategy="median", keep_empty_features=True).fit_transform(x)
    rf = RandomForestRegressor(n_estimators=30, max_features=1 / 3, random_state=0, n_jobs=1).fit(x[:80], y[:80])
    forest = TreeForest.from_sklearn(rf)
    np.testing.assert_array_equal(forest.predict(x), rf.predict(x))  # bit for bit, train and unseen rows
    trees = np.stack([est.predict(x.astype(np.float32)) for est in rf.estimators_])
    np.testing.assert_array_equal(forest.predict_trees(x), trees)
    np.testing.assert_allclose(forest.predict_with_spread(x)[1], trees.std(0))
    # inputs sitting exactly on a threshold go left, as in scikit-learn
    split = rf.estimators_[0].tree_
    probe = np.repeat(x[:1], 5, axis=0)
    probe[:, split.feature[0]] = np.float32(split.threshold[0])
    np.testing.assert_array_equal(forest.predict(probe), rf.predict(probe))

    save_forest(tmp_path / "f.npz", forest, fill=np.arange(3.0))
    with np.load(tmp_path / "f.npz", allow_pickle=False) as z:  # no object arrays anywhere
        assert all(z[k].dtype != object for k in z.files)
    again, extra = load_forest(tmp_path / "f.npz")
    np.testing.assert_array_equal(again.predict(x), rf.predict(x))
    np.testing.assert_array_equal(extra["fill"], np.arange(3.0))
    with pytest.raises(ValueError, match="NaN"):
        forest.predict(np.full((1, x.shape[1]), np.nan))


def test_blend_weight_and_mixture_sigma():
    from mlcm_core.explore.classical import blend, choose_weight

    gnn, forest = np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])
    mean, sigma = blend(gnn, np.full(3, 0.1), forest, np.full(3, 0.2), 0.25)
    np.testing.assert_allclose(mean, 0.25 * gnn + 0.75 * forest)
    np.testing.assert_allclose(sigma, np.sqrt(0.25 * 0.01 + 0.75 * 0.04 + 0.25 * 0.75 * (gnn - forest) ** 2))
    assert blend(gnn, np.ones(3), forest, np.ones(3), 1.0)[0].tolist() == gnn.tolist()
    w, maes = choose_weight(gnn, forest, gnn)  # the truth is the GNN's prediction
    assert w == 1.0 and len(maes) == 21 and maes[-1] == 0.0


@pytest.fixture(scope="module")
def hybrid(heads, tmp_path_factory):
    """(store, heads dir with the classical half added, the GNN-only heads dir it was copied from)."""
    from mlcm_core.explore.classical import ClassicalConfig, add_classical

    store, pre = heads
    root = tmp_path_factory.mktemp("hybrid")
    shutil.copytree(pre / "heads", root / "heads")
    add_classical(root / "heads", store, config=ClassicalConfig(n_estimators=20, n_jobs=1), cache_dir=root / "cache",
                  progress=False)
    return store, root / "heads", pre / "heads"


def test_hybrid_heads_round_trip_with_checksums(hybrid, tmp_path):
    from mlcm_core.explore.predict import HeadsChecksumError, PropertyPredictor, verify_heads

    _, directory, gnn_only = hybrid
    manifest = verify_heads(directory)
    old = json.loads((gnn_only / "manifest.json").read_text())
    for spec in manifest["targets"]:
        name = spec["name"]
        assert manifest["files"][f"{name}/forest.npz"]  # listed with its SHA-256
        c = spec["classical"]
        assert 0.0 <= c["weight_gnn"] <= 1.0 and c["n_trees"] == 20 and c["forest"] == f"{name}/forest.npz"
        m = spec["metrics"]
        assert {"test_mae", "val_mae", "within_1sigma_calibrated"} <= set(m)
        assert {"test_mae", "val_mae", "chosen", "grid_val_mae"} <= set(m["forest"])
        old_spec = next(s for s in old["targets"] if s["name"] == name)
        assert json.dumps(m["gnn"]) == json.dumps(old_spec["metrics"])  # the GNN-only numbers are kept (NaN too)
        assert c["gnn_sigma_scale"] == old_spec["sigma_scale"]
    for name, digest in old["files"].items():  # the members are untouched
        if name != "predictions.npz":
            assert manifest["files"][name] == digest
    with np.load(directory / "predictions.npz", allow_pickle=False) as z, \
            np.load(gnn_only / "predictions.npz", allow_pickle=False) as g:
        np.testing.assert_array_equal(z["ids"], g["ids"])
        np.testing.assert_array_equal(z["log10_k_vrh__gnn_mean"], g["log10_k_vrh__mean"])

    copy = tmp_path / "heads"
    shutil.copytree(directory, copy)
    victim = copy / "log10_k_vrh" / "forest.npz"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(HeadsChecksumError, match="checksum mismatch.*forest.npz"):
        PropertyPredictor.load(copy)


def test_hybrid_prediction_is_the_weighted_blend(hybrid):
    from mlcm_core.explore.classical import blend, impute
    from mlcm_core.explore.forest import load_forest
    from mlcm_core.explore.predict import PropertyPredictor
    from mlcm_core.featurize.crystal_graph import structure_to_graph
    from mlcm_core.featurize.descriptors import descriptors

    store, directory, gnn_only = hybrid
    t = store.table
    material_id = t.loc[t["has_structure"].astype(bool), "id"].iloc[0]
    structure = store.structure(material_id)
    predictor = PropertyPredictor.load(directory)
    live = predictor.predict(structure).set_index("target")
    stored = predictor.lookup([material_id]).set_index("target")
    gnn_predictor = PropertyPredictor.load(gnn_only)
    graph = structure_to_graph(structure, gnn_predictor.graph_config)
    gnn = gnn_predictor.predict_graphs([graph], calibrated=False)  # the GNN-only heads, raw spread
    manifest = json.loads((directory / "manifest.json").read_text())
    for spec in manifest["targets"]:
        name, c = spec["name"], spec["classical"]
        forest, extra = load_forest(directory / c["forest"])
        f_mean, f_std = forest.predict_with_spread(impute(descriptors([structure]), extra["fill"]))
        w = c["weight_gnn"]
        g_mean, g_std = gnn[name]
        assert live.loc[name, "mean"] == pytest.approx(w * g_mean[0] + (1 - w) * f_mean[0], abs=1e-6)
        _, raw = blend(g_mean, g_std, f_mean, f_std, w)
        assert live.loc[name, "std"] == pytest.approx(raw[0] * spec["sigma_scale"], rel=1e-6)
        assert stored.loc[name, "mean"] == pytest.approx(live.loc[name, "mean"], abs=1e-4)  # float32 storage
        assert stored.loc[name, "std"] == pytest.approx(live.loc[name, "std"], rel=1e-3, abs=1e-5)
        assert json.dumps(stored.loc[name, "test_mae"]) == json.dumps(spec["metrics"]["test_mae"])
        assert "random forest" in live.loc[name, "theory"] and "2-member ensemble" in live.loc[name, "theory"]


def test_mlcm_predict_on_a_cif_with_hybrid_heads(hybrid, capsys):
    from pathlib import Path

    from pymatgen.core import Structure

    from mlcm_core.cli import main
    from mlcm_core.explore.predict import PropertyPredictor

    _, directory, _ = hybrid
    cif = Path(__file__).parents[1] / "files" / "structures" / "Si.cif"
    assert main(["predict", str(cif), "--heads", str(directory), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    expected = PropertyPredictor.load(directory).predict(Structure.from_file(cif)).set_index("target")
    assert [r["target"] for r in rows] == ["formation_energy_per_atom", "log10_k_vrh"]
    for r in rows:
        assert r["mean"] == pytest.approx(expected.loc[r["target"], "mean"], abs=1e-6)
        assert np.isfinite(r["std"]) and r["std"] > 0


def test_adding_the_classical_part_again_keeps_the_gnn_half(hybrid, tmp_path):
    from mlcm_core.explore.classical import ClassicalConfig, add_classical

    store, directory, _ = hybrid
    copy = tmp_path / "heads"
    shutil.copytree(directory, copy)
    first = json.loads((directory / "manifest.json").read_text())
    add_classical(copy, store, config=ClassicalConfig(n_estimators=20, n_jobs=1), progress=False)
    again = json.loads((copy / "manifest.json").read_text())
    for a, b in zip(first["targets"], again["targets"]):
        assert a["classical"]["gnn_sigma_scale"] == b["classical"]["gnn_sigma_scale"]
        assert json.dumps(a["metrics"]["gnn"]) == json.dumps(b["metrics"]["gnn"])
        assert json.dumps(a["metrics"]["forest"]) == json.dumps(b["metrics"]["forest"])  # same seed, same forest
    with np.load(directory / "predictions.npz") as z, np.load(copy / "predictions.npz") as y:
        np.testing.assert_array_equal(z["log10_k_vrh__gnn_mean"], y["log10_k_vrh__gnn_mean"])
        np.testing.assert_allclose(z["log10_k_vrh__mean"], y["log10_k_vrh__mean"])
