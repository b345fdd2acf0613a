"""Selection summary: how many materials are selected, what they are, and their property histograms."""

from __future__ import annotations

import holoviews as hv
import holoviews.plotting.bokeh
import numpy as np
import pandas as pd
import panel as pn
import param

from app.store import AppState

SUMMARY_PROPERTIES = ["band_gap_mp_pbe", "formation_energy_per_atom_mp_pbe", "gap_direct_castelli_gllbsc",
                      "heat_of_formation_castelli_rpbe", "k_vrh_mp_pbe", "total_energy_per_atom_carbon24_pbe"]
MAX_HISTOGRAMS = 4


class SelectionSummary(pn.viewable.Viewer):
    """Count, crystal systems and sources of the selection, and histograms (selection vs all materials)."""

    state = param.ClassSelector(class_=AppState)

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

    def _histograms(self, sub: pd.DataFrame, props: list[str]):
        """Per property: the share of materials per bin, all materials (grey) vs the selection (blue)."""
        f = self.state.frame
        plots = []
        for c in props:
            allv = f[c].to_numpy()
            allv = allv[np.isfinite(allv)]
            lo, hi = np.percentile(allv, [0.5, 99.5])
            edges = np.linspace(lo, hi if hi > lo else lo + 1, 31)
            a, _ = np.histogram(np.clip(allv, lo, hi), edges)
            v = sub[c].to_numpy()
            v = v[np.isfinite(v)]
            s, _ = np.histogram(np.clip(v, lo, hi), edges)
            a = a / max(a.sum(), 1)
            s = s / max(s.sum(), 1)
            plots.append((hv.Histogram((edges, a), kdims=[c], vdims=["share"]).opts(color="#bbbbbb", line_alpha=0)
                          * hv.Histogram((edges, s), kdims=[c], vdims=["share"]).opts(color="#1f77b4", alpha=0.6,
                                                                                     line_alpha=0))
                         .opts(width=290, height=170, title=f"{c}: {len(v)} selected", show_legend=False,
                               fontsize={"title": 9, "labels": 8, "xticks": 7, "yticks": 7}, toolbar=None))
        return hv.Layout(plots).cols(2).opts(toolbar=None) if plots else None

    def _view(self, ids: list[str]):
        if not ids:
            return pn.pane.Markdown("**Selection**: none yet. Lasso or box-select on the map (toolbar), or pick a "
                                    "cluster.", css_classes=["mlcm-selection-summary"])
        s = self.summary(ids)
        systems = ", ".join(f"{k} {v}" for k, v in s["crystal_system"].items())
        sources = ", ".join(f"{k} {v}" for k, v in s["source"].items())
        head = pn.pane.Markdown(f"**Selection: {s['n']:,} materials** ({self.state.selection_origin}); histograms: "
                                "share per bin, grey = all materials, blue = selection  \n"
                                f"crystal systems: {systems}  \nsources: {sources}",
                                css_classes=["mlcm-selection-summary"])
        hist = self._histograms(s["frame"], s["properties"])
        return pn.Column(head, pn.pane.HoloViews(hist, linked_axes=False) if hist is not None else
                         pn.pane.Markdown("_no property has ≥ 2 values in the selection_"))

    def __panel__(self):
        return pn.panel(pn.bind(self._view, self.state.param.selected_ids), defer_load=False)
