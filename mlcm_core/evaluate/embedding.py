"""Embed store rows with a trained multimodal model, and measure how many dimensions the embeddings use.

Why here: retrieval, inverse design and the collapse diagnostic all need the same thing — every modality's
L2-normalised embedding of a set of materials, computed once, in eval mode (BatchNorm running statistics,
no dropout) and without gradients — and must not depend on how the model batches internally.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mlcm_core.data.store import DatasetStore
    from mlcm_core.models.multimodal import MultimodalModel

__all__ = ["Embeddings", "effective_ranks", "embed_split", "split_ids"]

Embeddings = dict[str, tuple[list[str], np.ndarray]]  # modality -> (ids having it, (n, D) float32 unit rows)


def split_ids(store: DatasetStore, split: str | Sequence[str], modalities: Sequence[str],
              min_modalities: int = 1) -> list[str]:
    """Sorted ids of ``split`` rows (one split or several) having at least ``min_modalities`` of ``modalities``."""
    from mlcm_core import modalities as _modalities

    splits = [split] if isinstance(split, str) else list(split)
    t = store.table
    count = sum(t[_modalities.get(m).store_flag].fillna(False).astype(bool).astype(int) for m in modalities)
    ids = t.loc[t["split"].isin(splits) & (count >= min_modalities), "id"].astype(str).tolist()
    return sorted(ids)


def embed_split(model: MultimodalModel, store: DatasetStore, ids: Sequence[str], *, batch_size: int = 64,
                modalities: Sequence[str] | None = None, graph_cache_dir: str | Path | None = None) -> Embeddings:
    """Every modality's embedding of the materials ``ids``, in eval mode and without gradients.

    Args:
        model: a MultimodalModel (its device is used; its train/eval mode is restored afterwards).
        store: the dataset store holding ``ids``.
        ids: material ids; a row lacking a modality (or whose structure cannot be featurized) is simply
            absent from that modality's output.
        batch_size: rows per forward pass (does not change the result: the model is in eval mode).
        modalities: restrict to these encoders (default: all of the model's).
        graph_cache_dir: featurized-graph cache (None = the project default).

    Returns:
        {modality: (ids having it, in the order of ``ids``; (n, D) float32 L2-normalised embeddings)}.
    """
    import torch
    from torch.utils.data import DataLoader

    from mlcm_core.featurize.dataset import MultimodalDataset, collate_multimodal

    mods = tuple(m for m in model.config.modalities if modalities is None or m in modalities)
    unknown = set(modalities or ()) - set(model.config.modalities)
    if unknown:
        raise KeyError(f"the model has no {sorted(unknown)} encoder (has {list(model.config.modalities)})")
    found: dict[str, tuple[list[str], list[np.ndarray]]] = {m: ([], []) for m in mods}
    if len(ids):
        ds = MultimodalDataset(store, list(ids), model.config.graph, graph_cache_dir, modalities=mods, labels=[],
                               progress=False)
        loader = DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate_multimodal)
        device = model.logit_scale.device
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for batch in loader:
                    out = model(batch.to(device))
                    masks = batch.modality_masks()
                    for m in mods:
                        mask = masks[m].cpu().numpy()
                        if mask.any():
                            found[m][0].extend(i for i, ok in zip(batch.ids, mask) if ok)
                            found[m][1].append(out[m].float().cpu().numpy()[mask])
        finally:
            model.train(was_training)
    dim = model.config.embed_dim
    return {m: (ids_m, np.concatenate(z).astype(np.float32) if z else np.zeros((0, dim), np.float32))
            for m, (ids_m, z) in found.items()}


def effective_ranks(embeddings: Mapping[str, tuple[Sequence[str], np.ndarray]], *,
                    max_rows: int | None = None, seed: int = 0) -> dict[str, dict[str, Any]]:
    """RankMe effective rank (``mlcm_core.losses.effective_rank``) of each modality's embedding matrix.

    Reported uncentred (RankMe's definition) and centred (insensitive to a shared offset direction), with N,
    D and the maximum min(N, D). ``max_rows`` takes a seeded subset of rows (cheap runs).
    """
    import torch

    from mlcm_core.losses.tensor_clip import effective_rank

    out: dict[str, dict[str, Any]] = {}
    for m, (_, z) in embeddings.items():
        z = np.asarray(z, dtype=np.float32)
        if max_rows is not None and len(z) > max_rows:
            z = z[np.sort(np.random.default_rng(seed).permutation(len(z))[:max_rows])]
        n, d = z.shape
        t = torch.from_numpy(z).double()
        out[m] = {"n": int(n), "dim": int(d), "max": int(min(n, d)),
                  "rank": float(effective_rank(t)) if n else float("nan"),
                  "rank_centered": float(effective_rank(t, center=True)) if n > 1 else float("nan")}
    return out
