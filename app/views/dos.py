"""Overlaid DOS curves of the selected materials, on the project's one energy grid."""

from __future__ import annotations

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401  (registers the backend that .opts needs)
import panel as pn
import param

from app.store import AppState
from mlcm_core.data.conventions import DOS_ENERGIES

MAX_CURVES = 8


class DOSView(pn.viewable.Viewer):
    state = param.ClassSelector(class_=AppState)

    def _plot(self, ids: list[str]):
        t = self.state.table.set_index("id")
        with_dos = [i for i in ids if i in t.index and bool(t.loc[i, "has_dos"])][:MAX_CURVES]
        if not with_dos:
            return pn.pane.Markdown("Select materials with a DOS in the table to overlay their DOS.")
        curves = self.state.dataset.dos(with_dos)
        overlay = hv.Overlay([
            hv.Curve((DOS_ENERGIES, c), "E - E_ref (eV)", "DOS (states/eV/cell)",
                     label=f"{i} {t.loc[i, 'formula'] or ''} [{t.loc[i, 'dos_reference']}]")
            for i, c in zip(with_dos, curves)
        ])
        return pn.pane.HoloViews(overlay.opts(responsive=True, height=320, legend_position="top_right",
                                              title="DOS (zero at the VBM when gapped, else E_F)"))

    def __panel__(self):
        return pn.bind(self._plot, self.state.param.selected_ids)


class LabelCard(pn.viewable.Viewer):
    state = param.ClassSelector(class_=AppState)

    def _card(self, ids: list[str]):
        if not ids:
            return pn.pane.Markdown("Select a material to see its known properties.")
        mid = ids[-1]
        card = self.state.label_card(mid)
        row = self.state.table.set_index("id").loc[mid]
        head = (f"### {mid} {row['formula'] or ''}\n{row['source']} · {row['nsites'] if row['nsites'] == row['nsites'] else '?'} sites · "
                f"{row['spacegroup_symbol'] or 'no structure'} · split **{row['split']}**")
        return pn.Column(pn.pane.Markdown(head), pn.widgets.Tabulator(card, show_index=False, disabled=True,
                                                                       sizing_mode="stretch_width"))

    def __panel__(self):
        return pn.bind(self._card, self.state.param.selected_ids)
