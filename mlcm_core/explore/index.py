"""Exact nearest-neighbour search over a float16 gallery, and a grid index for lasso selection on the map.

Why exact: the explorer ranks candidates for a scientist, who must be able to trust that "top 50" means
the 50 highest cosine similarities, not an approximation. An exhaustive scan is affordable: a 1M x 128
float16 gallery is 256 MB and one scan of it takes tens of milliseconds.

Why float16 in faiss: embeddings are stored as float16 (half the memory and disk). faiss's
``IndexScalarQuantizer`` with ``QT_fp16`` keeps exactly those float16 codes and decodes them to float32
inside the distance kernel, so the scores are the exact inner products of the stored values (no float32
copy of the gallery is needed, and the scan reads half the bytes of ``IndexFlatIP``; see
benchmarks/explore_scale.py). Filters are applied inside the scan with an ``IDSelectorBitmap``, so a
filtered top-k is still exact.

Why a grid for lasso: testing every map point against a drawn polygon costs O(N x vertices). A uniform
grid over the points (points sorted by cell, CSR offsets) lets the lasso classify cells instead: cells
crossed by a polygon edge have their points tested exactly with ``shapely.contains_xy``; every other cell
lies entirely inside or entirely outside the polygon, decided by one test of its centre. The result is
identical to testing every point (boundary points count as outside, as in shapely).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["GridIndex2D", "TopKIndex", "as_polygon"]


class TopKIndex:
    """Exact top-k inner-product search over L2-normalised vectors (inner product = cosine similarity).

    Args:
        vectors: (N, D) gallery, float16 (kept as float16 codes) or float32.
        backend: "fp16" (faiss scalar quantizer with float16 codes: exact for float16 data, default) or
            "flat" (faiss IndexFlatIP on a float32 copy).
    """

    def __init__(self, vectors: np.ndarray, backend: str = "fp16") -> None:
        import faiss

        vectors = np.asarray(vectors)
        if vectors.ndim != 2:
            raise ValueError(f"gallery must be 2-D (N, D), got shape {vectors.shape}")
        if backend not in ("fp16", "flat"):
            raise ValueError(f"unknown backend {backend!r}; choose 'fp16' or 'flat'")
        self.n, self.dim = vectors.shape
        self.backend = backend
        if backend == "fp16":
            self._index = faiss.IndexScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
            # QT_fp16 needs no training data; add in blocks to bound the float32 temporary
            for start in range(0, self.n, 1 << 16):
                self._index.add(np.ascontiguousarray(vectors[start : start + (1 << 16)], dtype=np.float32))
        else:
            self._index = faiss.IndexFlatIP(self.dim)
            self._index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def __len__(self) -> int:
        return self.n

    def search(self, queries: np.ndarray, k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k by inner product.

        Args:
            queries: (D,) or (Q, D) query vectors.
            k: how many; fewer columns are returned when fewer gallery rows are eligible.
            mask: optional (N,) bool, True = eligible (applied inside the scan, so still exact).

        Returns:
            (scores (Q, k') float32, descending; indices (Q, k') int64 into the gallery), k' = min(k, eligible).
        """
        import faiss

        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if q.shape[1] != self.dim:
            raise ValueError(f"query dimension {q.shape[1]} != gallery dimension {self.dim}")
        if not np.all(np.isfinite(q)):
            raise ValueError("query vectors contain NaN or infinite values")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        params = None
        eligible = self.n
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != (self.n,):
                raise ValueError(f"mask must have shape ({self.n},), got {mask.shape}")
            eligible = int(mask.sum())
            if eligible < self.n:
                bits = np.packbits(mask, bitorder="little")
                sel = faiss.IDSelectorBitmap(self.n, faiss.swig_ptr(bits))
                params = faiss.SearchParameters(sel=sel)
        k_eff = min(int(k), eligible)
        if k_eff == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        if params is None:
            scores, idx = self._index.search(np.ascontiguousarray(q), k_eff)
        else:
            scores, idx = self._index.search(np.ascontiguousarray(q), k_eff, params=params)
            del bits  # the selector reads the bitmap during the search only
        return scores, idx.astype(np.int64)

    def reconstruct(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """(n, D) float32 of the stored gallery rows (the float16 values, for the fp16 backend)."""
        rows = np.asarray(rows, dtype=np.int64)
        return np.stack([self._index.reconstruct(int(r)) for r in rows]) if len(rows) else np.zeros((0, self.dim), np.float32)


def as_polygon(polygon_xy: Any) -> Any:
    """A valid shapely Polygon from an (M, 2) vertex sequence (or a shapely polygon), with clear errors."""
    import shapely

    if isinstance(polygon_xy, shapely.Geometry):
        poly = polygon_xy
    else:
        xy = np.asarray(polygon_xy, dtype=float)
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise ValueError(f"polygon must be an (M, 2) array of x, y vertices, got shape {xy.shape}")
        if len(xy) < 3:
            raise ValueError(f"polygon needs at least 3 vertices, got {len(xy)}")
        if not np.all(np.isfinite(xy)):
            raise ValueError("polygon vertices contain NaN or infinite values")
        poly = shapely.Polygon(xy)
    if not isinstance(poly, (shapely.Polygon, shapely.MultiPolygon)):
        raise TypeError(f"expected a polygon, got a {poly.geom_type}")
    if not poly.is_valid:
        poly = shapely.make_valid(poly)  # a self-intersecting lasso becomes its (multi)polygonal area
        parts = [g for g in getattr(poly, "geoms", [poly]) if isinstance(g, (shapely.Polygon, shapely.MultiPolygon))]
        poly = shapely.union_all(parts) if parts else shapely.Polygon()
    return poly


class GridIndex2D:
    """Uniform grid over 2-D points for fast, exact polygon selection.

    Args:
        xy: (N, 2) finite point coordinates.
        points_per_cell: target mean occupancy of a cell (sets the grid resolution).
    """

    def __init__(self, xy: np.ndarray, points_per_cell: float = 32.0) -> None:
        xy = np.asarray(xy, dtype=np.float64)
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise ValueError(f"points must be (N, 2), got shape {xy.shape}")
        if not np.all(np.isfinite(xy)):
            raise ValueError("points contain NaN or infinite values")
        self.n = len(xy)
        self.x = np.ascontiguousarray(xy[:, 0])
        self.y = np.ascontiguousarray(xy[:, 1])
        if self.n == 0:
            lo, hi = np.zeros(2), np.ones(2)
        else:
            lo, hi = xy.min(axis=0), xy.max(axis=0)
        span = np.maximum(hi - lo, 1e-9)
        cells = max(1, math.ceil(math.sqrt(max(self.n, 1) / points_per_cell)))
        # square-ish cells: the same cell size along both axes
        size = float(max(span) / cells)
        self.origin = lo
        self.cell = size
        self.shape = (max(1, math.ceil(span[0] / size)), max(1, math.ceil(span[1] / size)))  # (nx, ny)
        ix, iy = self._cell_of(self.x, self.y)
        flat = ix * self.shape[1] + iy
        self.order = np.argsort(flat, kind="stable").astype(np.int64)  # points sorted by cell
        counts = np.bincount(flat, minlength=self.shape[0] * self.shape[1])
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # CSR over flat cell ids
        self._sorted_x = self.x[self.order]
        self._sorted_y = self.y[self.order]

    def _cell_of(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ix = np.clip(((x - self.origin[0]) / self.cell).astype(np.int64), 0, self.shape[0] - 1)
        iy = np.clip(((y - self.origin[1]) / self.cell).astype(np.int64), 0, self.shape[1] - 1)
        return ix, iy

    def _edge_cells(self, poly: Any) -> np.ndarray:
        """(nx, ny) bool: cells that a polygon edge may cross (conservative: a small margin is added)."""
        nx, ny = self.shape
        hit = np.zeros((nx, ny), dtype=bool)
        rings = []
        for part in getattr(poly, "geoms", [poly]):
            rings.append(np.asarray(part.exterior.coords))
            rings.extend(np.asarray(r.coords) for r in part.interiors)
        if not rings:
            return hit
        seg = np.concatenate([np.stack([r[:-1], r[1:]], axis=1) for r in rings if len(r) > 1])  # (S, 2, 2)
        # grid coordinates of the segment ends; cells are unit squares there
        g = (seg - self.origin) / self.cell
        eps = 1e-6
        i0 = np.floor(np.minimum(g[:, 0, 0], g[:, 1, 0]) - eps).astype(np.int64)
        i1 = np.floor(np.maximum(g[:, 0, 0], g[:, 1, 0]) + eps).astype(np.int64)
        j0 = np.floor(np.minimum(g[:, 0, 1], g[:, 1, 1]) - eps).astype(np.int64)
        j1 = np.floor(np.maximum(g[:, 0, 1], g[:, 1, 1]) + eps).astype(np.int64)
        # keep only the part of each segment's bounding box that lies on the grid (points are clipped into it)
        i0, i1 = np.clip(i0, 0, nx - 1), np.clip(i1, 0, nx - 1)
        j0, j1 = np.clip(j0, 0, ny - 1), np.clip(j1, 0, ny - 1)
        wi, wj = i1 - i0 + 1, j1 - j0 + 1
        total = wi * wj
        seg_id = np.repeat(np.arange(len(seg)), total)
        local = np.arange(int(total.sum())) - np.repeat(np.cumsum(total) - total, total)
        ci = i0[seg_id] + local // wj[seg_id]
        cj = j0[seg_id] + local % wj[seg_id]
        # exact segment / box test (separating axis along the segment normal), with a margin
        p, q = g[seg_id, 0], g[seg_id, 1]
        d = q - p
        corners = np.stack([np.stack([ci, cj], 1), np.stack([ci + 1, cj], 1),
                            np.stack([ci, cj + 1], 1), np.stack([ci + 1, cj + 1], 1)], axis=1).astype(np.float64)
        side = d[:, None, 0] * (corners[..., 1] - p[:, None, 1]) - d[:, None, 1] * (corners[..., 0] - p[:, None, 0])
        tol = 1e-6 * (np.abs(d).sum(axis=1) + 1.0)
        crosses = (side.max(axis=1) >= -tol) & (side.min(axis=1) <= tol)
        hit[ci[crosses], cj[crosses]] = True
        return hit

    def select(self, polygon_xy: Any) -> np.ndarray:
        """Indices (ascending) of the points strictly inside the polygon (shapely ``contains_xy`` semantics)."""
        return np.flatnonzero(self.select_mask(polygon_xy))

    def select_mask(self, polygon_xy: Any) -> np.ndarray:
        """(N,) bool, True for points strictly inside the polygon."""
        import shapely

        poly = as_polygon(polygon_xy)
        out = np.zeros(self.n, dtype=bool)
        if self.n == 0 or poly.is_empty:
            return out
        shapely.prepare(poly)
        nx, ny = self.shape
        boundary = self._edge_cells(poly)
        # cells never crossed by an edge are wholly inside or outside: test their centres
        ci, cj = np.nonzero(~boundary)
        inside_cell = np.zeros((nx, ny), dtype=bool)
        if len(ci):
            # only centres inside the polygon's bounding box can be inside
            minx, miny, maxx, maxy = poly.bounds
            cx = self.origin[0] + (ci + 0.5) * self.cell
            cy = self.origin[1] + (cj + 0.5) * self.cell
            near = (cx >= minx) & (cx <= maxx) & (cy >= miny) & (cy <= maxy)
            if near.any():
                inside_cell[ci[near], cj[near]] = shapely.contains_xy(poly, cx[near], cy[near])
        # points of interior cells: taken whole; points of boundary cells: tested exactly
        flat_inside = inside_cell.ravel()
        flat_boundary = boundary.ravel()
        counts = np.diff(self.offsets)
        sorted_inside = np.repeat(flat_inside, counts)
        bcells = np.flatnonzero(flat_boundary & (counts > 0))
        if len(bcells):
            starts, ends = self.offsets[bcells], self.offsets[bcells + 1]
            lens = ends - starts
            pos = np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(int(lens.sum()))
            sorted_inside[pos] = shapely.contains_xy(poly, self._sorted_x[pos], self._sorted_y[pos])
        out[self.order] = sorted_inside
        return out

    def cell_counts(self) -> np.ndarray:
        """(nx, ny) number of points per grid cell."""
        return np.diff(self.offsets).reshape(self.shape)
