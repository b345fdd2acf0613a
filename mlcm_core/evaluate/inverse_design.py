"""Inverse design by retrieval: from a target DOS, find crystals whose (true) DOS has that shape.

Why this protocol: the embedding space is only useful for design if a DOS query lands near crystals whose
DOS resembles it. We can score that exactly on materials that have both a structure and a DOS, so:

* **Queries** are held-out DOS curves (``query_split``, default "test"): rows with a DOS whose area in
  [-5, 5] eV is positive (``dos_mae`` normalises by it). A query needs no structure.
* **Gallery** are crystals with a structure AND a DOS (default: all splits — a database of known materials is
  what a designer searches), embedded with the crystal encoder. For each query the material itself and its
  whole ``dedup_group`` are removed from the gallery, so finding the answer by identity is impossible.
* **Score**: the query DOS is embedded with the DOS encoder, the top-k gallery crystals by cosine similarity
  are retrieved, and the reported value is the best (lowest) ``mlcm_core.dft.validate.dos_mae`` between the
  query DOS and the retrieved crystals' true DOS (area-normalised MAE on [-5, 5] eV, in 1/eV).
* **Random baseline**: best-of-k over k gallery crystals drawn uniformly without replacement from the same
  eligible gallery; one draw per query per seed, averaged over queries, then mean and std over the seeds.
* **Oracle**: the best ``dos_mae`` over the whole eligible gallery — i.e. a search that ranks the gallery by
  the true DOS with the scoring metric itself, so its best-of-top-k is the global best for every k. It is the
  floor that any retrieval from this gallery can reach.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from mlcm_core.data.store import DatasetStore
    from mlcm_core.models.multimodal import MultimodalModel

__all__ = ["DEFAULT_KS", "dos_mae_matrix", "inverse_design", "inverse_design_from_arrays", "random_best_of_k",
           "scorable_dos"]

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
DEFAULT_RANDOM_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)


def scorable_dos(dos: np.ndarray) -> np.ndarray:
    """(n,) bool: curves that ``dos_mae`` can score (finite, positive area on its [-5, 5] eV window)."""
    from mlcm_core.dft.validate import dos_mae

    ok = np.zeros(len(dos), bool)
    for k, curve in enumerate(dos):
        if not np.all(np.isfinite(curve)):
            continue
        try:
            dos_mae(curve, curve)
        except ValueError:
            continue
        ok[k] = True
    return ok


def dos_mae_matrix(query_dos: np.ndarray, gallery_dos: np.ndarray) -> np.ndarray:
    """(Q, N) ``dos_mae`` of every query curve against every gallery curve (the project's metric, reused)."""
    from mlcm_core.dft.validate import dos_mae

    out = np.empty((len(query_dos), len(gallery_dos)))
    for i, q in enumerate(query_dos):
        for j, g in enumerate(gallery_dos):
            out[i, j] = dos_mae(q, g)
    return out


def random_best_of_k(mae: np.ndarray, eligible: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(Q,) best ``mae`` among min(k, n eligible) gallery items drawn uniformly without replacement per query.

    Deterministic given ``seed`` (numpy ``default_rng``); queries are drawn in order.
    """
    rng = np.random.default_rng(seed)
    out = np.full(mae.shape[0], np.nan)
    for i in range(mae.shape[0]):
        cand = np.flatnonzero(eligible[i])
        if len(cand):
            pick = rng.choice(cand, size=min(k, len(cand)), replace=False)
            out[i] = mae[i, pick].min()
    return out


def inverse_design_from_arrays(query_ids: Sequence[str], query_emb: np.ndarray, query_dos: np.ndarray,
                               gallery_ids: Sequence[str], gallery_emb: np.ndarray, gallery_dos: np.ndarray,
                               groups: Mapping[str, str] | pd.Series, ks: Sequence[int] = DEFAULT_KS,
                               random_seeds: Sequence[int] = DEFAULT_RANDOM_SEEDS) -> dict[str, Any]:
    """Best-of-k DOS MAE of model retrieval vs random picks vs the oracle (see the module docstring).

    Args:
        query_ids, query_emb (Q, D), query_dos (Q, 601): the query DOS curves and their DOS embeddings.
        gallery_ids, gallery_emb (N, D), gallery_dos (N, 601): gallery crystals' embeddings and true DOS.
        groups: id -> dedup_group (the query's own group is excluded from its gallery).

    Returns:
        {"n_queries", "n_gallery", "n_eligible_mean", "per_k": [{k, model_mean, model_median, random_mean,
        random_std_over_seeds, oracle_mean, model_beats_random_fraction}], "oracle": "global best ..."}.
    """
    group_of = groups if isinstance(groups, Mapping) else groups.to_dict()
    qg = np.array([group_of[i] for i in query_ids], dtype=object)
    gg = np.array([group_of[i] for i in gallery_ids], dtype=object)
    eligible = (qg[:, None] != gg[None, :]) & (np.asarray(query_ids, dtype=object)[:, None]
                                               != np.asarray(gallery_ids, dtype=object)[None, :])  # (Q, N)
    keep = eligible.any(axis=1)
    result: dict[str, Any] = {"n_queries": int(keep.sum()), "n_gallery": len(gallery_ids),
                              "n_eligible_mean": float(eligible[keep].sum(1).mean()) if keep.any() else 0.0,
                              "metric": "dos_mae (area-normalised, [-5, 5] eV, 1/eV)",
                              "oracle": "global best dos_mae over the eligible gallery (= top-k by dos_mae itself)",
                              "random": f"best of k uniform draws without replacement; mean over seeds {list(random_seeds)}",
                              "per_k": []}
    if not keep.any():
        return result
    eligible = eligible[keep]
    q_emb, q_dos = np.asarray(query_emb)[keep], np.asarray(query_dos)[keep]
    mae = dos_mae_matrix(q_dos, gallery_dos)  # (Q, N)
    q = q_emb / np.linalg.norm(q_emb, axis=1, keepdims=True)
    g = gallery_emb / np.linalg.norm(gallery_emb, axis=1, keepdims=True)
    sim = np.where(eligible, q @ g.T, -np.inf)  # (Q, N)
    order = np.argsort(-sim, axis=1, kind="stable")  # best first; ineligible items last
    oracle = np.where(eligible, mae, np.inf).min(axis=1)  # (Q,)
    for k in ks:
        kk = np.minimum(k, eligible.sum(axis=1))  # (Q,)
        model = np.array([mae[i, order[i, : kk[i]]].min() for i in range(len(mae))])  # (Q,)
        rand = np.stack([random_best_of_k(mae, eligible, k, s) for s in random_seeds])  # (S, Q)
        result["per_k"].append({
            "k": int(k), "model_mean": float(model.mean()), "model_median": float(np.median(model)),
            "random_mean": float(rand.mean()), "random_std_over_seeds": float(rand.mean(axis=1).std(ddof=0)),
            "oracle_mean": float(oracle.mean()),
            "model_beats_random_fraction": float(np.mean(model < rand.mean(axis=0))),
        })
    return result


def inverse_design(model: MultimodalModel, store: DatasetStore, *, query_split: str = "test",
                   gallery_splits: Sequence[str] = ("train", "val", "test"), ks: Sequence[int] = DEFAULT_KS,
                   random_seeds: Sequence[int] = DEFAULT_RANDOM_SEEDS, batch_size: int = 64) -> dict[str, Any]:
    """Inverse design on the store: ``query_split`` DOS queries against structure+DOS gallery crystals."""
    from mlcm_core.evaluate.embedding import embed_split

    if not {"crystal", "dos"} <= set(model.config.modalities):
        raise ValueError(f"inverse design needs crystal and DOS encoders (model has {model.config.modalities})")
    t = store.table
    has_dos = t["has_dos"].fillna(False).astype(bool)
    has_structure = t["has_structure"].fillna(False).astype(bool)
    q_ids = sorted(t.loc[(t["split"] == query_split) & has_dos, "id"].astype(str))
    g_ids = sorted(t.loc[t["split"].isin(list(gallery_splits)) & has_dos & has_structure, "id"].astype(str))
    q_ids = [i for i, ok in zip(q_ids, scorable_dos(store.dos(q_ids) if q_ids else np.zeros((0, 601)))) if ok]
    g_ids = [i for i, ok in zip(g_ids, scorable_dos(store.dos(g_ids) if g_ids else np.zeros((0, 601)))) if ok]
    q_ids_emb, q_emb = embed_split(model, store, q_ids, modalities=("dos",), batch_size=batch_size)["dos"]
    g_ids_emb, g_emb = embed_split(model, store, g_ids, modalities=("crystal",), batch_size=batch_size)["crystal"]
    groups = t.set_index("id")["dedup_group"]
    res = inverse_design_from_arrays(q_ids_emb, q_emb, store.dos(q_ids_emb) if q_ids_emb else np.zeros((0, 601)),
                                     g_ids_emb, g_emb, store.dos(g_ids_emb) if g_ids_emb else np.zeros((0, 601)),
                                     groups, ks, random_seeds)
    res.update(query_split=query_split, gallery_splits=list(gallery_splits))
    return res
