"""The embedding map: a datashaded UMAP of every material, lasso/box/click selection, clusters, overlays.

Rendering: every map position aggregated by datashader (``Canvas.points``, ``shade``, ``dynspread``, called
directly: HoloViews' operations cost several times more per change) into one ``hv.RGB`` for the current
viewport (a ``RangeXY`` stream), so zoom and pan re-aggregate at full resolution. Two layers composited into
that image: every material in light grey, then the coloured layer (the selection when there is one, else
everything): unselected materials are greyed, not hidden.
A decimated, invisible ``hv.Points`` layer on top carries the hover (id, formula) and the selection tools.

Selection: the lasso (``hv.streams.Lasso``) and box (``hv.streams.BoundsXY``) polygons go to
``Explorer.select`` (grid index + prepared shapely), never to HoloViews' own spatial_select; a click
(``hv.streams.Tap``) focuses the nearest material.
"""

from __future__ import annotations

import html
import threading
from collections import OrderedDict

import datashader as ds
import datashader.transfer_functions as tf
import holoviews as hv
import holoviews.plotting.bokeh
import numpy as np
import pandas as pd
import panel as pn
import param
import xarray
from bokeh.palettes import Viridis256
from holoviews.core.spaces import Callable
from holoviews.operation import decimate

from app.panes import LiveHTML, push_layers
from app.store import AppState, UserError, element_symbol, guarded

WIDTH, HEIGHT = 640, 560
FRAME = (560, 480)  # the plot frame inside WIDTH x HEIGHT (axes and toolbar take the rest); PlotSize refines it
_SHADE_CACHE: OrderedDict = OrderedDict()
_SHADE_LOCK = threading.Lock()
GREY = ["#dedede", "#b4b4b4"]
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#7f7f7f", "#393b79", "#e7ba52"]
COLOR_MODES = ["crystal system", "source", "modality coverage", "property", "element present",
               "uncertainty: prediction spread", "uncertainty: modality disagreement", "uncertainty: sparse region"]
NUMERIC_MODES = {"uncertainty: prediction spread": "prediction_spread",
                 "uncertainty: modality disagreement": "disagreement", "uncertainty: sparse region": "region_count"}
CATEGORICAL = {"crystal system": "crystal_system", "source": "source", "modality coverage": "coverage"}
NUMERIC_CMAP = list(Viridis256)


def _extent(f: pd.DataFrame) -> tuple[tuple[float, float], tuple[float, float]]:
    pad_x = 0.03 * float(f["x"].max() - f["x"].min())
    pad_y = 0.03 * float(f["y"].max() - f["y"].min())
    return ((float(f["x"].min()) - pad_x, float(f["x"].max()) + pad_x),
            (float(f["y"].min()) - pad_y, float(f["y"].max()) + pad_y))


def _over(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``src`` composited over ``dst`` (packed RGBA uint32): ``datashader.composite.over``'s float64 formula in
    numpy, without its ~2.6 s numba compilation in every new server process, and only where ``src`` is visible
    (elsewhere ``dst`` as it is; datashader's formula can round such a pixel one level down)."""
    out = dst.copy()
    shown = (src >> 24) != 0
    s, d = src[shown], dst[shown]
    sr, sg, sb, sa = (((s >> shift) & 255) / 255 for shift in (0, 8, 16, 24))
    dr, dg, db, da = (((d >> shift) & 255) / 255 for shift in (0, 8, 16, 24))
    factor = 1 - sa
    a = sa + da * factor  # > 0: sa > 0
    mixed = np.zeros(s.shape, np.uint32)
    for shift, c in zip((0, 8, 16, 24), ((sr * sa + dr * da * factor) / a, (sg * sa + dg * da * factor) / a,
                                         (sb * sa + db * da * factor) / a, a)):
        mixed |= np.minimum(255, (c * 255).astype(np.uint32)) << np.uint32(shift)
    out[shown] = mixed
    return out


def _grey_layer(state: AppState, cvs: ds.Canvas, view: tuple) -> tf.Image:
    """Every material in grey for a viewport: the same for every colouring and selection, so computed once
    per viewport and process."""
    key = ("grey", state.explore_path, view)
    with _SHADE_LOCK:
        img = _SHADE_CACHE.get(key)
    if img is None:
        img = tf.shade(cvs.points(state.frame, "x", "y", ds.count()), cmap=GREY)
        _remember(key, img)
    return img


def _shade_categories(agg, colours: dict[str, str], min_alpha: int) -> tf.Image:
    """``tf.shade`` of a count_cat aggregate, computed on the occupied pixels only (~3 % of the frame; the
    full-frame colour mixing took ~50 ms per change). Same colours (count-weighted mean of the category
    colours, truncated to 8 bits) and alpha (eq_hist of the total count, via datashader itself); empty pixels
    are transparent black instead of datashader's transparent mean colour, which nothing displays."""
    counts = agg.data  # (height, width, category) counts
    total = counts.sum(axis=2)
    dims = agg.dims[:2]
    coords = {d: agg.coords[d] for d in dims}
    out = np.zeros(total.shape, np.uint32)
    occupied = total > 0
    if occupied.any():
        alpha = tf.shade(xarray.DataArray(total, coords=coords, dims=dims), cmap="#000000", how="eq_hist",
                         min_alpha=min_alpha).data >> 24
        palette = np.array([tf.rgb(colours[c]) for c in agg.coords[agg.dims[2]].values], np.float32)  # (K, 3)
        mixed = counts[occupied].astype(np.float32) @ palette / total[occupied, None]
        r, g, b = mixed.astype(np.uint8).astype(np.uint32).T
        out[occupied] = r | g << 8 | b << 16 | alpha[occupied].astype(np.uint32) << 24
    return tf.Image(out, coords=coords, dims=dims)


def _remember(key: tuple, value) -> None:
    with _SHADE_LOCK:
        _SHADE_CACHE[key] = value
        while len(_SHADE_CACHE) > 20:
            _SHADE_CACHE.popitem(last=False)


def _rgb_element(img: tf.Image, xr: tuple[float, float], yr: tuple[float, float]) -> hv.RGB:
    """A shaded datashader image as an ``hv.RGB`` (rows top-down, as images are drawn)."""
    rgba = np.flipud(img.data.view(np.uint8).reshape(*img.shape, 4))
    return hv.RGB(np.ascontiguousarray(rgba), bounds=(xr[0], yr[0], xr[1], yr[1]))


def _hover_frame(state: AppState) -> pd.DataFrame:
    """The columns the hover layer needs (a slim copy: HoloViews computes ranges over every column it gets)."""
    key = ("hover", state.explore_path)
    if key not in _SHADE_CACHE:
        _SHADE_CACHE[key] = state.frame[["x", "y", "id", "formula"]].copy()
    return _SHADE_CACHE[key]


def color_key(categories: list[str]) -> dict[str, str]:
    return {c: ("#9a9a9a" if c == "unknown" else PALETTE[i % len(PALETTE)]) for i, c in enumerate(categories)}


class MapView(pn.viewable.Viewer):
    """The datashaded map with its colouring controls, legend and cluster list."""

    state = param.ClassSelector(class_=AppState)
    color_by = param.Selector(default="crystal system", objects=COLOR_MODES, doc="what the colour shows")
    prop = param.Selector(default=None, objects=[], doc="property for 'property' colouring")
    element = param.String(default="O", doc="element for 'element present' colouring")
    show_clusters = param.Boolean(default=True, doc="label the HDBSCAN clusters on the map")
    cluster = param.Selector(default=None, objects=[], allow_None=True, doc="select a whole cluster")

    def __init__(self, **params):
        super().__init__(**params)
        f = self.state.frame
        props = [c for c in self.state.param.range_column.objects if c != "(none)" and c in f]
        self.param.prop.objects = props
        if props and self.prop is None:
            self.prop = "band_gap_mp_pbe" if "band_gap_mp_pbe" in props else props[0]
        clusters = self.state.clusters
        self._cluster_ids = {row.label: row.ids for row in clusters.itertuples()}
        self.param.cluster.objects = [None, *self._cluster_ids]
        self._xr, self._yr = _extent(f)
        self._element_cache: dict[str, np.ndarray] = {}
        self.param.watch(self._on_cluster, "cluster")
        self.param.watch(self._on_element, ["element", "color_by"])
        self._plot = self._build()
        self._legend = LiveHTML(self._legend_html, sizing_mode="stretch_width", margin=(0, 10))

    # ---- data for the layers ----------------------------------------------------------------------
    def _has_element(self, symbol: str) -> np.ndarray:
        symbol = symbol.strip()[:1].upper() + symbol.strip()[1:].lower()
        if symbol not in self._element_cache:
            self._element_cache[symbol] = np.array([symbol in e for e in self.state.frame["elements"]], bool)
        return self._element_cache[symbol]

    def coloured(self, color_by: str, prop: str | None, element: str, selected_ids: list[str]) -> tuple[pd.DataFrame, str | None, str]:
        """(points of the coloured layer, value column or None, 'cat'|'num'|'flat')."""
        f = self.state.frame
        mask = np.ones(len(f), bool)
        if selected_ids:
            mask &= f["id"].isin(selected_ids).to_numpy()
        if color_by in CATEGORICAL:
            col = CATEGORICAL[color_by]
            return f.loc[mask, ["x", "y", col]], col, "cat"
        if color_by == "element present":
            mask &= self._has_element(element or "O")
            return f.loc[mask, ["x", "y"]], None, "flat"
        col = prop if color_by == "property" else NUMERIC_MODES[color_by]
        if col is None or col not in f:
            return f.loc[mask, ["x", "y"]].iloc[:0], None, "flat"
        mask &= np.isfinite(f[col].to_numpy())
        return f.loc[mask, ["x", "y", col]], col, "num"

    def _value_span(self, col: str) -> tuple[float, float]:
        v = self.state.frame[col].to_numpy()
        v = v[np.isfinite(v)]
        if not len(v):
            return 0.0, 1.0
        lo, hi = np.percentile(v, [1, 99])
        return float(lo), float(hi if hi > lo else lo + 1)

    def _shade(self, x_range=None, y_range=None, width=None, height=None, scale=None, color_by="crystal system", prop=None,
               element="O", selected_ids=()):
        """Grey layer of everything + coloured layer, aggregated for the viewport at the frame's pixel size.

        Unselected views are shared by all sessions of the process (the first paint of a new session then
        costs no aggregation)."""
        xr = tuple(float(v) for v in x_range) if x_range else self._xr
        yr = tuple(float(v) for v in y_range) if y_range else self._yr
        w = int(width) if width else FRAME[0]
        h = int(height) if height else FRAME[1]
        key = None
        if not selected_ids:
            key = (self.state.explore_path, xr, yr, w, h, color_by, prop, element)
            with _SHADE_LOCK:
                if key in _SHADE_CACHE:
                    _SHADE_CACHE.move_to_end(key)
                    return _SHADE_CACHE[key]
        out = self._shade_uncached(xr, yr, w, h, color_by, prop, element, selected_ids)
        if key is not None:
            _remember(key, out)
        return out

    def _shade_uncached(self, xr, yr, w, h, color_by, prop, element, selected_ids):
        """datashader directly, not HoloViews' operations: the same aggregation and colours at a fraction of
        the cost (the operations' parameter machinery took most of the ~250 ms per change; lasso, cluster,
        colour and zoom each re-shade)."""
        cvs = ds.Canvas(plot_width=w, plot_height=h, x_range=xr, y_range=yr)
        base = _grey_layer(self.state, cvs, (xr, yr, w, h))
        pts, col, kind = self.coloured(color_by, prop, element, list(selected_ids))
        img = base
        if len(pts):
            if kind == "cat":
                cats = list(self.state.frame[col].cat.categories)
                pts = pts.assign(**{col: pd.Categorical(pts[col].astype(str), categories=cats)})
                top = _shade_categories(cvs.points(pts, "x", "y", ds.count_cat(col)), color_key(cats), min_alpha=90)
            elif kind == "num":
                top = tf.shade(cvs.points(pts, "x", "y", ds.mean(col)), cmap=NUMERIC_CMAP,
                               span=self._value_span(col), how="linear", min_alpha=200)
            else:
                top = tf.shade(cvs.points(pts, "x", "y", ds.count()), cmap=["#d62728", "#d62728"], min_alpha=200)
            img = base.copy(data=_over(tf.dynspread(top, threshold=0.8, max_px=4).data, base.data))
        return _rgb_element(img, xr, yr)

    def _hover_points(self):
        return hv.Points(_hover_frame(self.state), ["x", "y"], ["id", "formula"])

    def _cluster_labels(self, show_clusters=True):
        c = self.state.clusters
        if not show_clusters or c.empty:
            return hv.Labels(pd.DataFrame({"x": [], "y": [], "label": []}), ["x", "y"], "label", label="labels")
        return hv.Labels(c[["x", "y", "label"]], ["x", "y"], "label", label="labels")

    def _candidates(self, candidates=None):
        cols = ["x", "y", "rank", "id", "formula", "score"]
        if candidates is None or len(candidates) == 0:
            return hv.Points(pd.DataFrame({c: [] for c in cols}), ["x", "y"], cols[2:], label="candidates")
        return hv.Points(candidates[cols], ["x", "y"], cols[2:], label="candidates")

    def _marks(self, placed=None, focus_id=""):
        rows = []
        if placed:
            rows.append({"x": placed["x"], "y": placed["y"], "what": f"upload: {placed['name']} ({placed['formula']})"})
        if focus_id:
            f = self.state.frame
            hit = f.index[f["id"] == focus_id]
            if len(hit):
                r = f.loc[hit[0]]
                rows.append({"x": r["x"], "y": r["y"], "what": f"focus: {focus_id} {r['formula']}"})
        df = pd.DataFrame(rows, columns=["x", "y", "what"])
        return hv.Points(df, ["x", "y"], ["what"], label="marks")

    def _layer(self, fn, streams: list | None = None) -> hv.DynamicMap:
        """A layer whose callback reads the current state each time it is called (no memoised stale frame).

        HoloViews re-renders every layer of the overlay on zoom/pan; these layers must then show the current
        colouring/selection/candidates, which ``_push`` has already put into the plot directly."""
        return hv.DynamicMap(Callable(fn, memoize=False), streams=streams or [])

    def _build(self):
        s = self.state
        self._range = hv.streams.RangeXY()
        self._size = hv.streams.PlotSize()
        shaded = self._layer(self._shade_view, [self._range, self._size])
        hover = decimate(hv.DynamicMap(self._hover_points), max_samples=3000, dynamic=True).opts(
            tools=["hover", "lasso_select", "box_select", "tap"], size=6, alpha=0.0, nonselection_alpha=0.0,
            selection_alpha=0.0, hover_alpha=0.8, hover_line_color="black", hover_fill_alpha=0.0)
        labels = self._layer(lambda: self._cluster_labels(self.show_clusters)).opts(
            text_font_size="9pt", text_color="#222222", text_font_style="bold")
        cands = self._layer(lambda: self._candidates(s.candidates)).opts(
            size=9, fill_alpha=0.0, line_color="#d62728", line_width=2, tools=["hover"])
        marks = self._layer(lambda: self._marks(s.placed, s.focus_id)).opts(
            marker="star", size=18, color="#ff00aa", line_color="black", tools=["hover"])
        overlay = (shaded * hover * cands * marks * labels).opts(
            width=WIDTH, height=HEIGHT, xlabel="UMAP 1", ylabel="UMAP 2", show_legend=False,
            active_tools=["pan", "wheel_zoom"], title="Embedding map (crystal embeddings, UMAP)",
            xlim=self._xr, ylim=self._yr)
        # sourced on the layer that carries the selection tools (an overlay-level source is not linked)
        self._lasso = hv.streams.Lasso(source=hover)
        self._bounds = hv.streams.BoundsXY(source=hover)
        self._tap = hv.streams.Tap(source=hover)
        self._lasso.add_subscriber(self._on_lasso)
        self._bounds.add_subscriber(self._on_bounds)
        self._tap.add_subscriber(self._on_tap)
        # a change re-sends only the layer it affects (see _push), not the whole overlay
        self.param.watch(lambda *_: self._push("shaded"), ["color_by", "prop", "element"])
        s.param.watch(lambda *_: self._push("shaded"), "selected_ids")
        s.param.watch(lambda *_: self._push("candidates"), "candidates")
        s.param.watch(lambda *_: self._push("marks"), ["placed", "focus_id"])
        self.param.watch(lambda *_: self._push("labels"), "show_clusters")
        return pn.pane.HoloViews(overlay, css_classes=["mlcm-map"], width=WIDTH, height=HEIGHT, linked_axes=False)

    def _shade_view(self, x_range=None, y_range=None, width=None, height=None, **_):
        """The image for the current viewport, colouring and selection (the shaded layer's callback)."""
        return self._shade(x_range, y_range, width, height, color_by=self.color_by, prop=self.prop,
                           element=self.element, selected_ids=tuple(self.state.selected_ids)).relabel("shaded")

    def _element(self, layer: str):
        s = self.state
        if layer == "shaded":
            return self._shade_view(self._range.x_range, self._range.y_range, self._size.width, self._size.height)
        if layer == "candidates":
            return self._candidates(s.candidates)
        if layer == "marks":
            return self._marks(s.placed, s.focus_id)
        return self._cluster_labels(self.show_clusters)

    def _push(self, layer: str) -> None:
        """Send only ``layer``'s new data to the rendered plot (app.panes.push_layers says why)."""
        if self._plot._plots:
            push_layers(self._plot, {layer: self._element(layer)})

    # ---- interaction ------------------------------------------------------------------------------
    @guarded("lasso selection")
    def _on_lasso(self, geometry=None, **_):
        if geometry is None or len(geometry) < 3:
            return
        ids = self.state.select_polygon(np.asarray(geometry, float), origin="lasso")
        self.state.notify(f"lasso selected {len(ids)} materials", "info")

    @guarded("box selection")
    def _on_bounds(self, bounds=None, **_):
        if bounds is None:
            return
        x0, y0, x1, y1 = bounds
        ids = self.state.select_polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], origin="box")
        self.state.notify(f"box selected {len(ids)} materials", "info")

    @guarded("click")
    def click(self, x=None, y=None, **_):
        if x is None or y is None:
            return
        (x0, x1) = self._range.x_range or self._xr
        mid = self.state.nearest(x, y, max_dist=0.02 * abs(x1 - x0))
        if mid is None:  # said, not silently ignored
            self.state.notify("no material at the click: click on a point (zoom in where they are dense)", "info")
            return
        self.state.focus_id = mid

    _on_tap = click

    def _on_cluster(self, event) -> None:
        if event.new is None:
            return
        self.state.select_ids(self._cluster_ids[event.new], origin=f"cluster {event.new}")
        self.state.notify(f"selected {event.new} ({len(self._cluster_ids[event.new])} materials)", "info")

    def clear(self, *_):
        self.cluster = None
        self.state.select_ids([], origin="")
        self.state.notify("selection cleared: all materials", "info")  # the last "lasso selected N" is stale

    @guarded("element colouring")
    def _on_element(self, *_) -> None:
        if self.color_by == "element present":
            element_symbol(self.element or "O")  # a message for "Xx" (the legend says it too)

    # ---- legend -----------------------------------------------------------------------------------
    @param.depends("color_by", "prop", "element")
    def _legend_html(self):
        f = self.state.frame
        grey = "<span style='color:#999'>grey: not selected or no value</span>"
        if self.color_by in CATEGORICAL:
            col = CATEGORICAL[self.color_by]
            counts = f[col].astype(str).value_counts()
            key = color_key(list(f[col].cat.categories))
            items = "".join(f"<span style='margin-right:10px;white-space:nowrap'><span style='display:inline-block;width:10px;"
                            f"height:10px;background:{c};margin-right:3px'></span>{k} ({counts.get(k, 0):,})</span>"
                            for k, c in key.items())
            return f"<div style='font-size:12px'>{items}<br>{grey}</div>"
        if self.color_by == "element present":
            try:
                symbol = element_symbol(self.element or "O")
            except UserError as e:
                return (f"<div style='font-size:12px;color:#b00'>{html.escape(str(e), quote=False)}: type a symbol "
                        "such as O or Fe</div>")
            n = int(self._has_element(symbol).sum())
            return (f"<div style='font-size:12px'><span style='color:#d62728'>■</span> contains {symbol} "
                    f"({n:,})<br>{grey}</div>")
        col = self.prop if self.color_by == "property" else NUMERIC_MODES[self.color_by]
        if col is None:
            return ""
        lo, hi = self._value_span(col)
        n = int(np.isfinite(f[col]).sum())
        note = {"prediction_spread": ("property heads' calibrated σ in units of their test MAE, averaged over band "
                                      "gap, formation energy, K, G: high = the fine-tuned models are unsure"),
                "disagreement": "1 − mean cosine between a material's own modality embeddings (needs ≥ 2 modalities)",
                "region_count": "materials in the map cell: low = sparse region, few similar known materials"}.get(col, "")
        return (f"<div style='font-size:12px'><b>{col}</b> ({n:,} with a value) {lo:.3g} "
                "<span style='display:inline-block;width:160px;height:10px;background:linear-gradient(to right,"
                "#440154,#3b528b,#21918c,#5ec962,#fde725)'></span> "
                f"{hi:.3g}<br>{note} {grey}</div>")

    def controls(self) -> pn.Column:
        clear = pn.widgets.Button(label="Clear selection", color="default")
        clear.on_click(self.clear)
        return pn.Column(
            pn.widgets.Select.from_param(self.param.color_by, label="Colour by"),
            pn.widgets.Select.from_param(self.param.prop, label="Property"),
            pn.widgets.TextInput.from_param(self.param.element, label="Element (for 'element present')"),
            pn.widgets.Checkbox.from_param(self.param.show_clusters, label="Label clusters"),
            pn.widgets.Select.from_param(self.param.cluster, label="Select a cluster (HDBSCAN)", size=6),
            clear,
        )

    def __panel__(self):
        return pn.Column(self._plot, self._legend, width=WIDTH + 20)
