"""A fitted random forest as flat arrays: saved to .npz without pickle, predicted in numpy.

Why not pickle (or joblib): a pickle runs code when it is loaded, and a scikit-learn pickle only loads under
the version that wrote it. The fitted trees are just five arrays per tree (children, split feature, threshold,
leaf value), so they are stored as such (``np.savez_compressed``; read with ``allow_pickle=False``) and walked
in numpy, which gives exactly scikit-learn's ``predict``:

* scikit-learn casts the inputs to float32 and sends a row left where ``x[feature] <= threshold`` (threshold in
  float64). For a float32 ``x`` that is the same as ``x <= t32`` with ``t32`` the largest float32 not above the
  threshold, so thresholds are stored as float32 rounded down: the same decisions, half the bytes.
* ``RandomForestRegressor.predict`` (one job) adds the trees' outputs in order and divides by their number;
  ``predict`` does the same additions in the same order.

The trees of all estimators are concatenated; ``roots[k]`` is the first node of tree k and child indices are
global (-1 at a leaf). ``predict_trees`` also gives each tree's output, whose std over trees is the forest's
spread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlcm_core.io import atomic_write

if TYPE_CHECKING:
    from sklearn.ensemble import RandomForestRegressor

__all__ = ["FOREST_FORMAT", "TreeForest", "load_forest", "save_forest"]

FOREST_FORMAT = "mlcm-tree-forest-1"
_ARRAYS = ("roots", "left", "right", "feature", "threshold", "value")


@dataclass(frozen=True)
class TreeForest:
    """Regression trees as concatenated node arrays (n_nodes total over all trees)."""

    roots: np.ndarray  # (n_trees,) int64, first node of each tree
    left: np.ndarray  # (n_nodes,) int32, global index of the left child, -1 at a leaf
    right: np.ndarray  # (n_nodes,) int32
    feature: np.ndarray  # (n_nodes,) int16, split feature, -2 at a leaf
    threshold: np.ndarray  # (n_nodes,) float32, go left where x <= threshold
    value: np.ndarray  # (n_nodes,) float64, the prediction at a leaf (0 elsewhere)
    n_features: int

    @property
    def n_trees(self) -> int:
        return len(self.roots)

    @classmethod
    def from_sklearn(cls, forest: RandomForestRegressor) -> TreeForest:
        """The trees of a fitted single-output ``RandomForestRegressor`` (or any list of fitted trees)."""
        roots, parts, offset = [], [], 0
        for est in forest.estimators_:
            t = est.tree_
            if t.n_outputs != 1:
                raise ValueError("only single-output regression forests are supported")
            leaf = t.children_left == -1
            thr64 = np.asarray(t.threshold, np.float64)
            thr = thr64.astype(np.float32)
            too_high = thr.astype(np.float64) > thr64
            thr[too_high] = np.nextafter(thr[too_high], np.float32(-np.inf))
            parts.append((np.where(leaf, -1, t.children_left + offset), np.where(leaf, -1, t.children_right + offset),
                          np.where(leaf, -2, t.feature), np.where(leaf, 0.0, thr),
                          np.where(leaf, t.value[:, 0, 0], 0.0)))
            roots.append(offset)
            offset += t.node_count
        if offset >= np.iinfo(np.int32).max or forest.n_features_in_ >= np.iinfo(np.int16).max:
            raise ValueError("forest too large for the int32/int16 node arrays")
        cat = [np.concatenate([p[k] for p in parts]) for k in range(5)]
        return cls(np.asarray(roots, np.int64), cat[0].astype(np.int32), cat[1].astype(np.int32),
                   cat[2].astype(np.int16), cat[3].astype(np.float32), cat[4].astype(np.float64),
                   int(forest.n_features_in_))

    def predict_trees(self, x: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """(n_trees, n) each tree's output for the rows of ``x`` (n, n_features); NaN inputs are not allowed."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected (n, {self.n_features}) features, got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("features contain NaN or inf (impute them first)")
        out = np.empty((self.n_trees, len(x)), np.float64)
        for s in range(0, len(x), chunk):
            xs = x[s:s + chunk]
            rows = np.arange(len(xs))[None, :]
            node = np.repeat(self.roots[:, None], len(xs), axis=1)  # (n_trees, m)
            while True:
                inner = self.left[node] >= 0
                if not inner.any():
                    break
                go_left = xs[rows, np.maximum(self.feature[node], 0)] <= self.threshold[node]
                node = np.where(inner, np.where(go_left, self.left[node], self.right[node]), node)
            out[:, s:s + chunk] = self.value[node]
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(n,) the forest's prediction, bit for bit scikit-learn's (trees added in order, then divided)."""
        return _mean_in_order(self.predict_trees(x))

    def predict_with_spread(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """((n,) prediction, (n,) std over the trees' outputs)."""
        trees = self.predict_trees(x)
        return _mean_in_order(trees), trees.std(axis=0)


def _mean_in_order(trees: np.ndarray) -> np.ndarray:
    total = np.zeros(trees.shape[1], np.float64)
    for row in trees:
        total += row
    return total / len(trees)


def save_forest(path: str | Path, forest: TreeForest, **extra: np.ndarray) -> None:
    """Write ``forest`` (and ``extra`` arrays, e.g. the imputation medians) to a compressed .npz, atomically."""
    clash = set(extra) & {*_ARRAYS, "n_features", "format"}
    if clash:
        raise ValueError(f"extra arrays may not be named {sorted(clash)}")
    arrays: dict[str, Any] = {k: getattr(forest, k) for k in _ARRAYS}
    arrays.update(n_features=np.int64(forest.n_features), format=np.array(FOREST_FORMAT), **extra)
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def load_forest(path: str | Path) -> tuple[TreeForest, dict[str, np.ndarray]]:
    """(forest, the extra arrays saved with it), read without pickle."""
    with np.load(path, allow_pickle=False) as z:
        if "format" not in z.files or str(z["format"]) != FOREST_FORMAT:
            raise ValueError(f"{path} is not a {FOREST_FORMAT} file")
        forest = TreeForest(**{k: z[k] for k in _ARRAYS}, n_features=int(z["n_features"]))
        extra = {k: z[k] for k in z.files if k not in {*_ARRAYS, "n_features", "format"}}
    return forest, extra
