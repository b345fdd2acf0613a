"""Embed every material of a store with each modality encoder it has data for, and keep the result.

Why precompute: the explorer answers queries in milliseconds by comparing one new embedding against all
stored ones; running three encoders over the whole store (crystal graphs need PotNet lattice sums) takes
far longer, so it is done once per checkpoint and saved.

Storage (``embeddings.npz``, numpy's deflate-compressed zip of ``.npy`` arrays, read with ``allow_pickle=False``):

    ids                   (N,) unicode   every material that has at least one embedding
    <modality>__rows      (n_m,) int64   positions in ``ids`` of the materials with that modality
    <modality>__vectors   (n_m, D) float16  their L2-normalised embeddings (half the bytes of float32;
                                            cosine similarities change by < 1e-3)
    meta                  () unicode     JSON: checkpoint SHA-256 / step / path, model config, store
                                         shard list, counts, creation time

Only present modalities are stored (no zero rows for missing ones). The file is written to a temporary
name in the same folder and renamed into place, so a reader never sees a half-written file. The
checkpoint's weight-file SHA-256 is recorded so that an embedding table can never be silently paired with
another model (the explorer checks it before embedding a query).
"""

from __future__ import annotations

import datetime as _dt
import json
import threading
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlcm_core import modalities as _modalities
from mlcm_core.io import atomic_write, sha256_file, verify_file

if TYPE_CHECKING:
    from mlcm_core.data.store import DatasetStore
    from mlcm_core.models.multimodal import MultimodalModel

__all__ = ["EMBEDDINGS_FILE", "EmbeddingTable", "embed_chunk_task", "embed_store", "load_model_verified"]

EMBEDDINGS_FILE = "embeddings.npz"
FORMAT_VERSION = 1


@dataclass
class EmbeddingTable:
    """Per-modality float16 embeddings of a set of materials (see the module docstring for the layout).

    Attributes:
        ids: (N,) material ids.
        rows: modality -> (n_m,) int64 positions in ``ids``.
        vectors: modality -> (n_m, D) float16 unit vectors, aligned with ``rows``.
        meta: provenance (checkpoint SHA-256 and step, model config, store manifest SHA-256, ...).
    """

    ids: np.ndarray
    rows: dict[str, np.ndarray]
    vectors: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids).astype(str)
        for m in list(self.rows):
            self.rows[m] = np.asarray(self.rows[m], dtype=np.int64)
            self.vectors[m] = np.asarray(self.vectors[m], dtype=np.float16)
            if self.vectors[m].ndim != 2 or len(self.vectors[m]) != len(self.rows[m]):
                raise ValueError(f"{m}: {len(self.rows[m])} rows but vectors of shape {self.vectors[m].shape}")
        self._pos: dict[str, int] | None = None

    @property
    def modalities(self) -> tuple[str, ...]:
        """The registered modalities it holds, in registry order."""
        return tuple(m for m in _modalities.modality_names() if m in self.rows)

    @property
    def dim(self) -> int:
        return next(iter(self.vectors.values())).shape[1] if self.vectors else 0

    def __len__(self) -> int:
        return len(self.ids)

    def position(self, material_id: str) -> int:
        """Index of ``material_id`` in ``ids`` (KeyError if it has no embedding)."""
        if self._pos is None:
            self._pos = {m: k for k, m in enumerate(self.ids.tolist())}
        try:
            return self._pos[material_id]
        except KeyError:
            raise KeyError(f"material {material_id!r} has no embedding (unknown id, or embedded before it was added)") from None

    def has(self, modality: str) -> np.ndarray:
        """(N,) bool: which materials have an embedding of ``modality``."""
        out = np.zeros(len(self.ids), dtype=bool)
        if modality in self.rows:
            out[self.rows[modality]] = True
        return out

    def row_lookup(self, modality: str) -> np.ndarray:
        """(N,) int64: the row in ``vectors[modality]`` of each material, -1 where it has none."""
        out = np.full(len(self.ids), -1, dtype=np.int64)
        if modality in self.rows:
            out[self.rows[modality]] = np.arange(len(self.rows[modality]))
        return out

    def get(self, material_id: str, modality: str) -> np.ndarray | None:
        """(D,) float32 embedding of one material in one modality, or None if it lacks it."""
        if modality not in self.rows:
            return None
        r = self.row_lookup(modality)[self.position(material_id)]
        return None if r < 0 else self.vectors[modality][r].astype(np.float32)

    # ---- persistence ---------------------------------------------------------------------------
    def save(self, directory: str | Path, name: str = EMBEDDINGS_FILE) -> Path:
        """Write ``directory/name`` atomically; returns its path."""
        path = Path(directory) / name
        arrays: dict[str, np.ndarray] = {"ids": self.ids.astype(str), "meta": np.array(json.dumps(self.meta))}
        for m in self.modalities:
            arrays[f"{m}__rows"] = self.rows[m]
            arrays[f"{m}__vectors"] = self.vectors[m]
        atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
        return path

    @classmethod
    def load(cls, path: str | Path, expected_sha256: str | None = None) -> EmbeddingTable:
        """Read a table written by ``save`` (no pickle); with ``expected_sha256`` the file is verified first."""
        path = Path(path)
        if path.is_dir():
            path = path / EMBEDDINGS_FILE
        if not path.exists():
            raise FileNotFoundError(f"no embedding table at {path}")
        verify_file(path, expected_sha256)
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            rows = {m: z[f"{m}__rows"] for m in _modalities.modality_names() if f"{m}__rows" in z.files}
            vectors = {m: z[f"{m}__vectors"] for m in rows}
            ids = z["ids"]
        return cls(ids=ids, rows=rows, vectors=vectors, meta=meta)


# ----------------------------------------------------------------------------------------------------------
# embedding a store


def load_model_verified(checkpoint: str | Path) -> tuple[MultimodalModel, dict[str, Any]]:
    """Load a checkpoint (directory, or run directory -> its latest) and describe it for provenance.

    The weight file's SHA-256 is computed here and must equal the one checkpoint.json records (so a file
    swapped in between is caught); the model is then loaded by the checkpoint module, which checks it again.
    """
    from mlcm_core.models.multimodal import MultimodalModel
    from mlcm_core.models.checkpoint import WEIGHTS_FILE, CheckpointError, read_checkpoint_info

    info = read_checkpoint_info(checkpoint)
    weights = info.path / WEIGHTS_FILE
    if not weights.exists():
        raise CheckpointError(f"missing {weights}")
    digest = sha256_file(weights)
    if info.files.get(WEIGHTS_FILE) not in (None, digest):
        raise CheckpointError(f"checksum mismatch for {weights}: the file is corrupt or was replaced")
    model = MultimodalModel.from_checkpoint(info.path)
    model.eval()
    desc = {"checkpoint_sha256": digest, "checkpoint_path": str(info.path), "checkpoint_step": info.step,
            "checkpoint_epoch": info.epoch, "model_config": info.model_config,
            "embed_dim": int(model.config.embed_dim), "modalities": list(model.config.modalities)}
    return model, desc


def _batched(seq: Sequence[Any], size: int):
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def _plan(table: Any, all_ids: list[str], mods: Sequence[str], chunk: int) -> list[tuple[str, list[str]]]:
    """The (modality, material ids) chunks to embed, in output order: the unit of work in and out of process.

    Both paths embed exactly these chunks with the same batches, so their arrays are identical.
    """
    parts = []
    for spec in map(_modalities.get, mods):
        todo = [i for i, f in zip(all_ids, table[spec.store_flag].fillna(False).astype(bool)) if f]
        size = chunk if spec.chunk is None else max(1, min(chunk, spec.chunk))
        parts.extend((spec.name, list(part)) for part in _batched(todo, size))
    return parts


def _embed_part(model: MultimodalModel, store: DatasetStore, m: str, part: list[str], *, batch_size: int,
                cache_dir: str | Path | None, workers: int) -> tuple[list[str], np.ndarray]:
    """(ids embedded, (n, D) float32 vectors) of one chunk; a crystal that cannot be featurized is left out."""
    from mlcm_core.featurize.dataset import MultimodalDataset

    out_ids: list[str] = []
    blocks: list[np.ndarray] = []
    spec = _modalities.get(m)
    if spec.kind == "graph":
        ds = MultimodalDataset(store, part, graph_config=model.config.graph, cache_dir=cache_dir,
                               modalities=(m,), labels=[], workers=workers, progress=False)
        keep = [k for k in range(len(part)) if ds.has[m][k]]
        graphs = [ds[k].graph for k in keep]
        for b in _batched(list(range(len(keep))), batch_size):
            blocks.append(model.embed(m, [graphs[j] for j in b]).cpu().numpy())
            out_ids.extend(part[keep[j]] for j in b)
    else:
        arr = spec.read(store, part)  # (n, *shape)
        for b in _batched(list(range(len(part))), batch_size):
            blocks.append(model.embed(m, arr[b]).cpu().numpy())
            out_ids.extend(part[j] for j in b)
    vectors = np.concatenate(blocks) if blocks else np.zeros((0, int(model.config.embed_dim)), np.float32)
    return out_ids, vectors


# -- on Dask: one task per chunk, the model and the store opened once per worker process ----------------
_WORKER_MODELS: dict[tuple[str, str], MultimodalModel] = {}
_WORKER_STORES: dict[tuple[str, tuple[str, ...]], DatasetStore] = {}
_WORKER_LOCK = threading.Lock()
_WORKER_KEEP = 2  # models kept per worker: a long-lived worker serving successive builds does not pile them up
WORKER_LOADS: list[tuple[str, str]] = []  # (path, sha256) of every model this process loaded: once per worker


def _worker_model(checkpoint: str, sha256: str) -> MultimodalModel:
    """This process's copy of the model, loaded on first use and verified against the client's SHA-256
    (a worker that sees other weights at that path, e.g. without a shared filesystem, fails loudly)."""
    from mlcm_core.models.checkpoint import CheckpointError

    key = (checkpoint, sha256)
    with _WORKER_LOCK:
        if key not in _WORKER_MODELS:
            model, desc = load_model_verified(checkpoint)
            if desc["checkpoint_sha256"] != sha256:
                raise CheckpointError(f"{checkpoint} holds other weights on this worker ({desc['checkpoint_sha256'][:12]} "
                                      f"!= {sha256[:12]}): workers must see the client's files")
            while len(_WORKER_MODELS) >= _WORKER_KEEP:
                _WORKER_MODELS.pop(next(iter(_WORKER_MODELS)))
            _WORKER_MODELS[key] = model
            WORKER_LOADS.append(key)
        return _WORKER_MODELS[key]


def _worker_store(root: str, shards: tuple[str, ...]) -> DatasetStore:
    """This process's handle on the store, opened once (the client verified it); it must hold the client's
    shards (a store only grows by appending shards, so the chunk's rows are the ones the client saw)."""
    from mlcm_core.data.store import DatasetStore, StoreError

    key = (root, shards)
    with _WORKER_LOCK:
        if key not in _WORKER_STORES:
            store = DatasetStore.open(root, verify=False)
            seen = tuple(sh["name"] for sh in store.manifest["shards"])
            if seen[: len(shards)] != shards:
                raise StoreError(f"the store at {root} on this worker has shards {list(seen)}, not the client's "
                                 f"{list(shards)}: workers must see the client's files")
            _WORKER_STORES.clear()
            _WORKER_STORES[key] = store
        return _WORKER_STORES[key]


def embed_chunk_task(store_root: str, shards: tuple[str, ...], checkpoint: str, sha256: str, modality: str,
                     part: list[str], batch_size: int, cache_dir: str, torch_threads: int | None,
                     ) -> tuple[list[str], np.ndarray, list[str]]:
    """One Dask task: embed one chunk on a worker. Returns (ids, float32 vectors, warning messages); the
    warnings (structures that cannot be featurized) are raised again on the client, where the user sees them."""
    import torch

    if torch_threads:
        torch.set_num_threads(torch_threads)
    model = _worker_model(checkpoint, sha256)
    store = _worker_store(store_root, shards)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        ids, vectors = _embed_part(model, store, modality, part, batch_size=batch_size, cache_dir=cache_dir, workers=0)
    return ids, vectors, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def _embed_on_dask(client: Any, store: DatasetStore, checkpoint: str | Path, sha256: str,
                   plan: list[tuple[str, list[str]]], *, batch_size: int, cache_dir: str | Path | None,
                   torch_threads: int | None, progress: bool) -> list[tuple[list[str], np.ndarray]]:
    """Submit one task per chunk and return their results in the plan's order (not the order they finish)."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    from mlcm_core.featurize.dataset import DEFAULT_CACHE_DIR

    root = str(Path(store.root).resolve())
    shards = tuple(sh["name"] for sh in store.manifest["shards"])
    ckpt = str(Path(checkpoint).resolve())
    cache = str(Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).resolve())
    run = uuid.uuid4().hex[:8]  # two builds on one cluster never share task keys
    futures = [client.submit(embed_chunk_task, root, shards, ckpt, sha256, m, part, batch_size, cache, torch_threads,
                             key=f"embed-{m}-{k}-{run}", pure=False, priority=-k)
               for k, (m, part) in enumerate(plan)]
    bar = tqdm(total=sum(len(p) for _, p in plan), desc="embedding on Dask", unit="mat", disable=not progress)
    if progress:
        n = len(client.scheduler_info(n_workers=-1).get("workers", {}))
        bar.write(f"Dask: {n} workers at {client.scheduler.address}; dashboard {client.dashboard_link}")
    size = {f.key: len(part) for f, (_, part) in zip(futures, plan)}
    try:
        for f in as_completed(futures, loop=client.loop):
            if f.status == "error":
                break  # gather raises its exception now, not after every other chunk
            bar.update(size[f.key])
        results = client.gather(futures)
    finally:
        bar.close()
        client.cancel(futures)
    for _, _, messages in results:
        for msg in messages:
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
    return [(ids, vectors) for ids, vectors, _ in results]


def embed_store(
    store: DatasetStore,
    checkpoint: str | Path,
    out_dir: str | Path | None = None,
    *,
    ids: Sequence[str] | None = None,
    modalities: Sequence[str] | None = None,
    batch_size: int = 64,
    chunk: int = 512,
    cache_dir: str | Path | None = None,
    workers: int = 0,
    progress: bool = False,
    client: Any | None = None,
    torch_threads: int | None = None,
) -> EmbeddingTable:
    """Embed every material (or ``ids``) with each encoder it has data for.

    Args:
        store: an open DatasetStore.
        checkpoint: a checkpoint directory, or a run directory (its latest checkpoint is used).
        out_dir: if given, the table is also written there (``embeddings.npz``, atomically).
        ids: a subset of material ids (default: all).
        modalities: which encoders to run (default: all the model has).
        batch_size: materials per encoder call.
        chunk: materials featurized / read from the store at a time (bounds memory); on Dask, one task each.
        cache_dir: crystal-graph cache (default var/cache/graphs, shared with training).
        workers: processes for featurizing uncached structures (in this process only; on Dask the tasks
            are the parallelism).
        progress: show progress bars.
        client: a ``distributed.Client``: the chunks are embedded as tasks on its workers, each loading the
            model once (verified by SHA-256); the store, checkpoint and graph cache must be at the same paths
            there (a shared filesystem). The table is identical to the in-process one (same chunks, same
            batches), given the same torch thread count.
        torch_threads: on Dask, torch's threads per task (None: the worker's default).

    Returns:
        the EmbeddingTable; materials with no embeddable modality are left out. A structure that cannot be
        featurized is reported in a RuntimeWarning and treated as missing.
    """
    import torch
    from tqdm.auto import tqdm

    model, desc = load_model_verified(checkpoint)
    names = _modalities.modality_names()
    mods = [m for m in names if m in model.encoders and (modalities is None or m in modalities)]
    if modalities is not None and set(modalities) - set(names):
        raise ValueError(f"unknown modalities {sorted(set(modalities) - set(names))}; choose from {names}")
    table = store.table
    if ids is not None:
        ids = [str(i) for i in ids]
        known = set(table["id"])
        missing = [i for i in ids if i not in known]
        if missing:
            raise KeyError(f"unknown material ids: {missing[:5]}")
        table = table.set_index("id").loc[ids].reset_index()
    all_ids = table["id"].astype(str).tolist()
    plan = _plan(table, all_ids, mods, chunk)

    if client is not None:
        done = _embed_on_dask(client, store, desc["checkpoint_path"], desc["checkpoint_sha256"], plan,
                              batch_size=batch_size, cache_dir=cache_dir, torch_threads=torch_threads,
                              progress=progress)
    else:
        done = []
        bars = {m: tqdm(total=sum(len(p) for mm, p in plan if mm == m), desc=f"embedding {m}", unit="mat",
                        disable=not progress) for m in mods}
        with torch.no_grad():
            for m, part in plan:
                done.append(_embed_part(model, store, m, part, batch_size=batch_size, cache_dir=cache_dir,
                                        workers=workers))
                bars[m].update(len(part))
        for bar in bars.values():
            bar.close()
    got: dict[str, tuple[list[str], list[np.ndarray]]] = {m: ([], []) for m in mods}
    for (m, _), (part_ids, vectors) in zip(plan, done):
        got[m][0].extend(part_ids)
        got[m][1].append(vectors)

    embedded: set[str] = set()
    for m in mods:
        embedded.update(got[m][0])
    out_ids = np.array([i for i in all_ids if i in embedded], dtype=str)
    pos = {i: k for k, i in enumerate(out_ids.tolist())}
    rows, vectors = {}, {}
    for m in mods:
        m_ids, blocks = got[m]
        rows[m] = np.array([pos[i] for i in m_ids], dtype=np.int64)
        vectors[m] = (np.concatenate(blocks) if blocks else np.zeros((0, model.config.embed_dim), np.float32)).astype(np.float16)
    meta = {
        "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **desc,
        "store_path": str(store.root),
        "store_shards": [sh["name"] for sh in store.manifest["shards"]],  # append-only: this IS its version
        "counts": {m: len(rows[m]) for m in mods},
        "dtype": "float16, L2-normalised in float32 before the cast",
    }
    result = EmbeddingTable(ids=out_ids, rows=rows, vectors=vectors, meta=meta)
    if out_dir is not None:
        result.save(out_dir)
    return result
