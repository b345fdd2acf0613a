"""The materials table: filter, sort, select."""

from __future__ import annotations

import panel as pn
import param

from app.store import AppState


class MaterialsTable(pn.viewable.Viewer):
    state = param.ClassSelector(class_=AppState)

    def __init__(self, **params):
        super().__init__(**params)
        df = self.state.browse_table()
        self._table = pn.widgets.Tabulator(
            df, pagination="remote", page_size=15, selectable="checkbox", show_index=False,
            header_filters={"id": {"type": "input", "func": "like"}, "formula": {"type": "input", "func": "like"},
                            "source": {"type": "list", "valuesLookup": True}},
            disabled=True, sizing_mode="stretch_width", name="materials",
        )
        self._table.param.watch(self._on_select, "selection")

    def _on_select(self, event) -> None:
        ids = self._table.value.iloc[event.new]["id"].tolist() if event.new else []
        self.state.selected_ids = ids

    def __panel__(self):
        return self._table
