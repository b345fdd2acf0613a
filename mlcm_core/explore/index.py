"""Nearest-neighbour search over a float16 gallery (exact up to 1M rows, approximate with exact re-ranking
above), a grid index for lasso selection on the map, and a viewport sampler for its hover layer.

Why exact: the explorer ranks candidates for a scientist, who must be able to trust that "top 50" means
the 50 highest cosine similarities, not an approximation. An exhaustive scan is affordable: a 1M x 128
float16 gallery is 256 MB and one scan of it takes tens of milliseconds. Up to ``ANN_MIN_ROWS`` (1M) rows
every search is exact (today's corpus: ~18k).

Why approximate above 1M rows: at 10M an exact scan reads 2.5 GB per query (~0.5-1 s on 2 cores) and
needs its own 2.5 GB copy of the gallery. The ``"ivfpq"`` backend (see ``TopKIndex``) scans a few percent
of 32-byte PQ codes to propose candidates and re-ranks them exactly from the float16 gallery, so scores
stay exact and only membership of the top k is approximate (recall@50 0.988 at 10M on clustered
synthetic embeddings; benchmarks/explore_scale.py prints it beside the exact scan).

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

__all__ = ["ANN_MIN_ROWS", "GridIndex2D", "TopKIndex", "ViewportSampler", "as_polygon", "default_nlist", "recall_at_k"]


#: ``backend="auto"`` searches exactly up to this many gallery rows and approximately ("ivfpq") above it.
ANN_MIN_ROWS = 1_000_000


def default_nlist(n: int) -> int:
    """IVF lists for an n-row gallery: the power of two at or below sqrt(n) / 2, in [16, 4096].

    ~10k rows per list at 10M. Fewer, larger lists than the usual 4 sqrt(n): assigning every row to a list
    costs n x nlist x D multiply-adds at build time (minutes on a small machine), while a longer list
    costs little to scan with 4-bit fast-scan PQ codes.
    """
    return int(min(4096, max(16, 2 ** math.floor(math.log2(max(math.sqrt(max(n, 1)) / 2, 1.0))))))


class TopKIndex:
    """Top-k inner-product search over L2-normalised vectors (inner product = cosine similarity).

    Exact up to ``exact_below`` rows, approximate (with exact re-ranking) above, unless ``backend`` says.

    Backends:

    * ``"fp16"`` (exact): faiss scalar quantizer with float16 codes, exact for float16 data.
    * ``"flat"`` (exact): faiss ``IndexFlatIP`` on a float32 copy.
    * ``"ivfpq"`` (approximate candidates, exact scores): an inverted file (IVF, ``nlist`` spherical k-means
      lists) of 4-bit fast-scan product-quantizer codes of the residuals (``IndexIVFPQFastScan``, D/2
      sub-quantizers: D/4 bytes a row) proposes ``pool`` candidates from the ``nprobe`` lists nearest the
      query; those are re-ranked by their exact inner products with the stored float16 vectors (the very
      array passed in: no copy when it is float16 and C-contiguous). Returned scores are therefore exact;
      only whether a true top-k row is among the candidates is approximate.
    * ``"auto"`` (default): ``"fp16"`` up to ``exact_below`` rows (today's ~18k-material corpus is always
      searched exactly), ``"ivfpq"`` above.

    Why an approximate backend above 1M rows: an exact scan reads the whole gallery for every query
    (10M x 128 float16 = 2.5 GB: ~0.5-1 s per query on 2 cores) and the exact fp16 index holds a second
    2.5 GB copy of it. The IVF-PQ index adds 32 B of code + 8 B of id per row (~0.4 GB at 10M x 128) on
    top of the float16 gallery the explorer holds anyway, and scans ~nprobe/nlist of the codes per query.
    Measured (benchmarks/explore_scale.py on 2 busy cores, clustered synthetic unit vectors, 128-d,
    nprobe=16, pool=3000): at 10M, recall@50 against the exact search 0.988 (pool 1000: 0.906, 2000: 0.974,
    5000: 0.997; nprobe hardly matters, the PQ ranking does), ~4.5 ms a query against 210-300 ms for the
    exact scan, an 85-90 s build (1 faiss thread), 382 MiB of index; at 1M, recall@50 1.0, ~2 ms. On pure random
    vectors (no structure: the worst case, unlike real embeddings) recall@50 is only ~0.3. Recall on real
    embeddings should be checked the same way (``recall_at_k`` below) when a corpus grows past the threshold.

    Filters (``mask``) are honoured in every backend: the approximate one applies them inside the IVF scan
    (``IDSelectorBitmap``) with nprobe raised by sqrt(N / eligible rows) (capped at nlist), and
    searches exactly (a scan of the eligible rows' float16 vectors) when at most ``exact_subset`` rows are
    eligible, or when the IVF scan finds fewer than k eligible rows. Only eligible rows are ever returned.

    Builds are deterministic: the k-means training sample is drawn with ``seed``, and faiss's k-means (IVF
    lists and PQ codebooks) is seeded with it too.

    Args:
        vectors: (N, D) gallery, float16 (kept as float16 codes) or float32.
        backend: "auto" (default), "fp16", "flat" or "ivfpq".
        exact_below: the size threshold of "auto": at most this many rows are searched exactly.
        nlist: IVF lists (ivfpq; default ``default_nlist(N)``).
        nprobe: IVF lists scanned per query (ivfpq; default 16): more = higher recall, slower.
        pool: candidates re-ranked exactly per query (ivfpq; default 3000, at least k): more = higher
            recall, slower (at 10M clustered rows: recall@50 0.91 with 1000, 0.97 with 2000).
            ``nprobe`` and ``pool`` are attributes and may be changed after the build.
        exact_subset: filtered searches with at most this many eligible rows are exact (ivfpq; default 16384:
            a scan of the eligible float16 rows costs ~1 us a row, the IVF scan a few ms).
        seed: seed of the k-means training (ivfpq).
    """

    def __init__(self, vectors: np.ndarray, backend: str = "auto", *, exact_below: int = ANN_MIN_ROWS,
                 nlist: int | None = None, nprobe: int = 16, pool: int = 3000, exact_subset: int = 1 << 14,
                 seed: int = 0) -> None:
        import faiss

        vectors = np.asarray(vectors)
        if vectors.ndim != 2:
            raise ValueError(f"gallery must be 2-D (N, D), got shape {vectors.shape}")
        if backend not in ("auto", "fp16", "flat", "ivfpq"):
            raise ValueError(f"unknown backend {backend!r}; choose 'auto', 'fp16', 'flat' or 'ivfpq'")
        self.n, self.dim = vectors.shape
        if backend == "auto":
            backend = "ivfpq" if self.n > exact_below else "fp16"
        self.backend = backend
        self.nprobe, self.pool, self.exact_subset, self.seed = int(nprobe), int(pool), int(exact_subset), int(seed)
        self.nlist = 0
        self._vectors: np.ndarray | None = None
        if backend == "fp16":
            self._index = faiss.IndexScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
            # QT_fp16 needs no training data; add in blocks to bound the float32 temporary
            for start in range(0, self.n, 1 << 16):
                self._index.add(np.ascontiguousarray(vectors[start : start + (1 << 16)], dtype=np.float32))
        elif backend == "flat":
            self._index = faiss.IndexFlatIP(self.dim)
            self._index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        else:
            self._build_ivfpq(vectors, nlist)

    @property
    def exact(self) -> bool:
        """Whether every search is exact (the fp16 and flat backends)."""
        return self.backend != "ivfpq"

    def _build_ivfpq(self, vectors: np.ndarray, nlist: int | None) -> None:
        import faiss

        if self.dim % 2:
            raise ValueError(f"the ivfpq backend needs an even dimension, got {self.dim}")
        if self.n < 1024:
            raise ValueError(f"the ivfpq backend needs at least 1024 rows, got {self.n}; use an exact backend")
        # the float16 vectors re-rank the candidates: the caller's array when it already is one (no copy)
        self._vectors = np.ascontiguousarray(vectors, dtype=np.float16)
        self.nlist = int(nlist or default_nlist(self.n))
        self.nlist = max(1, min(self.nlist, self.n // 39))  # faiss k-means wants >= 39 points per centroid
        rng = np.random.default_rng(self.seed)
        n_train = min(self.n, max(64 * self.nlist, 1 << 15))
        rows = np.sort(rng.choice(self.n, n_train, replace=False)) if n_train < self.n else np.arange(self.n)
        train = self._vectors[rows].astype(np.float32)
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFPQFastScan(quantizer, self.dim, self.nlist, self.dim // 2, 4, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = self.seed
        index.cp.spherical = True  # unit-norm centroids for inner-product assignment
        index.pq.cp.seed = self.seed
        index.train(train)
        del train
        for start in range(0, self.n, 1 << 16):  # bounded float32 temporaries
            index.add(self._vectors[start : start + (1 << 16)].astype(np.float32))
        self._index = index
        self._quantizer = quantizer  # the IVF index does not own the Python quantizer object

    def __len__(self) -> int:
        return self.n

    def memory_bytes(self) -> dict[str, int]:
        """Approximate memory held: ``index`` (faiss structures) and ``gallery`` (the float16 vectors the
        ivfpq backend re-ranks with: the caller's array when it was float16, so usually not extra)."""
        if self.backend == "fp16":
            return {"index": self.n * self.dim * 2, "gallery": 0}
        if self.backend == "flat":
            return {"index": self.n * self.dim * 4, "gallery": 0}
        invlists = self._index.invlists
        bbs = self._index.bbs
        code_bytes = sum(-(-invlists.list_size(i) // bbs) * bbs for i in range(self.nlist)) * self._index.M // 2
        centroids = self.nlist * self.dim * 4
        return {"index": code_bytes + self.n * 8 + centroids, "gallery": self._vectors.nbytes}

    def search(self, queries: np.ndarray, k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product (exact, or exactly re-ranked candidates for the ivfpq backend).

        Args:
            queries: (D,) or (Q, D) query vectors.
            k: how many; fewer columns are returned when fewer gallery rows are eligible.
            mask: optional (N,) bool, True = eligible (applied inside the scan: only eligible rows come back).

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
            if eligible == self.n:
                mask = None
        k_eff = min(int(k), eligible)
        if k_eff == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        if self.backend == "ivfpq":
            return self._search_ivfpq(np.ascontiguousarray(q), k_eff, mask, eligible)
        if mask is not None:
            bits = np.packbits(mask, bitorder="little")
            sel = faiss.IDSelectorBitmap(self.n, faiss.swig_ptr(bits))
            params = faiss.SearchParameters(sel=sel)
        if params is None:
            scores, idx = self._index.search(np.ascontiguousarray(q), k_eff)
        else:
            scores, idx = self._index.search(np.ascontiguousarray(q), k_eff, params=params)
            del bits  # the selector reads the bitmap during the search only
        return scores, idx.astype(np.int64)

    # ---- ivfpq ---------------------------------------------------------------------------------
    def _search_ivfpq(self, q: np.ndarray, k: int, mask: np.ndarray | None, eligible: int
                      ) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        if mask is not None and eligible <= self.exact_subset:
            return self._exact_rows(q, np.flatnonzero(mask), k)
        params = faiss.SearchParametersIVF()
        nprobe = self.nprobe
        bits = None
        if mask is not None:
            # a filter thins every list: scan more lists, by sqrt(N / eligible) (x2.2 at 20% eligible, x10 at
            # 1%); proportionally more would scan every list for narrow filters
            nprobe = math.ceil(nprobe * math.sqrt(self.n / eligible))
            bits = np.packbits(mask, bitorder="little")
            params.sel = faiss.IDSelectorBitmap(self.n, faiss.swig_ptr(bits))
        params.nprobe = int(min(self.nlist, nprobe))
        pool = int(min(max(self.pool, k), eligible))
        _, cand = self._index.search(q, pool, params=params)
        del bits
        scores = np.empty((len(q), k), np.float32)
        idx = np.empty((len(q), k), np.int64)
        for s in range(0, len(q), 64):  # (64, pool, D) float32 temporaries
            c = cand[s : s + 64]
            valid = c >= 0
            vec = self._vectors[np.where(valid, c, 0)].astype(np.float32)
            sc = np.einsum("qpd,qd->qp", vec, q[s : s + 64])
            sc[~valid] = -np.inf
            for j in range(len(c)):
                if valid[j].sum() < k:  # the scan found too few eligible rows: exact over all eligible ones
                    rows = np.flatnonzero(mask) if mask is not None else np.arange(self.n)
                    scores[s + j], idx[s + j] = (a[0] for a in self._exact_rows(q[s + j : s + j + 1], rows, k))
                    continue
                scores[s + j], idx[s + j] = _top(sc[j], c[j], k)
        return scores, idx

    def _exact_rows(self, q: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k among the given gallery rows (a blocked scan of their float16 vectors)."""
        best_s = np.full((len(q), 0), -np.inf, np.float32)
        best_i = np.zeros((len(q), 0), np.int64)
        for start in range(0, len(rows), 1 << 17):
            r = rows[start : start + (1 << 17)]
            sc = (self._vectors[r].astype(np.float32) @ q.T).T  # (Q, B)
            cs = np.concatenate([best_s, sc], axis=1)
            ci = np.concatenate([best_i, np.broadcast_to(r, sc.shape)], axis=1)
            top = [_top(cs[j], ci[j], k) for j in range(len(q))]
            best_s = np.stack([t[0] for t in top])
            best_i = np.stack([t[1] for t in top])
        return best_s, best_i

    def reconstruct(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """(n, D) float32 of the stored gallery rows (the float16 values, for the fp16 and ivfpq backends)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._vectors is not None:
            return self._vectors[rows].astype(np.float32).reshape(len(rows), self.dim)
        return np.stack([self._index.reconstruct(int(r)) for r in rows]) if len(rows) else np.zeros((0, self.dim), np.float32)


def _top(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k highest scores (descending; ties by ascending id) and their ids, from 1-D arrays."""
    if len(scores) > k:
        part = np.argpartition(-scores, k - 1)[:k]
        scores, ids = scores[part], ids[part]
    order = np.lexsort((ids, -scores))[:k]
    return scores[order].astype(np.float32), ids[order].astype(np.int64)


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each row of ``exact`` (Q, k) ids found in the same row of ``approx``."""
    approx, exact = np.atleast_2d(approx), np.atleast_2d(exact)
    hits = [len(set(a.tolist()) & set(e.tolist())) / max(len(e), 1) for a, e in zip(approx, exact)]
    return float(np.mean(hits)) if hits else 1.0


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
        # cells never crossed by an edge are wholly inside or outside. Only cells within the polygon's bounding
        # box can be inside; along a grid column, a run of such cells between boundary cells is all on one side
        # (two adjacent cells not crossed by an edge share a side no edge crosses), so one centre per run is
        # tested.
        inside_cell = np.zeros((nx, ny), dtype=bool)
        minx, miny, maxx, maxy = poly.bounds
        (i0, i1), (j0, j1) = self._cell_of(np.array([minx, maxx]), np.array([miny, maxy]))
        sub = ~boundary[i0 : i1 + 1, j0 : j1 + 1]  # (a, b): candidate cells, runs along axis 1
        if sub.any():
            flat = sub.ravel()
            first = flat.copy()
            first[1:] &= ~flat[:-1]
            first[:: sub.shape[1]] = flat[:: sub.shape[1]]  # a run never continues across columns
            starts = np.flatnonzero(first)
            ci, cj = np.divmod(starts, sub.shape[1])
            cx = self.origin[0] + (ci + i0 + 0.5) * self.cell
            cy = self.origin[1] + (cj + j0 + 0.5) * self.cell
            run_inside = shapely.contains_xy(poly, cx, cy)
            run_id = np.cumsum(first) - 1
            inside_cell[i0 : i1 + 1, j0 : j1 + 1] = (flat & run_inside[np.maximum(run_id, 0)]).reshape(sub.shape)
        # points of interior cells: taken whole; points of boundary cells: tested exactly. Work in proportion
        # to the selected and boundary points (not to N): positions in the cell-sorted order, then a scatter.
        counts = np.diff(self.offsets)
        icells = np.flatnonzero(inside_cell.ravel() & (counts > 0))
        if len(icells):
            out[self.order[self._positions(icells)]] = True
        bcells = np.flatnonzero(boundary.ravel() & (counts > 0))
        if len(bcells):
            pos = self._positions(bcells)
            pos = pos[shapely.contains_xy(poly, self._sorted_x[pos], self._sorted_y[pos])]
            out[self.order[pos]] = True
        return out

    def _positions(self, cells: np.ndarray) -> np.ndarray:
        """Positions, in the cell-sorted order, of every point of the given flat cell ids (ascending)."""
        starts, lens = self.offsets[cells], self.offsets[cells + 1] - self.offsets[cells]
        return np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(int(lens.sum()))

    def cell_counts(self) -> np.ndarray:
        """(nx, ny) number of points per grid cell."""
        return np.diff(self.offsets).reshape(self.shape)


class ViewportSampler:
    """A uniform random sample of at most ``max_samples`` of the points inside an axis-aligned viewport.

    What HoloViews' ``decimate`` does for the map's hover layer, without its O(N) cost per pan/zoom (a
    pandas range selection plus a random permutation of every point in view): the points are put once in
    a fixed random order (``seed``), and a query scans that order in blocks until it has ``max_samples``
    points in the box. The first m points of a random order that fall in the box are a uniform random
    sample of the points in the box, so the cost is O(max_samples / fraction in view), at most O(N).
    The same viewport always gives the same sample.

    Args:
        xy: (N, 2) point coordinates.
        seed: of the random order.
    """

    def __init__(self, xy: np.ndarray, seed: int = 0, block: int = 1 << 16) -> None:
        xy = np.asarray(xy, dtype=np.float64)
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise ValueError(f"points must be (N, 2), got shape {xy.shape}")
        self.n = len(xy)
        self.order = np.random.default_rng(seed).permutation(self.n)
        self._x = np.ascontiguousarray(xy[self.order, 0])
        self._y = np.ascontiguousarray(xy[self.order, 1])
        self.block = int(block)

    def sample(self, x_range: tuple[float, float], y_range: tuple[float, float], max_samples: int = 3000) -> np.ndarray:
        """Indices (ascending) of up to ``max_samples`` points with x0 <= x <= x1 and y0 <= y <= y1 (all of
        them when there are no more)."""
        (x0, x1), (y0, y1) = sorted(x_range), sorted(y_range)
        found: list[np.ndarray] = []
        have = 0
        for s in range(0, self.n, self.block):
            xs, ys = self._x[s : s + self.block], self._y[s : s + self.block]
            hit = np.flatnonzero((xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1))
            found.append(hit[: max_samples - have] + s)
            have += len(found[-1])
            if have >= max_samples:
                break
        pos = np.concatenate(found) if found else np.zeros(0, np.int64)
        return np.sort(self.order[pos])
