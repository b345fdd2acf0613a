"""Explorer end to end on a tiny store of real materials and a random-init tiny model.

The store (built once per module in a temporary directory from the shipped default dataset):

* 10 real Materials Project structures that also have their real GPAW DOS and charge density (dft-seed);
* 17 real MP structures with their real MP labels and no DOS/density (some without a band gap, for the
  include-unknown filter);
* 3 real MultiMat DOS + density entries without a structure (placed on the map by their neighbours).

The model is randomly initialised (no training): rankings are not physically meaningful, so the tests check
exact properties that hold for any model (a material is its own nearest neighbour, fusion is a weighted
mean, filters, selection, export, placement), never that a particular neighbour is "right".
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch

from mlcm_core.data.conventions import LABELS


@pytest.fixture(scope="module")
def explorer(tiny, tmp_path_factory):
    from mlcm_core.explore import Explorer

    _, _, pre = tiny
    return Explorer.load(pre, export_root=tmp_path_factory.mktemp("exports"))


# ---- build -----------------------------------------------------------------------------------------


def test_build_records_hashes_and_counts(tiny, explorer):
    _, ckpt, pre = tiny
    manifest = json.loads((pre / "explore" / "manifest.json").read_text())
    weights_sha = hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()
    assert manifest["checkpoint"]["sha256"] == weights_sha
    assert explorer.embeddings.meta["checkpoint_sha256"] == weights_sha
    assert manifest["counts"] == {"materials": 30, "crystal": 27, "dos": 13, "density": 13}
    assert all(v.dtype == np.float16 for v in explorer.embeddings.vectors.values())
    norms = np.linalg.norm(explorer.embeddings.vectors["crystal"].astype(np.float32), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)
    t = explorer.table
    assert set(t.loc[t["has_structure"].astype(bool), "placed_by"]) == {"umap"}
    assert set(t.loc[~t["has_structure"].astype(bool), "placed_by"]) == {"neighbours:dos+density"}
    assert np.all(np.isfinite(explorer.xy))
    # a material without a structure sits inside the crystals' map extent (a weighted mean of their positions)
    crystal_xy = explorer.xy[t["placed_by"].to_numpy() == "umap"]
    other_xy = explorer.xy[t["placed_by"].to_numpy() != "umap"]
    assert np.all(other_xy >= crystal_xy.min(axis=0) - 1e-5) and np.all(other_xy <= crystal_xy.max(axis=0) + 1e-5)
    # the npz files hold no pickled objects
    for name in ("embeddings.npz", "projection.npz", "map.npz"):
        with np.load(pre / "explore" / name, allow_pickle=False) as z:
            assert all(z[k].dtype != object for k in z.files)


def test_load_refuses_a_modified_file(tiny, tmp_path):
    from mlcm_core.explore import Explorer, ExplorerError

    store, _, pre = tiny
    copy = tmp_path / "pre"
    shutil.copytree(pre / "explore", copy / "explore")
    (copy / "explore" / "map.npz").write_bytes((copy / "explore" / "map.npz").read_bytes()[:-8] + b"tampered")
    with pytest.raises(ExplorerError, match="checksum mismatch"):
        Explorer.load(copy, store=store)
    with pytest.raises(ExplorerError, match="no explorer data"):
        Explorer.load(tmp_path / "nowhere", store=store)


# ---- queries ---------------------------------------------------------------------------------------


def _ids(table: pd.DataFrame, **flags) -> list[str]:
    m = np.ones(len(table), bool)
    for c, v in flags.items():
        m &= table[c].fillna(False).astype(bool).to_numpy() == v
    return table.loc[m, "id"].tolist()


def test_query_by_structure_finds_itself(tiny, explorer):
    store = tiny[0]
    for mid in _ids(explorer.table, has_structure=True)[:3]:
        res = explorer.query(structure=store.structure(mid), k=5)
        assert res["id"].iloc[0] == mid
        assert res["score"].iloc[0] > 0.99
        assert list(res["rank"]) == [1, 2, 3, 4, 5]
        assert np.all(np.diff(res["score"]) <= 1e-7)
        np.testing.assert_allclose(res["score"], res["sim_structure"], atol=1e-5)
        assert res.attrs["query"]["targets"][0]["kind"] == "structure"


def test_query_by_dos_and_density(tiny, explorer):
    store = tiny[0]
    mid = _ids(explorer.table, has_dos=True, has_structure=True)[0]
    same = explorer.query(dos=store.dos(mid)[0], gallery="dos", k=3)
    assert same["id"].iloc[0] == mid and same["score"].iloc[0] > 0.99
    cross = explorer.query(dos=store.dos(mid)[0], k=27)  # DOS -> crystal gallery: every structure ranked
    assert len(cross) == 27 and cross["has_structure"].all()
    dens = explorer.query(density=store.density(mid)[0], gallery="density", k=5)
    # the random-init model maps these densities to nearly one direction (top scores 0.9974-1.0001): its own
    # density scores within the gallery's float16 rounding of the best
    own = dens.loc[dens["id"] == mid, "score"]
    assert len(own) == 1 and float(own.iloc[0]) >= dens["score"].iloc[0] - 2e-3
    # a drawn polyline is resampled onto the DOS grid and recorded as drawn
    x = np.linspace(-6, 6, 25)
    drawn = explorer.query(dos=(x, np.exp(-x**2 / 4) + 0.1), k=5)
    assert len(drawn) == 5 and "drawn_polyline" in drawn.attrs["query"]["targets"][0]
    with pytest.raises(ValueError, match="at least 2"):
        explorer.query(dos=([0.0], [1.0]))
    with pytest.raises(ValueError, match="shape"):
        explorer.query(dos=np.ones(100))


def test_query_by_id_and_neighbours(explorer):
    mid = _ids(explorer.table, has_structure=True)[4]
    res = explorer.query(material_id=mid, k=4)
    assert res["id"].iloc[0] == mid
    nb = explorer.neighbours(mid, k=6)
    assert mid not in set(nb["id"]) and len(nb) == 6
    assert list(nb["id"]) == [i for i in explorer.query(material_id=mid, k=7)["id"] if i != mid]
    # a DOS-only material searched against crystals uses its own DOS embedding
    mm = _ids(explorer.table, has_structure=False)[0]
    res = explorer.query(material_id=mm, k=3)
    assert res.attrs["query"]["targets"][0]["embedding"] in ("dos", "density")
    with pytest.raises(KeyError, match="no embedding"):
        explorer.query(material_id="mp-does-not-exist")


def test_results_equal_brute_force(explorer):
    mid = _ids(explorer.table, has_structure=True)[2]
    res = explorer.query(material_id=mid, k=10)
    e = explorer.embeddings
    gallery = e.vectors["crystal"].astype(np.float64)
    q = e.get(mid, "crystal").astype(np.float64)
    sims = gallery @ (q / np.linalg.norm(q))
    order = np.argsort(-sims, kind="stable")[:10]
    np.testing.assert_allclose(res["score"].to_numpy(), sims[order], atol=1e-4)
    assert set(res["id"]) == set(e.ids[e.rows["crystal"][order]])


def test_multi_target_fusion(tiny, explorer):
    store = tiny[0]
    ids = _ids(explorer.table, has_structure=True, has_dos=True)
    a, b = ids[0], ids[5]
    s_a = store.structure(a)
    only_a = explorer.query(structure=s_a, k=27)
    zero_b = explorer.query(structure=s_a, material_id=b, weights={"structure": 1, "material_id": 0}, k=27)
    assert list(zero_b["id"]) == list(only_a["id"])
    fused = explorer.query(structure=s_a, material_id=b, weights={"structure": 2, "material_id": 1}, k=27)
    expected = (2 * fused["sim_structure"] + fused["sim_material"]) / 3
    np.testing.assert_allclose(fused["score"], expected, atol=1e-4)
    assert np.all(np.diff(fused["score"]) <= 1e-6)
    # the ranking follows the fused score: recomputed from the per-target columns it is still sorted
    assert np.all(np.diff(expected.to_numpy()) <= 2e-4)
    assert explorer.query(structure=s_a, material_id=b, weights={"structure": 1000, "material_id": 1})["id"].iloc[0] == a
    assert explorer.query(structure=s_a, material_id=b, weights={"structure": 1, "material_id": 1000})["id"].iloc[0] == b
    # DOS + structure: two modalities fused in one query
    both = explorer.query(dos=store.dos(b)[0], structure=s_a, k=5)
    assert {"sim_dos", "sim_structure"} <= set(both.columns)
    assert both.attrs["query"]["weights"] == {"dos": 1.0, "structure": 1.0}
    with pytest.raises(ValueError, match="not in the query"):
        explorer.query(structure=s_a, weights={"dos": 1})
    with pytest.raises(ValueError, match=">= 0"):
        explorer.query(structure=s_a, weights={"structure": -1})
    with pytest.raises(ValueError, match="at least one target"):
        explorer.query()


def test_filters_ranges_unknown_elements_sources(explorer):
    from mlcm_core.explore import Filters

    mid = _ids(explorer.table, has_structure=True)[0]
    t = explorer.table.set_index("id")
    gap = "band_gap_mp_pbe"
    strict = explorer.query(material_id=mid, k=50, filters=Filters.build({gap: (0.5, None)}))
    assert len(strict) > 0 and (strict[gap] >= 0.5).all()
    n_known = int((t[gap] >= 0.5).sum())
    n_unknown = int((t[gap].isna() & t["has_structure"].astype(bool)).sum())
    assert len(strict) == n_known
    loose = explorer.query(material_id=mid, k=50, filters=Filters.build({gap: (0.5, None)}, include_unknown=True))
    assert len(loose) == n_known + n_unknown and n_unknown > 0
    assert loose[gap].isna().sum() == n_unknown
    # elements: every Si-containing structure, then all but those
    with_si = explorer.query(material_id=mid, k=50, filters=Filters.build(elements_include=["Si"]))
    assert len(with_si) > 0 and all("Si" in e.split("-") for e in with_si["elements"])
    without = explorer.query(material_id=mid, k=50, filters=Filters.build(elements_exclude=["Si"]))
    assert len(with_si) + len(without) == 27 and not set(with_si["id"]) & set(without["id"])
    # materials without a known composition: dropped, or kept when asked (DOS gallery has the MultiMat entries)
    mm_ids = set(_ids(explorer.table, has_structure=False))
    dos_all = explorer.query(material_id=mid, gallery="dos", k=50, filters=Filters.build(elements_exclude=["Si"]))
    assert not set(dos_all["id"]) & mm_ids
    dos_unk = explorer.query(material_id=mid, gallery="dos", k=50,
                             filters=Filters.build(elements_exclude=["Si"], include_unknown={"elements": True}))
    assert mm_ids <= set(dos_unk["id"])
    only = explorer.query(material_id=mid, gallery="dos", k=50, filters={"sources": ["multimat-mp"]})
    assert set(only["id"]) == mm_ids
    assert only.attrs["query"]["filters"]["sources"] == ["multimat-mp"]
    with pytest.raises(KeyError, match="unknown filter column"):
        explorer.query(material_id=mid, filters=Filters.build({"no_such_label": (0, 1)}))
    with pytest.raises(ValueError, match="min"):
        Filters.build({gap: (3, 1)})
    with pytest.raises(ValueError, match="element"):
        Filters.build(elements_include=["Xx"])


def test_labels_carry_theory_and_source(explorer):
    mid = _ids(explorer.table, has_structure=True)[0]
    res = explorer.query(material_id=mid, k=27)
    assert "band_gap_mp_pbe" in res.columns and "band_gap_mp_pbe" in res.attrs["labels"]
    assert res.attrs["labels"]["band_gap_mp_pbe"]["theory"] == LABELS["band_gap_mp_pbe"].theory
    row = res[res["band_gap_mp_pbe"].notna()].iloc[0]
    assert LABELS["band_gap_mp_pbe"].source in row["labels"] and LABELS["band_gap_mp_pbe"].theory in row["labels"]
    assert {"region_count", "modality_disagreement", "x", "y"} <= set(res.columns)


# ---- map -------------------------------------------------------------------------------------------


def test_select_polygon_matches_shapely(explorer):
    import shapely

    xy = explorer.xy.astype(np.float64)
    lo, hi = xy.min(axis=0) - 1, xy.max(axis=0) + 1
    box = [(lo[0], lo[1]), (hi[0], lo[1]), (hi[0], hi[1]), (lo[0], hi[1])]
    assert sorted(explorer.select(box)) == sorted(explorer.embeddings.ids.tolist())
    c = np.median(xy, axis=0)
    r = 0.5 * np.ptp(xy, axis=0)
    ang = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    poly = np.stack([c[0] + r[0] * np.cos(ang) * (0.6 + 0.4 * np.sin(3 * ang)), c[1] + r[1] * np.sin(ang)], axis=1)
    inside = shapely.contains_xy(shapely.Polygon(poly), xy[:, 0], xy[:, 1])
    assert explorer.select(poly) == explorer.embeddings.ids[inside].tolist()
    with pytest.raises(ValueError, match="at least 3"):
        explorer.select([(0, 0), (1, 1)])


def test_place_uploaded_cif(tiny, explorer, tmp_path):
    from pymatgen.io.cif import CifWriter

    from mlcm_core.data.sources.structure_files import StructureFileError

    store = tiny[0]
    mid = _ids(explorer.table, has_structure=True)[1]
    s = store.structure(mid)
    path = tmp_path / "upload.cif"
    CifWriter(s).write_file(path)
    x, y = explorer.place(path)
    assert np.isfinite([x, y]).all()
    assert (x, y) == explorer.place(path)  # deterministic
    z = explorer.model.embed("crystal", s).numpy()
    expected = explorer.projection.transform(z)[0]
    np.testing.assert_allclose(explorer.place(s), expected, atol=1e-5)
    lo, hi = explorer.xy.min(axis=0), explorer.xy.max(axis=0)
    pad = 0.5 * (hi - lo)
    assert lo[0] - pad[0] <= x <= hi[0] + pad[0] and lo[1] - pad[1] <= y <= hi[1] + pad[1]
    assert np.isfinite(explorer.place(path.read_text())).all()  # CIF text, as the app uploads it
    bad = tmp_path / "bad.cif"
    bad.write_text("data_x\n_cell_length_a 3\n")
    with pytest.raises(StructureFileError):
        explorer.place(bad)


def test_density_hint(explorer):
    hint = explorer.density_hint(bins=8)
    assert hint.counts.shape == (8, 8) and hint.counts.sum() == len(explorer.embeddings)
    d = hint.disagreement
    multi = explorer.table["emb_dos"].to_numpy() | explorer.table["emb_density"].to_numpy()
    assert d[~multi].isna().all()
    assert d[multi].notna().all() and ((d[multi] >= 0) & (d[multi] <= 2)).all()
    assert (hint.region_count >= 1).all()
    finite = np.isfinite(hint.mean_disagreement)
    assert finite.any() and (hint.counts[finite] > 0).all()


# ---- export ----------------------------------------------------------------------------------------


def test_export_round_trip_with_query(explorer):
    from mlcm_core.explore import read_export

    mid = _ids(explorer.table, has_structure=True)[0]
    mm = _ids(explorer.table, has_structure=False)[0]
    res = explorer.query(material_id=mid, k=8, filters={"ranges": [{"column": "band_gap_mp_pbe", "min": 0.0,
                                                                    "max": 20.0, "include_unknown": True}]})
    dos_res = explorer.query(material_id=mm, gallery="dos", k=13)
    out = explorer.export(res, "screen1/candidates")
    assert set(out) == {"csv", "json", "cif_zip"}
    assert all(p.is_relative_to(explorer.export_root.resolve()) for p in out.values())
    expected_query = json.loads(json.dumps(res.attrs["query"]))
    for fmt, path in out.items():
        table, header = read_export(path)
        assert table["id"].tolist() == res["id"].tolist(), fmt
        assert header["query"] == expected_query, fmt
        np.testing.assert_allclose(table["score"].to_numpy(float), res["score"].to_numpy(), rtol=1e-6)
        assert header["labels"]["band_gap_mp_pbe"]["theory"] == LABELS["band_gap_mp_pbe"].theory
    with zipfile.ZipFile(out["cif_zip"]) as zf:
        names = zf.namelist()
    assert len([n for n in names if n.endswith(".cif")]) == len(res) and "query.json" in names
    # materials without a structure are listed, not silently dropped
    out2 = explorer.export(dos_res, "screen1/dos", formats=("cif_zip", "json"))
    with zipfile.ZipFile(out2["cif_zip"]) as zf:
        doc = json.loads(zf.read("query.json"))
    assert set(doc["without_structure"]) == set(dos_res.loc[~dos_res["has_structure"], "id"])
    json_doc = json.loads(out2["json"].read_text())
    assert json_doc["candidates"][0]["labels"] is not None


def test_export_refuses_escape_and_missing_query(explorer, tmp_path):
    from mlcm_core.explore import ExportPathError

    res = explorer.query(material_id=_ids(explorer.table, has_structure=True)[0], k=3)
    for bad in ("../escape", "a/../../escape", str(tmp_path / "elsewhere"), "", ".."):
        with pytest.raises(ExportPathError):
            explorer.export(res, bad, formats=("csv",))
    assert not (explorer.export_root.parent / "escape.csv").exists()
    link = explorer.export_root / "link"
    explorer.export_root.mkdir(parents=True, exist_ok=True)
    os.symlink(tmp_path, link)
    with pytest.raises(ExportPathError):
        explorer.export(res, "link/out", formats=("csv",))
    bare = res.copy()
    bare.attrs = {}
    with pytest.raises(ValueError, match="query"):
        explorer.export(bare, "noquery", formats=("csv",))
    with pytest.raises(ValueError, match="formats"):
        explorer.export(res, "x", formats=("xlsx",))
    # an explicit query is accepted for a table from elsewhere
    path = explorer.export(bare, "explicit", formats=("json",), query={"note": "hand-picked"})["json"]
    assert json.loads(path.read_text())["query"] == {"note": "hand-picked"}


def test_newer_store_shard_warns(tiny, tmp_path):
    from mlcm_core.data.record import MaterialRecord
    from mlcm_core.data.store import DatasetStore
    from mlcm_core.explore import Explorer

    store, _, pre = tiny
    copy = tmp_path / "store"
    shutil.copytree(store.root, copy)
    grown = DatasetStore.open(copy)
    grown.append([MaterialRecord(id="extra-1", source="test", structure=store.structure(store.table["id"].iloc[0]))],
                 "later", {"source": "test"})
    with pytest.warns(RuntimeWarning, match="newer"):
        ex = Explorer.load(pre, store=grown)
    assert "extra-1" not in set(ex.table["id"])


def test_embed_keeps_the_fitted_map_and_places_new_materials(tiny, default_store, tmp_path):
    """`mlcm embed` (reuse_map): known materials keep their exact positions, a new crystal goes through transform."""
    from mlcm_core.data.record import MaterialRecord
    from mlcm_core.data.store import DatasetStore
    from mlcm_core.explore import Explorer
    from mlcm_core.explore.build import build_precomputed

    store, ckpt, pre = tiny
    shutil.copytree(store.root, tmp_path / "store")
    shutil.copytree(pre, tmp_path / "pre")
    grown = DatasetStore.open(tmp_path / "store")
    t = default_store.table
    new_id = t.loc[(t["source"] == "matminer-0.3.9") & ~t["id"].isin(store.table["id"]), "id"].iloc[0]
    grown.append([MaterialRecord(id=new_id, source="matminer-0.3.9", structure=default_store.structure(new_id))],
                 "later", {"source": "test: one more real MP structure"})
    before = Explorer.load(pre, store=store)
    build_precomputed(grown.root, ckpt, tmp_path / "pre", cache_dir=tmp_path / "graphs", progress=False,
                      verify_store=False, reuse_map=True)
    after = Explorer.load(tmp_path / "pre", store=grown)
    manifest = after.manifest
    assert manifest["placement"]["map"] == "kept from the previous build" and manifest["placement"]["transformed"] == 1
    old = pd.DataFrame(before.xy, index=before.embeddings.ids)
    new = pd.DataFrame(after.xy, index=after.embeddings.ids)
    crystals = before.table.loc[before.table["placed_by"] == "umap", "id"]
    np.testing.assert_array_equal(new.loc[crystals].to_numpy(), old.loc[crystals].to_numpy())
    row = after.table.set_index("id").loc[new_id]
    assert row["placed_by"] == "umap-transform"
    stored = after.embeddings.get(new_id, "crystal").astype(np.float32)
    assert (row["x"], row["y"]) == pytest.approx(tuple(after.projection.transform(stored[None])[0]), abs=1e-4)
    # other weights: the old map cannot place their embeddings
    torch.manual_seed(1)
    from mlcm_core.models.multimodal import MultimodalConfig, MultimodalModel
    from tests.conftest import TINY_MODEL

    other = MultimodalModel(MultimodalConfig.cpu().with_overrides(TINY_MODEL)).save_checkpoint(tmp_path / "other")
    with pytest.raises(ValueError, match="other weights"):
        build_precomputed(grown.root, other, tmp_path / "pre", cache_dir=tmp_path / "graphs", progress=False,
                          verify_store=False, reuse_map=True)


def test_mlcm_embed_and_project_commands(tiny, tmp_path, capsys):
    """The CLI wiring: `mlcm embed` keeps the map of the existing build, `mlcm project` fits a new one."""
    from mlcm_core.cli import main

    store, ckpt, pre = tiny
    shutil.copytree(pre, tmp_path / "pre")
    common = ["--store", str(store.root), "--checkpoint", str(ckpt), "--out", str(tmp_path / "pre")]
    assert main(["embed", *common]) == 0
    out = capsys.readouterr().out
    assert '"map": "kept from the previous build"' in out and '"transformed": 0' in out
    assert main(["project", *common, "--n-neighbors", "5"]) == 0
    assert '"map": "fitted"' in capsys.readouterr().out
    manifest = json.loads((tmp_path / "pre" / "explore" / "manifest.json").read_text())
    assert manifest["umap"]["n_neighbors"] == 5 and manifest["counts"]["materials"] == 30


def test_dos_query_reports_each_candidates_dos_mae(tiny, explorer):
    """A DOS search tells how close each candidate's own stored DOS is to the target (dft.validate.dos_mae)."""
    from mlcm_core.dft.validate import dos_mae

    store = tiny[0]
    mid = _ids(explorer.table, has_dos=True)[0]
    target = store.dos(mid)[0].astype(float)
    out = explorer.query(dos=target, gallery="dos", k=min(20, int(explorer.table["has_dos"].sum())))
    assert out.columns.get_loc("dos_mae_to_target") == out.columns.get_loc("sim_dos") + 1
    row = out.set_index("id").loc[mid]
    assert row["dos_mae_to_target"] == 0.0  # its own DOS
    other = out[out["id"] != mid].iloc[0]
    assert other["dos_mae_to_target"] == pytest.approx(dos_mae(target, store.dos(other["id"])[0].astype(float)))
    mixed = explorer.query(dos=target, gallery="crystal", k=50)
    assert mixed.loc[~mixed["has_dos"], "dos_mae_to_target"].isna().all()
    assert mixed.loc[mixed["has_dos"], "dos_mae_to_target"].notna().all()
    assert "curve" not in json.dumps(out.attrs["query"]["targets"])  # the query record stays small

