"""The 2-D map: UMAP fitted on crystal embeddings, persisted without pickle, and placement of new points.

Why UMAP on crystals: nearly every material has a structure, so the crystal embeddings define one map for
the whole corpus; other modalities are placed onto it (below) instead of getting maps of their own.

Why no pickle: a fitted ``umap.UMAP`` can only be saved with pickle (it holds numba-compiled search
trees), and unpickling a file can run arbitrary code; pickles also break across umap/pynndescent
versions. ``UMAPProjection`` therefore keeps exactly what ``UMAP.transform`` needs, as plain arrays in an
``.npz`` read with ``allow_pickle=False``:

* the training vectors (float16, the stored crystal embeddings) and their 2-D positions (float32);
* the fitted curve parameters ``a``, ``b`` and the optimisation settings (JSON).

``transform`` re-implements umap 0.5's ``UMAP.transform`` with umap's own numba functions
(``smooth_knn_dist``, ``compute_membership_strengths``, ``init_graph_transform``,
``optimize_layout_euclidean``), with two changes:

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
  a grid of ``INIT_QUANTUM`` map units before the optimisation, and weighs each point's edges against its
  own strongest edge (umap: the batch's), with its k similarities recomputed row by row (faiss rounds a
  single query and a batch differently), so a point lands where it would if placed alone (batches of up
  to 10,000; larger ones get umap's 30 epochs instead of 100).

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

from mlcm_core.explore.embed import atomic_write, sha256_file
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

        ``canonical`` (default) rounds inputs and initial positions as the module docstring says, so that a
        placement depends on the vector's value only; ``canonical=False`` follows umap's arithmetic exactly
        (kept to check agreement with ``UMAP.transform`` and to measure the difference).
        """
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

        x = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if x.shape[1] != self.train_vectors.shape[1]:
            raise ValueError(f"vectors have dimension {x.shape[1]}, the map was fitted on {self.train_vectors.shape[1]}")
        if not np.all(np.isfinite(x)):
            raise ValueError("vectors contain NaN or infinite values")
        if canonical:  # equal vectors up to float noise give equal inputs
            x = _unit(_unit(x).astype(np.float16))
        p = self.params
        n_train = len(self.train_vectors)
        k = int(p["n_neighbors"])
        if self._knn_index is None:
            self._knn_index = TopKIndex(_unit(self.train_vectors), backend="flat")
        sims, indices = self._knn_index.search(_unit(x), k)
        if canonical:  # faiss's one-query and batched kernels round differently: recompute the k similarities
            # row by row in float64, so a point's distances do not depend on what else is in the batch
            neighbours = _unit(self.train_vectors[indices.reshape(-1)]).reshape(len(x), k, -1)
            sims = np.sum(neighbours.astype(np.float64) * x.astype(np.float64)[:, None, :], axis=-1)
            order = np.argsort(-sims, axis=1, kind="stable")
            sims = np.take_along_axis(sims, order, axis=1).astype(np.float32)
            indices = np.take_along_axis(indices, order, axis=1)
        dists = np.maximum(1.0 - sims, 0.0).astype(np.float32, order="C")
        indices = indices.astype(np.int32)
        indices[dists >= p["disconnection_distance"]] = -1
        adjusted = max(0.0, p["local_connectivity"] - 1.0)
        sigmas, rhos = smooth_knn_dist(dists, float(k), local_connectivity=float(adjusted))
        rows, cols, vals, _ = compute_membership_strengths(indices, dists, sigmas, rhos, bipartite=True)
        graph = scipy.sparse.coo_matrix((vals, (rows, cols)), shape=(len(x), n_train))
        csr = graph.tocsr()
        csr.eliminate_zeros()
        embedding = init_graph_transform(csr, self.embedding)
        if canonical:  # the per-point RNG seed is the bit pattern of this x coordinate: put it on a fixed grid
            embedding = (np.round(embedding / INIT_QUANTUM) * INIT_QUANTUM).astype(np.float32)
        if p["n_epochs"] is None:
            n_epochs = 100 if graph.shape[0] <= 10000 else 30
        else:
            n_epochs = int(p["n_epochs"] // 3.0)
        if canonical:  # each row against its own strongest edge: a point lands where it would alone
            row_max = np.zeros(graph.shape[0], np.float32)
            np.maximum.at(row_max, graph.row, graph.data)
            graph.data = graph.data / row_max[graph.row]
            graph.data[graph.data < 1.0 / float(n_epochs)] = 0.0
        else:  # umap: against the strongest edge of the whole batch
            graph.data[graph.data < (graph.data.max() / float(n_epochs))] = 0.0
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
        if expected_sha256 is not None and sha256_file(path) != expected_sha256:
            raise ValueError(f"checksum mismatch for {path}: the file is corrupt or was replaced")
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
