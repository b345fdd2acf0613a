"""Overlaid DOS curves of the focused material and the selection, on the project's one energy grid.

Why a fixed set of curve slots in one DynamicMap: the plot is built once per session and every selection or
focus change only replaces the slots' data (ColumnDataSource updates). Rebuilding an overlay of new Bokeh
plots per change created dozens of document models each time, the dominant cost of an interaction under load.
The legend (id, formula, energy reference) is an HTML line under the plot, for the same reason.
"""

from __future__ import annotations

import html

import holoviews as hv
import holoviews.plotting.bokeh  # registers the bokeh backend
import numpy as np
import panel as pn
import param
from holoviews.core.spaces import Callable

from app.loaders import ids_having
from app.panes import LiveHTML, curve_slots, push_layers, set_y_end
from app.state import AppState
from mlcm_core.data.conventions import DOS_ENERGIES

MAX_CURVES = 8
COLORS = ["#000000", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
X_LABEL, Y_LABEL = "E - E_ref (eV)", "DOS (states/eV/cell)"


class DOSView(pn.viewable.Viewer):
    """Up to MAX_CURVES DOS: the material the property card shows first (``AppState.shown_material``: the
    focus, else the first selected one with a DOS), then selected materials that have a DOS; the first is
    drawn black and thick."""

    state = param.ClassSelector(class_=AppState)

    def __init__(self, **params):
        super().__init__(**params)
        self._note = LiveHTML(self.legend_html(self.curve_ids(self.state.selected_ids, self.state.focus_id),
                                                   self.state.focus_id),
                                  css_classes=["mlcm-dos"], sizing_mode="stretch_width", margin=(0, 10))
        self._plot_pane: pn.pane.HoloViews | None = None  # built on first display
        self.state.param.watch(self._on_change, ["selected_ids", "focus_id"])

    def curve_ids(self, ids: list[str], focus: str = "") -> list[str]:
        has = ids_having(self.state.dataset_path, "has_dos")
        shown = self.state.shown_material(ids, focus)
        head = [shown] if shown else []
        out: list[str] = []
        for i in (*head, *ids):  # stops after MAX_CURVES with a DOS (a selection can hold thousands)
            if i not in out and i in has:
                out.append(i)
                if len(out) == MAX_CURVES:
                    break
        return out

    def curves(self, ids: list[str], focus: str = "") -> list[dict]:
        """The curves drawn, in slot order: id, label, DOS values, colour, whether it is the focus."""
        with_dos = self.curve_ids(ids, focus)
        if not with_dos:
            return []
        t = self.state.indexed
        data = self.state.dataset.dos(with_dos)
        return [{"id": i, "label": f"{i} {t.at[i, 'formula'] or ''} [{t.at[i, 'dos_reference']}]", "dos": c,
                 "color": COLORS[k], "focus": i == focus} for k, (i, c) in enumerate(zip(with_dos, data))]

    def legend_html(self, with_dos: list[str], focus: str = "") -> str:
        """Colour, id, formula and energy reference of each curve (the first one, black and thick, is the focus)."""
        if not with_dos:
            return ("<b>DOS</b>: select materials with a DOS on the map or in the table (only "
                    f"{int(self.state.table['has_dos'].sum()):,} materials have one).")
        t = self.state.indexed
        items = []
        for k, i in enumerate(with_dos):
            label = html.escape(f"{i} {t.at[i, 'formula'] or ''} [{t.at[i, 'dos_reference']}]"
                                + (" (focus)" if i == focus else " (in the card)" if k == 0 and not focus else ""))
            items.append(f"<span style='white-space:nowrap;margin-right:10px'><span style='display:inline-block;"
                         f"width:14px;height:{3 if k == 0 else 2}px;background:{COLORS[k]};vertical-align:middle;"
                         f"margin-right:3px'></span>{label}</span>")
        return f"<div style='font-size:11px'>{''.join(items)}</div>"

    @staticmethod
    def _slot_elements(curves: list[dict], lazy: bool = False) -> dict:
        """MAX_CURVES curve layers slot0..slot7 (app.panes.curve_slots)."""
        return curve_slots([(c["id"], c["dos"]) for c in curves], DOS_ENERGIES, "slot", MAX_CURVES,
                           hv.Dimension("E", label=X_LABEL), hv.Dimension("DOS", label=Y_LABEL), lazy)

    def _overlay(self) -> hv.Overlay:
        """The current curves (the DynamicMap's callback: HoloViews calls it when it renders the plot)."""
        elements = self._slot_elements(self.curves(self.state.selected_ids, self.state.focus_id))
        return hv.Overlay([e.opts(color=COLORS[k], line_width=3 if k == 0 else 1.5, tools=["hover"])
                           for k, e in enumerate(elements.values())])

    def _build(self) -> pn.pane.HoloViews:
        dmap = hv.DynamicMap(Callable(self._overlay, memoize=False))
        overlay = dmap.opts(width=620, height=320, show_legend=False, ylim=(0, None),
                            xlim=(float(DOS_ENERGIES[0]), float(DOS_ENERGIES[-1])),
                            title="DOS of focus + selection (zero at the VBM when gapped, else E_F)")
        return pn.pane.HoloViews(overlay, css_classes=["mlcm-dos-plot"], width=620, height=320, linked_axes=False)

    def _on_change(self, *_) -> None:
        """New legend text; new curve data (and y range) pushed into the rendered plot."""
        ids, focus = self.state.selected_ids, self.state.focus_id
        self._note.object = self.legend_html(self.curve_ids(ids, focus), focus)
        if self._plot_pane is None or not self._plot_pane._plots:
            return
        curves = self.curves(ids, focus)
        elements = self._slot_elements(curves, lazy=True)
        push_layers(self._plot_pane, elements, keys={f"slot{k}": curves[k]["id"] if k < len(curves) else None
                                                     for k in range(MAX_CURVES)})
        top = max((float(np.max(c["dos"])) for c in curves), default=1.0)
        set_y_end(self._plot_pane, 1.05 * top if top > 0 else 1.0)

    def __panel__(self):
        if self._plot_pane is None:
            self._plot_pane = self._build()
        return pn.Column(self._plot_pane, self._note)
