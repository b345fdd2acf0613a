"""Evaluate one trained model's embedding space: retrieval, effective rank and inverse design together.

Why one function: the report shows these three for the evaluated checkpoint and, summarised over seeds, for
every pre-training method of the ablation; computing them the same way in both places keeps the tables
comparable. Rows are embedded once: the retrieval rows (split rows with >= 2 of the model's modalities) and,
for the effective rank, every split row having the modality (optionally a seeded subset).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mlcm_core.evaluate.inverse_design import DEFAULT_KS, DEFAULT_RANDOM_SEEDS

if TYPE_CHECKING:
    from mlcm_core.data.store import DatasetStore
    from mlcm_core.models.multimodal import MultimodalModel

__all__ = ["evaluate_model"]


def evaluate_model(model: MultimodalModel, store: DatasetStore, split: str = "test", *,
                   rank_max_rows: int | None = None, inverse_ks: Sequence[int] = DEFAULT_KS,
                   inverse_random_seeds: Sequence[int] = DEFAULT_RANDOM_SEEDS, batch_size: int = 64,
                   seed: int = 0) -> dict[str, Any]:
    """{"retrieval": [rows], "effective_rank": {modality: ...}, "inverse_design": {...} or None}.

    Inverse design runs when the model has crystal and DOS encoders (queries from ``split``).
    """
    from mlcm_core.evaluate.embedding import effective_ranks, embed_split, split_ids
    from mlcm_core.evaluate.inverse_design import inverse_design
    from mlcm_core.evaluate.retrieval import retrieval_table_from_embeddings

    mods = model.config.modalities
    retrieval_ids = split_ids(store, split, mods, min_modalities=2)
    rank_ids: dict[str, list[str]] = {}
    for m in mods:
        ids = split_ids(store, split, (m,), min_modalities=1)
        if rank_max_rows is not None and len(ids) > rank_max_rows:
            ids = [ids[k] for k in np.sort(np.random.default_rng(seed).permutation(len(ids))[:rank_max_rows])]
        rank_ids[m] = ids
    every = sorted(set(retrieval_ids).union(*rank_ids.values()))
    emb = embed_split(model, store, every, batch_size=batch_size)

    def subset(ids: Sequence[str], m: str) -> tuple[list[str], np.ndarray]:
        want = set(ids)
        ids_m, z = emb[m]
        rows = [k for k, i in enumerate(ids_m) if i in want]
        return [ids_m[k] for k in rows], z[rows]

    groups = store.table.set_index("id")["dedup_group"]
    retrieval = retrieval_table_from_embeddings({m: subset(retrieval_ids, m) for m in mods}, groups)
    ranks = effective_ranks({m: subset(rank_ids[m], m) for m in mods})
    inverse = None
    if {"crystal", "dos"} <= set(mods):
        inverse = inverse_design(model, store, query_split=split, ks=inverse_ks, random_seeds=inverse_random_seeds,
                                 batch_size=batch_size)
    return {"split": split, "retrieval_ids": list(retrieval_ids), "retrieval": retrieval.to_dict("records"),
            "effective_rank": ranks,
            "inverse_design": inverse}
