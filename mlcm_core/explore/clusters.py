"""Clusters of the 2-D map (HDBSCAN), each labelled by its dominant crystal system or chemistry.

Why here and cached: the clusters are a property of the map, not of one view, so the core owns them (the
app draws them). Importing scikit-learn and running HDBSCAN on the ~18k map points takes 3-6 s on 2 cores,
in the path of the app's first page; the labels depend only on the coordinates and the parameters, so they
are cached on disk (``<MLCM_CACHE_DIR or the checkout's var/cache>/clusters/<sha256 of coordinates and
parameters>.npy``, written atomically, whatever the working directory;
a cache that cannot be written is skipped, a corrupt one recomputed). ``scripts/setup.sh`` fills it for the
shipped map (``mlcm app --prepare``), so a fresh install's first start does not pay either.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mlcm_core.io import atomic_write_bytes

__all__ = ["cluster_labels", "default_cache_dir", "map_clusters"]
_VERSION = 1  # bump when the clustering changes, so older cached labels are not reused

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$MLCM_CACHE_DIR/clusters``, else the checkout's ``var/cache/clusters`` (read at each call)."""
    return Path(os.environ.get("MLCM_CACHE_DIR") or Path(__file__).resolve().parents[2] / "var" / "cache") / "clusters"


def cluster_labels(xy: np.ndarray, *, min_cluster_size: int | None = None, min_samples: int = 10,
                   cache_dir: str | Path | None = "default") -> np.ndarray:
    """HDBSCAN label of every map point (-1 = noise); cached by the coordinates' and parameters' SHA-256
    in ``cache_dir`` ("default": ``default_cache_dir()``; None: no cache).

    ``min_cluster_size`` defaults to max(25, N / 250): ~70 materials at 18k, so clusters are regions a person
    can read on the map, not every clump.
    """
    xy = np.ascontiguousarray(xy, dtype=np.float64)
    size = int(min_cluster_size or max(25, len(xy) // 250))
    key = hashlib.sha256(xy.tobytes() + f"|{size}|{min_samples}|{_VERSION}".encode()).hexdigest()
    if cache_dir == "default":
        cache_dir = default_cache_dir()
    path = Path(cache_dir) / f"{key[:32]}.npy" if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            labels = np.load(path, allow_pickle=False)
            if labels.shape == (len(xy),) and labels.dtype == np.int32:
                return labels
        except (OSError, ValueError):
            pass
        log.warning("ignoring unreadable cluster cache %s", path)
    from sklearn.cluster import HDBSCAN

    labels = HDBSCAN(min_cluster_size=size, min_samples=min_samples, copy=True).fit_predict(xy).astype(np.int32)
    if path is not None:
        buf = io.BytesIO()
        np.save(buf, labels, allow_pickle=False)
        try:
            atomic_write_bytes(path, buf.getvalue())
        except OSError as e:  # a read-only checkout still works, it just computes every start
            log.warning("cannot cache map clusters in %s: %s", path.parent, e)
    return labels


def map_clusters(ids: Sequence[str], xy: np.ndarray, crystal_system: Sequence[str],
                 elements: Sequence[Sequence[str]], *, cache_dir: str | Path | None = "default",
                 ) -> pd.DataFrame:
    """One row per cluster: cluster, label ("C3: cubic · O-Mg" when >= 60 % share one crystal system, else
    "O-Mg · mixed"), n, x, y (label position = member median) and ``ids``."""
    labels = cluster_labels(xy, cache_dir=cache_dir)
    ids = np.asarray([str(i) for i in ids], dtype=object)
    xy = np.asarray(xy, dtype=np.float64)
    systems_all = pd.Series([str(s) for s in crystal_system])
    rows = []
    for k in sorted(set(labels.tolist()) - {-1}):
        m = labels == k
        systems = systems_all[m].value_counts()
        counts = pd.Series([e for es, keep in zip(elements, m) if keep for e in es]).value_counts()
        top_sys, share = systems.index[0], systems.iloc[0] / int(m.sum())
        chem = "-".join(counts.index[:2]) if len(counts) else "?"
        if share >= 0.6 and top_sys != "unknown":
            label = f"{top_sys} · {chem}"
        else:
            label = f"{chem} · mixed" if len(counts) else "unknown"
        rows.append({"cluster": int(k), "label": f"C{k}: {label}", "n": int(m.sum()),
                     "x": float(np.median(xy[m, 0])), "y": float(np.median(xy[m, 1])), "ids": ids[m].tolist()})
    return pd.DataFrame(rows, columns=["cluster", "label", "n", "x", "y", "ids"])
