"""Property card of the focused material: known labels with source and level of theory, and hints.

The card is one HTML pane whose text is replaced on each focus/selection change (a few kB), not a new layout
of panes: new Bokeh models on every change made this view costly under load (docs/reliability.md §4).
"""

from __future__ import annotations

import html
import threading
from collections import OrderedDict

import numpy as np
import pandas as pd
import panel as pn
import param

from app.panes import LiveHTML
from app.state import AppState
from mlcm_core.modalities import specs as modality_specs

TABLE_STYLE = "font-size:12px;border-collapse:collapse"
_PREDICTIONS: OrderedDict = OrderedDict()  # (explore path, id) -> (table, note): the same for every session
_PREDICTIONS_LOCK = threading.Lock()
_PREDICTIONS_MAX = 512


def _table_html(df: pd.DataFrame, css_class: str = "") -> str:
    """A plain escaped HTML table (no index)."""
    head = "".join(f"<th style='text-align:left;padding:1px 8px 1px 0'>{html.escape(str(c))}</th>" for c in df.columns)
    rows = "".join("<tr>" + "".join(f"<td style='padding:1px 8px 1px 0'>{html.escape(str(v))}</td>" for v in r) + "</tr>"
                   for r in df.itertuples(index=False))
    return f"<table class='{css_class}' style='{TABLE_STYLE}'><tr>{head}</tr>{rows}</table>"


class PropertyCard(pn.viewable.Viewer):
    """Identity, modalities, known labels (value, unit, theory, source) and the Explorer's uncertainty hints.

    Predicted properties (the Explorer's fine-tuned ensembles) sit beside the stored label of the same quantity;
    without property heads the card says why rather than showing nothing.
    """

    state = param.ClassSelector(class_=AppState)

    def __init__(self, **params):
        super().__init__(**params)
        self._pane = LiveHTML(self.card_html(self.state.selected_ids, self.state.focus_id),
                                  css_classes=["mlcm-card"], sizing_mode="stretch_width", margin=(0, 10))
        self._shown = self.material(self.state.focus_id, self.state.selected_ids)
        self.state.param.watch(self._on_change, ["selected_ids", "focus_id"])

    def material(self, focus: str, ids: list[str]) -> str:
        """The material described: the one the DOS view draws first (AppState.shown_material)."""
        return self.state.shown_material(ids, focus)

    def hints(self, mid: str) -> dict:
        f = self.state.frame
        row = f[f["id"] == mid]
        if row.empty:
            return {}
        r = row.iloc[0]
        return {"map position": f"({r['x']:.2f}, {r['y']:.2f})",
                "materials in its map region": int(r["region_count"]),
                "modality disagreement": ("n/a (one modality)" if not np.isfinite(r["disagreement"])
                                          else f"{r['disagreement']:.3f}")}

    def predictions(self, mid: str) -> tuple[pd.DataFrame | None, str]:
        """(table, note) of the Explorer's predictions for ``mid``; computed once per process and material."""
        if not self.state.has(mid, "has_structure"):
            return None, "none: the material has no structure (predictions start from a crystal)"
        key = (str(self.state.explore_path), mid)
        with _PREDICTIONS_LOCK:
            if key in _PREDICTIONS:
                _PREDICTIONS.move_to_end(key)
                return _PREDICTIONS[key]
        out = self.state.predictions(material_id=mid)
        with _PREDICTIONS_LOCK:
            _PREDICTIONS[key] = out
            while len(_PREDICTIONS) > _PREDICTIONS_MAX:
                _PREDICTIONS.popitem(last=False)
        return out

    def card_html(self, ids: list[str], focus: str = "") -> str:
        mid = self.material(focus, ids)
        if not mid:
            return "<b>Properties</b>: click a material on the map or in a table."
        t = self.state.indexed
        if mid not in t.index:
            return f"unknown material {html.escape(mid)}"
        row = t.loc[mid]
        nsites = row["nsites"] if pd.notna(row["nsites"]) else "?"
        mods = ", ".join(s.label for s in modality_specs()
                         if pd.notna(has := row.get(s.store_flag, False)) and bool(has)) or "none"
        esc = html.escape
        formula = row["formula"] if isinstance(row["formula"], str) and row["formula"] else None
        parts = [f"<h3 style='margin:4px 0'>{esc(mid)} {esc(formula or '')}</h3>"
                 + ("" if formula else "<div><i>formula unknown: the dataset has no structure or composition "
                                       "for this material</i></div>"),
                 (f"<div>{esc(str(row['source']))} · {esc(str(nsites))} sites · "
                  f"{esc(str(row['spacegroup_symbol'] or 'no structure'))} · {esc(str(row['crystal_system'] or ''))} · "
                  f"split <b>{esc(str(row['split']))}</b><br>modalities: {esc(mods)}</div>")]
        card = self.state.label_card(mid)
        if len(card):
            parts.append(_table_html(card.assign(value=card["value"].map(lambda v: f"{v:.4g}")), "mlcm-labels"))
        else:
            parts.append("<p><i>no stored labels for this material</i></p>")
        hints = " · ".join(f"{k}: {v}" for k, v in self.hints(mid).items())
        parts.append(f"<p><b>Uncertainty hints</b> (relative): {esc(hints)}</p>")
        preds, note = self.predictions(mid)
        if preds is None:
            parts.append(f"<p><b>Predicted properties</b>: {esc(note)}</p>")
        else:
            parts.append(f"<p><b>Predicted properties</b> ± ensemble spread ({esc(note)}):</p>")
            parts.append(_table_html(preds, "mlcm-predictions"))
        return "".join(parts)

    def _on_change(self, *_) -> None:
        mid = self.material(self.state.focus_id, self.state.selected_ids)
        if mid == self._shown:  # a new selection with the same focus changes nothing here
            return
        self._shown = mid
        self._pane.object = self.card_html(self.state.selected_ids, self.state.focus_id)

    def __panel__(self):
        return self._pane

