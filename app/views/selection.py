"""Selection summary: how many materials are selected, what they are, and their property histograms.

Why the histograms are inline SVG (one HTML pane updated in place) rather than HoloViews plots: a selection
changes on every lasso/box/cluster pick, and replacing a layout of Bokeh plots created ~60 new document models
per change, which made this view the most expensive part of an interaction under load (see
docs/reliability.md §4). A string update costs a few milliseconds and sends a few kB.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import panel as pn
import param

from app.panes import LiveHTML, LiveMarkdown
from app.state import AppState
from mlcm_core.data.conventions import label_source, label_title

SUMMARY_PROPERTIES = ["band_gap_mp_pbe", "formation_energy_per_atom_mp_pbe", "gap_direct_castelli_gllbsc",
                      "heat_of_formation_castelli_rpbe", "k_vrh_mp_pbe", "total_energy_per_atom_carbon24_pbe"]
MAX_HISTOGRAMS = 4
BINS = 30
SVG_W, SVG_H = 280, 120  # one histogram; two per row
_ALL_HIST: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}  # (explore path, column) -> (edges, share)


def _svg_histogram(title: str, edges: np.ndarray, share_all: np.ndarray, share_sel: np.ndarray) -> str:
    """Two overlaid bar histograms (grey = all, blue = selection) as a small SVG with an x-axis range; each line
    of ``title`` is a line above the bars (the first in bold)."""
    top = max(float(share_all.max(initial=0)), float(share_sel.max(initial=0)), 1e-9)
    lines = title.split("\n")
    height = SVG_H + 12 * (len(lines) - 1)
    pad_l, pad_b, pad_t = 4, 16, 4 + 12 * len(lines)
    w = (SVG_W - 2 * pad_l) / len(share_all)
    h = height - pad_b - pad_t
    bars = []
    for share, style in ((share_all, "fill:#bbbbbb"), (share_sel, "fill:#1f77b4;fill-opacity:0.6")):
        for i, v in enumerate(share):
            if v > 0:
                bh = h * float(v) / top
                bars.append(f"<rect x='{pad_l + i * w:.1f}' y='{pad_t + h - bh:.1f}' width='{w:.1f}' "
                            f"height='{bh:.1f}' style='{style}'/>")
    heads = "".join(f"<text x='{pad_l}' y='{11 + 12 * k}' font-size='10'"
                    + (" font-weight='bold'" if k == 0 else "") + f">{html.escape(line)}</text>"
                    for k, line in enumerate(lines))
    axis = (f"<line x1='{pad_l}' y1='{pad_t + h}' x2='{SVG_W - pad_l}' y2='{pad_t + h}' stroke='#666'/>"
            f"<text x='{pad_l}' y='{height - 3}' font-size='9'>{edges[0]:.3g}</text>"
            f"<text x='{SVG_W - pad_l}' y='{height - 3}' font-size='9' text-anchor='end'>{edges[-1]:.3g}</text>"
            + heads)
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{SVG_W}' height='{height}' "
            f"style='margin:2px 4px'>{''.join(bars)}{axis}</svg>")


class SelectionSummary(pn.viewable.Viewer):
    """Count, crystal systems and sources of the selection, and histograms (selection vs all materials)."""

    state = param.ClassSelector(class_=AppState)

    def __init__(self, **params):
        super().__init__(**params)
        head, hist = self.texts(self.state.selected_ids)
        self._head = LiveMarkdown(head, css_classes=["mlcm-selection-summary"], sizing_mode="stretch_width")
        self._hist = LiveHTML(hist, css_classes=["mlcm-selection-histograms"], sizing_mode="stretch_width")
        self.state.param.watch(self._on_ids, "selected_ids")

    def summary(self, ids: list[str]) -> dict:
        f = self.state.frame
        sub = f[f["id"].isin(ids)] if ids else f.iloc[:0]
        props = []
        for c in [*SUMMARY_PROPERTIES, *[c for c in f.columns if c.endswith(("_pbe", "_gllbsc", "_rpbe"))]]:
            if c in f and c not in props and np.isfinite(sub[c]).sum() >= 2:
                props.append(c)
        return {"n": len(sub), "crystal_system": sub["crystal_system"].astype(str).value_counts().head(4).to_dict(),
                "source": sub["source"].astype(str).value_counts().to_dict(), "properties": props[:MAX_HISTOGRAMS],
                "frame": sub}

    def _all_histogram(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """Bin edges (0.5-99.5 percentile) and the share per bin over all materials: once per process."""
        key = (str(self.state.explore_path), column)
        if key not in _ALL_HIST:
            allv = self.state.frame[column].to_numpy()
            allv = allv[np.isfinite(allv)]
            lo, hi = np.percentile(allv, [0.5, 99.5])
            edges = np.linspace(lo, hi if hi > lo else lo + 1, BINS + 1)
            a, _ = np.histogram(np.clip(allv, edges[0], edges[-1]), edges)
            _ALL_HIST[key] = (edges, a / max(a.sum(), 1))
        return _ALL_HIST[key]

    def histograms_html(self, sub: pd.DataFrame, props: list[str]) -> str:
        """Per property: the share of materials per bin, all materials (grey) vs the selection (blue)."""
        parts = []
        for c in props:
            edges, share_all = self._all_histogram(c)
            v = sub[c].to_numpy()
            v = v[np.isfinite(v)]
            s, _ = np.histogram(np.clip(v, edges[0], edges[-1]), edges)
            title = f"{label_title(c, source=False)}\n{label_source(c) or c}: {len(v)} selected"
            parts.append(_svg_histogram(title, edges, share_all, s / max(s.sum(), 1)))
        return "<div style='display:flex;flex-wrap:wrap'>" + "".join(parts) + "</div>" if parts else ""

    def texts(self, ids: list[str]) -> tuple[str, str]:
        """(summary markdown, histograms HTML) of a selection."""
        if not ids:
            return ("**Selection**: none yet. Lasso or box-select on the map (toolbar), or pick a cluster.", "")
        s = self.summary(ids)
        systems = ", ".join(f"{k} {v}" for k, v in s["crystal_system"].items())
        sources = ", ".join(f"{k} {v}" for k, v in s["source"].items())
        head = (f"**Selection: {s['n']:,} materials** ({self.state.selection_origin}); histograms: share per bin, "
                f"grey = all materials, blue = selection  \ncrystal systems: {systems}  \nsources: {sources}")
        hist = self.histograms_html(s["frame"], s["properties"])
        return head, hist or "<i>no property has ≥ 2 values in the selection</i>"

    def _on_ids(self, event) -> None:
        head, hist = self.texts(event.new)
        self._head.object = head
        self._hist.object = hist

    def __panel__(self):
        return pn.Column(self._head, self._hist, sizing_mode="stretch_width")
