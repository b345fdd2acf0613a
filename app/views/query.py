"""What the candidates were searched with, above their table: the target (a thumbnail of the target DOS, the
uploaded structure's name and formula, or the material of a "similar to" search), the gallery searched, k and
the filters in words (property names with their units, as everywhere in the app).

The record is ``AppState.query`` (written by every search); when an input of that search (its target or
upload, the gallery, k, a filter) changes afterwards, ``AppState.query_stale`` turns on and the panel says
"stale — search again", with a button that repeats the search with the current inputs (``AppState.search_again``).
One HTML pane updated in place (inline SVG thumbnail), like the selection summary.
"""

from __future__ import annotations

import html

import numpy as np
import panel as pn
import param

from app.panes import LiveHTML
from app.state import AppState, guarded
from mlcm_core.data.conventions import DOS_E_MAX, DOS_E_MIN

THUMB_W, THUMB_H = 150, 44
GALLERIES = {"dos": "DOS gallery (materials ranked by their stored DOS)",
             "crystal": "crystal gallery (materials ranked by their structure)",
             "density": "charge-density gallery (materials ranked by their valence density)"}
STALE = "stale — search again"


def dos_thumbnail(dos: list[float], label: str = "") -> str:
    """A small SVG of a DOS on the app's grid (−10…10 eV), with E = 0 marked: the target at a glance."""
    y = np.asarray(dos, np.float64)
    if y.size < 2:
        return ""
    top = float(y.max()) or 1.0
    x = np.linspace(2, THUMB_W - 2, y.size)
    yy = THUMB_H - 3 - (THUMB_H - 6) * y / top
    step = max(1, y.size // 150)  # ~150 points are plenty at this size
    points = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(x[::step], yy[::step]))
    zero = 2 + (THUMB_W - 4) * (0 - DOS_E_MIN) / (DOS_E_MAX - DOS_E_MIN)
    title = html.escape(f"target DOS: {label} ({DOS_E_MIN:g}…{DOS_E_MAX:g} eV)")
    return (f"<svg class='mlcm-query-thumb' xmlns='http://www.w3.org/2000/svg' width='{THUMB_W}' height='{THUMB_H}' "
            f"style='vertical-align:middle;background:#fafafa;border:1px solid #ddd'><title>{title}</title>"
            f"<line x1='{zero:.1f}' y1='0' x2='{zero:.1f}' y2='{THUMB_H}' stroke='#bbb' stroke-dasharray='2,2'/>"
            f"<polyline points='{points}' fill='none' stroke='black' stroke-width='1.5'/></svg>")


def query_html(query: dict | None, stale: bool, changed: list[str]) -> str:
    """The panel's text for ``AppState.query`` (None: nothing searched yet)."""
    if not query:
        return ("<div style='font-size:12px;color:#555'><b>Searched with:</b> nothing yet (draw a target DOS, use a "
                "material's DOS or upload a structure).</div>")
    esc = lambda s: html.escape(str(s), quote=False)  # noqa: E731
    kind = query["kind"]
    if kind == "dos":
        thumb = dos_thumbnail(query.get("dos", []), query.get("label", ""))
        target = f"{thumb} target DOS: <b>{esc(query.get('label'))}</b>"
    elif kind == "structure":
        target = f"uploaded structure <b>{esc(query.get('name'))}</b> ({esc(query.get('formula'))})"
    elif kind == "material_id":
        formula = f" ({esc(query['formula'])})" if query.get("formula") else ""
        target = f"similar to <b>{esc(query.get('material_id'))}</b>{formula}"
    else:
        target = esc(query.get("origin", kind))
    gallery = GALLERIES.get(query["gallery"], query["gallery"])
    if query.get("gallery_setting") == "auto":
        gallery += ", chosen by auto"
    filters = query.get("filters") or "none"
    badge = ""
    if stale:
        what = ", ".join(changed) or "an input"
        badge = (f"<div class='mlcm-query-stale' style='margin-top:3px'><span style='background:#d62728;color:white;"
                 f"padding:1px 6px;border-radius:3px;font-weight:bold'>{STALE}</span> "
                 f"<span style='color:#b00'>{esc(what)} changed since this search: the candidates below are from the "
                 "search described here</span></div>")
    border = "#d62728" if stale else "#ccc"
    return (f"<div style='font-size:12px;border-left:4px solid {border};padding:2px 8px'>"
            f"<b>Searched with:</b> {target}<br>"
            f"<b>Among:</b> {esc(gallery)} · <b>top</b> {query['k']} ({query['n']} found)<br>"
            f"<b>Filters:</b> {esc(filters)}{badge}</div>")


class QueryStateView(pn.viewable.Viewer):
    """The candidates' query, and a stale mark with "Search again" once an input has changed."""

    state = param.ClassSelector(class_=AppState)

    def __init__(self, **params):
        super().__init__(**params)
        self._text = LiveHTML(self._html(), css_classes=["mlcm-query-state"], sizing_mode="stretch_width",
                              margin=(0, 10))
        self._again = pn.widgets.Button(label="Search again", color="danger", css_classes=["mlcm-search-again"],
                                        width=120, visible=self.state.query_stale)
        self._again.on_click(self.search_again)
        self.state.param.watch(self._update, ["query", "query_stale"])

    def _html(self) -> str:
        s = self.state
        return query_html(s.query, s.query_stale, s.changed_inputs() if s.query_stale else [])

    def _update(self, *_) -> None:
        self._text.object = self._html()
        self._again.visible = self.state.query_stale

    @guarded("search again")
    def search_again(self, *_):
        self.state.search_again()

    def __panel__(self):
        return pn.Row(self._text, self._again, sizing_mode="stretch_width")
