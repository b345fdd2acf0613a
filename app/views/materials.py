"""The materials table: the map selection (or every material when nothing is selected); filter, sort, focus."""

from __future__ import annotations

import panel as pn
import param

from app.loaders import column_title
from app.panes import LiveMarkdown
from app.state import AppState

PAGE_SIZE = 20


class MaterialsTable(pn.viewable.Viewer):
    """Rows = ``state.selected_ids`` in the order Explorer.select returned them, else all materials.

    Selecting a row focuses that material (structure, density, DOS and property views).
    """

    state = param.ClassSelector(class_=AppState)

    def __init__(self, **params):
        super().__init__(**params)
        self._title = LiveMarkdown(self._title_text(), css_classes=["mlcm-table-title"], margin=(0, 10))
        self._table = pn.widgets.Tabulator(
            self.state.browse_table(), pagination="remote", page_size=PAGE_SIZE, selectable=1, show_index=False,
            header_filters={"id": {"type": "input", "func": "like"}, "formula": {"type": "input", "func": "like"},
                            "source": {"type": "list", "valuesLookup": True}},
            disabled=True, sizing_mode="stretch_width", css_classes=["mlcm-materials"],
            frozen_columns=["id"], titles={c: column_title(c) for c in self.state.browse_table(ids=[]).columns
                                           if c != "id"},
        )
        self._table.param.watch(self._on_select, "selection")
        self.state.param.watch(self._on_ids, "selected_ids")

    def _title_text(self) -> str:
        ids = self.state.selected_ids
        if ids:
            return f"**Materials in the selection: {len(ids):,}** (click a row to show it below)"
        return f"**All materials: {len(self.state.table):,}** (select on the map to narrow; click a row to show it below)"

    def _on_ids(self, event) -> None:
        self._table.selection = []
        self._table.value = self.state.browse_table(event.new if event.new else None)
        self._title.object = self._title_text()

    def _on_select(self, event) -> None:
        if event.new:
            self.state.focus_id = str(self._table.value.iloc[event.new[0]]["id"])

    @property
    def ids(self) -> list[str]:
        return self._table.value["id"].astype(str).tolist()

    def __panel__(self):
        return pn.Column(self._title, self._table, sizing_mode="stretch_width")
