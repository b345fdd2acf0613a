"""Retrieval metrics against a brute-force argsort implementation; duplicates, chance level, ties; the table."""

from __future__ import annotations

import math
from itertools import permutations

import numpy as np
import pytest

from mlcm_core.evaluate.retrieval import retrieval_metrics, retrieval_table


def brute_force(q: np.ndarray, g: np.ndarray, q_groups: list[str], g_groups: list[str], ks=(1, 5, 10)) -> dict:
    """Per query: sort the gallery by descending cosine (ties: non-hits first), rank of the first hit."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    ranks = []
    for i in range(len(q)):
        sims = [float(q[i] @ g[j]) for j in range(len(g))]
        hit = [g_groups[j] == q_groups[i] for j in range(len(g))]
        order = sorted(range(len(g)), key=lambda j: (-sims[j], hit[j]))
        ranks.append(next(pos for pos, j in enumerate(order) if hit[j]) + 1)
    ranks = np.array(ranks)
    out = {f"top{k}": float(np.mean(ranks <= k)) for k in ks}
    out.update(median_rank=float(np.median(ranks)), mean_rank=float(np.mean(ranks)))
    return out


def chance_exact(n: int, h: int, k: int) -> float:
    return 1.0 - math.comb(n - h, k) / math.comb(n, k) if k < n else 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_argsort(seed):
    rng = np.random.default_rng(seed)
    n, d = 40, 8
    groups = [f"g{k}" for k in rng.integers(0, 30, n)]  # some groups hold several materials
    ids = [f"m{k}" for k in range(n)]
    q = rng.normal(size=(n, d))
    g = q + rng.normal(scale=1.5, size=(n, d))  # noisy counterpart
    got = retrieval_metrics(q, g, ids, ids, dict(zip(ids, groups)))
    want = brute_force(q, g, groups, groups)
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    assert got["n_gallery"] == got["n_queries"] == n
    assert got["n_queries_with_duplicates"] == sum(groups.count(x) > 1 for x in groups)


def test_duplicate_in_same_group_is_a_hit():
    # query 0's nearest gallery item is material 1, a duplicate of 0's structure (same dedup group)
    q = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    g = np.array([[0.0, 1.0], [1.0, 0.05], [-1.0, 0.0]])
    ids = ["a", "b", "c"]
    same = retrieval_metrics(q, g, ids, ids, {"a": "G", "b": "G", "c": "H"})
    distinct = retrieval_metrics(q, g, ids, ids, {"a": "A", "b": "B", "c": "H"})
    assert same["top1"] == 1.0 and same["median_rank"] == 1.0
    assert distinct["top1"] == pytest.approx(1 / 3)  # only c finds itself first
    assert same["n_queries_with_duplicates"] == 2


def test_chance_level():
    rng = np.random.default_rng(0)
    n = 25
    ids = [f"m{k}" for k in range(n)]
    z = rng.normal(size=(n, 4))
    unique = retrieval_metrics(z, z, ids, ids, {i: i for i in ids}, ks=(1, 5, 10, 30))
    for k in (1, 5, 10):
        assert unique[f"chance_top{k}"] == pytest.approx(k / n)
    assert unique["chance_top30"] == 1.0
    assert unique["chance_median_rank"] == pytest.approx((n + 1) / 2)
    groups = {i: ("dup" if k < 3 else i) for k, i in enumerate(ids)}  # one group of 3, the rest single
    dup = retrieval_metrics(z, z, ids, ids, groups, ks=(5,))
    want = (3 * chance_exact(n, 3, 5) + (n - 3) * chance_exact(n, 1, 5)) / n
    assert dup["chance_top5"] == pytest.approx(want)


def test_identical_embeddings_rank_one_and_collapse_ranks_last():
    rng = np.random.default_rng(3)
    ids = [f"m{k}" for k in range(30)]
    z = rng.normal(size=(30, 16))
    same = retrieval_metrics(z, z.copy(), ids, ids, {i: i for i in ids})
    assert same["median_rank"] == 1.0 and same["top1"] == 1.0
    collapsed = retrieval_metrics(np.ones((30, 16)), np.ones((30, 16)), ids, ids, {i: i for i in ids})
    assert collapsed["top1"] == 0.0 and collapsed["median_rank"] == 30  # ties count against the hit


def test_query_without_a_hit_is_an_error():
    with pytest.raises(ValueError, match="no correct answer"):
        retrieval_metrics(np.eye(2), np.eye(2), ["a", "b"], ["c", "d"], {"a": "a", "b": "b", "c": "c", "d": "d"})


def test_retrieval_table_every_ordered_pair(tiny_store, tiny_checkpoint):
    from mlcm_core.models.multimodal import MultimodalModel

    model = MultimodalModel.from_checkpoint(tiny_checkpoint)
    table = retrieval_table(model, tiny_store, "test")
    assert set(zip(table["query"], table["gallery"])) == set(permutations(("crystal", "dos", "density"), 2))
    t = tiny_store.table
    test = t[t["split"] == "test"]
    both = {("crystal", "dos"): (test["has_structure"] & test["has_dos"]).sum(),
            ("dos", "density"): (test["has_dos"] & test["has_charge_density"]).sum()}
    for (a, b), n in both.items():
        row = table[(table["query"] == a) & (table["gallery"] == b)].iloc[0]
        assert row["n_gallery"] == row["n_queries"] == n
        assert row["chance_top1"] == pytest.approx(1 / n)
    assert model.training  # restored after embedding in eval mode
