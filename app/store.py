"""AppState: the dataset the app shows and what the user has selected."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import panel as pn
import param

from mlcm_core import load_dataset
from mlcm_core.data.conventions import LABELS

DEFAULT_DATASET = Path(__file__).resolve().parents[1] / "precomputed" / "dataset"
TABLE_COLUMNS = ["id", "formula", "source", "nsites", "spacegroup_symbol", "crystal_system",
                 "has_structure", "has_dos", "has_charge_density", "split"]


@pn.cache(max_items=2)
def open_dataset(path: str):
    """Opened (and checksum-verified) once per server process."""
    return load_dataset(path)


class AppState(param.Parameterized):
    dataset_path = param.String(default=os.environ.get("MLCM_DATASET", str(DEFAULT_DATASET)))
    selected_ids = param.List(default=[], item_type=str, doc="materials selected in any view")

    @property
    def dataset(self):
        return open_dataset(self.dataset_path)

    @property
    def table(self) -> pd.DataFrame:
        return self.dataset.table

    def browse_table(self) -> pd.DataFrame:
        """The columns a scientist scans first: identity, symmetry, modalities, split, labels."""
        t = self.table
        labels = [c for c in LABELS if c in t and t[c].notna().any()]
        return t[TABLE_COLUMNS + labels]

    def label_card(self, material_id: str) -> pd.DataFrame:
        """Known labels of one material with their unit, level of theory and source."""
        row = self.table.set_index("id").loc[material_id]
        rows = [{"quantity": spec.quantity, "value": float(row[name]), "unit": spec.unit,
                 "theory": spec.theory, "source": spec.source}
                for name, spec in LABELS.items() if name in row and pd.notna(row[name])]
        return pd.DataFrame(rows, columns=["quantity", "value", "unit", "theory", "source"])
