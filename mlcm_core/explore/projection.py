"""The 2-D map: UMAP fitted on crystal embeddings, persisted without pickle, and placement of new points.

Why UMAP on crystals: nearly every material has a structure, so the crystal embeddings define one map for
the whole corpus; other modalities are placed onto it (below) instead of getting maps of their own.

Why no pickle: a fitted ``umap.UMAP`` can only be saved with pickle (it holds numba-compiled search
trees), and unpickling a file can run arbitrary code; pickles also break across umap/pynndescent
versions. ``UMAPProjection`` therefore keeps exactly what ``UMAP.transform`` needs, as plain arrays in an
``.npz`` read with ``allow_pickle=False``:

* the training vectors (float16, the stored crystal embeddings) and their 2-D positions (float32);
* the fitted curve parameters ``a``, ``b`` and the optimisation settings (JSON).

``transform`` re-implements umap 0.5's ``UMAP.transform`` in plain numpy (fuzzy weights by the same binary
search, the same weighted-mean start and the same negative-sampling SGD with umap's gradients and clipping):
umap's numba kernels (``smooth_knn_dist``, ``optimize_layout_euclidean``, parallel, not cached on disk) took
20-45 s to compile in every new server process on a fresh install, on the first upload's request path; the
numpy path needs no compilation (first placement 0.35 s in a fresh process, 0.27 s after; umap's 45 s, then
0.09 s; measured under load). ``transform(canonical=False)`` still runs umap's own functions, for comparison.
Two further changes:

* the k nearest training points are found by an EXACT cosine search (faiss inner product on unit vectors)
  instead of the approximate NN-descent index. The fit uses the same exact neighbours (passed to UMAP as
  ``precomputed_knn``), so fitting and transforming agree.
* placement is a function of the vector's value, not of its last bits. umap (>= 0.5.4) seeds each new
  point's negative sampling with the raw bit pattern of its initial x coordinate
  (``rng_state + head_embedding[:, 0].view(int64)`` in ``optimize_layout_euclidean``), so two vectors equal
  to float32 rounding (the same structure embedded by two code paths) drew different negatives and landed
  up to 0.1 map units apart (measured: 19 % of 1e-7 relative perturbations moved a shipped material,
  ``benchmarks/place_stability.py``). ``transform`` therefore rounds the unit vectors to float16 (the
  precision the map's training vectors and the stored embeddings are kept at) and the initial positions to
  a grid of ``INIT_QUANTUM`` map units before the optimisation, seeds the negative sampling from that
  start (a counter-based hash, not umap's xorshift state), and computes every row as if alone: its k
  similarities recomputed row by row (faiss rounds a single query and a batch differently), its own mean
  distance bounding sigma and its edges weighed against its own strongest one (umap: the batch's). A
  point lands where it would if placed alone (batches of up to 10,000; larger ones get umap's 30 epochs
  instead of 100).

For small training sets umap itself computes exact neighbours, and the transform then agrees with
``UMAP.transform`` closely but not bit for bit: umap's own float64 distances already seed other negatives
than our float32 ones (tests/explore/test_projection.py checks the agreement and the stability).

Other modalities: a DOS- or density-only material is placed at the similarity-weighted mean of the map
positions of its top-k most similar crystals (``place_by_neighbours``; weights = cosine similarities
clipped at 0, equal weights if all are <= 0).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlcm_core.io import atomic_write, verify_file
from mlcm_core.explore.index import TopKIndex

__all__ = ["INIT_QUANTUM", "PROJECTION_FILE", "UMAPProjection", "exact_cosine_knn", "place_by_neighbours"]

PROJECTION_FILE = "projection.npz"
EXACT_KNN_MAX = 200_000  # above this the fit lets UMAP use its approximate NN-descent (an exact all-pairs
                         # search grows as N^2; transform stays exact either way)
INIT_QUANTUM = 2.0 ** -10  # map units (~1e-3; maps span ~10-40): initial positions are rounded to this grid so
                           # that umap's per-point RNG seed (their bit pattern) does not change with float noise


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def exact_cosine_knn(train: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest training rows by cosine distance (1 - cos): (indices (Q, k) int32, distances float32)."""
    import faiss

    index = faiss.IndexFlatIP(train.shape[1])
    index.add(_unit(train))
    sims, idx = index.search(_unit(queries), k)
    return idx.astype(np.int32), np.maximum(1.0 - sims, 0.0).astype(np.float32)


_SMOOTH_K_TOLERANCE = 1e-5  # umap.umap_.SMOOTH_K_TOLERANCE
_MIN_K_DIST_SCALE = 1e-3  # umap.umap_.MIN_K_DIST_SCALE


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic): a counter-based hash for sampling."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _rho(dists: np.ndarray, local_connectivity: float) -> np.ndarray:
    """umap's rho per row: the distance to the ``local_connectivity``-th nonzero neighbour (0 for 0)."""
    rho = np.zeros(len(dists))
    if local_connectivity <= 0.0:
        return rho
    index, interpolation = int(np.floor(local_connectivity)), local_connectivity - np.floor(local_connectivity)
    for i, row in enumerate(dists):
        nz = row[row > 0.0]
        if len(nz) >= local_connectivity:
            rho[i] = (nz[index - 1] + (interpolation * (nz[index] - nz[index - 1])
                                       if interpolation > _SMOOTH_K_TOLERANCE else 0.0)) if index > 0 \
                else interpolation * nz[0]
        elif len(nz):
            rho[i] = nz.max()
    return rho


def _sigma(dists: np.ndarray, rho: np.ndarray, k: float, n_iter: int = 64) -> np.ndarray:
    """umap's smooth_knn_dist binary search, all rows at once; the lower bound uses each row's own mean."""
    target = np.log2(k)
    d = dists[:, 1:].astype(np.float64) - rho[:, None]
    lo, hi, mid = np.zeros(len(d)), np.full(len(d), np.inf), np.ones(len(d))
    going = np.ones(len(d), bool)
    for _ in range(n_iter):
        psum = np.where(d > 0, np.exp(-d / mid[:, None]), 1.0).sum(axis=1)
        going &= np.abs(psum - target) >= _SMOOTH_K_TOLERANCE
        if not going.any():
            break
        above = going & (psum > target)
        below = going & ~above
        hi = np.where(above, mid, hi)
        lo = np.where(below, mid, lo)
        mid = np.where(above | (below & np.isfinite(hi)), (lo + hi) / 2.0, np.where(below, mid * 2.0, mid))
    floor = _MIN_K_DIST_SCALE * dists.mean(axis=1)
    return np.maximum(mid, floor)


@dataclass
class UMAPProjection:
    """A fitted UMAP map that can place new vectors (see the module docstring).

    Attributes:
        train_vectors: (N, D) float16 vectors the map was fitted on.
        embedding: (N, 2) float32 map positions of the training vectors.
        params: a, b, n_neighbors, min_dist, metric and the optimisation settings of the fit.
    """

    train_vectors: np.ndarray
    embedding: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.train_vectors = np.asarray(self.train_vectors, dtype=np.float16)
        self.embedding = np.asarray(self.embedding, dtype=np.float32)
        if len(self.train_vectors) != len(self.embedding):
            raise ValueError("train_vectors and embedding differ in length")
        self._knn_index: Any = None

    # ---- fitting -------------------------------------------------------------------------------
    @classmethod
    def fit(cls, vectors: np.ndarray, *, n_neighbors: int = 15, min_dist: float = 0.1, metric: str = "cosine",
            random_state: int | None = 0, n_epochs: int | None = None, verbose: bool = False) -> UMAPProjection:
        """Fit UMAP (cosine; exact neighbours up to EXACT_KNN_MAX points) on (N, D) vectors.

        ``n_neighbors`` is lowered to N - 1 for tiny sets. ``random_state`` makes the map reproducible
        (umap then optimises single-threaded); None lets it run in parallel.
        """
        import umap

        if metric != "cosine":
            raise ValueError("only the cosine metric is supported (embeddings are compared by cosine everywhere)")
        x16 = np.asarray(vectors, dtype=np.float16)
        n = len(x16)
        if n < 4:
            raise ValueError(f"UMAP needs at least 4 points to fit a map, got {n}")
        k = int(min(n_neighbors, n - 1))
        x = _unit(x16)
        kwargs: dict[str, Any] = {}
        if n <= EXACT_KNN_MAX:
            idx, dist = exact_cosine_knn(x16, x16, k)
            kwargs["precomputed_knn"] = (idx, dist)
        reducer = umap.UMAP(n_neighbors=k, min_dist=min_dist, metric="cosine", random_state=random_state,
                            n_epochs=n_epochs, verbose=verbose, **kwargs)
        with warnings.catch_warnings():
            # "no search index" (we transform without it) and "n_jobs overridden by random_state" are expected
            warnings.filterwarnings("ignore", message=".*knn_search_index.*")
            warnings.filterwarnings("ignore", message=".*n_jobs value.*")
            warnings.filterwarnings("ignore", category=UserWarning, module="umap")
            reducer.fit(x)
        return cls.from_umap(reducer, x16)

    @classmethod
    def from_umap(cls, reducer: Any, train_vectors: np.ndarray) -> UMAPProjection:
        """Extract what ``transform`` needs from a fitted ``umap.UMAP`` (cosine metric, euclidean output)."""
        if reducer.metric != "cosine" or reducer.output_metric != "euclidean":
            raise ValueError("only metric='cosine' with output_metric='euclidean' is supported")
        if getattr(reducer, "densmap", False):
            raise ValueError("densMAP embeddings cannot place new points")
        params = {
            "a": float(reducer._a), "b": float(reducer._b), "n_neighbors": int(reducer._n_neighbors),
            "min_dist": float(reducer.min_dist), "metric": "cosine",
            "local_connectivity": float(reducer.local_connectivity),
            "disconnection_distance": float(reducer._disconnection_distance),
            "repulsion_strength": float(reducer.repulsion_strength),
            "initial_alpha": float(reducer._initial_alpha),
            "negative_sample_rate": float(reducer.negative_sample_rate),
            "n_epochs": None if reducer.n_epochs is None else int(reducer.n_epochs),
            "transform_seed": int(reducer.transform_seed),
            "parallel": reducer.random_state is None,
            "random_state": reducer.random_state if isinstance(reducer.random_state, int) else None,
            "umap_version": _umap_version(),
        }
        return cls(train_vectors=train_vectors, embedding=reducer.embedding_, params=params)

    # ---- placing new points ----------------------------------------------------------------------
    def transform(self, vectors: np.ndarray, *, canonical: bool = True) -> np.ndarray:
        """(M, D) new vectors -> (M, 2) map positions (umap's transform with exact neighbours).

        ``canonical`` (default): umap's algorithm in plain numpy (``_place``; no numba kernel to compile in a
        fresh process), with the rounding and per-point choices of the module docstring, so that a placement
        depends on the vector's value only. ``canonical=False`` runs umap's own functions exactly (kept to check
        agreement with ``UMAP.transform`` and to measure the difference).
        """
        x = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if x.shape[1] != self.train_vectors.shape[1]:
            raise ValueError(f"vectors have dimension {x.shape[1]}, the map was fitted on {self.train_vectors.shape[1]}")
        if not np.all(np.isfinite(x)):
            raise ValueError("vectors contain NaN or infinite values")
        if canonical:  # equal vectors up to float noise give equal inputs
            x = _unit(_unit(x).astype(np.float16))
        k = int(self.params["n_neighbors"])
        if self._knn_index is None:
            self._knn_index = TopKIndex(_unit(self.train_vectors), backend="flat")
        sims, indices = self._knn_index.search(_unit(x), k)
        if not canonical:
            return self._umap_transform(sims, indices)
        # faiss's one-query and batched kernels round differently: recompute the k similarities row by row in
        # float64, so a point's distances do not depend on what else is in the batch
        neighbours = _unit(self.train_vectors[indices.reshape(-1)]).reshape(len(x), k, -1)
        sims = np.sum(neighbours.astype(np.float64) * x.astype(np.float64)[:, None, :], axis=-1)
        order = np.argsort(-sims, axis=1, kind="stable")
        sims = np.take_along_axis(sims, order, axis=1).astype(np.float32)
        indices = np.take_along_axis(indices, order, axis=1)
        return self._place(np.maximum(1.0 - sims, 0.0).astype(np.float32), indices.astype(np.int64))

    def _epochs(self, m: int) -> int:
        n_epochs = self.params["n_epochs"]
        return (100 if m <= 10000 else 30) if n_epochs is None else int(n_epochs // 3.0)

    def _place(self, dists: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """umap 0.5's transform (fuzzy weights, weighted-mean start, negative-sampling SGD) in numpy, per point.

        Each row is computed as if alone: its own mean distance bounds sigma, its edges are weighed against its
        own strongest one, and its negative samples come from a counter-based hash of (its rounded start,
        epoch, edge, sample) instead of umap's per-point xorshift state, so no numba kernel is needed.
        """
        p = self.params
        m, k = dists.shape
        valid = dists < p["disconnection_distance"]
        rho = _rho(dists, max(0.0, p["local_connectivity"] - 1.0))
        sigma = _sigma(dists, rho, float(k))
        w = np.where(((dists - rho[:, None]) <= 0.0) | (sigma[:, None] == 0.0), 1.0,
                     np.exp(-(dists - rho[:, None]) / np.where(sigma == 0.0, 1.0, sigma)[:, None]))
        w = np.where(valid, w, 0.0).astype(np.float32)
        tail = self.embedding.astype(np.float64)
        out = np.full((m, 2), np.nan, np.float64)
        # start: a neighbour's position where a weight is exactly 1 (the lowest such index, as umap's CSR
        # order gives), else the weighted mean of the neighbours' positions
        ones = w == 1.0
        idx_one = np.where(ones, indices, np.iinfo(np.int64).max).min(axis=1)
        total = w.sum(axis=1)
        mean = np.einsum("mk,mkd->md", w.astype(np.float64), tail[np.clip(indices, 0, None)])
        has = total > 0
        out[has] = mean[has] / total[has, None]
        out[ones.any(axis=1)] = tail[idx_one[ones.any(axis=1)]]
        out = np.round(out / INIT_QUANTUM) * INIT_QUANTUM
        n_epochs = self._epochs(m)
        row_max = w.max(axis=1, keepdims=True)
        rel = np.divide(w, row_max, out=np.zeros_like(w), where=row_max > 0)
        rel[rel < 1.0 / n_epochs] = 0.0
        live = rel > 0
        eps = np.where(live, 1.0 / np.where(live, rel, 1.0), np.inf)  # epochs per sample
        epns = eps / p["negative_sample_rate"]
        next_s, next_n = eps.copy(), epns.copy()
        a, b, gamma, n_train = p["a"], p["b"], p["repulsion_strength"], len(tail)
        with np.errstate(over="ignore"):
            seed = _mix(out[:, 0].view(np.uint64) ^ (out[:, 1].view(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
                        ^ np.uint64(int(p["transform_seed"])))
        head = np.where(np.isfinite(out), out, 0.0)
        alpha = p["initial_alpha"] / 4.0
        for n in range(n_epochs):
            for j in range(k):
                act = np.flatnonzero(next_s[:, j] <= n)
                if not len(act):
                    continue
                cur, other = head[act], tail[indices[act, j]]
                d2 = np.sum((cur - other) ** 2, axis=1)
                pos = d2 > 0.0
                gc = np.zeros_like(d2)
                gc[pos] = -2.0 * a * b * d2[pos] ** (b - 1.0) / (a * d2[pos] ** b + 1.0)
                head[act] = cur + np.clip(gc[:, None] * (cur - other), -4.0, 4.0) * alpha
                next_s[act, j] += eps[act, j]
                n_neg = ((n - next_n[act, j]) / epns[act, j]).astype(np.int64)
                for q in range(int(n_neg.max(initial=0))):
                    sub = act[n_neg > q]
                    key = seed[sub] ^ _mix(np.uint64(n * 1_000_003 + j * 101 + q + 1))
                    other = tail[(_mix(key) % np.uint64(n_train)).astype(np.int64)]
                    cur = head[sub]
                    d2 = np.sum((cur - other) ** 2, axis=1)
                    gc = np.where(d2 > 0.0, 2.0 * gamma * b / ((0.001 + d2) * (a * np.maximum(d2, 1e-300) ** b + 1.0)),
                                  0.0)
                    head[sub] = cur + np.where(gc[:, None] > 0.0, np.clip(gc[:, None] * (cur - other), -4.0, 4.0),
                                               0.0) * alpha
                next_n[act, j] += n_neg * epns[act, j]
            alpha = p["initial_alpha"] / 4.0 * (1.0 - n / n_epochs)
        return np.where(np.isfinite(out), head, np.nan).astype(np.float32)

    def _umap_transform(self, sims: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """umap 0.5's ``UMAP.transform`` from the k nearest training rows, with umap's own (numba) functions."""
        import scipy.sparse
        from sklearn.utils import check_random_state
        from umap.layouts import optimize_layout_euclidean
        from umap.umap_ import (
            INT32_MAX,
            INT32_MIN,
            compute_membership_strengths,
            init_graph_transform,
            make_epochs_per_sample,
            smooth_knn_dist,
        )

        p = self.params
        n_train, k = len(self.train_vectors), indices.shape[1]
        dists = np.maximum(1.0 - sims, 0.0).astype(np.float32, order="C")
        indices = indices.astype(np.int32)
        indices[dists >= p["disconnection_distance"]] = -1
        adjusted = max(0.0, p["local_connectivity"] - 1.0)
        sigmas, rhos = smooth_knn_dist(dists, float(k), local_connectivity=float(adjusted))
        rows, cols, vals, _ = compute_membership_strengths(indices, dists, sigmas, rhos, bipartite=True)
        graph = scipy.sparse.coo_matrix((vals, (rows, cols)), shape=(len(dists), n_train))
        csr = graph.tocsr()
        csr.eliminate_zeros()
        embedding = init_graph_transform(csr, self.embedding)
        n_epochs = self._epochs(graph.shape[0])
        graph.data[graph.data < (graph.data.max() / float(n_epochs))] = 0.0  # the batch's strongest edge
        graph.eliminate_zeros()
        epochs_per_sample = make_epochs_per_sample(graph.data, n_epochs)
        rng_state = check_random_state(p["transform_seed"]).randint(INT32_MIN, INT32_MAX, 3).astype(np.int64)
        embedding = optimize_layout_euclidean(
            embedding, self.embedding.astype(np.float32, copy=True), graph.row, graph.col, n_epochs, n_train,
            epochs_per_sample, p["a"], p["b"], rng_state, p["repulsion_strength"], p["initial_alpha"] / 4.0,
            p["negative_sample_rate"], bool(p["parallel"]), verbose=False, tqdm_kwds={"disable": True})
        return np.asarray(embedding, dtype=np.float32)

    # ---- persistence ---------------------------------------------------------------------------
    def save(self, directory: str | Path, name: str = PROJECTION_FILE) -> Path:
        """Write ``directory/name`` (plain arrays + JSON, no pickle) atomically; returns the path."""
        path = Path(directory) / name
        arrays = {"train_vectors": self.train_vectors, "embedding": self.embedding,
                  "params": np.array(json.dumps(self.params))}
        atomic_write(path, lambda f: np.savez(f, **arrays))
        return path

    @classmethod
    def load(cls, path: str | Path, expected_sha256: str | None = None) -> UMAPProjection:
        """Read a projection (``allow_pickle=False``); with ``expected_sha256`` the file is verified first."""
        path = Path(path)
        if path.is_dir():
            path = path / PROJECTION_FILE
        if not path.exists():
            raise FileNotFoundError(f"no projection at {path}")
        verify_file(path, expected_sha256)
        with np.load(path, allow_pickle=False) as z:
            return cls(train_vectors=z["train_vectors"], embedding=z["embedding"], params=json.loads(str(z["params"])))


def place_by_neighbours(queries: np.ndarray, index: TopKIndex, positions: np.ndarray, k: int = 10) -> np.ndarray:
    """Map positions of (M, D) vectors of another modality: similarity-weighted mean of their top-k crystals.

    Args:
        queries: (M, D) unit vectors (e.g. DOS embeddings).
        index: a TopKIndex over the crystal embeddings the map was fitted on.
        positions: (N, 2) map positions of those crystals, aligned with the index.
        k: how many crystals.

    Returns:
        (M, 2) float32; weights are the cosine similarities clipped at 0 (equal weights if all are <= 0).
    """
    q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    if len(q) == 0:
        return np.zeros((0, 2), np.float32)
    sims, idx = index.search(q, k)
    w = np.clip(sims, 0.0, None).astype(np.float64)
    none = w.sum(axis=1) <= 0
    w[none] = 1.0
    w /= w.sum(axis=1, keepdims=True)
    return np.einsum("mk,mkc->mc", w, np.asarray(positions, dtype=np.float64)[idx]).astype(np.float32)


def _umap_version() -> str:
    try:
        from importlib.metadata import version

        return version("umap-learn")
    except Exception:  # noqa: BLE001
        return "unknown"
