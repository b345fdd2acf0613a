"""Map clusters (mlcm_core/explore/clusters.py): labelled HDBSCAN regions, cached on disk by coordinates."""

from __future__ import annotations

import numpy as np
import pytest

from mlcm_core.explore.clusters import cluster_labels, map_clusters


def _blobs() -> tuple[np.ndarray, list[str], list[tuple[str, ...]]]:
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    xy = np.concatenate([c + 0.5 * rng.standard_normal((120, 2)) for c in centres])
    systems = ["cubic"] * 120 + ["hexagonal"] * 80 + ["cubic"] * 40 + ["trigonal"] * 60 + ["monoclinic"] * 60
    elements = [("Mg", "O")] * 120 + [("Ga", "N")] * 120 + [("Li", "Fe", "O")] * 120
    return xy, systems, elements


def test_three_blobs_three_labelled_clusters(tmp_path):
    xy, systems, elements = _blobs()
    ids = [f"m{i}" for i in range(len(xy))]
    c = map_clusters(ids, xy, systems, elements, cache_dir=tmp_path)
    assert len(c) == 3 and c["n"].sum() >= 330  # a few border points may be noise
    by_pos = {(round(r.x / 10), round(r.y / 10)): r.label for r in c.itertuples()}
    assert by_pos[(0, 0)].endswith("cubic · Mg-O")
    assert by_pos[(1, 0)].endswith("hexagonal · Ga-N")  # 80 of 120 = 67 % hexagonal
    third = by_pos[(0, 1)]  # 50/50 trigonal/monoclinic: no system dominates; its two commonest elements
    assert third.endswith(" · mixed") and set(third.split(": ")[1].split(" ·")[0].split("-")) < {"Li", "Fe", "O"}
    assert set(sum(c["ids"].tolist(), [])) <= set(ids)


def test_labels_are_cached_by_coordinates(tmp_path, monkeypatch):
    xy, _, _ = _blobs()
    first = cluster_labels(xy, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 1

    import sklearn.cluster

    def no_hdbscan(*a, **k):
        raise AssertionError("HDBSCAN ran although the labels were cached")

    monkeypatch.setattr(sklearn.cluster, "HDBSCAN", no_hdbscan)
    np.testing.assert_array_equal(cluster_labels(xy, cache_dir=tmp_path), first)
    with pytest.raises(AssertionError, match="cached"):  # other coordinates: another key, computed again
        cluster_labels(xy + 1.0, cache_dir=tmp_path)
    monkeypatch.undo()
    # a corrupt cache file is recomputed (and replaced), never trusted
    path = next(tmp_path.glob("*.npy"))
    path.write_bytes(b"not an npy file")
    np.testing.assert_array_equal(cluster_labels(xy, cache_dir=tmp_path), first)
    assert np.load(path).shape == (len(xy),)
