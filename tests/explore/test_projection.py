"""The pickle-free UMAP projection: same placements as umap's own transform, safe round trip."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from mlcm_core.explore.index import TopKIndex
from mlcm_core.explore.projection import UMAPProjection, place_by_neighbours


def _clusters(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((6, d))
    x = centres[rng.integers(0, 6, n)] + 0.3 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def test_transform_agrees_with_umap_transform():
    import umap

    x = _clusters(300)
    train, new = x[:250].astype(np.float32), x[250:].astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(n_neighbors=15, min_dist=0.1, metric="cosine", random_state=0).fit(train)
        theirs = reducer.transform(new)
    ours = UMAPProjection.from_umap(reducer, x[:250]).transform(new)
    # umap seeds each point's negative sampling with the bits of its initial position, so any rounding
    # difference (umap's float64 distances vs our float32 ones) draws other negatives: placements agree
    # closely, not bit for bit, even for one point (umap 0.5.12: up to ~5 % of the map's extent)
    extent = np.ptp(reducer.embedding_, axis=0).max()
    for mine in (ours, UMAPProjection.from_umap(reducer, x[:250]).transform(new, canonical=False)):
        dist = np.linalg.norm(mine - theirs, axis=1)
        assert np.median(dist) < 0.02 * extent and np.max(dist) < 0.15 * extent


def test_placement_ignores_float_noise():
    """umap seeds a new point's negative sampling with the bits of its initial position: without the canonical
    rounding, vectors equal up to float32 noise land apart (this test fails on canonical=False)."""
    x = _clusters(300)
    proj = UMAPProjection.fit(x[:250], n_neighbors=15, random_state=0)
    rng = np.random.default_rng(0)
    new = x[250:270].astype(np.float32)
    noisy = (new * (1 + 1e-7 * rng.standard_normal(new.shape))).astype(np.float32)
    np.testing.assert_array_equal(proj.transform(noisy), proj.transform(new))
    # and a point lands where it would alone, whatever else is in the batch
    np.testing.assert_array_equal(np.concatenate([proj.transform(v[None]) for v in new]), proj.transform(new))
    moved = np.linalg.norm(proj.transform(noisy, canonical=False) - proj.transform(new, canonical=False), axis=1)
    assert np.any(moved > 1e-3)  # the failure mode is real in this umap version


def test_fit_save_load_round_trip(tmp_path):
    x = _clusters(200, seed=1)
    proj = UMAPProjection.fit(x, n_neighbors=10, random_state=0)
    assert proj.embedding.shape == (200, 2) and np.all(np.isfinite(proj.embedding))
    path = proj.save(tmp_path)
    with np.load(path, allow_pickle=False) as z:  # plain arrays only
        assert set(z.files) == {"train_vectors", "embedding", "params"}
    back = UMAPProjection.load(path)
    np.testing.assert_array_equal(back.embedding, proj.embedding)
    assert back.params == proj.params
    q = x[:3].astype(np.float32) + 0.01
    np.testing.assert_allclose(back.transform(q), proj.transform(q), atol=1e-6)
    from mlcm_core.explore.embed import sha256_file

    UMAPProjection.load(path, expected_sha256=sha256_file(path))
    with pytest.raises(ValueError, match="checksum"):
        UMAPProjection.load(path, expected_sha256="0" * 64)
    with pytest.raises(ValueError, match="at least 4"):
        UMAPProjection.fit(x[:3])
    with pytest.raises(ValueError, match="dimension"):
        proj.transform(np.ones((1, 5), np.float32))


def test_place_by_neighbours_is_a_weighted_mean():
    x = _clusters(50, seed=2)
    pos = np.random.default_rng(0).standard_normal((50, 2)).astype(np.float32)
    index = TopKIndex(x)
    q = x[7].astype(np.float32)
    out = place_by_neighbours(q, index, pos, k=5)
    sims, idx = index.search(q, 5)
    w = np.clip(sims[0], 0, None)
    np.testing.assert_allclose(out[0], (w[:, None] * pos[idx[0]]).sum(0) / w.sum(), atol=1e-5)
    # no positive similarity at all: plain mean of the top-k
    far = place_by_neighbours(-np.ones((1, 16), np.float32) * 10, TopKIndex(np.abs(x)), pos, k=4)
    _, idx = TopKIndex(np.abs(x)).search(-np.ones(16, np.float32), 4)
    np.testing.assert_allclose(far[0], pos[idx[0]].mean(0), atol=1e-5)


def test_canonical_placement_needs_no_numba_kernel(tmp_path):
    """A fresh process places a point without importing umap (whose numba kernels took 20-45 s to compile in
    a new server process on a fresh install): the canonical path is plain numpy."""
    import subprocess
    import sys

    x = _clusters(120, seed=3)
    UMAPProjection.fit(x[:100], n_neighbors=10, random_state=0).save(tmp_path)
    code = ("import sys, numpy as np\n"
            "from mlcm_core.explore.projection import UMAPProjection\n"
            f"p = UMAPProjection.load({str(tmp_path)!r})\n"
            f"xy = p.transform(np.load({str(tmp_path / 'q.npy')!r}))\n"
            "assert np.isfinite(xy).all(), xy\n"
            "print(sorted(m for m in ('umap', 'numba', 'pynndescent') if m in sys.modules))\n")
    np.save(tmp_path / "q.npy", x[100:103].astype(np.float32))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
