"""The on-disk multimodal dataset: a Parquet table per shard, compressed arrays, a checksummed manifest.

Layout of a store directory::

    manifest.json                       schema version, counts, shards with SHA-256 of every file
    shards/<name>/materials.parquet     one row per material in this shard
    shards/<name>/arrays.zarr.zip       dos (n, 601) f16, dos_spin (m, 2, 601) f16, density (k, 32, 32, 32) u8

The store only ever grows by new shards (append-only), so a corpus that grows over months never
rewrites a committed binary. A material id may appear in several shards: a later shard adds modalities
or labels to it (e.g. a GPAW DOS for an MP structure); `table` merges them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mlcm_core.data.conventions import (
    DENSITY_GRID,
    DOS_N_POINTS,
    LABELS,
    dequantize_density,
    quantize_density,
)
from mlcm_core.data.record import MaterialRecord
from mlcm_core.io import ChecksumError as _ChecksumError
from mlcm_core.io import atomic_write_text as _atomic_write_text
from mlcm_core.io import file_digests, sha256_file, staged_dir, verify_files

if TYPE_CHECKING:
    from pymatgen.core import Structure

__all__ = ["SCHEMA_VERSION", "ChecksumError", "DatasetStore", "StoreError", "sha256_file"]

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TABLE_FILE = "materials.parquet"
ARRAYS_FILE = "arrays.zarr.zip"
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # train, validation, test, by de-duplicated group

_BASE_COLUMNS = ["source", "formula", "elements", "nsites", "volume", "spacegroup_number",
                 "spacegroup_symbol", "crystal_system", "structure_json", "provenance"]
_DOS_COLUMNS = ["dos_row", "dos_spin_row", "dos_reference", "dos_band_gap", "dos_theory",
                "dos_broadening", "dos_convention", "dos_source"]
_DENSITY_COLUMNS = ["density_row", "density_units", "density_theory", "density_convention",
                    "density_integral", "density_softness", "density_t_min", "density_t_max", "density_source",
                    "density_lattice"]  # JSON 3x3 (Å) of the cell the grid lives on; null if unknown


class StoreError(RuntimeError):
    """The store is missing, malformed or inconsistent."""


class ChecksumError(StoreError, _ChecksumError):
    """A file listed in the manifest is missing or its SHA-256 differs (also an ``mlcm_core.io.ChecksumError``)."""


def split_of_group(group: str, seed: int) -> str:
    """Deterministic split of a de-duplication group: stable as the corpus grows."""
    u = int(hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()[:12], 16) / 16**12
    train, val, _ = SPLIT_FRACTIONS
    return "train" if u < train else ("val" if u < train + val else "test")


@dataclass(frozen=True)
class _StructureInfo:
    formula: str
    elements: list[str]
    nsites: int
    volume: float
    spacegroup_number: int | None
    spacegroup_symbol: str | None
    crystal_system: str | None
    structure_json: str


def _structure_info(structure: Structure) -> _StructureInfo:
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        sga = SpacegroupAnalyzer(structure, symprec=0.1)
        number, symbol, system = sga.get_space_group_number(), sga.get_space_group_symbol(), sga.get_crystal_system()
    except Exception:  # noqa: BLE001 - spglib fails on some pathological cells; the material stays usable
        number, symbol, system = None, None, None
    return _StructureInfo(
        formula=structure.composition.reduced_formula,
        elements=sorted({el.symbol for el in structure.composition.elements}),
        nsites=len(structure),
        volume=float(structure.volume),
        spacegroup_number=number,
        spacegroup_symbol=symbol,
        crystal_system=system,
        structure_json=json.dumps(structure.as_dict(), separators=(",", ":")),
    )


def _rows_and_arrays(records: Sequence[MaterialRecord], shard: str, progress: bool) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    from tqdm.auto import tqdm

    rows: list[dict[str, Any]] = []
    dos, dos_spin, density = [], [], []
    for rec in tqdm(records, desc=f"shard {shard}", disable=not progress, unit="mat"):
        row: dict[str, Any] = {"id": rec.id, "source": rec.source, "provenance": rec.provenance, "shard": shard,
                               "formula": rec.formula, "has_structure": rec.structure is not None,
                               "has_dos": rec.dos is not None, "has_charge_density": rec.density is not None}
        if rec.structure is not None:
            row.update(_structure_info(rec.structure).__dict__)
        row.update({name: float(v) for name, v in rec.labels.items()})
        if rec.dos is not None:
            row.update(dos_row=len(dos), dos_spin_row=-1, dos_reference=rec.dos.reference,
                       dos_band_gap=rec.dos.band_gap, dos_theory=rec.dos.theory,
                       dos_broadening=rec.dos.broadening, dos_convention=rec.dos.convention, dos_source=rec.source)
            dos.append(rec.dos.total.astype(np.float16))
            if rec.dos.spin is not None:
                row["dos_spin_row"] = len(dos_spin)
                dos_spin.append(rec.dos.spin.astype(np.float16))
        if rec.density is not None:
            qd = quantize_density(rec.density.grid)
            row.update(density_row=len(density), density_units=rec.density.units, density_theory=rec.density.theory,
                       density_convention=rec.density.convention, density_integral=rec.density.integral,
                       density_softness=qd.softness, density_t_min=qd.t_min, density_t_max=qd.t_max,
                       density_source=rec.source,
                       density_lattice=None if rec.density.lattice is None else json.dumps(rec.density.lattice.tolist()))
            density.append(qd.q)
        rows.append(row)
    table = pd.DataFrame(rows)
    for col in ["dos_row", "dos_spin_row", "density_row"]:
        table[col] = table[col].fillna(-1).astype("int32") if col in table else np.int32(-1)
    for col in [*_BASE_COLUMNS, *_DOS_COLUMNS, *_DENSITY_COLUMNS, *LABELS]:
        if col not in table:
            table[col] = None
    arrays = {
        "dos": np.stack(dos) if dos else np.zeros((0, DOS_N_POINTS), np.float16),
        "dos_spin": np.stack(dos_spin) if dos_spin else np.zeros((0, 2, DOS_N_POINTS), np.float16),
        "density": np.stack(density) if density else np.zeros((0,) + (DENSITY_GRID,) * 3, np.uint8),
    }
    return table, arrays


def _write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    import zarr

    store = zarr.storage.ZipStore(path, mode="w")
    try:
        root = zarr.group(store=store)
        for name, arr in arrays.items():
            chunks = (1, *arr.shape[1:]) if name == "density" else (max(1, min(len(arr), 256)), *arr.shape[1:])
            z = root.create_array(name, shape=arr.shape, chunks=chunks, dtype=arr.dtype)
            if len(arr):
                z[:] = arr
    finally:
        store.close()


class DatasetStore:
    """A multimodal dataset on disk; arrays load lazily, chunk by chunk."""

    def __init__(self, root: Path, manifest: dict[str, Any]):
        self.root = Path(root)
        self.manifest = manifest
        self._arrays: dict[str, Any] = {}

    # ---- opening -------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, split_seed: int = 42, description: str = "") -> DatasetStore:
        root = Path(root)
        if (root / MANIFEST).exists():
            raise StoreError(f"{root} already holds a dataset store")
        (root / "shards").mkdir(parents=True, exist_ok=True)
        manifest = {"schema_version": SCHEMA_VERSION, "description": description, "split_seed": split_seed,
                    "split_fractions": dict(zip(["train", "val", "test"], SPLIT_FRACTIONS)),
                    "conventions": _conventions_summary(), "labels": {k: v.__dict__ for k, v in LABELS.items()},
                    "shards": [], "counts": {}}
        _atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=1))
        return cls(root, manifest)

    @classmethod
    def open(cls, root: str | Path, verify: bool = True, shards: int | None = None) -> DatasetStore:
        """Open a store; with verify, every file's SHA-256 is checked against the manifest.

        ``shards``: the store as it was after its first ``shards`` shards (append-only, so exactly what a
        result computed then saw; e.g. a report whose densities were replaced by a later shard). Read-only.
        """
        root = Path(root)
        path = root / MANIFEST
        if not path.exists():
            raise StoreError(f"no dataset store at {root} (missing {MANIFEST})")
        try:
            manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StoreError(f"{path} is not valid JSON: {e}") from e
        if not isinstance(manifest, dict):
            raise StoreError(f"{path}: not a store manifest (a JSON object is expected)")
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(f"{path}: schema version {manifest.get('schema_version')!r} != {SCHEMA_VERSION}")
        _check_manifest_layout(path, manifest)
        if shards is not None:
            if not 0 < shards <= len(manifest["shards"]):
                raise StoreError(f"{root} has {len(manifest['shards'])} shards, cannot open the first {shards}")
            manifest = {**manifest, "shards": manifest["shards"][:shards], "read_only": True}
        store = cls(root, manifest)
        if verify:
            store.verify()
        return store

    def verify(self) -> None:
        """Raise ChecksumError naming the first file whose content differs from the manifest."""
        for shard in self.manifest["shards"]:
            verify_files(self.root, shard["files"], listed_in="the manifest", error=ChecksumError)

    # ---- writing -------------------------------------------------------------------------------
    def append(self, records: Iterable[MaterialRecord], shard_name: str, provenance: dict[str, str],
               progress: bool = False) -> str:
        """Write records as a new shard (temp dir + rename, then the manifest atomically)."""
        records = list(records)
        if self.manifest.get("read_only"):
            raise StoreError("this store was opened as of an earlier shard (read-only): open it whole to append")
        if not records:
            raise StoreError("no records to append")
        if any(s["name"] == shard_name for s in self.manifest["shards"]):
            raise StoreError(f"shard {shard_name!r} already exists; shards are append-only")
        ids = [r.id for r in records]
        if len(set(ids)) != len(ids):
            dup = pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]
            raise StoreError(f"duplicate id {dup!r} within one shard")
        table, arrays = _rows_and_arrays(records, shard_name, progress)
        self._assign_groups(table, records, progress)
        with staged_dir(self.root / "shards" / shard_name) as tmp:
            table.to_parquet(tmp / TABLE_FILE, compression="zstd", index=False)
            files = [TABLE_FILE]
            if any(len(a) for a in arrays.values()):
                _write_arrays(tmp / ARRAYS_FILE, arrays)
                files.append(ARRAYS_FILE)
            digests = {f"shards/{shard_name}/{f}": d for f, d in file_digests(tmp, files).items()}
        self.manifest["shards"].append({
            "name": shard_name, "n_rows": len(table), "files": digests, "provenance": provenance,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        })
        self.__dict__.pop("table", None)
        self.__dict__.pop("_indexed", None)
        self._arrays.clear()
        self.manifest["labels"] = {k: v.__dict__ for k, v in LABELS.items()}  # the registry only grows
        self.manifest["counts"] = self.info()
        _atomic_write_text(self.root / MANIFEST, json.dumps(self.manifest, indent=1))
        return shard_name

    def _assign_groups(self, table: pd.DataFrame, records: Sequence[MaterialRecord], progress: bool) -> None:
        """De-duplicate against the store and within the batch; a group's split is a hash of its id."""
        from mlcm_core.data.split import assign_dedup_groups

        existing: dict[str, tuple[str, Structure]] = {}
        if self.manifest["shards"]:
            old = self.table
            known = dict(zip(old["id"], old["dedup_group"]))
            new_ids = set(table["id"])
            formulas = set(table["formula"].dropna())
            cand = old[old["formula"].isin(formulas) & old["has_structure"] & ~old["id"].isin(new_ids)]
            existing = {r.id: (r.dedup_group, (r.formula, _sg(r.spacegroup_number)), self.structure(r.id))
                        for r in cand.itertuples()}
        else:
            known = {}
        keys = dict(zip(table["id"], zip(table["formula"], table["spacegroup_number"].map(_sg))))
        structures = {r.id: (keys[r.id], r.structure) for r in records if r.structure is not None and r.id not in known}
        groups = assign_dedup_groups(structures, existing, progress=progress)
        table["dedup_group"] = [known.get(i) or groups.get(i, i) for i in table["id"]]
        table["split"] = [split_of_group(g, self.manifest["split_seed"]) for g in table["dedup_group"]]

    # ---- reading -------------------------------------------------------------------------------
    @cached_property
    def table(self) -> pd.DataFrame:
        """All materials, one row per id; later shards add modalities and labels to earlier ids.

        The shards are concatenated by pyarrow (a column a shard lacks is null there), then converted once:
        4x faster than ``pd.concat`` of per-shard frames (0.3 vs 1.3 s for 18k rows), which sits in the app's
        cold start. Integer columns with nulls stay object columns of Python ints, as pandas read them before.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        parts = [pq.read_table(self.root / "shards" / s["name"] / TABLE_FILE) for s in self.manifest["shards"]]
        if not parts:
            return pd.DataFrame(columns=["id", *_BASE_COLUMNS, *LABELS])
        # a column that is all null in one shard may have been written as float there and as text elsewhere
        for k, t in enumerate(parts):
            for i, f in enumerate(t.schema):
                if t.num_rows and t.column(i).null_count == t.num_rows and not pa.types.is_null(f.type):
                    t = t.set_column(i, f.name, pa.nulls(t.num_rows))
            parts[k] = t
        joined = pa.concat_tables(parts, promote_options="permissive")
        df = joined.to_pandas()
        for f in joined.schema:
            if pa.types.is_integer(f.type) and joined.column(f.name).null_count:
                df[f.name] = pd.Series(joined.column(f.name).to_pylist(), dtype=object)
        for col in _DENSITY_COLUMNS:  # shards written before a column existed
            if col not in df:
                df[col] = None
        if not df["id"].duplicated().any():
            return df
        return _merge_duplicates(df)

    def _zarr(self, shard: str) -> Any:
        if shard not in self._arrays:
            import zarr

            path = self.root / "shards" / shard / ARRAYS_FILE
            self._arrays[shard] = zarr.open_group(zarr.storage.ZipStore(path, mode="r"), mode="r")
        return self._arrays[shard]

    @cached_property
    def _indexed(self) -> pd.DataFrame:
        return self.table.set_index("id")

    def _rows(self, ids: Sequence[str] | str, column: str) -> pd.DataFrame:
        ids = [ids] if isinstance(ids, str) else list(ids)
        t = self._indexed
        missing = [i for i in ids if i not in t.index]
        if missing:
            raise KeyError(f"unknown material ids: {missing[:5]}")
        sub = t.loc[ids]
        lacking = sub.index[sub[column] < 0].tolist()
        if lacking:
            raise KeyError(f"materials without this modality: {lacking[:5]}")
        return sub

    def _gather(self, sub: pd.DataFrame, array: str, row_col: str, shard_col: str) -> np.ndarray:
        """Rows of one array across shards, one orthogonal (chunk-aware) read per shard."""
        shards = sub[shard_col] if shard_col in sub else sub["shard"]
        rows = sub[row_col].to_numpy()
        out = None
        for shard in pd.unique(shards):
            where = np.flatnonzero((shards == shard).to_numpy())
            block = self._zarr(shard)[array].oindex[rows[where].astype(np.int64)]
            if out is None:
                out = np.empty((len(sub), *block.shape[1:]), block.dtype)
            out[where] = block
        return out

    def dos(self, ids: Sequence[str] | str) -> np.ndarray:
        """Total DOS, (n, 601) float32 states/eV per cell on conventions.DOS_ENERGIES."""
        sub = self._rows(ids, "dos_row")
        return self._gather(sub, "dos", "dos_row", "dos_source_shard").astype(np.float32)

    def dos_spin(self, material_id: str) -> np.ndarray | None:
        """(2, 601) spin channels, or None when the calculation was not spin-polarized."""
        sub = self._rows(material_id, "dos_row")
        if sub["dos_spin_row"].iloc[0] < 0:
            return None
        return self._gather(sub, "dos_spin", "dos_spin_row", "dos_source_shard")[0].astype(np.float32)

    def density(self, ids: Sequence[str] | str) -> np.ndarray:
        """Charge density (n, 32, 32, 32) float32 in each row's density_units."""
        sub = self._rows(ids, "density_row")
        q = self._gather(sub, "density", "density_row", "density_source_shard")
        out = np.empty(q.shape, np.float32)
        for k, r in enumerate(sub.itertuples()):
            out[k] = dequantize_density(q[k], r.density_softness, r.density_t_min, r.density_t_max)
        return out

    def structure(self, material_id: str) -> Structure:
        from pymatgen.core import Structure

        if material_id not in self._indexed.index:
            raise KeyError(f"unknown material id {material_id!r}")
        text = self._indexed.at[material_id, "structure_json"]
        if not isinstance(text, str):
            raise KeyError(f"{material_id} has no structure")
        doc = json.loads(text)
        if _names_python_objects(doc.get("sites")):  # pymatgen decodes site properties with MontyDecoder
            raise StoreError(f"{material_id}: its structure JSON names Python objects (@module/@callable in its "
                             "sites); refusing to decode it")
        return Structure.from_dict(doc)

    def info(self) -> dict[str, Any]:
        """Counts per modality, all three, label coverage: what `mlcm data info` prints."""
        t = self.table
        if t.empty:
            return {"materials": 0, "modalities": {"structure": 0, "dos": 0, "charge_density": 0}, "all_three": 0, "labels": {}}
        s, d, c = t["has_structure"].astype(bool), t["has_dos"].astype(bool), t["has_charge_density"].astype(bool)
        return {
            "materials": len(t),
            "modalities": {"structure": int(s.sum()), "dos": int(d.sum()), "charge_density": int(c.sum())},
            "all_three": int((s & d & c).sum()),
            "labels": {k: int(t[k].notna().sum()) for k in LABELS if k in t and t[k].notna().any()},
            "sources": {k: int(v) for k, v in t["source"].value_counts().items()},
            "splits": {k: int(v) for k, v in t["split"].value_counts().items()},
            "shards": len(self.manifest["shards"]),
        }


def _check_manifest_layout(path: Path, manifest: dict[str, Any]) -> None:
    """Shards as a list of {name, files: {shards/<name>/<file>: sha256}}; no path may leave the store."""
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise StoreError(f"{path}: 'shards' must be a list")
    for k, shard in enumerate(shards):
        name = shard.get("name") if isinstance(shard, dict) else None
        if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
            raise StoreError(f"{path}: shard {k} has no valid name (a plain folder name is expected)")
        files = shard.get("files")
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise StoreError(f"{path}: shard {name!r} must list its files as {{path: sha256}}")
        for rel in files:
            parts = Path(rel).parts
            if len(parts) != 3 or parts[:2] != ("shards", name) or parts[2] in (".", ".."):
                raise StoreError(f"{path}: shard {name!r} lists {rel!r}, outside shards/{name}/")


def _names_python_objects(value: Any) -> bool:
    """True if a JSON value holds MontyDecoder references ({"@module": ...}), which import modules on decoding."""
    if isinstance(value, dict):
        return "@module" in value or "@callable" in value or any(_names_python_objects(v) for v in value.values())
    if isinstance(value, list):
        return any(_names_python_objects(v) for v in value)
    return False


def _sg(number: Any) -> int:
    return 0 if number is None or pd.isna(number) else int(number)


def _merge_duplicates(df: pd.DataFrame) -> pd.DataFrame:
    """Merge rows sharing an id: base fields from the first shard, modalities and labels from the latest."""
    df = df.copy()
    df["dos_source_shard"] = df["shard"].where(df["has_dos"].astype(bool))
    df["density_source_shard"] = df["shard"].where(df["has_charge_density"].astype(bool))
    first = df.groupby("id", sort=False).first()  # first non-null per column, in shard order
    labels = [c for c in LABELS if c in df]
    if labels:
        first[labels] = df.groupby("id", sort=False)[labels].last()
    for flag, cols in [("has_dos", _DOS_COLUMNS + ["dos_source_shard"]),
                       ("has_charge_density", _DENSITY_COLUMNS + ["density_source_shard"])]:
        latest = df[df[flag].astype(bool)].groupby("id", sort=False).tail(1).set_index("id")
        first[flag] = False
        first.loc[latest.index, flag] = True
        first.loc[latest.index, cols] = latest[cols]
        first.loc[~first[flag], cols[0]] = -1
    first["has_structure"] = df.groupby("id", sort=False)["has_structure"].any()
    for col in ["dos_row", "dos_spin_row", "density_row"]:
        first[col] = first[col].fillna(-1).astype("int32")
    return first.reset_index()


def _conventions_summary() -> dict[str, Any]:
    from mlcm_core.data import conventions as c

    return {
        "dos": {"energies_ev": [c.DOS_E_MIN, c.DOS_E_MAX, c.DOS_N_POINTS],
                "zero": f"VBM when the gap > {c.GAP_THRESHOLD_EV} eV, else E_F",
                "units": "states/eV per cell (total over spins); nsites stored for per-atom"},
        "density": {"grid": [c.DENSITY_GRID] * 3, "axes": "fractional coordinates of the cell, index (a, b, c)",
                    "storage": "uint8 of asinh(rho/s), s = 0.01 max|rho|, per-material t_min/t_max in the table"},
    }
