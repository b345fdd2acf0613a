"""Candidate table (sortable) and downloads: CSV, JSON and a zip of CIFs, written by Explorer.export.

The JSON and the zip record the query (targets, weights, filters, checkpoint) inside, as the core's export
does; the CSV is a plain table (its query goes to a ``.query.json`` beside it on the server, and into the
zip). A map selection is exported with a description of the selection as its query. File names say what
they hold (AppState.export_name).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import panel as pn
import param

from app.inputs import UserError
from app.loaders import column_title
from app.panes import LiveMarkdown
from app.state import AppState
from app.views.query import QueryStateView

SHOWN = ["rank", "id", "formula", "score", "sim_dos", "sim_structure", "sim_material", "dos_mae_to_target", "source",
         "spacegroup_symbol",
         "nsites", "has_dos", "has_charge_density", "region_count", "modality_disagreement"]
FORMATS = {"csv": ".csv", "json": ".json", "cif_zip": ".cif.zip"}


class ExportDownload(pn.widgets.FileDownload):
    """A download named after the file its callback wrote (FileDownload keeps its first name for every file),
    and that sends nothing when the callback returns None: the failure is already a message in the page, and
    FileDownload would raise on None (a server traceback per refused export)."""

    def _sync_data(self, fileobj):
        if fileobj is None:
            return
        if isinstance(fileobj, (str, Path)):
            self.filename = Path(fileobj).name
        super()._sync_data(fileobj)


TEXT_COLUMNS = ("id", "formula", "source", "spacegroup_symbol", "crystal_system")


def _as_column(values: pd.Series, column: str) -> pd.Series:
    """``values`` in the candidates table's one dtype for ``column``: text, a modality flag, or a number."""
    if column in TEXT_COLUMNS:
        return values.astype(object)
    if column.startswith("has_"):
        return values.fillna(False).astype(bool)
    return pd.to_numeric(values, errors="coerce").astype("float64").round(4)


class CandidatesView(pn.viewable.Viewer):
    """The last query's candidates; clicking a row focuses the material."""

    state = param.ClassSelector(class_=AppState)
    export_what = param.Selector(default="candidates", objects=["candidates", "selection"],
                                 doc="what the download buttons write")

    def __init__(self, **params):
        super().__init__(**params)
        self._query = QueryStateView(state=self.state)  # what these candidates were searched with
        self._title = LiveMarkdown(self._title_text(), css_classes=["mlcm-candidates-title"])
        self._table = pn.widgets.Tabulator(self.shown(self.state.candidates), pagination="local", page_size=15,
                                           selectable=1, show_index=False, disabled=True, sizing_mode="stretch_width",
                                           css_classes=["mlcm-candidates"], layout="fit_data_stretch",
                                           titles=self.titles())
        self._table.param.watch(self._on_select, "selection")
        self.state.param.watch(self._on_candidates, "candidates")
        self.state.param.watch(lambda *_: self.param.update(export_what="candidates"), "resets")
        self._downloads = [
            ExportDownload(callback=self._make_callback(fmt), filename=f"mlcm-export{suffix}",
                           label=f"Download {fmt.replace('_', ' ').upper()}", color="success",
                           css_classes=[f"mlcm-download-{fmt}"], embed=False, auto=True, width=150)
            for fmt, suffix in FORMATS.items()]

    def shown(self, df: pd.DataFrame | None) -> pd.DataFrame:
        """The columns shown: always the same ones (identity, every score, every label column of the store;
        a score the search did not produce stays blank), so the table's column models are built once per
        session. Changing the columns between searches (an empty table had 4) left Panel's paged table
        empty after Reset or Clear target: the next search's title said 25 candidates, its table 0 rows."""
        labels = [c for c in self.state.param.range_column.objects if c.endswith(("_pbe", "_gllbsc", "_rpbe"))]
        cols = [*SHOWN, *labels]
        bare = pd.DataFrame() if df is None else df.copy(deep=False)
        bare.attrs = {}  # the query (with a 601-point target DOS) would be deep-copied by every pandas step below
        bare = bare.reindex(columns=cols)
        # one dtype per column whatever the search, empty or not (a float "id" column of the empty table showed
        # "NaN" after a search)
        return pd.DataFrame({c: _as_column(bare[c], c) for c in cols}, index=bare.index)

    def titles(self) -> dict[str, str]:
        """Header text per column: properties with unit, level of theory and source, never a raw column name."""
        cols = [*SHOWN, *self.state.param.range_column.objects]
        return {c: column_title(c) for c in cols if c not in ("rank", "id", "(none)")}

    def _title_text(self) -> str:
        c = self.state.candidates
        if c is None or c.empty:
            return "**Candidates**: none yet (draw a target DOS, use a material's DOS, or upload a CIF)."
        filters = self.state.candidates_filters
        return (f"**Candidates: {len(c)}** for {self.state.candidates_origin}; "
                + (f"**filters: {filters}**" if filters else "no filters")
                + " (click a column to sort, a row to show it)")

    def _on_candidates(self, event) -> None:
        self._table.selection = []
        self._table.value = self.shown(event.new)
        self._title.object = self._title_text()

    def _on_select(self, event) -> None:
        if event.new:
            self.state.focus_id = str(self._table.value.iloc[event.new[0]]["id"])

    def _make_callback(self, fmt: str):
        def callback():
            try:
                return str(self.state.export(self.export_what, fmt))
            except Exception as e:  # noqa: BLE001 - shown in the page, the download is just not produced
                self.state.notify(f"export failed: {e}" if not isinstance(e, UserError) else str(e), "error")
                return None
        return callback

    def export(self, fmt: str):
        """The file a download button would deliver (headless tests)."""
        return self.state.export(self.export_what, fmt)

    def __panel__(self):
        return pn.Column(self._query, self._title, self._table,
                         pn.Row(pn.widgets.RadioButtonGroup.from_param(self.param.export_what), *self._downloads),
                         pn.pane.Markdown("CSV: the table only (opens in any spreadsheet or `pandas.read_csv`); "
                                          "JSON and CIF zip: the table with the query that produced it.",
                                          styles={"font-size": "11px"}, margin=(0, 10)),
                         sizing_mode="stretch_width")
