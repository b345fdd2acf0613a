"""Build the explorer's precomputed folder: embeddings, the fitted map, map positions, the model copy.

Layout written to ``<out_dir>/explore/`` (the app loads it with ``Explorer.load(out_dir)``)::

    manifest.json     what was built from what: store (path relative to this folder, its shards),
                      checkpoint (weights SHA-256, step, original path), UMAP settings, counts, and the
                      SHA-256 of every file below (verified by Explorer.load before anything is read)
    embeddings.npz    EmbeddingTable (float16, see embed.py)
    projection.npz    UMAPProjection (plain arrays, no pickle, see projection.py)
    map.npz           ids, (N, 2) positions and how each was placed ("umap": the fit; "umap-transform": placed
                      later with the fitted map's transform; "neighbours:<modalities>": no structure)
    model/            a copy of the checkpoint's model.safetensors + checkpoint.json, so queries embed with
                      exactly the weights the gallery was embedded with, even after the training run has
                      rotated its checkpoints away

The folder is assembled under a temporary name and renamed into place, replacing an older build only
once the new one is complete. Command line: ``mlcm project`` (fit a new map) and ``mlcm embed`` (keep the map).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlcm_core.explore.embed import EmbeddingTable, embed_store
from mlcm_core.explore.index import TopKIndex
from mlcm_core.explore.projection import UMAPProjection, place_by_neighbours
from mlcm_core.io import atomic_write, file_digests, sha256_file, staged_dir, verify_file

__all__ = ["EXPLORE_DIR", "MANIFEST_FORMAT", "build_precomputed", "default_checkpoint", "placement_vectors"]

EXPLORE_DIR = "explore"
MANIFEST_FORMAT = "mlcm-explore"
MANIFEST_VERSION = 1
DEFAULT_RUN = Path(__file__).resolve().parents[2] / "var" / "runs" / "pt_allpairs"


def default_checkpoint(run_dir: str | Path = DEFAULT_RUN) -> Path:
    """The latest checkpoint of the pre-training run (var/runs/pt_allpairs by default)."""
    from mlcm_core.models.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint under {run_dir}; pass one explicitly")
    return ckpt


def _copy_checkpoint(checkpoint: str | Path, dest: Path) -> Path:
    """Copy weights + checkpoint.json (not the optimizer state) and verify the copy against checkpoint.json."""
    from mlcm_core.models.checkpoint import META_FILE, WEIGHTS_FILE, CheckpointChecksumError, read_checkpoint_info

    info = read_checkpoint_info(checkpoint)
    dest.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS_FILE, META_FILE):
        shutil.copy2(info.path / name, dest / name)
    meta = json.loads((dest / META_FILE).read_text())
    expected = (meta.get("files") or {}).get(WEIGHTS_FILE)
    verify_file(dest / WEIGHTS_FILE, expected, error=CheckpointChecksumError)  # replaced while copying?
    meta["files"] = {WEIGHTS_FILE: sha256_file(dest / WEIGHTS_FILE)}  # the training state is not copied
    meta.setdefault("extra", {})["copied_from"] = str(info.path)
    (dest / META_FILE).write_text(json.dumps(meta, indent=1))
    return dest


def placement_vectors(table: EmbeddingTable, positions: np.ndarray) -> np.ndarray:
    """(len(positions), D) unit vectors for materials without a crystal embedding: mean of what they have."""
    d = table.dim
    acc = np.zeros((len(positions), d), np.float32)
    lookup = {m: table.row_lookup(m) for m in table.modalities if m != "crystal"}
    for m, rows in lookup.items():
        r = rows[positions]
        have = r >= 0
        acc[have] += table.vectors[m][r[have]].astype(np.float32)
    norm = np.linalg.norm(acc, axis=1, keepdims=True)
    return acc / np.maximum(norm, 1e-12)


def build_precomputed(
    store_path: str | Path,
    checkpoint: str | Path | None,
    out_dir: str | Path,
    *,
    ids: Sequence[str] | None = None,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    seed: int | None = 0,
    place_k: int = 10,
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
    workers: int = 0,
    verify_store: bool = True,
    progress: bool = True,
    reuse_map: bool = False,
    scheduler: str | None = None,
    dask_workers: int = 0,
    chunk: int = 512,
) -> Path:
    """Embed a store, fit the map and write ``<out_dir>/explore/`` (see the module docstring).

    Args:
        store_path: the dataset store.
        checkpoint: checkpoint or run directory; None = latest of var/runs/pt_allpairs.
        out_dir: e.g. ``precomputed/``; the result goes to ``out_dir/explore``.
        ids: embed only these materials (default: all).
        n_neighbors, min_dist: UMAP settings (cosine metric).
        seed: UMAP random state (None: parallel, not reproducible).
        place_k: crystals averaged to place a material without a structure.
        batch_size, cache_dir, workers: see ``embed_store``.
        reuse_map: keep the fitted UMAP of the existing build (same checkpoint required): materials already on
            the map keep their positions, new crystals are placed with the projection's ``transform``, others
            by their nearest crystals. The map a user knows stays put when the corpus grows (``mlcm embed``);
            without an existing build the map is fitted.
        scheduler: embed on this running Dask cluster (an address): one task per chunk of ``chunk`` materials,
            the model loaded once per worker. Its workers must see the store, ``out_dir`` and the graph cache
            at the same paths.
        dask_workers: without ``scheduler``, embed on a LocalCluster of this many processes when there is
            more than one chunk to embed (a single chunk is embedded here: a cluster's start would cost more
            than it saves); 0: always in this process. Either way the table is identical.
        chunk: materials per chunk (see ``embed_store``).

    Returns:
        the path of the written ``explore`` folder.
    """
    from mlcm_core.data.store import DatasetStore

    store = DatasetStore.open(store_path, verify=verify_store)
    ckpt = Path(checkpoint) if checkpoint is not None else default_checkpoint()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / EXPLORE_DIR
    n_materials = len(ids) if ids is not None else len(store.table)
    with staged_dir(final) as tmp:
        model_dir = _copy_checkpoint(ckpt, tmp / "model")
        with _embedding_client(scheduler, dask_workers, n_materials, chunk) as (client, torch_threads):
            table = embed_store(store, model_dir, ids=ids, batch_size=batch_size, chunk=chunk, cache_dir=cache_dir,
                                workers=workers, progress=progress, client=client, torch_threads=torch_threads)
        if "crystal" not in table.rows or len(table.rows["crystal"]) < 4:
            raise ValueError("the map needs crystal embeddings of at least 4 materials")
        table.meta["checkpoint_path"] = str(Path(table.meta["checkpoint_path"]).relative_to(tmp))
        table.save(tmp)

        crystal = table.vectors["crystal"]
        xy = np.zeros((len(table), 2), np.float32)
        placed_by = np.empty(len(table), dtype=object)
        previous = _previous_map(final, table.meta["checkpoint_sha256"]) if reuse_map else None
        if previous is None:
            projection = UMAPProjection.fit(crystal, n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed)
            xy[table.rows["crystal"]] = projection.embedding
            placed_by[table.rows["crystal"]] = "umap"
        else:
            projection, old_xy, old_placed = previous
            rows = table.rows["crystal"]
            ids = table.ids[rows]
            known = np.array([i in old_xy and old_placed[i] in ("umap", "umap-transform") for i in ids], bool)
            xy[rows[known]] = np.array([old_xy[i] for i in ids[known]], np.float32).reshape(-1, 2)
            placed_by[rows[known]] = [old_placed[i] for i in ids[known]]
            if (~known).any():
                xy[rows[~known]] = projection.transform(crystal[~known].astype(np.float32))
                placed_by[rows[~known]] = "umap-transform"
        projection.save(tmp)
        others = np.flatnonzero(~table.has("crystal"))
        if len(others):
            index = TopKIndex(crystal)
            xy[others] = place_by_neighbours(placement_vectors(table, others), index, xy[table.rows["crystal"]],
                                             k=place_k)
            for k in others:
                mods = [m for m in table.modalities if m != "crystal" and table.has(m)[k]]
                placed_by[k] = "neighbours:" + "+".join(mods)
        atomic_write(tmp / "map.npz", lambda f: np.savez_compressed(f, ids=table.ids, xy=xy, placed_by=placed_by.astype(str)))

        store_root = Path(store.root).resolve()
        try:
            store_ref = os.path.relpath(store_root, final.resolve())
        except ValueError:  # another drive (Windows)
            store_ref = str(store_root)
        files = file_digests(tmp, ("embeddings.npz", "projection.npz", "map.npz", "model/model.safetensors",
                                   "model/checkpoint.json"))
        manifest: dict[str, Any] = {
            "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "store": {"path": store_ref, "shards": table.meta["store_shards"],
                      "materials": len(store.table)},
            "checkpoint": {"sha256": table.meta["checkpoint_sha256"], "step": table.meta["checkpoint_step"],
                           "epoch": table.meta["checkpoint_epoch"], "copied_from": str(ckpt.resolve()),
                           "embed_dim": table.meta["embed_dim"]},
            "umap": {k: projection.params[k] for k in ("n_neighbors", "min_dist", "metric", "random_state",
                                                       "umap_version")},
            "placement": {"other_modalities": f"similarity-weighted mean of the top-{place_k} crystals",
                          "map": "fitted" if previous is None else "kept from the previous build",
                          "transformed": int(np.sum(placed_by == "umap-transform"))},
            "counts": {"materials": len(table), **{m: len(r) for m, r in table.rows.items()}},
            "files": files,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return final


@contextlib.contextmanager
def _embedding_client(scheduler: str | None, dask_workers: int, n_materials: int,
                      chunk: int) -> Iterator[tuple[Any, int | None]]:
    """(Dask client or None for in-process, torch threads per task) for one build (see ``build_precomputed``).

    On a LocalCluster each worker gets its share of the cores for torch (torch would otherwise start one thread
    per core in every worker); on a remote cluster the workers' own setting (OMP_NUM_THREADS) is kept.
    """
    if not scheduler and (dask_workers <= 0 or n_materials <= chunk):
        yield None, None
        return
    from mlcm_core.scale import dask_client

    with dask_client(dask_workers, scheduler) as client:
        yield client, (None if scheduler else max(1, (os.cpu_count() or 1) // max(1, dask_workers)))


def _previous_map(explore_dir: Path, checkpoint_sha256: str) -> tuple[UMAPProjection, dict[str, Any], dict[str, str]] | None:
    """(projection, id -> xy, id -> placed_by) of an existing build made with the same weights, else None."""
    manifest_path = explore_dir / "manifest.json"
    if not manifest_path.exists():
        return None
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("checkpoint", {}).get("sha256") != checkpoint_sha256:
        raise ValueError(f"{explore_dir} was built with other weights: its map cannot place these embeddings; "
                         "fit a new map (mlcm project)")
    files = manifest.get("files", {})
    projection = UMAPProjection.load(explore_dir / "projection.npz", expected_sha256=files.get("projection.npz"))
    verify_file(explore_dir / "map.npz", files.get("map.npz") or "", listed_in=str(manifest_path))
    with np.load(explore_dir / "map.npz", allow_pickle=False) as z:
        ids, xy, placed = z["ids"].tolist(), z["xy"], z["placed_by"].tolist()
    return projection, dict(zip(ids, xy)), dict(zip(ids, placed))
