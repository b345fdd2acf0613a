"""Multimodal training data: a torch Dataset over store rows and the collate function that batches them.

Why this module exists: the encoders want different inputs (a batched crystal graph, a (B, 601) DOS, a
(B, 32, 32, 32) density: one per modality of the registry, ``mlcm_core.modalities``) and most materials do not
have all of them. A batch therefore keeps
every row aligned by material and carries one boolean mask per modality; missing inputs are zeros that the
model never encodes (it only runs an encoder on the rows that have the modality) and the losses never see
(they select rows by mask). Labels ride along as NaN-for-missing floats so the same batches serve
fine-tuning.

Graph featurization (PotNet lattice sums) is the slow step, so graphs are cached on disk:

* one file per structure, named by the SHA-256 of the structure's JSON as stored, in a folder named by the
  SHA-256 of the graph config and of the featurizer source (``crystal_graph.py``). The structure JSON comes
  from the checksummed store, so the key follows the store content exactly: a changed structure, graph
  config or featurizer gives a new key, while appending a shard that only adds DOS/density to existing ids
  (the planned GPAW workflow) re-uses every cached graph instead of invalidating all of them.
* files hold plain tensors only (``torch.save`` of a ``dict[str, Tensor]``) and are read with
  ``torch.load(weights_only=True)``: a planted or corrupt cache file cannot execute code; an unreadable one
  is re-featurized.
* writes are atomic (temporary file + ``os.replace``), so concurrent writers (DDP ranks, two runs) and
  interrupted runs never leave a half-written file behind.
* the default folder ``var/cache/graphs`` (relative to the working directory) is git-ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torch_geometric.data import Batch, Data

from mlcm_core import modalities as _modalities
from mlcm_core.data.conventions import LABELS
from mlcm_core.featurize.crystal_graph import CrystalGraphConfig, collate_graphs, structure_to_graph
from mlcm_core.io import atomic_write
from mlcm_core.io import atomic_write_bytes as _atomic_write_bytes

if TYPE_CHECKING:
    from mlcm_core.data.store import DatasetStore

__all__ = [
    "DEFAULT_CACHE_DIR",
    "GraphCache",
    "MaterialItem",
    "MultimodalBatch",
    "MultimodalDataset",
    "collate_multimodal",
]

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path("var") / "cache" / "graphs"
_GRAPH_FIELDS = ("x", "edge_index", "edge_attr", "edge_dist", "edge_potentials", "x_props", "node_potentials")
_PRELOAD_CHUNK = 256  # rows read from the store at a time while preloading (bounded temporary memory)


# ----------------------------------------------------------------------------------------------------------
# graph cache


@lru_cache(maxsize=1)
def _featurizer_fingerprint() -> str:
    """SHA-256 of crystal_graph.py: a change to the featurizer's code invalidates cached graphs."""
    import mlcm_core.featurize.crystal_graph as cg

    return hashlib.sha256(Path(cg.__file__).read_bytes()).hexdigest()


def _graph_to_tensors(graph: Data) -> dict[str, Tensor]:
    out = {k: graph[k].contiguous() for k in _GRAPH_FIELDS if k in graph}
    out["num_nodes"] = torch.tensor(int(graph.num_nodes), dtype=torch.long)
    return out


def _tensors_to_graph(tensors: dict[str, Any]) -> Data:
    if not isinstance(tensors, dict) or not all(isinstance(v, Tensor) for v in tensors.values()):
        raise ValueError("cached graph is not a dict of tensors")
    missing = {"x", "edge_index", "edge_attr", "edge_potentials", "num_nodes"} - set(tensors)
    if missing:
        raise ValueError(f"cached graph lacks {sorted(missing)}")
    fields = {k: v for k, v in tensors.items() if k in _GRAPH_FIELDS}
    return Data(**fields, num_nodes=int(tensors["num_nodes"]))


class GraphCache:
    """Content-addressed on-disk cache of featurized crystal graphs (see the module docstring)."""

    def __init__(self, root: str | Path | None, config: CrystalGraphConfig) -> None:
        config_key = hashlib.sha256(
            json.dumps({"graph_config": asdict(config), "featurizer": _featurizer_fingerprint()}, sort_keys=True).encode()
        ).hexdigest()
        self.root = Path(root if root is not None else DEFAULT_CACHE_DIR) / config_key[:20]
        self.config = config

    @staticmethod
    def key(structure_json: str) -> str:
        return hashlib.sha256(structure_json.encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.pt"

    def load(self, key: str) -> Data | None:
        """The cached graph, or None if absent or unreadable (never unpickles anything but tensors)."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            return _tensors_to_graph(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as e:  # noqa: BLE001  (corrupt, truncated or planted file: featurize again)
            log.warning("ignoring unreadable graph cache file %s (%s)", path, e)
            return None

    def save(self, key: str, graph: Data) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not (self.root / "config.json").exists():
            _atomic_write_bytes(self.root / "config.json", json.dumps(
                {"graph_config": asdict(self.config), "featurizer_sha256": _featurizer_fingerprint()}, indent=1).encode())
        atomic_write(path, lambda f: torch.save(_graph_to_tensors(graph), f))


def _featurize_json(args: tuple[str, CrystalGraphConfig]) -> dict[str, Tensor] | str:
    """Worker: structure JSON -> graph tensors, or an error message (pickles cleanly across processes)."""
    from pymatgen.core import Structure

    text, config = args
    try:
        return _graph_to_tensors(structure_to_graph(Structure.from_dict(json.loads(text)), config))
    except Exception as e:  # noqa: BLE001  (reported per material by the caller)
        return f"{type(e).__name__}: {e}"


# ----------------------------------------------------------------------------------------------------------
# dataset


@dataclass
class MaterialItem:
    """One material as the dataset yields it; a missing modality is None / absent from ``inputs``.

    Attributes:
        graph: its crystal graph (the graph modality), or None.
        inputs: array modality name -> its array, e.g. "dos" (601,) float32 states/eV per cell,
            "density" (32, 32, 32) float32.
    """

    id: str
    graph: Data | None
    inputs: dict[str, Tensor] = field(default_factory=dict)
    labels: dict[str, float] = field(default_factory=dict)  # NaN = missing

    @property
    def dos(self) -> Tensor | None:
        return self.inputs.get("dos")

    @property
    def density(self) -> Tensor | None:
        return self.inputs.get("density")


class MultimodalDataset(Dataset):
    """Store rows `ids` as MaterialItems: featurized graphs (cached), each array modality, and labels.

    Args:
        store: an open DatasetStore.
        ids: material ids (any order; duplicates are an error).
        graph_config: featurization of structures (default CrystalGraphConfig()).
        cache_dir: graph cache folder (default var/cache/graphs); ``use_cache=False`` disables it.
        modalities: which registered modalities to load (default the built-in three); others are always None.
        labels: label columns to carry (default: every registered label column present in the table).
        preload_density_bytes: an array modality (DOS, density, ...) is read into memory up front when its
            rows take at most this many bytes as float32 (fast epochs, no per-item store reads); otherwise
            each item reads its own.
        workers: processes for featurizing uncached structures (0 = in this process).
        progress: show a tqdm bar while featurizing.
    """

    def __init__(
        self,
        store: DatasetStore,
        ids: Sequence[str],
        graph_config: CrystalGraphConfig | None = None,
        cache_dir: str | Path | None = None,
        *,
        modalities: Sequence[str] = _modalities.MODALITIES,
        labels: Sequence[str] | None = None,
        use_cache: bool = True,
        preload_density_bytes: int = 2 << 30,
        workers: int = 0,
        progress: bool = True,
    ) -> None:
        names = _modalities.modality_names()
        unknown = set(modalities) - set(names)
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}; choose from {names}")
        self.store = store
        self.ids = [str(i) for i in ids]
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("duplicate ids given to MultimodalDataset")
        self.graph_config = graph_config or CrystalGraphConfig()
        self.modalities = tuple(modalities)
        table = store.table.set_index("id")
        missing = [i for i in self.ids if i not in table.index]
        if missing:
            raise KeyError(f"unknown material ids: {missing[:5]}")
        rows = table.loc[self.ids]
        self.label_names = [c for c in (LABELS if labels is None else labels) if c in rows.columns]
        self._labels = rows[self.label_names].to_numpy(dtype=np.float64, na_value=np.nan).astype(np.float32) \
            if self.label_names else np.zeros((len(self.ids), 0), np.float32)
        self.has = {spec.name: rows[spec.store_flag].fillna(False).astype(bool).to_numpy().copy()
                    if spec.name in self.modalities else np.zeros(len(self.ids), bool) for spec in _modalities.specs()}

        self.cache = GraphCache(cache_dir, self.graph_config) if use_cache else None
        self._graphs: list[Data | None] = [None] * len(self.ids)
        for spec in _modalities.specs(self.modalities):
            if spec.kind == "graph":  # a structure that cannot be featurized counts as missing
                self._featurize(rows[spec.store_column].tolist(), self.has[spec.name], workers, progress)
                self.has[spec.name] = np.array([g is not None for g in self._graphs])

        # array modalities: in memory when they fit the budget (a DOS is 2.4 kB), else read per item
        self._arrays: dict[str, dict[int, np.ndarray] | None] = {}
        for spec in _modalities.specs(self.modalities):
            if spec.kind != "array":
                continue
            where = np.flatnonzero(self.has[spec.name])
            if len(where) * 4 * int(np.prod(spec.shape)) > preload_density_bytes:
                self._arrays[spec.name] = None
                continue
            self._arrays[spec.name] = loaded = {}
            for start in range(0, len(where), _PRELOAD_CHUNK):
                chunk = where[start : start + _PRELOAD_CHUNK]
                block = spec.read(store, [self.ids[k] for k in chunk])  # (n, *shape)
                loaded.update({int(k): block[j] for j, k in enumerate(chunk)})

    # -- featurization --------------------------------------------------------------------------------
    def _featurize(self, texts: list[Any], has: np.ndarray, workers: int, progress: bool) -> None:
        from tqdm.auto import tqdm

        todo: list[tuple[int, str, str]] = []  # (row, cache key, structure json)
        for k, (text, ok) in enumerate(zip(texts, has)):
            if not ok or not isinstance(text, str):
                continue
            key = GraphCache.key(text)
            graph = self.cache.load(key) if self.cache is not None else None
            if graph is None:
                todo.append((k, key, text))
            else:
                self._graphs[k] = graph
        if not todo:
            return
        failed: list[str] = []
        bar = tqdm(total=len(todo), desc="featurizing crystal graphs", unit="struct", disable=not progress)
        jobs = [(text, self.graph_config) for _, _, text in todo]
        if workers > 0:  # spawn: safe with torch's thread pools (the caller needs a __main__ guard)
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                self._store_results(todo, pool.map(_featurize_json, jobs, chunksize=8), bar, failed)
        else:
            self._store_results(todo, map(_featurize_json, jobs), bar, failed)
        bar.close()
        if failed:
            warnings.warn(f"{len(failed)} structures could not be featurized and are treated as missing, "
                          f"e.g. {failed[:3]}", RuntimeWarning, stacklevel=3)

    def _store_results(self, todo, results, bar, failed: list[str]) -> None:
        for (k, key, _), res in zip(todo, results):
            bar.update(1)
            if isinstance(res, str):
                failed.append(f"{self.ids[k]} ({res})")
                continue
            graph = _tensors_to_graph(res)
            self._graphs[k] = graph
            if self.cache is not None:
                self.cache.save(key, graph)

    # -- Dataset protocol ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k: int) -> MaterialItem:
        inputs = {}
        for name, loaded in self._arrays.items():
            if self.has[name][k]:
                arr = loaded[k] if loaded is not None else _modalities.get(name).read(self.store, [self.ids[k]])[0]
                inputs[name] = torch.from_numpy(arr)
        labels = {name: float(v) for name, v in zip(self.label_names, self._labels[k])}
        return MaterialItem(id=self.ids[k], graph=self._graphs[k], inputs=inputs, labels=labels)

    def set_label(self, name: str, values: Sequence[float] | np.ndarray) -> None:
        """Replace (or add) label column ``name`` with one value per row, e.g. a transformed target."""
        values = np.asarray(values, dtype=np.float32)
        if values.shape != (len(self.ids),):
            raise ValueError(f"need {len(self.ids)} values for label {name!r}, got shape {values.shape}")
        if name in self.label_names:
            self._labels[:, self.label_names.index(name)] = values
        else:
            self.label_names.append(name)
            self._labels = np.concatenate([self._labels, values[:, None]], axis=1)

    def label(self, name: str) -> np.ndarray:
        """(n,) float32 values of label ``name`` (NaN = missing)."""
        return self._labels[:, self.label_names.index(name)].copy()

    def modality_counts(self) -> dict[str, int]:
        return {m: int(v.sum()) for m, v in self.has.items()}


# ----------------------------------------------------------------------------------------------------------
# batching


@dataclass
class MultimodalBatch:
    """B materials, rows aligned across modalities.

    Attributes:
        ids: the B material ids, in row order.
        graphs: PyG Batch over ONLY the G rows that have a structure (None when G = 0).
        graph_index: (G,) long, the batch row of each graph in ``graphs``.
        inputs: every registered array modality -> (B, *shape) float32, zeros where missing, e.g.
            "dos" (B, 601), "density" (B, 32, 32, 32).
        masks: each modality's ``mask_key`` ("has_crystal", "has_dos", "has_density", ...) -> (B,) bool.
        labels: label column -> (B,) float32, NaN where missing.
    """

    ids: list[str]
    graphs: Batch | None
    graph_index: Tensor
    inputs: dict[str, Tensor]
    masks: dict[str, Tensor]
    labels: dict[str, Tensor]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dos(self) -> Tensor:
        """``inputs["dos"]``, (B, 601)."""
        return self.inputs["dos"]

    @property
    def density(self) -> Tensor:
        """``inputs["density"]``, (B, 32, 32, 32)."""
        return self.inputs["density"]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MultimodalBatch:
        return MultimodalBatch(
            ids=self.ids,
            graphs=self.graphs.to(device, non_blocking=non_blocking) if self.graphs is not None else None,
            graph_index=self.graph_index.to(device, non_blocking=non_blocking),
            inputs={k: v.to(device, non_blocking=non_blocking) for k, v in self.inputs.items()},
            masks={k: v.to(device, non_blocking=non_blocking) for k, v in self.masks.items()},
            labels={k: v.to(device, non_blocking=non_blocking) for k, v in self.labels.items()},
        )

    def pin_memory(self) -> MultimodalBatch:
        """Page-locked copy (DataLoader(pin_memory=True) calls this) for faster host-to-GPU transfer."""
        return MultimodalBatch(
            ids=self.ids, graphs=self.graphs.pin_memory() if self.graphs is not None else None,
            graph_index=self.graph_index.pin_memory(), inputs={k: v.pin_memory() for k, v in self.inputs.items()},
            masks={k: v.pin_memory() for k, v in self.masks.items()},
            labels={k: v.pin_memory() for k, v in self.labels.items()})

    def modality_masks(self) -> dict[str, Tensor]:
        """Masks keyed by modality name ("crystal", "dos", "density", ...), as the losses expect them."""
        return {s.name: self.masks[s.mask_key] for s in _modalities.specs() if s.mask_key in self.masks}


def collate_multimodal(items: Sequence[MaterialItem]) -> MultimodalBatch:
    """Stack MaterialItems into a MultimodalBatch (see its docstring for shapes)."""
    b = len(items)
    graph_rows = [k for k, it in enumerate(items) if it.graph is not None]
    graphs = collate_graphs([items[k].graph for k in graph_rows]) if graph_rows else None
    inputs: dict[str, Tensor] = {}
    masks: dict[str, Tensor] = {}
    for spec in _modalities.specs():
        if spec.kind == "graph":
            masks[spec.mask_key] = torch.tensor([it.graph is not None for it in items], dtype=torch.bool)
            continue
        x = inputs[spec.name] = torch.zeros(b, *spec.shape)  # (B, *shape)
        for k, it in enumerate(items):
            if spec.name in it.inputs:
                x[k] = it.inputs[spec.name]
        masks[spec.mask_key] = torch.tensor([spec.name in it.inputs for it in items], dtype=torch.bool)
    names = list(dict.fromkeys(n for it in items for n in it.labels))
    labels = {n: torch.tensor([it.labels.get(n, float("nan")) for it in items], dtype=torch.float32) for n in names}
    return MultimodalBatch(ids=[it.id for it in items], graphs=graphs,
                           graph_index=torch.tensor(graph_rows, dtype=torch.long), inputs=inputs,
                           masks=masks, labels=labels)
