"""Retrieval as the app uses it: a DOS or density query ranks its true crystal among every stored structure.

Why a second retrieval protocol: ``retrieval`` ranks a split's rows among themselves (55 test crystals),
while the explorer compares a query with *all* crystal embeddings (~18k). A median rank of 3 among 55 says
little about a median rank among 17,951, so the numbers that choose a checkpoint for the app are measured
here, at the app's scale.

Definitions (those of ``retrieval``, whose ``retrieval_metrics`` / ``first_hit_ranks`` / ``chance_top_k``
are reused, not copied): a hit is any gallery structure in the query's ``dedup_group``; ties with non-hits
count against the hit; every number has its chance level beside it ((N+1)/(h+1) median rank, top-k from
the hypergeometric closed form).

* **Queries** are embedded here from the store's raw DOS / density arrays with the model (never taken from
  a stored embedding table, where a material's other-modality vector could stand in by accident). A query
  is a ``split`` row having that modality and a structure (its "true crystal"); one whose group has no
  structure in a gallery is left out of that gallery's row and counted in ``n_without_hit``.
* **Galleries**: ``"all"`` (every structure embedding) and each source on its own; ``MP_SOURCE``
  (``matminer-0.3.9``) is "MP structures only". Gallery vectors may come from a precomputed embedding table
  made with the same checkpoint: ``verify_gallery`` re-embeds a sample of structures and compares.
* **MultiMat MP pairs** (DOS and charge density from MP's VASP runs, no structure offline): DOS -> density
  and density -> DOS among the pairs held out of pre-training (``pretraining_ids`` re-derives the rows a
  checkpoint trained on from its train config, with ``pretrain.select_rows``), chance (N+1)/2.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mlcm_core import modalities as _modalities
from mlcm_core.evaluate.retrieval import retrieval_metrics

if TYPE_CHECKING:
    from mlcm_core.data.store import DatasetStore
    from mlcm_core.explore.embed import EmbeddingTable
    from mlcm_core.models.multimodal import MultimodalModel

__all__ = ["FULL_GALLERY_KS", "MP_SOURCE", "MULTIMAT_SOURCE", "PAIR_KS", "FullGalleryResult", "Gallery",
           "embed_crystal_gallery", "embed_modality", "evaluate_full_gallery", "full_gallery_table",
           "gallery_from_table", "multimat_pairs", "pair_table", "pretraining_ids", "query_ids", "verify_gallery"]

MP_SOURCE = "matminer-0.3.9"
MULTIMAT_SOURCE = "multimat-mp"
FULL_GALLERY_KS: tuple[int, ...] = (1, 10, 100)
PAIR_KS: tuple[int, ...] = (1, 10)
QUERY_MODALITIES: tuple[str, ...] = ("dos", "density")

Gallery = tuple[list[str], np.ndarray]  # (ids, (n, D) embeddings), one modality


def _flag(table: pd.DataFrame, modality: str) -> pd.Series:
    return table[_modalities.get(modality).store_flag].fillna(False).astype(bool)


def _groups(table: pd.DataFrame) -> dict[str, str]:
    return dict(zip(table["id"].astype(str), table["dedup_group"].astype(str)))


# ----------------------------------------------------------------------------------------------------------
# embeddings


def embed_modality(model: MultimodalModel, store: DatasetStore, ids: Sequence[str], modality: str, *,
                   batch_size: int = 64) -> Gallery:
    """Embed the store's raw DOS or density arrays of ``ids`` (as ``embed_store`` does), float32 unit rows.

    Why not a stored table: the query must be the model's view of this modality's data, re-computed, so a
    stale table or another modality's vector of the same material cannot stand in for it.
    """
    if modality not in QUERY_MODALITIES:
        raise ValueError(f"queries are DOS or density, got {modality!r}")
    ids = [str(i) for i in ids]
    spec = _modalities.get(modality)
    step = batch_size if spec.chunk is None else min(batch_size, spec.chunk)  # densities: 128 KiB each
    blocks = [model.embed(modality, spec.read(store, ids[s:s + step])).float().cpu().numpy()
              for s in range(0, len(ids), step)]
    z = np.concatenate(blocks) if blocks else np.zeros((0, model.config.embed_dim), np.float32)
    return ids, z.astype(np.float32)


def gallery_from_table(table: EmbeddingTable, modality: str = "crystal") -> Gallery:
    """One modality of a precomputed ``EmbeddingTable`` (float16 on disk) as float32 rows."""
    if modality not in table.rows:
        raise KeyError(f"the embedding table has no {modality!r} vectors")
    ids = table.ids[table.rows[modality]].astype(str).tolist()
    return ids, table.vectors[modality].astype(np.float32)


def verify_gallery(model: MultimodalModel, store: DatasetStore, gallery: Gallery, *, n: int = 8, seed: int = 0,
                   tol: float = 5e-3) -> dict[str, Any]:
    """Re-embed a seeded sample of ``n`` gallery structures and compare with the gallery's vectors.

    Why: a precomputed table is only a valid gallery for the checkpoint that made it. float16 storage moves a
    unit vector's components by < 1e-3; another checkpoint moves them by ~0.1. Raises ValueError above ``tol``.
    """
    ids, z = gallery
    if not ids:
        raise ValueError("empty gallery")
    pick = np.sort(np.random.default_rng(seed).permutation(len(ids))[:n])
    fresh = model.embed("crystal", [store.structure(ids[k]) for k in pick]).float().cpu().numpy()
    stored = z[pick] / np.linalg.norm(z[pick], axis=1, keepdims=True)
    diff = float(np.abs(fresh - stored).max())
    cos = float((fresh * stored).sum(axis=1).min())
    out = {"n_checked": len(pick), "ids": [ids[k] for k in pick], "max_abs_diff": diff, "min_cosine": cos, "tol": tol}
    if diff > tol:
        raise ValueError(f"gallery vectors differ from the model's by up to {diff:.3g} (> {tol}) on {len(pick)} "
                         "re-embedded structures: the table was made with another checkpoint or store")
    return out


def embed_crystal_gallery(checkpoint: str | Path, store: DatasetStore, *, cache_dir: str | Path | None = None,
                          batch_size: int = 64, workers: int = 0, progress: bool = False,
                          ids: Sequence[str] | None = None) -> Gallery:
    """Every structure's (or ``ids``') crystal embedding by ``checkpoint`` (slow on CPU: minutes for ~18k).

    With ``cache_dir`` the table is kept as ``<weights sha256[:16]>-<store shards sha256[:12]>/embeddings.npz``
    (plus ``-<ids sha256[:8]>`` for a subset) so a second comparison run does not pay again; the key changes
    with the weights, the store's shards or the subset.
    """
    from mlcm_core.explore.embed import EmbeddingTable, embed_store
    from mlcm_core.io import sha256_file
    from mlcm_core.models.checkpoint import WEIGHTS_FILE, read_checkpoint_info

    cached: Path | None = None
    if cache_dir is not None:
        weights = sha256_file(read_checkpoint_info(checkpoint).path / WEIGHTS_FILE)
        shards = hashlib.sha256("\n".join(s["name"] for s in store.manifest["shards"]).encode()).hexdigest()
        subset = "" if ids is None else "-" + hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest()[:8]
        cached = Path(cache_dir) / f"{weights[:16]}-{shards[:12]}{subset}"
        if (cached / "embeddings.npz").exists():
            return gallery_from_table(EmbeddingTable.load(cached))
    if ids is None:
        ids = store.table.loc[_flag(store.table, "crystal"), "id"].astype(str).tolist()
    ids = [str(i) for i in ids]
    if cached is not None:
        cached.mkdir(parents=True, exist_ok=True)
    table = embed_store(store, checkpoint, cached, ids=ids, modalities=("crystal",), batch_size=batch_size,
                        workers=workers, progress=progress)
    return gallery_from_table(table)


# ----------------------------------------------------------------------------------------------------------
# which rows


def query_ids(table: pd.DataFrame, split: str | Sequence[str], modality: str) -> list[str]:
    """Sorted ids of ``split`` rows having ``modality`` and a structure (a true crystal to find)."""
    splits = [split] if isinstance(split, str) else list(split)
    keep = table["split"].isin(splits) & _flag(table, modality) & _flag(table, "crystal")
    return sorted(table.loc[keep, "id"].astype(str))


def multimat_pairs(table: pd.DataFrame, exclude: Sequence[str] | set[str] = (),
                   split: str | Sequence[str] | None = None) -> list[str]:
    """Sorted ids of MultiMat MP materials whose DOS *and* density are MultiMat's own, minus ``exclude``."""
    keep = ((table["source"] == MULTIMAT_SOURCE) & _flag(table, "dos") & _flag(table, "density")
            & (table["dos_source"] == MULTIMAT_SOURCE) & (table["density_source"] == MULTIMAT_SOURCE))
    if split is not None:
        keep &= table["split"].isin([split] if isinstance(split, str) else list(split))
    gone = {str(i) for i in exclude}
    return sorted(i for i in table.loc[keep, "id"].astype(str) if i not in gone)


def pretraining_ids(store: DatasetStore, train_config: Mapping[str, Any]) -> set[str]:
    """The rows a checkpoint's pre-training read, re-derived from its train config with ``select_rows``.

    Exact for rows that were in the store when it trained (MultiMat's shard is the default dataset's); rows
    of shards appended since then may be listed too, which only makes "held out" stricter.
    """
    from mlcm_core.train.pretrain import select_rows, select_unpaired_rows

    mods = train_config.get("modalities") or _modalities.MODALITIES
    k = int(train_config.get("min_modalities", 2))
    rows = set(select_rows(store, "train", mods, k, train_config.get("max_rows"), int(train_config.get("seed", 0))))
    if int(train_config.get("unpaired_per_batch", 0) or 0) > 0:  # seen as negatives
        rows |= set(select_unpaired_rows(store, "train", mods, k))
    return rows


# ----------------------------------------------------------------------------------------------------------
# tables


def full_gallery_table(queries: Mapping[str, Gallery], gallery: Gallery, table: pd.DataFrame, *,
                       galleries: Sequence[str] | None = None, ks: Sequence[int] = FULL_GALLERY_KS) -> pd.DataFrame:
    """One row per (query modality, query source, gallery): ``retrieval_metrics`` of queries -> structures.

    Args:
        queries: modality -> (ids, embeddings) of the query materials (each must have a structure row).
        gallery: (ids, embeddings) of crystal embeddings; sub-galleries are its rows of one source.
        table: the store table (id, source, dedup_group).
        galleries: "all" and/or source names (default: "all" then every source present in the gallery).
        ks: top-k levels.

    Query source "all" is reported for the "all" gallery only (a single-source gallery holds hits for that
    source's queries alone). Columns: query, query_source, gallery, n_queries, n_without_hit, then
    ``retrieval_metrics``'s (n_gallery, top{k}, chance_top{k}, median_rank, chance_median_rank, ...).
    """
    groups = _groups(table)
    source_of = dict(zip(table["id"].astype(str), table["source"].astype(str)))
    g_ids = [str(i) for i in gallery[0]]
    g_src = np.array([source_of[i] for i in g_ids], dtype=object)
    if galleries is None:
        galleries = ["all", *sorted(set(g_src))]
    rows = []
    for name in galleries:
        sel = np.ones(len(g_ids), bool) if name == "all" else g_src == name
        if not sel.any():
            continue
        sub_ids = [i for i, s in zip(g_ids, sel) if s]
        sub_z = np.asarray(gallery[1])[sel]
        present = {groups[i] for i in sub_ids}
        for modality, (q_ids, q_z) in queries.items():
            q_ids = [str(i) for i in q_ids]
            q_src = np.array([source_of[i] for i in q_ids], dtype=object)
            for qs in (["all"] if name == "all" else []) + sorted(set(q_src)):
                mine = np.ones(len(q_ids), bool) if qs == "all" else q_src == qs
                has_hit = np.array([groups[i] in present for i in q_ids]) & mine
                if not has_hit.any():
                    continue
                ids_k = [i for i, ok in zip(q_ids, has_hit) if ok]
                m = retrieval_metrics(np.asarray(q_z)[has_hit], sub_z, ids_k, sub_ids, groups, ks)
                rows.append({"query": modality, "query_source": qs, "gallery": name, **m,
                             "n_without_hit": int(mine.sum() - has_hit.sum())})
    return pd.DataFrame(rows)


def pair_table(dos: Gallery, density: Gallery, table: pd.DataFrame, pair_sets: Mapping[str, Sequence[str]], *,
               ks: Sequence[int] = PAIR_KS) -> pd.DataFrame:
    """DOS -> density and density -> DOS among each named set of materials having both (query = gallery rows).

    Columns: pairs (the set's name), query, gallery, then ``retrieval_metrics``'s.
    """
    groups = _groups(table)
    pos_d = {str(i): k for k, i in enumerate(dos[0])}
    pos_r = {str(i): k for k, i in enumerate(density[0])}
    rows = []
    for name, ids in pair_sets.items():
        ids = [str(i) for i in ids if str(i) in pos_d and str(i) in pos_r]
        if len(ids) < 2:
            continue
        zd = np.asarray(dos[1])[[pos_d[i] for i in ids]]
        zr = np.asarray(density[1])[[pos_r[i] for i in ids]]
        for a, b, qa, gb in (("dos", "density", zd, zr), ("density", "dos", zr, zd)):
            rows.append({"pairs": name, "query": a, "gallery": b, **retrieval_metrics(qa, gb, ids, ids, groups, ks)})
    return pd.DataFrame(rows)


@dataclass
class FullGalleryResult:
    """The two tables plus what was checked (gallery verification, query counts, held-out rule)."""

    queries: pd.DataFrame
    pairs: pd.DataFrame
    checks: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"full_gallery": self.queries.to_dict(orient="records"),
                "multimat_pairs": self.pairs.to_dict(orient="records"), "checks": self.checks}


def evaluate_full_gallery(model: MultimodalModel, store: DatasetStore, *, gallery: Gallery | None = None,
                          split: str | Sequence[str] = "test", modalities: Sequence[str] = QUERY_MODALITIES,
                          train_config: Mapping[str, Any] | None = None, ks: Sequence[int] = FULL_GALLERY_KS,
                          pair_ks: Sequence[int] = PAIR_KS, batch_size: int = 64, verify: int = 8,
                          multimat: bool = True, exclude_pairs: Collection[str] = ()) -> FullGalleryResult:
    """Full-gallery retrieval of ``split``'s DOS/density queries, and MultiMat DOS <-> density.

    Args:
        model: the multimodal model (queries are embedded with it from the store's raw arrays).
        store: the dataset store.
        gallery: precomputed crystal embeddings (e.g. ``gallery_from_table`` of the explorer's table); None =
            embed every structure with ``model`` (slow on CPU).
        split: the split(s) whose rows are queries.
        modalities: query modalities ("dos", "density").
        train_config: the checkpoint's train config; its pre-training rows are excluded from the MultiMat
            "held out" pairs. None: no MultiMat pair is known to be held out, only "all" is reported.
        verify: structures re-embedded to check a precomputed gallery (0 = trust it).
        multimat: also measure MultiMat DOS <-> density (embeds ~250 densities: seconds on CPU).
        exclude_pairs: ids also kept out of the "held out" pairs, e.g. the pre-training rows of another
            checkpoint compared side by side (so both are scored on the same pairs).
    """
    table = store.table
    checks: dict[str, Any] = {}
    if gallery is None:
        ids = table.loc[_flag(table, "crystal"), "id"].astype(str).tolist()
        z = [model.embed("crystal", [store.structure(i) for i in ids[s:s + batch_size]]).float().cpu().numpy()
             for s in range(0, len(ids), batch_size)]
        gallery = (ids, np.concatenate(z) if z else np.zeros((0, model.config.embed_dim), np.float32))
    elif verify:
        checks["gallery_verification"] = verify_gallery(model, store, gallery, n=verify)
    queries = {m: embed_modality(model, store, query_ids(table, split, m), m, batch_size=batch_size)
               for m in modalities}
    checks["n_gallery"] = len(gallery[0])
    checks["n_query_rows"] = {m: len(q[0]) for m, q in queries.items()}
    full = full_gallery_table(queries, gallery, table, ks=ks)
    if not multimat:
        return FullGalleryResult(queries=full, pairs=pd.DataFrame(), checks=checks)

    every = multimat_pairs(table)
    sets: dict[str, list[str]] = {}
    if train_config is not None:
        trained = pretraining_ids(store, train_config)
        held = multimat_pairs(table, exclude=trained | {str(i) for i in exclude_pairs})
        sets["held out of pre-training"] = held
        checks["multimat"] = {"pairs": len(every), "in_pretraining": len(set(every) & trained), "held_out": len(held),
                              "held_out_by_split": table.set_index("id").loc[held, "split"].value_counts().to_dict(),
                              "pretraining_rows_now": len(trained)}
    sets["all (incl. pre-training rows)"] = every
    dos = embed_modality(model, store, every, "dos", batch_size=batch_size)
    dens = embed_modality(model, store, every, "density", batch_size=batch_size)
    pairs = pair_table(dos, dens, table, sets, ks=pair_ks)
    return FullGalleryResult(queries=full, pairs=pairs, checks=checks)
