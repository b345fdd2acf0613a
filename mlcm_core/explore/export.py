"""Writing candidate lists to CSV, JSON and a zip of CIFs, always with the query that produced them.

Why the query travels with the file: a candidate list without its query (targets, weights, filters,
model checkpoint) cannot be reproduced or judged later. Every format records it:

* CSV: the first line is ``# mlcm-export v1 <JSON header>`` (query, label metadata), then a normal CSV;
  ``read_export`` parses both parts.
* JSON: ``{"format", "query", "labels", "candidates": [...]}`` with each candidate's labels given with
  their unit, level of theory and source.
* CIF zip: one ``<id>.cif`` per candidate that has a structure plus ``query.json`` (query, candidate
  table, and the ids left out for lacking a structure).

Why the path checks: export names come from users (the app's text box). A name is resolved inside an
export root folder; absolute paths elsewhere, ``..`` and symlinks that lead outside the root are refused,
as are zip entry names that could escape on extraction (ids are reduced to ``[A-Za-z0-9._-]``). Every
file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import math
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mlcm_core.data.conventions import LABELS
from mlcm_core.io import atomic_write_bytes

if TYPE_CHECKING:
    from pymatgen.core import Structure

__all__ = ["EXPORT_FORMATS", "ExportPathError", "export_candidates", "read_export", "resolve_export_path", "safe_name"]

EXPORT_FORMATS = ("csv", "json", "cif_zip")
_SUFFIX = {"csv": ".csv", "json": ".json", "cif_zip": ".cif.zip"}
_CSV_MAGIC = "# mlcm-export v1 "


class ExportPathError(ValueError):
    """An export path that would leave the export folder (or is otherwise unusable)."""


def resolve_export_path(root: str | Path, path: str | Path) -> Path:
    """``path`` resolved inside ``root``; refuses anything that would end up outside it.

    Relative paths are taken relative to ``root``; an absolute path is accepted only if it lies inside
    ``root``. ``..`` components and symlinks are resolved before the check.
    """
    root = Path(root).resolve()
    p = Path(path)
    if str(path).strip() in ("", ".") or p.name in ("", ".", ".."):
        raise ExportPathError(f"invalid export name {str(path)!r}")
    target = (p if p.is_absolute() else root / p).resolve()
    if target == root or not target.is_relative_to(root):
        raise ExportPathError(f"export path {str(path)!r} is outside the export folder {root}")
    return target


def safe_name(text: str) -> str:
    """A file/zip-entry name made of [A-Za-z0-9._-] only, never empty or dot-only."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._") or "material"
    return name[:120]


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.floating, float)):
        return None if not math.isfinite(float(v)) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.ndarray):
        return [_jsonable(x) for x in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if v is pd.NA or v is None:
        return None
    return v


def label_metadata(columns: Sequence[str]) -> dict[str, dict[str, str]]:
    """{label column: quantity, unit, theory, source} for the label columns among ``columns``."""
    return {c: dict(LABELS[c].__dict__) for c in columns if c in LABELS}


def _records(candidates: pd.DataFrame) -> list[dict[str, Any]]:
    labels = [c for c in candidates.columns if c in LABELS]
    out = []
    for row in candidates.to_dict(orient="records"):
        rec = {k: _jsonable(v) for k, v in row.items() if k not in labels}
        rec["labels"] = {c: {"value": _jsonable(row[c]), **LABELS[c].__dict__} for c in labels
                         if row[c] is not None and not (isinstance(row[c], float) and math.isnan(row[c]))}
        out.append(rec)
    return out


def export_candidates(
    candidates: pd.DataFrame,
    root: str | Path,
    path: str | Path,
    *,
    formats: Sequence[str] = EXPORT_FORMATS,
    query: Mapping[str, Any] | None = None,
    structure_of: Callable[[str], Structure | None] | None = None,
) -> dict[str, Path]:
    """Write ``candidates`` as ``<path>.csv``, ``<path>.json`` and/or ``<path>.cif.zip`` inside ``root``.

    Args:
        candidates: a query result (``Explorer.query``); must have an ``id`` column.
        root: the export folder; nothing is written outside it.
        path: name (may contain sub-folders) relative to ``root``.
        formats: any of "csv", "json", "cif_zip".
        query: the query description; defaults to ``candidates.attrs["query"]``; required.
        structure_of: id -> Structure (or None) for the CIF zip.

    Returns:
        {format: written path}.
    """
    unknown = set(formats) - set(EXPORT_FORMATS)
    if unknown or not formats:
        raise ValueError(f"unknown export formats {sorted(unknown)}; choose from {EXPORT_FORMATS}")
    if "id" not in candidates.columns:
        raise ValueError("candidates need an 'id' column")
    query = query if query is not None else candidates.attrs.get("query")
    if query is None:
        raise ValueError("the query that produced these candidates must be recorded: pass query=... "
                         "(Explorer.query results carry it in .attrs['query'])")
    base = resolve_export_path(root, path)
    base.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": "mlcm-candidates", "version": 1,
              "exported": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
              "query": _jsonable(dict(query)), "labels": label_metadata(candidates.columns)}
    written: dict[str, Path] = {}
    if "csv" in formats:
        target = base.with_name(base.name + _SUFFIX["csv"])
        flat = candidates.copy()
        for c in flat.columns:  # list/array cells (e.g. elements) as JSON text
            if flat[c].dtype == object:
                flat[c] = [json.dumps(_jsonable(v)) if isinstance(v, (list, tuple, np.ndarray, dict)) else v
                           for v in flat[c]]
        text = _CSV_MAGIC + json.dumps(header, separators=(",", ":")) + "\n" + flat.to_csv(index=False)
        atomic_write_bytes(target, text.encode("utf-8"))
        written["csv"] = target
    if "json" in formats:
        target = base.with_name(base.name + _SUFFIX["json"])
        doc = {**header, "candidates": _records(candidates)}
        data = json.dumps(doc, indent=1, allow_nan=False).encode("utf-8")
        atomic_write_bytes(target, data)
        written["json"] = target
    if "cif_zip" in formats:
        if structure_of is None:
            raise ValueError("cif_zip export needs structure_of (id -> Structure)")
        target = base.with_name(base.name + _SUFFIX["cif_zip"])
        atomic_write_bytes(target, _cif_zip(candidates, header, structure_of))
        written["cif_zip"] = target
    return written


def _cif_zip(candidates: pd.DataFrame, header: dict[str, Any], structure_of: Callable[[str], Any]) -> bytes:
    from pymatgen.io.cif import CifWriter

    buf = io.BytesIO()
    used: set[str] = set()
    files: dict[str, str] = {}
    missing: list[str] = []
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for mid in candidates["id"].astype(str):
            structure = structure_of(mid)
            if structure is None:
                missing.append(mid)
                continue
            name, k = safe_name(mid), 1
            while name in used:
                k += 1
                name = f"{safe_name(mid)}-{k}"
            used.add(name)
            zf.writestr(f"{name}.cif", str(CifWriter(structure)))
            files[mid] = f"{name}.cif"
        doc = {**header, "files": files, "without_structure": missing, "candidates": _records(candidates)}
        zf.writestr("query.json", json.dumps(doc, indent=1, allow_nan=False))
    return buf.getvalue()


def read_export(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read back a CSV, JSON or CIF-zip export: (candidate table, header with the query)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".cif.zip"):
        with zipfile.ZipFile(path) as zf:
            doc = json.loads(zf.read("query.json"))
        return _from_records(doc.pop("candidates")), doc
    if name.endswith(".json"):
        doc = json.loads(path.read_text(encoding="utf-8"))
        return _from_records(doc.pop("candidates")), doc
    if name.endswith(".csv"):
        with open(path, encoding="utf-8") as f:
            first = f.readline()
            if not first.startswith(_CSV_MAGIC):
                raise ValueError(f"{path} is not an MLCM export (no header line)")
            header = json.loads(first[len(_CSV_MAGIC):])
            table = pd.read_csv(f)
        return table, header
    raise ValueError(f"{path}: unknown export type (expected .csv, .json or .cif.zip)")


def _from_records(records: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for rec in records:
        rec = dict(rec)
        labels = rec.pop("labels", {}) or {}
        rec.update({c: v.get("value") for c, v in labels.items()})
        rows.append(rec)
    return pd.DataFrame(rows)
