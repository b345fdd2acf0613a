"""Exploration engine: precomputed embeddings, the 2-D map, exact search, lasso selection, export.

``Explorer`` (explorer.py) is the one API the notebooks and the dashboard use; ``build_precomputed``
(build.py) writes what it loads. Names are imported lazily so that ``import mlcm_core.explore`` stays
cheap (faiss, umap and torch load only when used).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "DensityHint",
    "DrawnDOSError",
    "EmbeddingTable",
    "Explorer",
    "ExplorerError",
    "ExportPathError",
    "Filters",
    "GridIndex2D",
    "HeadsError",
    "MaterialMatch",
    "MaterialNotFound",
    "MaterialQueryError",
    "PropertyPredictor",
    "RangeFilter",
    "TopKIndex",
    "UMAPProjection",
    "build_heads",
    "build_precomputed",
    "embed_store",
    "export_candidates",
    "find_materials",
    "place_by_neighbours",
    "on_dos_grid",
    "read_export",
    "resample_polyline",
    "target_dos",
]

_WHERE = {
    "DensityHint": "explorer", "Explorer": "explorer", "ExplorerError": "explorer",
    "DrawnDOSError": "resample", "resample_polyline": "resample", "target_dos": "resample",
    "on_dos_grid": "resample",
    "EmbeddingTable": "embed", "embed_store": "embed",
    "ExportPathError": "export", "export_candidates": "export", "read_export": "export",
    "Filters": "filters", "RangeFilter": "filters",
    "GridIndex2D": "index", "TopKIndex": "index",
    "UMAPProjection": "projection", "place_by_neighbours": "projection",
    "build_precomputed": "build",
    "MaterialMatch": "lookup", "MaterialNotFound": "lookup", "MaterialQueryError": "lookup", "find_materials": "lookup",
    "HeadsError": "predict", "PropertyPredictor": "predict", "build_heads": "predict",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"mlcm_core.explore.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'mlcm_core.explore' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
