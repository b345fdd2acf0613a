"""Cross-modal retrieval: given a material's embedding from one modality, rank its embedding from another.

Why these definitions:

* **A hit is the same de-duplication group, not the same id.** The store groups near-duplicate structures
  (``dedup_group``); retrieving a duplicate of the query's structure is a correct answer, and counting it
  as a miss would penalise the model for the data's redundancy. When a query has h > 1 hits in the gallery,
  its rank is that of the best-ranked hit.
* **Ties are broken pessimistically**: a non-hit with exactly the hit's similarity is ranked above it. A
  collapsed model (all embeddings equal) then scores rank N, never a lucky rank 1.
* **Chance level beside every number.** Retrieval accuracy means nothing without the gallery size N. For a
  query with h hits, a random ranking puts a hit in the top k with probability
  ``1 - C(N-h, k) / C(N, k)`` (= k/N when h = 1), and the expected rank of its first hit is
  ``(N+1)/(h+1)`` (= (N+1)/2 when h = 1); both are reported averaged (resp. the median) over the queries.
* **Query and gallery are the same rows**: for an ordered pair (a -> b) the rows of the split that have both
  modalities; the query is modality a of each row, the gallery is modality b of every row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import permutations
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from mlcm_core.data.store import DatasetStore
    from mlcm_core.evaluate.embedding import Embeddings
    from mlcm_core.models.multimodal import MultimodalModel

__all__ = ["DEFAULT_KS", "chance_top_k", "first_hit_ranks", "retrieval_metrics", "retrieval_table",
           "retrieval_table_from_embeddings"]

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def first_hit_ranks(sim: np.ndarray, hits: np.ndarray) -> np.ndarray:
    """1-based rank of each query's best-ranked hit; ties with non-hits are broken against the hit.

    Args:
        sim: (Q, N) similarities (higher = closer).
        hits: (Q, N) bool, True where the gallery item is a correct answer for the query.
    """
    sim = np.asarray(sim, dtype=np.float64)
    hits = np.asarray(hits, dtype=bool)
    if sim.shape != hits.shape or sim.ndim != 2:
        raise ValueError(f"sim and hits must be the same (Q, N) shape, got {sim.shape} and {hits.shape}")
    if not np.all(np.isfinite(sim)):
        raise ValueError("similarities contain NaN or infinite values")
    if not hits.any(axis=1).all():
        raise ValueError("a query has no correct answer in the gallery")
    best = np.where(hits, sim, -np.inf).max(axis=1)  # (Q,) similarity of the best hit
    return 1 + ((sim >= best[:, None]) & ~hits).sum(axis=1)  # (Q,) non-hits ranked at or above it


def chance_top_k(n: int, h: np.ndarray, k: int) -> np.ndarray:
    """Probability that a uniformly random ranking of n items puts one of h hits in the top k (per query)."""
    h = np.asarray(h, dtype=np.int64)
    if k >= n:
        return np.ones(h.shape)
    p_miss = np.ones(h.shape)
    for j in range(k):  # P(no hit in k draws without replacement) = prod_j (n-h-j)/(n-j)
        p_miss *= np.clip(n - h - j, 0, None) / (n - j)
    return 1.0 - p_miss


def retrieval_metrics(query_emb: np.ndarray, gallery_emb: np.ndarray, query_ids: Sequence[str],
                      gallery_ids: Sequence[str], groups: Mapping[str, str] | pd.Series,
                      ks: Sequence[int] = DEFAULT_KS) -> dict[str, Any]:
    """Top-k accuracy and rank of the first hit for one ordered modality pair, with the chance level.

    Args:
        query_emb: (Q, D) query embeddings (modality a); normalised here (cosine similarity).
        gallery_emb: (N, D) gallery embeddings (modality b).
        query_ids, gallery_ids: material ids of the rows.
        groups: id -> dedup_group; a gallery item is a hit for a query when their groups are equal.
        ks: the k of the top-k accuracies.

    Returns:
        n_queries, n_gallery, top{k} and chance_top{k} for each k, median_rank, chance_median_rank,
        mean_rank, chance_mean_rank, mrr, n_queries_with_duplicates (queries with more than one hit).
    """
    q, g = _unit(query_emb), _unit(gallery_emb)
    if q.shape[0] != len(query_ids) or g.shape[0] != len(gallery_ids):
        raise ValueError("embeddings and ids differ in length")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query and gallery dimensions differ: {q.shape[1]} vs {g.shape[1]}")
    group_of = groups if isinstance(groups, Mapping) else groups.to_dict()
    qg = np.array([group_of[i] for i in query_ids], dtype=object)
    gg = np.array([group_of[i] for i in gallery_ids], dtype=object)
    hits = qg[:, None] == gg[None, :]  # (Q, N)
    ranks = first_hit_ranks(q @ g.T, hits)
    n, h = g.shape[0], hits.sum(axis=1)
    out: dict[str, Any] = {"n_queries": int(q.shape[0]), "n_gallery": int(n)}
    for k in ks:
        out[f"top{k}"] = float(np.mean(ranks <= k))
        out[f"chance_top{k}"] = float(np.mean(chance_top_k(n, h, k)))
    expected = (n + 1) / (h + 1)
    out.update(median_rank=float(np.median(ranks)), chance_median_rank=float(np.median(expected)),
               mean_rank=float(np.mean(ranks)), chance_mean_rank=float(np.mean(expected)),
               mrr=float(np.mean(1.0 / ranks)), n_queries_with_duplicates=int((h > 1).sum()))
    return out


def retrieval_table_from_embeddings(embeddings: Embeddings, groups: Mapping[str, str] | pd.Series,
                                    ks: Sequence[int] = DEFAULT_KS, min_rows: int = 2) -> pd.DataFrame:
    """One row per ordered modality pair (a -> b), on the rows that have both a and b.

    Pairs with fewer than ``min_rows`` such rows are left out (no meaningful ranking).
    """
    rows = []
    for a, b in permutations([m for m in embeddings if len(embeddings[m][0])], 2):
        ids_a, z_a = embeddings[a]
        ids_b, z_b = embeddings[b]
        pos_b = {i: k for k, i in enumerate(ids_b)}
        common = [i for i in ids_a if i in pos_b]
        if len(common) < min_rows:
            continue
        pos_a = {i: k for k, i in enumerate(ids_a)}
        qa = z_a[[pos_a[i] for i in common]]
        gb = z_b[[pos_b[i] for i in common]]
        rows.append({"query": a, "gallery": b, **retrieval_metrics(qa, gb, common, common, groups, ks)})
    return pd.DataFrame(rows)


def retrieval_table(model: MultimodalModel, store: DatasetStore, split: str = "test", *,
                    ks: Sequence[int] = DEFAULT_KS, batch_size: int = 64,
                    embeddings: Embeddings | None = None) -> pd.DataFrame:
    """Retrieval for every ordered pair of the model's modalities on ``split`` rows having both.

    ``embeddings`` (from ``embed_split`` on rows of ``split``) may be passed to avoid embedding twice.
    Columns: query, gallery, n_queries, n_gallery, top1, chance_top1, ... (see ``retrieval_metrics``).
    """
    from mlcm_core.evaluate.embedding import embed_split, split_ids

    if embeddings is None:
        ids = split_ids(store, split, model.config.modalities, min_modalities=2)
        embeddings = embed_split(model, store, ids, batch_size=batch_size)
    groups = store.table.set_index("id")["dedup_group"]
    return retrieval_table_from_embeddings(embeddings, groups, ks)
