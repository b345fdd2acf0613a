"""Exact top-k equals a brute-force argsort; the grid lasso equals shapely over every point."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from mlcm_core.explore.index import GridIndex2D, TopKIndex


def _gallery(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def _brute(gallery16: np.ndarray, q: np.ndarray, k: int, mask: np.ndarray | None = None):
    s = gallery16.astype(np.float64) @ q.astype(np.float64).T  # (N, Q)
    if mask is not None:
        s[~mask] = -np.inf
    order = np.argsort(-s, axis=0, kind="stable")[:k].T
    return np.take_along_axis(s.T, order, axis=1), order


@pytest.mark.parametrize("backend", ["fp16", "flat"])
def test_topk_equals_argsort(backend):
    g = _gallery(20_000, 32)
    q = np.random.default_rng(1).standard_normal((5, 32)).astype(np.float32)
    index = TopKIndex(g, backend=backend)
    scores, idx = index.search(q, 50)
    ref_scores, ref_idx = _brute(g, q, 50)
    assert scores.shape == idx.shape == (5, 50)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
    # same indices, up to the order of exact ties (none expected for random data)
    gaps = np.diff(ref_scores, axis=1)
    if np.all(np.abs(gaps) > 1e-5):
        np.testing.assert_array_equal(idx, ref_idx)
    else:
        assert all(set(a) == set(b) for a, b in zip(idx, ref_idx))


def test_topk_with_mask_and_small_gallery():
    g = _gallery(3_000, 16, seed=2)
    q = np.random.default_rng(3).standard_normal(16).astype(np.float32)
    mask = np.random.default_rng(4).random(3_000) < 0.1
    index = TopKIndex(g)
    scores, idx = index.search(q, 20, mask=mask)
    ref_scores, ref_idx = _brute(g, q[None], 20, mask)
    assert mask[idx].all()
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    # k larger than the eligible rows: all of them, no padding
    few = np.zeros(3_000, bool)
    few[[5, 17, 2999]] = True
    _, idx = index.search(q, 50, mask=few)
    assert sorted(idx[0].tolist()) == [5, 17, 2999]
    _, idx = index.search(q, 50, mask=np.zeros(3_000, bool))
    assert idx.shape == (1, 0)
    tiny = TopKIndex(g[:7])
    assert tiny.search(q, 50)[1].shape == (1, 7)
    with pytest.raises(ValueError, match="dimension"):
        index.search(np.ones(8, np.float32), 5)
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full(16, np.nan, np.float32), 5)


def _star(cx: float, cy: float, r: float, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = r * rng.uniform(0.3, 1.0, n)
    return np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], axis=1)


def _reference(xy: np.ndarray, poly) -> np.ndarray:
    return np.flatnonzero(shapely.contains_xy(poly, xy[:, 0], xy[:, 1]))


@pytest.mark.parametrize("seed", range(6))
def test_lasso_equals_shapely_random_polygons(seed):
    rng = np.random.default_rng(seed)
    xy = rng.standard_normal((50_000, 2)) * [3.0, 1.0]
    index = GridIndex2D(xy)
    poly = _star(rng.normal(0, 1), rng.normal(0, 0.5), rng.uniform(0.5, 6), 200, seed)
    np.testing.assert_array_equal(index.select(poly), _reference(xy, shapely.Polygon(poly)))


def test_lasso_edge_cases():
    # points on an integer lattice: many lie exactly on polygon edges and on cell borders
    g = np.arange(-20, 21, dtype=float)
    xy = np.stack(np.meshgrid(g, g), axis=-1).reshape(-1, 2)
    index = GridIndex2D(xy, points_per_cell=4)
    square = [(-5, -5), (5, -5), (5, 5), (-5, 5)]
    sel = index.select(square)
    np.testing.assert_array_equal(sel, _reference(xy, shapely.Polygon(square)))
    assert len(sel) == 81  # boundary points are outside, as in shapely
    # a polygon with a hole
    donut = shapely.Polygon([(-10, -10), (10, -10), (10, 10), (-10, 10)], holes=[[(-3, -3), (3, -3), (3, 3), (-3, 3)]])
    np.testing.assert_array_equal(index.select(donut), _reference(xy, donut))
    # partly outside the data, and wholly outside
    part = [(15.5, 15.5), (40, 15.5), (40, 40), (15.5, 40)]
    np.testing.assert_array_equal(index.select(part), _reference(xy, shapely.Polygon(part)))
    assert len(index.select([(100, 100), (101, 100), (101, 101)])) == 0
    # a self-intersecting lasso (bow tie) selects the area of both loops
    bow = [(-10.5, -10.5), (10.5, 10.5), (10.5, -10.5), (-10.5, 10.5)]
    expected = _reference(xy, shapely.make_valid(shapely.Polygon(bow)))
    np.testing.assert_array_equal(index.select(bow), expected)
    assert len(expected) > 0
    # a long thin diagonal sliver crossing the whole grid
    sliver = [(-20.2, -20.0), (20.0, 20.2), (20.2, 20.0), (-20.0, -20.2)]
    np.testing.assert_array_equal(index.select(sliver), _reference(xy, shapely.Polygon(sliver)))
    with pytest.raises(ValueError):
        index.select([(0, 0), (1, 0)])
    with pytest.raises(ValueError):
        index.select([(0, 0), (1, np.nan), (1, 1)])


def test_grid_degenerate_inputs():
    empty = GridIndex2D(np.zeros((0, 2)))
    assert len(empty.select([(0, 0), (1, 0), (1, 1)])) == 0
    same = GridIndex2D(np.ones((10, 2)))
    assert len(same.select([(0, 0), (2, 0), (2, 2), (0, 2)])) == 10
    line = GridIndex2D(np.stack([np.linspace(0, 1, 100), np.zeros(100)], axis=1))
    poly = [(0.25, -1), (0.75, -1), (0.75, 1), (0.25, 1)]
    np.testing.assert_array_equal(line.select(poly), _reference(line.x[:, None].repeat(2, 1) * [1, 0], shapely.Polygon(poly)))
    assert line.cell_counts().sum() == 100
