"""3-D building blocks shared by the structure and density views (plotly traces, merged per kind).

Why merged traces: a plotly figure with one trace per atom or bond becomes slow past a few dozen atoms
(every trace is its own WebGL object and legend entry). Atoms are merged into one Scatter3d per element,
bonds into one line trace per colour (segments separated by None), cell edges into one trace.

Why an iframe (``figure_html``): plotly.js is 4.7 MB. Loaded with the page (``pn.extension("plotly")``) it
roughly doubled the browser's script time of the first paint; drawn in an iframe that loads Panel's bundled
copy from this server, it is fetched only when a 3-D view is first shown (then from the browser cache).
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from typing import Any

import numpy as np

CELL_EDGES = [(0, 1), (0, 2), (0, 4), (1, 3), (1, 5), (2, 3), (2, 6), (3, 7), (4, 5), (4, 6), (5, 7), (6, 7)]
CORNERS = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], float)


def cell_trace(matrix: np.ndarray, origin: np.ndarray | None = None) -> dict[str, Any]:
    """The 12 edges of the cell (rows of ``matrix`` = lattice vectors) as ONE line trace."""
    o = np.zeros(3) if origin is None else np.asarray(origin, float)
    corners = CORNERS @ np.asarray(matrix, float) + o
    xs, ys, zs = [], [], []
    for a, b in CELL_EDGES:
        for arr, d in ((xs, 0), (ys, 1), (zs, 2)):
            arr += [corners[a, d], corners[b, d], None]
    return {"type": "scatter3d", "mode": "lines", "x": xs, "y": ys, "z": zs, "name": "cell", "hoverinfo": "skip",
                "line": {"color": "#444444", "width": 3}, "showlegend": False}


def segments_trace(pairs: list[tuple[np.ndarray, np.ndarray]], color: str, name: str, width: float = 5) -> dict[str, Any]:
    xs, ys, zs = [], [], []
    for a, b in pairs:
        xs += [a[0], b[0], None]
        ys += [a[1], b[1], None]
        zs += [a[2], b[2], None]
    return {"type": "scatter3d", "mode": "lines", "x": xs, "y": ys, "z": zs, "name": name, "hoverinfo": "skip",
                "line": {"color": color, "width": width}, "showlegend": False}


def atoms_traces(positions: np.ndarray, symbols: list[str], colors: dict[str, str] | None = None,
                 radii: dict[str, float] | None = None, scale: float = 18.0) -> list[dict[str, Any]]:
    """One Scatter3d (markers) per element."""
    by: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(symbols):
        by[s].append(i)
    traces = []
    for s, idx in by.items():
        p = np.asarray(positions)[idx]
        color = (colors or {}).get(s) or element_color(s)
        r = (radii or {}).get(s, 0.5)
        traces.append({"type": "scatter3d", "mode": "markers", "x": p[:, 0].tolist(), "y": p[:, 1].tolist(), "z": p[:, 2].tolist(),
                           "name": f"{s} ({len(idx)})", "text": [s] * len(idx), "hovertemplate": f"{s}<extra></extra>",
                           "marker": {"size": max(4.0, scale * r), "color": color, "line": {"color": "#333333", "width": 1},
                                       "opacity": 1.0}})
    return traces


def element_color(symbol: str) -> str:
    """Jmol colours from pymatgen's Element data (grey when unknown)."""
    try:
        from pymatgen.vis.structure_vtk import EL_COLORS

        rgb = EL_COLORS["Jmol"].get(symbol)
        if rgb is not None:
            return "#{:02x}{:02x}{:02x}".format(*rgb)
    except (ImportError, KeyError, TypeError):  # pymatgen's VTK colour table missing: grey
        return "#909090"
    return "#909090"


def atoms_in_cell(structure: Any, tol: float = 0.02) -> tuple[np.ndarray, list[str]]:
    """Cartesian positions and symbols of the atoms in the cell plus their images on faces/edges/corners."""
    frac = np.mod(structure.frac_coords, 1.0)
    cart, syms = [], []
    m = structure.lattice.matrix
    for f, site in zip(frac, structure):
        shifts = [[0.0], [0.0], [0.0]]
        for d in range(3):
            if f[d] < tol:
                shifts[d].append(1.0)
        for a in shifts[0]:
            for b in shifts[1]:
                for c in shifts[2]:
                    cart.append((f + [a, b, c]) @ m)
                    syms.append(site.specie.symbol)
    return np.asarray(cart), syms


def figure(traces: list[dict[str, Any]], title: str, height: int = 420) -> dict[str, Any]:
    """A plotly figure dict (panel's Plotly pane takes dicts; no plotly import needed here)."""
    axis = {"showbackground": False, "showticklabels": False, "title": "", "showgrid": False, "zeroline": False}
    return {"data": traces, "layout": {
        "title": {"text": title, "font": {"size": 13}}, "height": height, "margin": {"l": 0, "r": 0, "t": 30, "b": 0},
        "scene": {"xaxis": axis, "yaxis": axis, "zaxis": axis, "aspectmode": "data"},
        "legend": {"orientation": "h", "y": 0.0}, "uirevision": "keep"}}


def plotly_js_url() -> str:
    """Panel's bundled plotly.js, served by this Panel server (relative to the app page; no CDN)."""
    try:
        from panel.models.plotly import PlotlyPlot

        for url in PlotlyPlot.__javascript__:
            if "plotly" in url and url.endswith(".js"):
                return url
    except (ImportError, AttributeError, TypeError):  # an older/newer panel layout: its usual bundle path
        return "static/extensions/panel/bundled/plotlyplot/plotly-3.1.0.min.js"
    return "static/extensions/panel/bundled/plotlyplot/plotly-3.1.0.min.js"


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy -> lists/floats."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def figure_html(fig: dict[str, Any], height: int = 420, css_class: str = "mlcm-3d") -> str:
    """An iframe drawing ``fig`` (a plotly figure dict) with the server's plotly.js."""
    payload = json.dumps(_clean(fig), separators=(",", ":")).replace("</", "<\\/")
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><script src='{plotly_js_url()}'></script></head>"
           "<body style='margin:0'><div id='fig' style='width:100%;height:100vh'></div><script>"
           f"const f={payload};Plotly.newPlot('fig',f.data,f.layout,{{displaylogo:false,responsive:true}})"
           ".then(()=>document.body.setAttribute('data-rendered','1'));</script></body></html>")
    return (f"<iframe class='{css_class}' srcdoc=\"{html.escape(doc, quote=True)}\" "
            f"style='width:100%;height:{height}px;border:0' loading='eager'></iframe>")
