"""``Explorer``: the one exploration API behind both the notebooks and the dashboard.

Why one class: the app and a notebook must give the same answer to the same question, so ranking,
filtering, map selection, placement of uploads and export live here and the app only draws them.

What it works on (built by ``build_precomputed``, verified by SHA-256 on load): per-modality float16
embeddings of every material, a 2-D map (UMAP of crystal embeddings; other materials placed by their
nearest crystals), the model that made them (to embed queries) and the dataset store (labels,
structures).

Ranking (``query``): each target (a DOS, a density, a structure, a material of the store) is embedded
into the shared space; a candidate's score is the weighted mean of the cosine similarities between the
targets and the candidate's embedding in the gallery modality (``gallery``, default "crystal": every
material with a structure; "dos"/"density" search materials that have those). Because every target is
compared with the same candidate vector, the weighted mean of cosines is the inner product with the
weighted mean of the target vectors, so a multi-target query is ONE top-k search (faiss, float16
gallery, filters applied inside the scan; exact up to 1M rows, index.py). Each target's own similarity is reported next to the score.

Caveat on cross-modal scores: a DOS compared with crystal embeddings gives smaller cosines than a crystal
with crystals (the "modality gap" of contrastive models); the ranking within one query is meaningful,
absolute values across galleries are not.

Predictions (``predict``, and ``pred_*`` columns of every candidate list): the property heads beside the
explore folder (``<precomputed>/heads``, see ``mlcm_core.explore.predict``), an ensemble of fine-tuned crystal
encoders whose spread is the uncertainty; gallery materials are looked up (predicted when the heads were
built), new structures are run through the ensemble. Without a heads folder, predictions are simply absent.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mlcm_core import modalities as _modalities
from mlcm_core.data.conventions import DENSITY_GRID, DOS_ENERGIES, DOS_N_POINTS, LABELS
from mlcm_core.explore.build import EXPLORE_DIR, MANIFEST_FORMAT
from mlcm_core.explore.embed import EmbeddingTable, load_model_verified
from mlcm_core.io import ChecksumError, sha256_file, verify_files
from mlcm_core.explore.export import EXPORT_FORMATS, export_candidates, label_metadata
from mlcm_core.explore.filters import Filters, element_matrix
from mlcm_core.explore.index import GridIndex2D, TopKIndex
from mlcm_core.explore.lookup import MaterialMatch, find_materials
from mlcm_core.explore.predict import HEADS_DIR, HeadsError, PropertyPredictor, verify_heads
from mlcm_core.explore.projection import UMAPProjection
from mlcm_core.explore.resample import resample_polyline, target_dos

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from mlcm_core.data.store import DatasetStore
    from mlcm_core.models.multimodal import MultimodalModel

__all__ = ["DensityHint", "Explorer", "ExplorerError"]

TARGETS = ("dos", "density", "structure", "material_id")  # query arguments; "structure" is the crystal modality
_SIM_COLUMN = {"dos": "sim_dos", "density": "sim_density", "structure": "sim_structure", "material_id": "sim_material"}


def _targets() -> tuple[str, ...]:
    """Every target name: TARGETS, then the ``target`` of each registered modality beyond the built-in three."""
    return tuple(dict.fromkeys([*TARGETS, *(s.target for s in _modalities.specs())]))
_MAX_K = 10_000
_HINT_BINS = 64


class ExplorerError(RuntimeError):
    """The precomputed folder is missing, corrupt or does not fit the store/model."""


class ExplorerChecksumError(ExplorerError, ChecksumError):
    """A file of the explorer manifest is missing or differs from its SHA-256."""


@dataclass
class DensityHint:
    """How crowded each map region is, and how much the modalities of its materials disagree.

    Attributes:
        x_edges, y_edges: (bins + 1,) bin edges of the map.
        counts: (bins, bins) materials per cell, indexed [x bin, y bin].
        mean_disagreement: (bins, bins) mean ``disagreement`` of the cell's materials that have >= 2
            modalities (NaN where none has).
        disagreement: per material id: 1 - mean pairwise cosine between its own modality embeddings (NaN with
            fewer than 2). A material whose DOS/density embedding points elsewhere than its crystal
            embedding is one the model is unsure about; values are relative (cross-modal cosines are
            lower than within-modality ones), compare them within this map.
        region_count: per material id, the count of its cell (sparse regions = few similar known materials).
        prediction_spread: per material id, the property heads' ensemble std averaged over targets, each in
            units of that target's test MAE (1 = as unsure as the typical test error); NaN without heads or
            without a structure. High where the fine-tuned models disagree: where new labels would help most.
    """

    x_edges: np.ndarray
    y_edges: np.ndarray
    counts: np.ndarray
    mean_disagreement: np.ndarray
    disagreement: pd.Series
    region_count: pd.Series
    prediction_spread: pd.Series


def _find_explore_dir(path: Path) -> Path:
    for cand in (path / EXPLORE_DIR, path):
        if (cand / "manifest.json").exists():
            try:
                doc = json.loads((cand / "manifest.json").read_text())
                if isinstance(doc, dict) and doc.get("format") == MANIFEST_FORMAT:
                    return cand
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ExplorerError(f"{cand / 'manifest.json'} is not valid JSON: {e}") from e
    raise ExplorerError(f"no explorer data under {path} (expected {path / EXPLORE_DIR}/manifest.json; "
                        "build it with mlcm_core.explore.build_precomputed)")


_REQUIRED_FILES = ("embeddings.npz", "projection.npz", "map.npz", "model/model.safetensors")


def _check_manifest(path: Path, manifest: Any) -> None:
    """The explorer manifest's shape; file names must stay inside its folder."""
    if not isinstance(manifest, dict):
        raise ExplorerError(f"{path}: not an explorer manifest (a JSON object is expected)")
    files, store, ckpt = manifest.get("files", {}), manifest.get("store"), manifest.get("checkpoint")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise ExplorerError(f"{path}: 'files' must map file names to SHA-256 strings")
    bad = [n for n in files if Path(n).is_absolute() or ".." in Path(n).parts]
    if bad:
        raise ExplorerError(f"{path}: file names leave the explorer folder: {bad[:3]}")
    if not (isinstance(store, dict) and isinstance(store.get("path"), str)
            and isinstance(store.get("shards", []), list)):
        raise ExplorerError(f"{path}: 'store' must hold the store's path and shard list")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("sha256"), str):
        raise ExplorerError(f"{path}: 'checkpoint' must hold the weights' sha256")


def _load_map(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        ids, xy, placed_by = z["ids"].astype(str), z["xy"].astype(np.float32), z["placed_by"].astype(str)
    if xy.ndim != 2 or xy.shape[1:] != (2,):
        raise ValueError(f"xy has shape {xy.shape}, expected (N, 2)")
    return ids, xy, placed_by


def _read_npz(path: Path, reader: Any) -> Any:
    """``reader(path)``, with every failure (missing key, pickled objects, bad zip) an ExplorerError naming it."""
    try:
        return reader(path)
    except Exception as e:  # numpy/zipfile raise ValueError, KeyError, BadZipFile, OSError, ...
        raise ExplorerError(f"{path} is unreadable or malformed ({type(e).__name__}: {str(e)[:200]}); "
                            "rebuild it with mlcm_core.explore.build_precomputed") from e


class Explorer:
    """Search, select, place and export materials over precomputed embeddings (see the module docstring).

    Create with ``Explorer.load(precomputed_dir)``.
    """

    def __init__(self, directory: Path, manifest: dict[str, Any], store: DatasetStore, embeddings: EmbeddingTable,
                 projection: UMAPProjection, ids: np.ndarray, xy: np.ndarray, placed_by: np.ndarray,
                 export_root: Path) -> None:
        self.directory = directory
        self.manifest = manifest
        self.store = store
        self.embeddings = embeddings
        self.projection = projection
        self.xy = xy
        self.export_root = export_root
        if not np.array_equal(ids, embeddings.ids):
            raise ExplorerError("map.npz and embeddings.npz list different materials")
        st = store.table.set_index("id")
        missing = [i for i in embeddings.ids[:1000] if i not in st.index]
        if missing:
            raise ExplorerError(f"the store lacks embedded materials, e.g. {missing[:3]}: wrong store?")
        base = st.reindex(embeddings.ids.tolist()).drop(columns=["structure_json"], errors="ignore")
        base.index.name = "id"
        base = base.reset_index()
        base["x"], base["y"] = xy[:, 0], xy[:, 1]
        base["placed_by"] = placed_by
        for m in embeddings.modalities:
            base[f"emb_{m}"] = embeddings.has(m)
        self.table = base
        self._model: MultimodalModel | None = None
        self._indexes: dict[str, TopKIndex] = {}
        self._grid: GridIndex2D | None = None
        self._elements: np.ndarray | None = None
        self._hint: DensityHint | None = None
        self._predictor: Any = None
        self._predictor_error: str | None = None
        self._heads_verified = False

    # ---- loading -------------------------------------------------------------------------------
    @classmethod
    def load(cls, precomputed_dir: str | Path, store: DatasetStore | str | Path | None = None, *,
             export_root: str | Path | None = None, verify: bool = True, verify_store: bool = True) -> Explorer:
        """Open ``<precomputed_dir>/explore`` (or that folder itself).

        Args:
            precomputed_dir: the folder ``build_precomputed`` wrote into.
            store: the dataset store (default: the path recorded in the manifest, relative to the folder).
            export_root: where ``export`` may write (default ``var/exports`` of the working directory).
            verify: check every file's SHA-256 against the manifest first.
            verify_store: check the store's files too (DatasetStore.open).
        """
        from mlcm_core.data.store import DatasetStore

        directory = _find_explore_dir(Path(precomputed_dir))
        manifest = json.loads((directory / "manifest.json").read_text())
        _check_manifest(directory / "manifest.json", manifest)
        files = manifest.get("files", {})
        if verify:
            unlisted = [n for n in _REQUIRED_FILES if n not in files]
            if unlisted:
                raise ExplorerError(f"{directory / 'manifest.json'} lists no checksum for {unlisted}: cannot verify")
            verify_files(directory, files, listed_in="the explorer manifest", error=ExplorerChecksumError)
            heads = directory.parent / HEADS_DIR
            if (heads / "manifest.json").exists():  # optional, but never silently corrupt
                try:
                    verify_heads(heads)
                except HeadsError as e:
                    raise ExplorerError(str(e)) from e
        if store is None:
            ref = Path(manifest["store"]["path"])
            store = (directory / ref) if not ref.is_absolute() else ref
        if not hasattr(store, "table"):
            store = DatasetStore.open(store, verify=verify_store)
        built_with = manifest["store"].get("shards", [])
        now = [s["name"] for s in store.manifest["shards"]]
        if built_with and now != built_with:
            new = [s for s in now if s not in built_with]
            gone = [s for s in built_with if s not in now]
            if gone:
                raise ExplorerError(f"the store lacks shards the embeddings were built from: {gone[:3]} (wrong store?)")
            warnings.warn(f"the store has {len(new)} shard(s) newer than the explorer data ({new[:3]}): materials "
                          "and modalities they add are not searchable until build_precomputed is run again",
                          RuntimeWarning, stacklevel=2)
        embeddings = _read_npz(directory / "embeddings.npz", EmbeddingTable.load)
        projection = _read_npz(directory / "projection.npz", UMAPProjection.load)
        ids, xy, placed_by = _read_npz(directory / "map.npz", _load_map)
        if len(xy) != len(ids) or len(placed_by) != len(ids):
            raise ExplorerError(f"{directory / 'map.npz'}: ids, xy and placed_by differ in length")
        if embeddings.meta.get("checkpoint_sha256") != manifest["checkpoint"]["sha256"]:
            raise ExplorerError("embeddings.npz was made with another checkpoint than the manifest names")
        root = Path(export_root) if export_root is not None else Path.cwd() / "var" / "exports"
        explorer = cls(directory, manifest, store, embeddings, projection, ids, xy, placed_by, root)
        explorer._heads_verified = verify  # the heads' checksums were checked above: not again on first use
        return explorer

    @property
    def model(self) -> MultimodalModel:
        """The checkpoint copy in ``explore/model`` (loaded on first use, SHA-256 checked against the manifest)."""
        if self._model is None:
            model, desc = load_model_verified(self.directory / "model")
            if desc["checkpoint_sha256"] != self.manifest["checkpoint"]["sha256"]:
                raise ExplorerError("explore/model holds other weights than the embeddings were made with")
            self._model = model
        return self._model

    @property
    def predictor(self) -> PropertyPredictor | None:
        """The property heads in ``<precomputed>/heads`` (loaded and SHA-256 checked on first use), or None."""
        if self._predictor is None and self._predictor_error is None:
            heads = self.directory.parent / HEADS_DIR
            if not (heads / "manifest.json").exists():
                self._predictor_error = f"no property heads at {heads} (build them with `mlcm heads build`)"
            else:
                try:
                    self._predictor = PropertyPredictor.load(heads, verify=not self._heads_verified)
                except HeadsError as e:  # corrupt heads: searching still works; predict() says why
                    self._predictor_error = str(e)
                    warnings.warn(f"property predictions disabled: {e}", RuntimeWarning, stacklevel=2)
        return self._predictor

    @property
    def predictor_status(self) -> str:
        """"ready", or why there are no predictions (missing or corrupt heads folder)."""
        return "ready" if self.predictor is not None else (self._predictor_error or "no property heads")

    def predict(self, structure: Any = None, material_id: str | None = None) -> pd.DataFrame:
        """Predicted band gap, formation energy, K and G with their ensemble spread (one row per target).

        A material of the gallery is looked up; a structure (Structure, CIF/POSCAR path or text) is run
        through the ensemble. Columns: target, quantity, mean, std (transformed unit), value, low/high_1sigma,
        unit, test_mae, theory.
        """
        if (structure is None) == (material_id is None):
            raise ValueError("give exactly one of structure= or material_id=")
        predictor = self.predictor
        if predictor is None:
            raise ExplorerError(self._predictor_error or "no property heads")
        if material_id is not None:
            found = predictor.lookup([material_id])
            if len(found):
                return found.drop(columns="id")
            structure = self._structure_or_none(material_id)
            if structure is None:
                raise ValueError(f"material {material_id!r} has no structure to predict from")
        return predictor.predict(self._as_structure(structure)).drop(columns="structure")

    def index(self, gallery: str) -> TopKIndex:
        """The top-k index over one modality's embeddings (built on first use): exact up to ``index.ANN_MIN_ROWS``
        (1M) rows, approximate with exact re-ranking above (``index.TopKIndex``)."""
        galleries = _modalities.modality_names()
        if gallery not in galleries:
            raise ValueError(f"unknown gallery {gallery!r}; choose from {galleries}")
        if gallery not in self.embeddings.rows or len(self.embeddings.rows[gallery]) == 0:
            raise ValueError(f"no material has a {gallery} embedding")
        if gallery not in self._indexes:
            self._indexes[gallery] = TopKIndex(self.embeddings.vectors[gallery])
        return self._indexes[gallery]

    @property
    def grid(self) -> GridIndex2D:
        if self._grid is None:
            self._grid = GridIndex2D(self.xy)
        return self._grid

    def _element_matrix(self) -> np.ndarray:
        if self._elements is None:
            self._elements = element_matrix(self.table)
        return self._elements

    # ---- map ---------------------------------------------------------------------------------
    def select(self, polygon_xy: Any) -> list[str]:
        """Ids of the materials strictly inside a lasso polygon ((M, 2) map vertices), in table order."""
        return self.embeddings.ids[self.grid.select(polygon_xy)].tolist()

    def find(self, text: str) -> MaterialMatch:
        """The materials of the map that ``text`` names: a material id (``mp-149``), a formula (``SiO2``, any
        form pymatgen's Composition reads: every polymorph with that reduced formula) or a chemical system
        (``Li-Fe-O``: the materials made of exactly those elements). ``ids`` are in table order.

        Raises ``lookup.MaterialNotFound`` when nothing matches and ``lookup.MaterialQueryError`` (both
        ValueErrors) when the text is none of the three; the messages say which and why."""
        return find_materials(self.table, text)

    def place(self, structure: Structure | str | Path | bytes) -> tuple[float, float]:
        """Map position of a new structure (a pymatgen Structure, a CIF/POSCAR path, or CIF text/bytes).

        Files and text are read with the structure-file reader (size/site limits, clear errors).
        """
        z = self._embed("crystal", self._as_structure(structure))
        x, y = self.projection.transform(z[None, :])[0]
        return float(x), float(y)

    def map_clusters(self, cache_dir: str | Path | None = "default") -> pd.DataFrame:
        """Labelled HDBSCAN clusters of the map (``clusters.map_clusters``; labels cached on disk, see there)."""
        from mlcm_core.explore.clusters import map_clusters

        t = self.table
        xy = np.column_stack([t["x"].astype(np.float64), t["y"].astype(np.float64)])
        elements = [tuple(e) if e is not None and not isinstance(e, float) else () for e in t["elements"]]
        return map_clusters(t["id"].astype(str).tolist(), xy, t["crystal_system"].fillna("unknown").astype(str).tolist(),
                            elements, cache_dir=cache_dir)

    def density_hint(self, bins: int = _HINT_BINS) -> DensityHint:
        """Material counts per map region and the per-material modality disagreement (see DensityHint)."""
        if bins == _HINT_BINS and self._hint is not None:
            return self._hint
        x, y = self.xy[:, 0].astype(np.float64), self.xy[:, 1].astype(np.float64)
        x_edges = np.linspace(x.min(), x.max() + 1e-9, bins + 1)
        y_edges = np.linspace(y.min(), y.max() + 1e-9, bins + 1)
        ix = np.clip(np.searchsorted(x_edges, x, side="right") - 1, 0, bins - 1)
        iy = np.clip(np.searchsorted(y_edges, y, side="right") - 1, 0, bins - 1)
        counts = np.zeros((bins, bins), np.int64)
        np.add.at(counts, (ix, iy), 1)
        dis = self._disagreement()
        have = np.isfinite(dis)
        sums = np.zeros((bins, bins))
        n = np.zeros((bins, bins))
        np.add.at(sums, (ix[have], iy[have]), dis[have])
        np.add.at(n, (ix[have], iy[have]), 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n > 0, sums / n, np.nan)
        ids = pd.Index(self.embeddings.ids, name="id")
        hint = DensityHint(x_edges=x_edges, y_edges=y_edges, counts=counts, mean_disagreement=mean,
                           disagreement=pd.Series(dis, index=ids, name="modality_disagreement"),
                           region_count=pd.Series(counts[ix, iy], index=ids, name="region_count"),
                           prediction_spread=self._prediction_spread(ids))
        if bins == _HINT_BINS:
            self._hint = hint
        return hint

    def _prediction_spread(self, ids: pd.Index) -> pd.Series:
        out = pd.Series(np.nan, index=ids, name="prediction_spread")
        predictor = self.predictor
        if predictor is None:
            return out
        pred = predictor.lookup(ids.tolist())
        scale = pred["test_mae"].where(pred["test_mae"] > 0)
        pred = pred.assign(relative=pred["std"] / scale)
        spread = pred.groupby("id")["relative"].mean()
        return out.fillna(spread.reindex(ids)).rename("prediction_spread")

    def _disagreement(self) -> np.ndarray:
        e = self.embeddings
        n = len(e)
        total, pairs = np.zeros(n), np.zeros(n)
        mods = e.modalities
        for a in range(len(mods)):
            for b in range(a + 1, len(mods)):
                ra, rb = e.row_lookup(mods[a]), e.row_lookup(mods[b])
                both = np.flatnonzero((ra >= 0) & (rb >= 0))
                if len(both):
                    va = e.vectors[mods[a]][ra[both]].astype(np.float32)
                    vb = e.vectors[mods[b]][rb[both]].astype(np.float32)
                    total[both] += np.einsum("ij,ij->i", va, vb)
                    pairs[both] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(pairs > 0, 1.0 - total / np.maximum(pairs, 1), np.nan)

    # ---- search ------------------------------------------------------------------------------
    def query(self, dos: Any = None, density: Any = None, structure: Any = None, material_id: str | None = None,
              weights: Mapping[str, float] | None = None, filters: Filters | Mapping[str, Any] | None = None,
              k: int = 50, gallery: str = "crystal", exclude: Sequence[str] = (),
              inputs: Mapping[str, Any] | None = None) -> pd.DataFrame:
        """Rank materials by weighted similarity to one or more targets.

        Args:
            dos: a (601,) DOS on DOS_ENERGIES, or a drawn polyline as ``(x, y)`` / an (n, 2) array (resampled
                with ``resample_polyline``; its rules apply).
            density: a CHGCAR path or pymatgen ``VolumetricData`` (moved onto the crystal's canonical cell, as the
                store keeps densities: any cell setting, origin or supercell of the crystal gives the same
                query), a ``DensityData``, or a (32, 32, 32) grid already on the canonical cell.
            structure: a pymatgen Structure, a CIF/POSCAR path, or CIF text/bytes.
            material_id: a material of the store (its own embedding in the gallery modality is used when it
                has one, else its crystal, DOS or density embedding).
            weights: per target name ("dos", "density", "structure", "material_id", or a registered
                modality's target), >= 0; default equal.
            filters: a Filters (or its ``to_dict`` form) restricting the candidates.
            k: number of candidates (1..10000).
            gallery: which embedding represents a candidate: "crystal" (default), "dos", "density" or another
                registered modality.
            exclude: ids never returned (``neighbours`` excludes the material itself).
            inputs: array modality name -> one array of its spec's shape, for modalities registered beyond
                the built-in three (their own arguments above parse DOS and density inputs).

        Returns:
            one row per candidate, best first: rank, id, formula, source, score (weighted mean cosine),
            one ``sim_<target>`` per target, for a DOS target ``dos_mae_to_target`` (area-normalised DOS MAE
            to each candidate's stored DOS, 1/eV, NaN without one), map x/y, region_count and modality_disagreement (uncertainty
            hints), modality flags, the label columns that any candidate has, and ``labels``: each known
            label with its unit, level of theory and source. ``attrs["query"]`` records the query (for
            export), ``attrs["labels"]`` the label metadata.
        """
        galleries = _modalities.modality_names()
        if gallery not in galleries:
            raise ValueError(f"unknown gallery {gallery!r}; choose from {galleries}")
        if not 1 <= int(k) <= _MAX_K:
            raise ValueError(f"k must be in 1..{_MAX_K}, got {k}")
        targets: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}
        if dos is not None:
            arr, rec = self._dos_input(dos)
            targets["dos"] = (self._embed("dos", arr), {**rec, "curve": arr})
        if density is not None:
            arr = self._density_input(density)
            if arr.shape != (DENSITY_GRID,) * 3:
                raise ValueError(f"density must have shape {(DENSITY_GRID,) * 3}, got {arr.shape}")
            if not np.all(np.isfinite(arr)):
                raise ValueError("density contains NaN or infinite values")
            targets["density"] = (self._embed("density", arr), {
                "kind": "density", "shape": list(arr.shape), "sha256_float32": hashlib.sha256(arr.tobytes()).hexdigest()})
        if structure is not None:
            s = self._as_structure(structure)
            targets["structure"] = (self._embed("crystal", s), {"kind": "structure", "formula": s.composition.reduced_formula,
                                                                "cif": _cif_text(s)})
        for name, value in (inputs or {}).items():
            spec = _modalities.get(name)
            if spec.name in _modalities.MODALITIES or spec.kind != "array":
                raise ValueError(f"give {spec.target!r} as its own argument, not in inputs")
            arr = np.asarray(value, dtype=np.float32)
            if arr.shape != spec.shape or not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} must be a finite array of shape {spec.shape}, got {arr.shape}")
            targets[spec.target] = (self._embed(name, arr), {"kind": name, "values": arr.tolist()})
        if material_id is not None:
            vec, used = self._material_vector(str(material_id), gallery)
            targets["material_id"] = (vec, {"kind": "material_id", "id": str(material_id), "embedding": used})
        if not targets:
            raise ValueError("give at least one target: dos, density, structure or material_id")
        w = self._weights(weights, list(targets))
        active = [t for t in targets if w[t] > 0]
        fused = sum(w[t] * targets[t][0] for t in active) / sum(w[t] for t in active)

        flt = filters if isinstance(filters, Filters) or filters is None else Filters.from_dict(filters)
        rows_of = self.embeddings.rows[gallery] if gallery in self.embeddings.rows else np.zeros(0, np.int64)
        mask = np.ones(len(rows_of), dtype=bool)
        if flt is not None and not flt.is_empty:
            mask &= flt.mask(self.table, self._element_matrix())[rows_of]
        if exclude:
            mask &= ~np.isin(self.embeddings.ids[rows_of], np.asarray(list(exclude), dtype=str))
        index = self.index(gallery)
        scores, hits = index.search(fused, int(k), mask=None if mask.all() else mask)
        scores, hits = scores[0], hits[0]
        positions = rows_of[hits]
        cand = self.embeddings.vectors[gallery][hits].astype(np.float32)

        out = self._describe(positions)
        out.insert(0, "rank", np.arange(1, len(positions) + 1))
        out.insert(4, "score", scores.astype(np.float64))
        for j, t in enumerate(targets):
            out.insert(5 + j, _SIM_COLUMN.get(t, f"sim_{t}"), (cand @ targets[t][0]).astype(np.float64))
        if "dos" in targets:
            out.insert(5 + len(targets), "dos_mae_to_target", self._dos_mae_to_target(targets["dos"][1]["curve"], out))
        out.attrs["query"] = {
            "targets": [{k: v for k, v in targets[t][1].items() if k != "curve"} for t in targets],
            "weights": {t: w[t] for t in targets},
            "filters": None if flt is None else flt.to_dict(),
            "k": int(k), "gallery": gallery, "exclude": [str(e) for e in exclude],
            "score": "weighted mean of cosine similarities between each target and the candidate's "
                     f"{gallery} embedding",
            "checkpoint_sha256": self.manifest["checkpoint"]["sha256"],
            "embeddings_sha256": self.manifest.get("files", {}).get("embeddings.npz"),
            "store_shards": self.manifest["store"].get("shards"),
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        out.attrs["labels"] = label_metadata(out.columns)
        return out

    def _dos_mae_to_target(self, target: np.ndarray, candidates: pd.DataFrame) -> np.ndarray:
        """Area-normalised DOS MAE (1/eV, -5..5 eV; ``dft.validate.dos_mae``) between the target and each
        candidate's stored DOS; NaN where a candidate has none (or either curve has no area there)."""
        from mlcm_core.dft.validate import dos_mae

        out = np.full(len(candidates), np.nan)
        have = np.flatnonzero(candidates["has_dos"].to_numpy())
        if not len(have):
            return out
        curves = self.store.dos(candidates["id"].to_numpy()[have].tolist())
        for j, curve in zip(have, curves, strict=True):
            try:
                out[j] = dos_mae(np.asarray(target, float), curve.astype(float))
            except ValueError:
                pass
        return out

    def neighbours(self, material_id: str, k: int = 10, gallery: str = "crystal") -> pd.DataFrame:
        """The k materials most similar to a stored one (itself excluded)."""
        return self.query(material_id=material_id, k=k, gallery=gallery, exclude=[material_id])

    def export(self, candidates: pd.DataFrame, path: str | Path, formats: Sequence[str] = EXPORT_FORMATS,
               query: Mapping[str, Any] | None = None) -> dict[str, Path]:
        """Write candidates (+ the query, + CIFs) under ``export_root``; paths leaving it are refused."""
        return export_candidates(candidates, self.export_root, path, formats=formats, query=query,
                                 structure_of=self._structure_or_none)

    # ---- helpers -------------------------------------------------------------------------------
    def _describe(self, positions: np.ndarray) -> pd.DataFrame:
        t = self.table.iloc[positions]
        hint = self.density_hint()
        cols = ["id", "formula", "source"]
        out = t[cols].reset_index(drop=True)
        out["x"], out["y"] = t["x"].to_numpy(), t["y"].to_numpy()
        out["placed_by"] = t["placed_by"].to_numpy()
        out["region_count"] = hint.region_count.to_numpy()[positions]
        out["modality_disagreement"] = hint.disagreement.to_numpy()[positions]
        out["prediction_spread"] = hint.prediction_spread.to_numpy()[positions]
        for c in dict.fromkeys(s.store_flag for s in _modalities.specs()):
            out[c] = t[c].fillna(False).astype(bool).to_numpy()
        out["elements"] = ["-".join(e) if e is not None and not isinstance(e, float) else None for e in t["elements"]]
        for c in ("spacegroup_symbol", "nsites"):
            if c in t:
                out[c] = t[c].to_numpy()
        labels = [c for c in LABELS if c in t.columns and t[c].notna().any()]
        for c in labels:
            out[c] = pd.to_numeric(t[c], errors="coerce").to_numpy()
        out["labels"] = [_label_text(row, labels) for row in t[labels].itertuples(index=False)] if labels else ""
        predictor = self.predictor
        if predictor is not None:
            pred = predictor.lookup(out["id"].tolist())
            for name in predictor.target_names:
                p = pred[pred["target"] == name].set_index("id")
                out[f"pred_{name}"] = p["mean"].reindex(out["id"]).to_numpy()
                out[f"pred_{name}_std"] = p["std"].reindex(out["id"]).to_numpy()
        return out

    def _weights(self, weights: Mapping[str, float] | None, names: list[str]) -> dict[str, float]:
        if weights is None:
            return {t: 1.0 for t in names}
        unknown = set(weights) - set(_targets())
        if unknown:
            raise ValueError(f"unknown weight keys {sorted(unknown)}; choose from {_targets()}")
        absent = set(weights) - set(names)
        if absent:
            raise ValueError(f"weights given for targets not in the query: {sorted(absent)}")
        w = {t: float(weights.get(t, 1.0)) for t in names}
        if any(not math.isfinite(v) or v < 0 for v in w.values()):
            raise ValueError(f"weights must be finite and >= 0, got {w}")
        if sum(w.values()) <= 0:
            raise ValueError("at least one weight must be positive")
        return w

    def _embed(self, modality: str, inputs: Any) -> np.ndarray:
        z = self.model.embed(modality, inputs).cpu().numpy().astype(np.float32)[0]
        return z / max(float(np.linalg.norm(z)), 1e-12)

    def _material_vector(self, material_id: str, gallery: str) -> tuple[np.ndarray, str]:
        self.embeddings.position(material_id)  # KeyError with a clear message if unknown
        for m in (gallery, *_modalities.modality_names()):
            v = self.embeddings.get(material_id, m)
            if v is not None:
                return v / max(float(np.linalg.norm(v)), 1e-12), m
        raise KeyError(f"material {material_id!r} has no embedding")

    @staticmethod
    def _density_input(density: Any) -> np.ndarray:
        from pymatgen.io.vasp import VolumetricData

        from mlcm_core.data.record import DensityData
        from mlcm_core.data.sources.vasp import density_from_chgcar, density_from_volumetric

        if isinstance(density, (str, Path)):
            density = density_from_chgcar(density)
        elif isinstance(density, VolumetricData):
            density = density_from_volumetric(density)
        return np.asarray(density.grid if isinstance(density, DensityData) else density, dtype=np.float32)

    @staticmethod
    def _dos_input(dos: Any) -> tuple[np.ndarray, dict[str, Any]]:
        if isinstance(dos, tuple) and len(dos) == 2:
            x, y = dos
            arr = resample_polyline(x, y)
            return arr, {"kind": "dos", "drawn_polyline": {"x": np.asarray(x, float).tolist(),
                                                           "y": np.asarray(y, float).tolist()}}
        arr = np.asarray(dos, dtype=np.float64)
        if arr.ndim == 2 and arr.shape[1] == 2 and arr.shape[0] != DOS_N_POINTS:
            res = resample_polyline(arr[:, 0], arr[:, 1])
            return res, {"kind": "dos", "drawn_polyline": {"x": arr[:, 0].tolist(), "y": arr[:, 1].tolist()}}
        if arr.shape != (DOS_N_POINTS,):
            raise ValueError(f"dos must be a ({DOS_N_POINTS},) curve on DOS_ENERGIES or a drawn polyline (x, y); "
                             f"got shape {arr.shape}")
        arr = target_dos(DOS_ENERGIES, arr)
        return arr, {"kind": "dos", "values": [float(f"{v:.6g}") for v in arr]}

    @staticmethod
    def _as_structure(obj: Any) -> Structure:
        from pymatgen.core import Structure

        from mlcm_core.data.sources.structure_files import StructureFileError, read_structure_file

        if isinstance(obj, Structure):
            if not obj.is_ordered:
                raise StructureFileError("structure has partial occupancies; only ordered structures are supported")
            if len(obj) == 0:
                raise StructureFileError("structure has no atoms")
            return obj
        if isinstance(obj, (bytes, bytearray)) or (isinstance(obj, str) and "\n" in obj):
            data = obj.encode("utf-8") if isinstance(obj, str) else bytes(obj)
            with tempfile.TemporaryDirectory() as d:
                path = Path(d) / "upload.cif"
                path.write_bytes(data)
                return read_structure_file(path).structure
        if isinstance(obj, (str, os.PathLike)):
            return read_structure_file(obj).structure
        raise TypeError(f"expected a Structure, a structure file path or CIF text, got {type(obj).__name__}")

    def _structure_or_none(self, material_id: str) -> Structure | None:
        try:
            return self.store.structure(material_id)
        except KeyError:
            return None


def _label_text(row: tuple, labels: list[str]) -> str:
    parts = []
    for c, v in zip(labels, row):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        spec = LABELS[c]
        parts.append(f"{spec.quantity} = {float(v):.4g} {spec.unit} [{spec.theory}; {spec.source}]")
    return "; ".join(parts)


def _cif_text(structure: Structure) -> str:
    from pymatgen.io.cif import CifWriter

    return str(CifWriter(structure))
