"""Overlaid DOS curves of the focused material and the selection, on the project's one energy grid."""

from __future__ import annotations

import holoviews as hv
import holoviews.plotting.bokeh
import panel as pn
import param

from app.store import AppState
from app.views.card import LabelCard  # noqa: F401  (kept importable from here)
from mlcm_core.data.conventions import DOS_ENERGIES

MAX_CURVES = 8


class DOSView(pn.viewable.Viewer):
    """Up to MAX_CURVES DOS: the focused material first, then selected materials that have a DOS."""

    state = param.ClassSelector(class_=AppState)

    def curve_ids(self, ids: list[str], focus: str = "") -> list[str]:
        t = self.state.indexed
        order = ([focus] if focus else []) + [i for i in ids if i != focus]
        return [i for i in order if i in t.index and bool(t.at[i, "has_dos"])][:MAX_CURVES]

    def _plot(self, ids: list[str], focus: str = ""):
        with_dos = self.curve_ids(ids, focus)
        if not with_dos:
            return pn.pane.Markdown("**DOS**: select materials with a DOS on the map or in the table (only "
                                    f"{int(self.state.table['has_dos'].sum()):,} materials have one).",
                                    css_classes=["mlcm-dos"])
        t = self.state.indexed
        curves = self.state.dataset.dos(with_dos)
        overlay = hv.Overlay([
            hv.Curve((DOS_ENERGIES, c), "E - E_ref (eV)", "DOS (states/eV/cell)",
                     label=f"{i} {t.at[i, 'formula'] or ''} [{t.at[i, 'dos_reference']}]").opts(
                         line_width=3 if i == focus else 1.5)
            for i, c in zip(with_dos, curves)
        ])
        return pn.pane.HoloViews(overlay.opts(width=620, height=320, legend_position="top_right",
                                              title="DOS of focus + selection (zero at the VBM when gapped, else E_F)",
                                              fontsize={"legend": 8}),
                                 css_classes=["mlcm-dos"], width=620, height=320)

    def __panel__(self):
        return pn.panel(pn.bind(self._plot, self.state.param.selected_ids, self.state.param.focus_id))
