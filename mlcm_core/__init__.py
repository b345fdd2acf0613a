"""MLCM: Multimodal Learning for Crystalline Materials.

Public API: `load_dataset` opens a dataset store (see mlcm_core.data.store).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from mlcm_core.data.store import DatasetStore

__version__ = "0.1.0"
__all__ = ["__version__", "load_dataset"]


def load_dataset(path: str | Path, verify: bool = True, shards: int | None = None) -> DatasetStore:
    """Open a dataset store; with verify every file's SHA-256 is checked (a mismatch names the file);
    ``shards``: as it was after its first N shards (read-only)."""
    from mlcm_core.data.store import DatasetStore

    return DatasetStore.open(path, verify=verify, shards=shards)
