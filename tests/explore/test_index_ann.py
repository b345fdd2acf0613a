"""The approximate (IVF-PQ + exact re-ranking) top-k backend: recall against exact search on clustered data,
filters, determinism, the size threshold; and the viewport sampler of the map's hover layer."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from mlcm_core.explore.index import ANN_MIN_ROWS, TopKIndex, ViewportSampler, default_nlist, recall_at_k

N, D, K = 120_000, 64, 50


@pytest.fixture(autouse=True, scope="module")
def _one_faiss_thread():
    # faiss's OpenMP threads spin-wait on each other when the cores are busy (builds several times slower)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _clustered(n: int, n_queries: int, d: int = D, clusters: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float16 unit vectors from a mixture of vMF-like clusters (uneven sizes and spreads), and fresh queries."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((clusters, d)))
    spread = rng.uniform(0.4, 0.9, clusters)
    w = rng.lognormal(0.0, 1.0, clusters)
    w /= w.sum()

    def draw(m: int) -> np.ndarray:
        c = rng.choice(clusters, m, p=w)
        return _unit(centres[c] + spread[c, None] * rng.standard_normal((m, d)) / np.sqrt(d)).astype(np.float32)

    return draw(n).astype(np.float16), draw(n_queries)


@pytest.fixture(scope="module")
def data():
    gallery, queries = _clustered(N, 40)
    exact = TopKIndex(gallery, backend="fp16")
    ann = TopKIndex(gallery, backend="ivfpq")
    return gallery, queries, exact, ann


def test_recall_against_exact_search(data):
    gallery, queries, exact, ann = data
    assert ann.backend == "ivfpq" and not ann.exact and ann.nlist == default_nlist(N)
    ref_s, ref_i = exact.search(queries, K)
    got_s, got_i = ann.search(queries, K)
    assert got_i.shape == got_s.shape == (len(queries), K)
    assert recall_at_k(got_i, ref_i) >= 0.95
    # re-ranked scores are the exact inner products of the stored float16 vectors, in descending order
    np.testing.assert_allclose(got_s, np.einsum("qkd,qd->qk", gallery[got_i].astype(np.float32), queries), atol=1e-5)
    assert np.all(np.diff(got_s, axis=1) <= 0)
    # one query at a time (as the app asks) gives the same answer as the batch
    one_s, one_i = ann.search(queries[3], K)
    np.testing.assert_array_equal(one_i[0], got_i[3])
    # a wider search is at least as good
    nprobe, pool = ann.nprobe, ann.pool
    ann.nprobe, ann.pool = 64, 6000
    try:
        assert recall_at_k(ann.search(queries, K)[1], ref_i) >= recall_at_k(got_i, ref_i)
    finally:
        ann.nprobe, ann.pool = nprobe, pool
    mem = ann.memory_bytes()
    assert mem["index"] < 0.5 * gallery.nbytes and mem["gallery"] == gallery.nbytes


def test_rerank_uses_the_callers_float16_array(data):
    gallery, _, _, ann = data
    assert ann._vectors is gallery  # no copy of a C-contiguous float16 gallery
    np.testing.assert_array_equal(ann.reconstruct([0, 7, N - 1]), gallery[[0, 7, N - 1]].astype(np.float32))


@pytest.mark.parametrize("frac", [0.2, 0.01])
@pytest.mark.parametrize("exact_subset", [0, 1 << 14])
def test_filters_are_honoured(data, frac, exact_subset):
    gallery, queries, exact, ann = data
    mask = np.random.default_rng(7).random(N) < frac
    ann.exact_subset = exact_subset  # 0: always through the IVF scan with the selector
    try:
        got_s, got_i = ann.search(queries[:10], K, mask=mask)
    finally:
        ann.exact_subset = 1 << 14
    ref_s, ref_i = exact.search(queries[:10], K, mask=mask)
    assert mask[got_i].all()
    assert recall_at_k(got_i, ref_i) >= 0.95
    if exact_subset and mask.sum() <= exact_subset:  # few eligible rows: searched exactly
        np.testing.assert_array_equal(got_i, ref_i)
        np.testing.assert_allclose(got_s, ref_s, atol=1e-5)


def test_narrow_filters_fall_back_to_exact(data):
    gallery, queries, exact, ann = data
    q = queries[:4]
    few = np.zeros(N, bool)
    few[np.random.default_rng(8).choice(N, 60, replace=False)] = True
    ann.exact_subset = 0  # the IVF scan alone would find fewer than k of 60 scattered rows
    try:
        got_s, got_i = ann.search(q, K, mask=few)
    finally:
        ann.exact_subset = 1 << 14
    ref_s, ref_i = exact.search(q, K, mask=few)
    np.testing.assert_array_equal(got_i, ref_i)
    np.testing.assert_allclose(got_s, ref_s, atol=1e-5)
    # fewer eligible rows than k: all of them; none: an empty answer
    three = np.zeros(N, bool)
    three[[5, 17, N - 1]] = True
    assert sorted(ann.search(q[0], K, mask=three)[1][0].tolist()) == [5, 17, N - 1]
    assert ann.search(q[0], K, mask=np.zeros(N, bool))[1].shape == (1, 0)
    with pytest.raises(ValueError, match="mask"):
        ann.search(q[0], K, mask=np.ones(N - 1, bool))


def test_builds_are_deterministic(data):
    gallery, queries, _, ann = data
    again = TopKIndex(gallery, backend="ivfpq")
    a_s, a_i = ann.search(queries, K)
    b_s, b_i = again.search(queries, K)
    np.testing.assert_array_equal(a_i, b_i)
    np.testing.assert_array_equal(a_s, b_s)
    other = TopKIndex(gallery, backend="ivfpq", seed=1)  # another seed: other lists, same exact scores
    c_s, c_i = other.search(queries[:5], K)
    common = [np.isin(c_i[j], a_i[j]) for j in range(5)]
    for j in range(5):
        np.testing.assert_allclose(c_s[j][common[j]], a_s[j][np.isin(a_i[j], c_i[j])], atol=1e-6)


def test_small_galleries_stay_exact():
    gallery, queries = _clustered(18_000, 5, seed=3)
    index = TopKIndex(gallery)  # today's corpus size: "auto" is the exact fp16 scan
    assert index.backend == "fp16" and index.exact and ANN_MIN_ROWS >= 1_000_000
    s, i = index.search(queries, K)
    full = gallery.astype(np.float64) @ queries.astype(np.float64).T
    ref = np.argsort(-full, axis=0, kind="stable")[:K].T
    assert all(set(a) == set(b) for a, b in zip(i.tolist(), ref.tolist()))
    assert TopKIndex(gallery, exact_below=10_000).backend == "ivfpq"  # the threshold is what decides
    assert TopKIndex(gallery, exact_below=18_000).backend == "fp16"
    with pytest.raises(ValueError, match="even dimension"):
        TopKIndex(np.ones((2000, 5), np.float16), backend="ivfpq")
    with pytest.raises(ValueError, match="unknown backend"):
        TopKIndex(gallery, backend="hnsw")


def test_viewport_sampler():
    rng = np.random.default_rng(0)
    xy = rng.standard_normal((50_000, 2))
    sampler = ViewportSampler(xy, block=4096)

    def inside(x0, x1, y0, y1):
        return np.flatnonzero((xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1))

    # few points in view: all of them
    small = inside(2.0, 3.0, 2.0, 3.0)
    np.testing.assert_array_equal(sampler.sample((3.0, 2.0), (2.0, 3.0), 3000), small)
    # many: exactly max_samples, all in view, the same each time, spread like the points in view
    ref = inside(-1.0, 1.0, -2.0, 2.0)
    got = sampler.sample((-1.0, 1.0), (-2.0, 2.0), 3000)
    assert len(got) == 3000 and np.isin(got, ref).all() and len(np.unique(got)) == 3000
    np.testing.assert_array_equal(got, sampler.sample((-1.0, 1.0), (-2.0, 2.0), 3000))
    assert abs(np.mean(xy[got, 0] > 0) - np.mean(xy[ref, 0] > 0)) < 0.05
    assert len(sampler.sample((10.0, 11.0), (10.0, 11.0))) == 0
