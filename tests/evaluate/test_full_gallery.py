"""Full-gallery retrieval on a few dozen real rows of the shipped store: ranks, ties, chance, held-out pairs.

Gallery vectors are constructed (seeded random unit vectors) where the expected rank must be known exactly;
the shipped checkpoint is used where the claim is about it (queries re-embedded from raw arrays, the stored
crystal table verified, which MultiMat pairs it trained on).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mlcm_core.evaluate.full_gallery import (MP_SOURCE, embed_modality, evaluate_full_gallery, full_gallery_table,
                                             gallery_from_table, multimat_pairs, pair_table, pretraining_ids,
                                             query_ids, verify_gallery)
from tests.conftest import ROOT

SHIPPED = ROOT / "precomputed" / "checkpoint"
TABLE = ROOT / "precomputed" / "explore" / "embeddings.npz"
PEROV = "cdvae-perov_5"
CARBON = "cdvae-carbon_24"


def _unique_groups(t: pd.DataFrame) -> pd.DataFrame:
    """Rows that are alone in their de-duplication group (so each query has exactly one hit)."""
    alone = t["dedup_group"].map(t["dedup_group"].value_counts()) == 1
    return t[alone].sort_values("id")


@pytest.fixture(scope="module")
def rows(default_store):
    """5 MP + 3 perov_5 test rows with a DOS (queries) and 12 MP, 8 perov_5, 6 carbon_24 other structures."""
    t = default_store.table
    t = _unique_groups(t[t["has_structure"].fillna(False).astype(bool)])
    test_dos = t[(t["split"] == "test") & t["has_dos"].fillna(False).astype(bool)]
    q = pd.concat([test_dos[test_dos["source"] == MP_SOURCE].head(5), test_dos[test_dos["source"] == PEROV].head(3)])
    rest = t[~t["id"].isin(q["id"])]
    g = pd.concat([rest[rest["source"] == s].head(n) for s, n in ((MP_SOURCE, 12), (PEROV, 8), (CARBON, 6))])
    assert len(q) == 8 and len(g) == 26
    return q["id"].tolist(), q["id"].tolist() + g["id"].tolist(), default_store.table


def _gallery(ids: list[str], seed: int = 0, dim: int = 16) -> np.ndarray:
    z = np.random.default_rng(seed).normal(size=(len(ids), dim))
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def _row(df: pd.DataFrame, query_source: str, gallery: str) -> pd.Series:
    sel = df[(df["query_source"] == query_source) & (df["gallery"] == gallery)]
    assert len(sel) == 1, (query_source, gallery)
    return sel.iloc[0]


def test_own_crystal_vector_ranks_first_with_closed_form_chance(rows):
    q_ids, g_ids, table = rows
    z = _gallery(g_ids)
    df = full_gallery_table({"dos": (q_ids, z[:8])}, (g_ids, z), table)
    # galleries: all (34), MP (5 + 12), perov_5 (3 + 8), carbon_24 (6, holds no query's crystal: no row)
    sizes = {"all": 34, MP_SOURCE: 17, PEROV: 11}
    n_q = {("all", "all"): 8, (MP_SOURCE, "all"): 5, (PEROV, "all"): 3, (MP_SOURCE, MP_SOURCE): 5, (PEROV, PEROV): 3}
    assert set(zip(df["query_source"], df["gallery"])) == set(n_q)
    for (qs, gal), n in n_q.items():
        r = _row(df, qs, gal)
        big_n = sizes[gal]
        assert (r["n_queries"], r["n_gallery"]) == (n, big_n)
        assert r["top1"] == 1.0 and r["median_rank"] == 1.0
        assert r["chance_median_rank"] == pytest.approx((big_n + 1) / 2)
        assert r["chance_top10"] == pytest.approx(10 / big_n)
        assert r["chance_top100"] == 1.0  # k >= N
        assert r["n_without_hit"] == 0


def test_ties_count_against_the_hit_and_a_collapsed_gallery_ranks_last(rows):
    q_ids, g_ids, table = rows
    z = _gallery(g_ids)
    tied = z.copy()
    tied[20] = z[0]  # a perov_5/MP non-hit with exactly query 0's similarity
    df = full_gallery_table({"dos": (q_ids, z[:8])}, (g_ids, tied), table, galleries=["all"])
    r = _row(df, "all", "all")
    assert r["top1"] == pytest.approx(7 / 8) and r["mean_rank"] == pytest.approx((7 + 2) / 8)

    flat = np.tile(z[:1], (len(g_ids), 1))  # collapsed: every structure the same vector
    r = _row(full_gallery_table({"dos": (q_ids, z[:8])}, (g_ids, flat), table, galleries=["all"]), "all", "all")
    assert r["median_rank"] == 34 and r["top1"] == 0.0 and r["top10"] == 0.0 and r["top100"] == 1.0


def test_duplicate_hit_and_query_without_crystal(rows):
    q_ids, g_ids, table = rows
    z = _gallery(g_ids, seed=1)
    t = table.copy()
    t.loc[t["id"] == g_ids[8], "dedup_group"] = t.loc[t["id"] == q_ids[0], "dedup_group"].iloc[0]  # h = 2
    keep = [k for k, i in enumerate(g_ids) if i != q_ids[1]]  # query 1's crystal not in the gallery
    gal = ([g_ids[k] for k in keep], z[keep])
    r = _row(full_gallery_table({"dos": (q_ids, z[:8])}, gal, t, galleries=["all"]), "all", "all")
    n = 33
    assert (r["n_queries"], r["n_without_hit"], r["n_gallery"]) == (7, 1, n)
    assert r["n_queries_with_duplicates"] == 1 and r["top1"] == 1.0
    expected = [(n + 1) / 3] + [(n + 1) / 2] * 6
    assert r["chance_median_rank"] == pytest.approx(np.median(expected))
    assert r["chance_mean_rank"] == pytest.approx(np.mean(expected))
    p2 = 1 - math.comb(n - 2, 10) / math.comb(n, 10)
    assert r["chance_top10"] == pytest.approx((p2 + 6 * 10 / n) / 7)


def test_pair_table_identical_vectors_rank_first_and_chance(default_store):
    t = default_store.table
    ids = multimat_pairs(t, split="test")[:20]
    assert len(ids) == 20
    z = _gallery(ids, seed=2)
    df = pair_table((ids, z), (ids[::-1], z[::-1]), t, {"test": ids})  # order of either side does not matter
    assert df["query"].tolist() == ["dos", "density"]
    assert (df["median_rank"] == 1.0).all() and (df["n_queries"] == 20).all()
    assert df["chance_median_rank"].tolist() == [10.5, 10.5]
    assert df["chance_top1"].tolist() == pytest.approx([1 / 20, 1 / 20])


@pytest.fixture(scope="module")
def shipped(default_store):
    from mlcm_core.explore.embed import EmbeddingTable, load_model_verified
    from mlcm_core.models.checkpoint import read_checkpoint_info

    model, desc = load_model_verified(SHIPPED)
    table = EmbeddingTable.load(TABLE)
    assert table.meta["checkpoint_sha256"] == desc["checkpoint_sha256"]
    return model, table, read_checkpoint_info(SHIPPED)


def test_queries_are_the_shipped_models_view_of_the_raw_arrays(default_store, shipped):
    model, table, _ = shipped
    t = default_store.table
    ids = query_ids(t, "test", "dos")[:6]
    got_ids, z = embed_modality(model, default_store, ids, "dos")
    assert got_ids == ids
    stored = np.stack([table.get(i, "dos") for i in ids])
    crystal = np.stack([table.get(i, "crystal") for i in ids])
    assert np.abs(z - stored).max() < 2e-3  # the explorer's DOS vectors (float16) of the same checkpoint
    assert (np.sum(z * crystal, axis=1) < 0.95).all()  # not the same material's crystal vector

    # end to end: a gallery whose vectors for these six materials ARE their DOS embeddings -> all rank 1
    others = t[t["has_structure"].fillna(False).astype(bool) & ~t["id"].isin(ids)].sort_values("id").head(20)
    g_ids = ids + others["id"].tolist()
    g_z = np.concatenate([z, _gallery(others["id"].tolist(), dim=z.shape[1], seed=3)])
    res = evaluate_full_gallery(model, default_store, gallery=(g_ids, g_z), modalities=("dos",), verify=0,
                                multimat=False)
    r = _row(res.queries, "all", "all")
    n_test_dos = len(query_ids(t, "test", "dos"))
    assert (r["n_queries"], r["n_gallery"], r["n_without_hit"]) == (6, 26, n_test_dos - 6)
    assert r["top1"] == 1.0


def test_verify_gallery_accepts_the_stored_table_and_rejects_another(default_store, shipped):
    model, table, _ = shipped
    ids, z = gallery_from_table(table)
    ok = verify_gallery(model, default_store, (ids, z), n=4)
    assert ok["max_abs_diff"] < 2e-3 and ok["min_cosine"] > 0.999
    with pytest.raises(ValueError, match="another checkpoint"):
        verify_gallery(model, default_store, (ids, np.roll(z, 1, axis=0)), n=4)


def test_held_out_multimat_pairs_of_the_shipped_checkpoint(default_store, shipped):
    _, _, info = shipped
    t = default_store.table
    trained = pretraining_ids(default_store, info.train_config)
    every = multimat_pairs(t)
    held = multimat_pairs(t, exclude=trained)
    split = t.set_index("id")["split"]
    # min_modalities 2: a MultiMat DOS + density pair is a training row; val/test rows are never trained on
    assert set(held) == set(multimat_pairs(t, split=["val", "test"]))
    assert set(every) - set(held) == set(multimat_pairs(t, split="train")) and len(held) < len(every)
    assert (split.loc[held] != "train").all()
