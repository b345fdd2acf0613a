"""What the dashboard reads, opened once per server process (``pn.cache``): the dataset store, the Explorer,
the map frame, its layers and clusters, and the tables the views index by id; plus the names a person reads
for the app's own table columns.

Everything comes from the public mlcm_core API (``load_dataset``, ``Explorer``, ``data.conventions``). Nothing
here imports torch, umap or crystal_toolkit at module level: the Explorer loads its model on the first query.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import panel as pn

from app.logs import log
from mlcm_core import load_dataset
from mlcm_core.data.conventions import LABELS, label_title
from mlcm_core.modalities import specs as modality_specs

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_DATASET = ROOT / "precomputed" / "dataset"

DEFAULT_EXPLORE = ROOT / "precomputed" / "explore"

EXPORT_ROOT = ROOT / "var" / "exports"

TABLE_COLUMNS = ["id", "formula", "source", "nsites", "spacegroup_symbol", "crystal_system",
                 *(spec.store_flag for spec in modality_specs()), "split"]



# what a table header shows for the app's own columns (property columns: conventions.label_title, from LABELS)
COLUMN_TITLES = {"formula": "formula", "source": "dataset source", "nsites": "sites", "spacegroup_symbol": "space group",
                 "crystal_system": "crystal system", **{spec.store_flag: spec.label for spec in modality_specs()},
                 "split": "split", "score": "score (cosine)",
                 "sim_dos": "similarity to the DOS", "sim_structure": "similarity to the structure",
                 "sim_material": "similarity to the material", "sim_density": "similarity to the density",
                 "dos_mae_to_target": "DOS MAE to target (1/eV)", "region_count": "materials in its map region",
                 "modality_disagreement": "modality disagreement", "prediction_spread": "prediction spread (σ/MAE)"}

def column_title(column: str) -> str:
    """The header a person reads for a table column: a property with its unit, level of theory and source
    (conventions.label_title), else a plain name for the app's own columns, else the column name."""
    return label_title(column) if column in LABELS else COLUMN_TITLES.get(column, column)

@pn.cache(max_items=2)
def open_dataset(path: str):
    """Opened (and checksum-verified) once per server process."""
    return load_dataset(path)

@pn.cache(max_items=2)
def open_explorer(explore_path: str, dataset_path: str):
    """The Explorer over ``explore_path`` (a precomputed dir or its ``explore`` folder), on the app's store."""
    from mlcm_core.explore import Explorer

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        ex = Explorer.load(explore_path, store=open_dataset(dataset_path), export_root=EXPORT_ROOT)
    for w in caught:
        log.warning("%s", w.message)
    return ex

@pn.cache(max_items=2)
def map_frame(explore_path: str, dataset_path: str) -> pd.DataFrame:
    """One row per map point: id, formula, x, y and every column the map can colour by."""
    ex = open_explorer(explore_path, dataset_path)
    t = ex.table
    hint = ex.density_hint()
    f = pd.DataFrame({"id": t["id"].astype(str), "formula": t["formula"].fillna("?").astype(str),
                      "x": t["x"].astype(np.float64), "y": t["y"].astype(np.float64)})
    f["source"] = pd.Categorical(t["source"].fillna("unknown").astype(str))
    f["crystal_system"] = pd.Categorical(t["crystal_system"].fillna("unknown").astype(str))
    f["coverage"] = pd.Categorical(coverage_names(t))
    f["disagreement"] = hint.disagreement.to_numpy(np.float64)
    f["region_count"] = hint.region_count.to_numpy(np.float64)
    f["prediction_spread"] = hint.prediction_spread.to_numpy(np.float64)
    for c in property_columns(t):
        f[c] = pd.to_numeric(t[c], errors="coerce").astype(np.float64)
    f["elements"] = [tuple(e) if e is not None and not isinstance(e, float) else () for e in t["elements"]]
    return f

def coverage_names(table: pd.DataFrame) -> list[str]:
    """Which modalities each material has, in words ("crystal structure + DOS", "all 3", "none"): the map's
    coverage colouring, from the modality registry (a registered fourth modality shows up by itself)."""
    specs = tuple(modality_specs())
    flags = np.column_stack([table[s.store_flag].fillna(False).astype(bool).to_numpy() if s.store_flag in table
                             else np.zeros(len(table), bool) for s in specs])
    names = {}
    out = []
    for row in map(tuple, flags):
        if row not in names:
            have = [s.label for s, f in zip(specs, row) if f]
            names[row] = "none" if not have else f"all {len(specs)}" if len(have) == len(specs) else " + ".join(have)
        out.append(names[row])
    return out


def property_columns(table: pd.DataFrame) -> list[str]:
    """Label columns (conventions.LABELS) with at least one numeric value."""
    out = []
    for c in LABELS:
        if c in table:
            v = pd.to_numeric(table[c], errors="coerce")
            if v.notna().any():
                out.append(c)
    return out

# the map's layers (AppState.layers): real materials, and each hypothetical set by the store's `source`
MAP_LAYERS = {"real": "real materials (Materials Project)", "perov_5": "hypothetical: perov_5 (CDVAE)",
              "carbon_24": "hypothetical: carbon_24 (CDVAE)"}

HYPOTHETICAL_SOURCES = {"cdvae-perov_5": "perov_5", "cdvae-carbon_24": "carbon_24"}

def map_layer(source: str) -> str:
    """The map layer (a MAP_LAYERS key) of a store ``source``: its hypothetical set, else "real"."""
    return HYPOTHETICAL_SOURCES.get(str(source), "real")

@pn.cache(max_items=2)
def map_layers(explore_path: str, dataset_path: str) -> np.ndarray:
    """The map layer of each map point (map_frame rows, in order)."""
    src = map_frame(explore_path, dataset_path)["source"]
    return np.asarray(src.astype(str).map(map_layer).to_numpy(), dtype=object)

@pn.cache(max_items=2)
def map_clusters(explore_path: str, dataset_path: str) -> pd.DataFrame:
    """The map's labelled clusters (``Explorer.map_clusters``: the core's, cached on disk)."""
    return open_explorer(explore_path, dataset_path).map_clusters()

@pn.cache(max_items=2)
def indexed_table(dataset_path: str) -> pd.DataFrame:
    """The store table by id, without the structure JSON (half its memory; structures come from the store)."""
    return open_dataset(dataset_path).table.drop(columns=["structure_json"], errors="ignore").set_index("id")

@pn.cache(max_items=2)
def browse_base(dataset_path: str) -> pd.DataFrame:
    """browse_table's columns, indexed by id for selections (built once per store and process: a lasso
    re-reads only its rows)."""
    t = indexed_table(dataset_path)  # the table by id, already held per process
    labels = [c for c in LABELS if c in t and pd.to_numeric(t[c], errors="coerce").notna().any()]
    return t[[c for c in TABLE_COLUMNS if c != "id"] + labels]

@pn.cache(max_items=8)
def ids_having(dataset_path: str, column: str) -> frozenset[str]:
    """Ids whose boolean ``column`` (has_dos, has_structure, ...) is true: set lookups for long selections."""
    t = indexed_table(dataset_path)
    return frozenset(t.index[t[column].fillna(False).astype(bool)].astype(str))
