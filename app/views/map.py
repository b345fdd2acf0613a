"""The embedding map: a datashaded UMAP of every material, lasso/box/click selection, clusters, overlays.

Rendering: every map position aggregated by datashader (``Canvas.points``, ``shade``, ``dynspread``, called
directly: HoloViews' operations cost several times more per change) into one ``hv.RGB`` for the current
viewport (a ``RangeXY`` stream), so zoom and pan re-aggregate at full resolution. Two layers composited into
that image: every material in light grey, then the coloured layer (the selection when there is one, else
everything): unselected materials are greyed, not hidden.
An invisible ``hv.Points`` layer on top carries the hover (id, formula) and the selection tools: a uniform
random sample of at most ``HOVER_SAMPLES`` of the points in view (``ViewportSampler``: the same kind of
sample HoloViews' ``decimate`` drew, deterministic per viewport; at 1M points the layer's callback took
~20 ms instead of ~170 ms with ``decimate``, on 2 busy cores).

Both layers read a per-frame ``_MapIndex`` built once and shared by every session: the hover sampler, and
the frame's positions sorted by x, so that a zoomed re-render aggregates only the points whose x lies in view
(a contiguous slice; datashader drops the rest anyway) instead of scanning every point. The image is
identical: counts do not depend on the order of the points, and the mean of a numeric colouring is taken
over the visible points in their original order.

Selection: the lasso (``hv.streams.Lasso``) and box (``hv.streams.BoundsXY``) polygons go to
``Explorer.select`` (grid index + prepared shapely), never to HoloViews' own spatial_select; a click
(``hv.streams.Tap``) focuses the nearest material.
"""

from __future__ import annotations

import html
import threading
from collections import OrderedDict
from functools import partial

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

from app.inputs import UserError, element_symbol
from app.panes import LiveHTML, on_document, plot_handles, push_layers
from app.state import AppState, guarded
from app.views.shortcuts import SHORTCUTS_TEXT
from mlcm_core.data.conventions import label_title
from mlcm_core.explore.index import ViewportSampler

HEIGHT = 560  # the map stretches to its width (responsive) at this height
MIN_WIDTH = 420  # the map stretches to the width it is given, never narrower than this
FRAME = (560, 480)  # the plot frame inside WIDTH x HEIGHT (axes and toolbar take the rest); PlotSize refines it
HOVER_SAMPLES = 3000  # at most this many points in view carry the hover tooltips and selection tools
HOVER_COLUMNS = ["x", "y", "id", "formula"]
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


def _grey_layer(state: AppState, cvs: ds.Canvas, view: tuple, index: "_MapIndex", rows: slice,
                keep: np.ndarray | None = None, layers: tuple | None = None) -> tf.Image:
    """Every material (of the shown ``layers``; ``keep``: their mask over the frame's rows, None = all) in grey
    for a viewport: the same for every colouring and selection, so computed once per viewport, layers and
    process. ``rows``: the x-sorted positions in view (``_MapIndex.x_slice``)."""
    key = ("grey", state.explore_path, view, layers)
    with _SHADE_LOCK:
        img = _SHADE_CACHE.get(key)
    if img is None:
        xs, ys = index.sorted_xy()
        sel = rows if keep is None else rows.start + np.flatnonzero(keep[index.order()[rows]])
        img = tf.shade(cvs.points(_columns(x=xs[sel], y=ys[sel]), "x", "y", ds.count()), cmap=GREY)
        _remember(key, img)
    return img


def _columns(**arrays) -> pd.DataFrame:
    """A frame over the given 1-D arrays, without copying them (a view of a slice stays a view)."""
    return pd.DataFrame(arrays, copy=False)


class _MapIndex:
    """What the map's layers need of one map frame, built once (lazily, per part) and shared by every session.

    * ``sampler``: ``ViewportSampler`` over the map positions, for the hover layer.
    * ``order``, ``sorted_xy``: row positions sorted by x, and x, y in that order: the points whose x lies in
      a range are a contiguous slice (``x_slice``), so a zoomed view aggregates only those.
    * ``sorted_column``: a colour column in the same order (categorical codes, or values).
    """

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self.n = len(frame)
        self._lock = threading.Lock()
        self._sampler: ViewportSampler | None = None
        self._order: np.ndarray | None = None
        self._xy: tuple[np.ndarray, np.ndarray] | None = None
        self._columns: dict[str, np.ndarray] = {}

    @property
    def sampler(self) -> ViewportSampler:
        with self._lock:
            if self._sampler is None:
                self._sampler = ViewportSampler(self.frame[["x", "y"]].to_numpy(np.float64))
            return self._sampler

    def hover(self, x_range: tuple[float, float], y_range: tuple[float, float],
              keep: np.ndarray | None = None) -> pd.DataFrame:
        """x, y, id, formula of a uniform sample of at most HOVER_SAMPLES of the points in the viewport (all of
        them when there are no more), in frame order; the same viewport gives the same sample. ``keep``: a mask
        over the frame's rows (hidden map layers), applied to the sample."""
        rows = self.sampler.sample(x_range, y_range, HOVER_SAMPLES)
        if keep is not None:
            rows = rows[keep[rows]]
        # column by column: a DataFrame.iloc[rows, cols] of a wide frame cost ~60 ms at 1M rows
        return pd.DataFrame({c: self.frame[c].to_numpy()[rows] for c in HOVER_COLUMNS})

    def order(self) -> np.ndarray:
        with self._lock:
            if self._order is None:
                x = self.frame["x"].to_numpy(np.float64)
                order = np.argsort(x, kind="stable")
                self._xy = (np.ascontiguousarray(x[order]), self.frame["y"].to_numpy(np.float64)[order])
                self._order = order
            return self._order

    def sorted_xy(self) -> tuple[np.ndarray, np.ndarray]:
        self.order()
        return self._xy

    def sorted_column(self, col: str) -> np.ndarray:
        """``col`` in x order: its codes when categorical, else its values."""
        order = self.order()
        with self._lock:
            if col not in self._columns:
                v = self.frame[col]
                v = v.cat.codes.to_numpy() if isinstance(v.dtype, pd.CategoricalDtype) else v.to_numpy()
                self._columns[col] = v[order]
            return self._columns[col]

    def x_slice(self, x_range: tuple[float, float]) -> slice:
        """The x-sorted positions of every point with x0 <= x <= x1 (datashader draws no other), widened by one
        ulp each side (a point just outside is dropped by datashader: the image cannot change)."""
        xs, _ = self.sorted_xy()
        x0, x1 = sorted(x_range)
        lo = int(np.searchsorted(xs, np.nextafter(x0, -np.inf), "left"))
        hi = int(np.searchsorted(xs, np.nextafter(x1, np.inf), "right"))
        return slice(lo, hi)


_INDEXES: OrderedDict = OrderedDict()  # id(frame) -> _MapIndex (the frame is held: the id is not reused)
_INDEX_LOCK = threading.Lock()


def _map_index(frame: pd.DataFrame) -> _MapIndex:
    """The ``_MapIndex`` of this frame object (store.map_frame caches frames, so one per map data)."""
    with _INDEX_LOCK:
        index = _INDEXES.get(id(frame))
        if index is None or index.frame is not frame:
            index = _INDEXES[id(frame)] = _MapIndex(frame)
            while len(_INDEXES) > 2:  # store.map_frame keeps 2 frames
                _INDEXES.popitem(last=False)
        return index


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
        self.param.prop.objects = {label_title(c): c for c in props}  # the menu shows names with units
        if props and self.prop is None:
            self.prop = "band_gap_mp_pbe" if "band_gap_mp_pbe" in props else props[0]
        clusters = self.state.clusters
        self._cluster_ids = {row.label: row.ids for row in clusters.itertuples()}
        self.param.cluster.objects = [None, *self._cluster_ids]
        self._home = _extent(f)  # the whole map: the first view, and "reset view"
        v = self.state.map_view  # a shared link's viewport, else the whole map
        self._xr, self._yr = ((v[0], v[1]), (v[2], v[3])) if len(v) == 4 else self._home
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
               element="O", selected_ids=(), layers=None):
        """Grey layer of everything + coloured layer, aggregated for the viewport at the frame's pixel size.

        Unselected views are shared by all sessions of the process (the first paint of a new session then
        costs no aggregation). ``layers``: the map layers shown (None: all)."""
        layers = self._layers_key(layers)
        xr = tuple(float(v) for v in x_range) if x_range else self._xr
        yr = tuple(float(v) for v in y_range) if y_range else self._yr
        w = int(width) if width else FRAME[0]
        h = int(height) if height else FRAME[1]
        key = None
        if not selected_ids:
            key = (self.state.explore_path, xr, yr, w, h, color_by, prop, element, layers)
            with _SHADE_LOCK:
                if key in _SHADE_CACHE:
                    _SHADE_CACHE.move_to_end(key)
                    return _SHADE_CACHE[key]
        out = self._shade_uncached(xr, yr, w, h, color_by, prop, element, selected_ids, layers)
        if key is not None:
            _remember(key, out)
        return out

    def _layers_key(self, layers) -> tuple | None:
        """The shown layers as a cache key: None when every layer is shown (the common, shared case)."""
        if layers is None or self.state.layer_mask(layers) is None:
            return None
        return tuple(sorted(layers))

    def _shade_uncached(self, xr, yr, w, h, color_by, prop, element, selected_ids, layers=None):
        """datashader directly, not HoloViews' operations: the same aggregation and colours at a fraction of
        the cost (the operations' parameter machinery took most of the ~250 ms per change; lasso, cluster,
        colour and zoom each re-shade). Only the points whose x lies in view are aggregated (``_MapIndex``)."""
        cvs = ds.Canvas(plot_width=w, plot_height=h, x_range=xr, y_range=yr)
        index = _map_index(self.state.frame)
        rows = index.x_slice(xr)
        keep = None if layers is None else self.state.layer_mask(layers)
        base = _grey_layer(self.state, cvs, (xr, yr, w, h), index, rows, keep, layers)
        pts, col, kind = self._visible(color_by, prop, element, list(selected_ids), index, rows, keep)
        img = base
        if len(pts):
            if kind == "cat":
                cats = list(self.state.frame[col].cat.categories)
                top = _shade_categories(cvs.points(pts, "x", "y", ds.count_cat(col)), color_key(cats), min_alpha=90)
            elif kind == "num":
                top = tf.shade(cvs.points(pts, "x", "y", ds.mean(col)), cmap=NUMERIC_CMAP,
                               span=self._value_span(col), how="linear", min_alpha=200)
            else:
                top = tf.shade(cvs.points(pts, "x", "y", ds.count()), cmap=["#d62728", "#d62728"], min_alpha=200)
            img = base.copy(data=_over(tf.dynspread(top, threshold=0.8, max_px=4).data, base.data))
        return _rgb_element(img, xr, yr)

    def _visible(self, color_by: str, prop: str | None, element: str, selected_ids: list[str], index: _MapIndex,
                 rows: slice, keep: np.ndarray | None = None) -> tuple[pd.DataFrame, str | None, str]:
        """``coloured`` restricted to the x-sorted positions ``rows`` (``_MapIndex.x_slice``): the same points
        and values wherever the canvas can show them, taken from the x-sorted columns (views of them when
        nothing is masked). A numeric colouring is a per-pixel mean, whose floating-point sum depends on the
        order of the points: its points are taken in frame order, as ``coloured`` gives them."""
        f = self.state.frame
        mask = f["id"].isin(selected_ids).to_numpy() if selected_ids else None  # over the frame's rows
        if keep is not None:  # hidden map layers
            mask = keep if mask is None else mask & keep
        col = None
        if color_by in CATEGORICAL:
            col, kind = CATEGORICAL[color_by], "cat"
        elif color_by == "element present":
            kind = "flat"
            has = self._has_element(element or "O")
            mask = has if mask is None else mask & has
        else:
            col, kind = (prop if color_by == "property" else NUMERIC_MODES[color_by]), "num"
            if col is None or col not in f:
                return _columns(x=np.zeros(0), y=np.zeros(0)), None, "flat"
            finite = np.isfinite(f[col].to_numpy())
            mask = finite if mask is None else mask & finite
        if kind == "num":
            if rows.start == 0 and rows.stop == index.n:
                keep = mask
            else:
                keep = np.zeros(index.n, bool)
                keep[index.order()[rows]] = True
                keep &= mask
            pos = np.flatnonzero(keep)
            return _columns(x=f["x"].to_numpy()[pos], y=f["y"].to_numpy()[pos], **{col: f[col].to_numpy()[pos]}), col, kind
        sel = rows if mask is None else rows.start + np.flatnonzero(mask[index.order()[rows]])
        xs, ys = index.sorted_xy()
        out = {"x": xs[sel], "y": ys[sel]}
        if kind == "cat":
            out[col] = pd.Categorical.from_codes(index.sorted_column(col)[sel], validate=False,
                                                 dtype=pd.CategoricalDtype(f[col].cat.categories))
        return _columns(**out), col, kind

    def _hover_view(self, x_range=None, y_range=None, **_):
        """The hover layer's points for the current viewport (the whole map before the first zoom or pan)."""
        xr = tuple(float(v) for v in x_range) if x_range else self._xr
        yr = tuple(float(v) for v in y_range) if y_range else self._yr
        return hv.Points(_map_index(self.state.frame).hover(xr, yr, self.state.layer_mask()), ["x", "y"],
                         ["id", "formula"], label="hover")

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
        # re-sampled for the viewport by the same range stream as the image (one trigger per zoom or pan)
        hover = self._layer(self._hover_view, [self._range]).opts(
            tools=["hover", "lasso_select", "box_select", "tap"], size=6, alpha=0.0, nonselection_alpha=0.0,
            selection_alpha=0.0, hover_alpha=0.8, hover_line_color="black", hover_fill_alpha=0.0)
        labels = self._layer(lambda: self._cluster_labels(self.show_clusters)).opts(
            text_font_size="9pt", text_color="#222222", text_font_style="bold")
        cands = self._layer(lambda: self._candidates(s.candidates)).opts(
            size=9, fill_alpha=0.0, line_color="#d62728", line_width=2, tools=["hover"])
        marks = self._layer(lambda: self._marks(s.placed, s.focus_id)).opts(
            marker="star", size=18, color="#ff00aa", line_color="black", tools=["hover"])
        overlay = (shaded * hover * cands * marks * labels).opts(
            responsive=True, min_width=MIN_WIDTH, height=HEIGHT, xlabel="UMAP 1", ylabel="UMAP 2", show_legend=False,
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
        s.param.watch(lambda *_: (self._push("shaded"), self._push("hover")), "layers")
        self._range.add_subscriber(self._on_range)
        s.param.watch(lambda *_: self._push("candidates"), "candidates")
        s.param.watch(lambda *_: self._push("marks"), ["placed", "focus_id"])
        self.param.watch(lambda *_: self._push("labels"), "show_clusters")
        s.param.watch(self._on_zoom, "zoom_to")
        return pn.pane.HoloViews(overlay, css_classes=["mlcm-map"], sizing_mode="stretch_width", min_width=MIN_WIDTH,
                                 height=HEIGHT, linked_axes=False)

    def _on_range(self, x_range=None, y_range=None, **_) -> None:
        """Keep ``state.map_view`` (the URL's ``view``) at the viewport after a zoom or pan; [] for the whole map."""
        if not x_range or not y_range:
            return
        view = [float(x_range[0]), float(x_range[1]), float(y_range[0]), float(y_range[1])]
        home = [*self._home[0], *self._home[1]]
        tol = 1e-6 * max(abs(home[1] - home[0]), abs(home[3] - home[2]))
        view = [] if all(abs(a - b) <= tol for a, b in zip(view, home)) else view
        if view != self.state.map_view:
            self.state.map_view = view

    def reset_view(self, *_) -> None:
        """The whole map in view (the "r" shortcut)."""
        (x0, x1), (y0, y1) = self._home
        self.state.zoom_to = []  # a new request even when it is the last one's extent
        self.state.zoom_to = [x0, x1, y0, y1]
        self.state.map_view = []

    def _on_zoom(self, event) -> None:
        """Show the extent a search asked for (AppState.find sets zoom_to = [x0, x1, y0, y1]); the map then
        redraws for the new view as after a wheel zoom."""
        if len(event.new) != 4:
            return
        x0, x1, y0, y1 = event.new
        for handles in plot_handles(self._plot):
            for name, (start, end) in (("x_range", (x0, x1)), ("y_range", (y0, y1))):
                r = handles.get(name)
                if r is not None:
                    on_document(r.document, partial(r.update, start=start, end=end))
        # a range set from the server fires no RangesUpdate in the browser, so the RangeXY stream would not see
        # it: without this the image stayed the old view's, stretched, and map_view (the URL) was not written
        self._range.event(x_range=(x0, x1), y_range=(y0, y1))

    def _shade_view(self, x_range=None, y_range=None, width=None, height=None, **_):
        """The image for the current viewport, colouring and selection (the shaded layer's callback)."""
        return self._shade(x_range, y_range, width, height, color_by=self.color_by, prop=self.prop,
                           element=self.element, selected_ids=tuple(self.state.selected_ids),
                           layers=self.state.layers).relabel("shaded")

    def _element(self, layer: str):
        s = self.state
        if layer == "shaded":
            return self._shade_view(self._range.x_range, self._range.y_range, self._size.width, self._size.height)
        if layer == "candidates":
            return self._candidates(s.candidates)
        if layer == "marks":
            return self._marks(s.placed, s.focus_id)
        if layer == "hover":
            return self._hover_view(self._range.x_range, self._range.y_range)
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
        ids = self.state.select_cluster(event.new)
        self.state.notify(f"selected {event.new} ({len(ids)} materials)", "info")

    def clear(self, *_):
        self.cluster = None
        self.state.select_ids([], origin="")
        self.state.notify("selection cleared: all materials", "info")  # the last "lasso selected N" is stale

    @guarded("element colouring")
    def _on_element(self, *_) -> None:
        if self.color_by == "element present":
            element_symbol(self.element or "O")  # a message for "Xx" (the legend says it too)

    # ---- legend -----------------------------------------------------------------------------------
    @param.depends("color_by", "prop", "element", "state.layers")
    def _legend_html(self):
        return self._legend_body() + self._shown_html()

    def _shown_html(self) -> str:
        """How many materials the shown layers hold (all of them when no layer is hidden)."""
        n, total = self.state.n_shown(), len(self.state.frame)
        hidden = [k for k in self.state.param.layers.objects.values() if k not in self.state.layers]
        what = f"{n:,} of {total:,} materials shown" + (f" (hidden: {', '.join(hidden)})" if hidden else "")
        return f"<div class='mlcm-map-shown' style='font-size:12px;color:#555'>{what}</div>"

    def _legend_body(self):
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
        return (f"<div style='font-size:12px'><b>{html.escape(label_title(col))}</b> ({n:,} with a value) {lo:.3g} "
                "<span style='display:inline-block;width:160px;height:10px;background:linear-gradient(to right,"
                "#440154,#3b528b,#21918c,#5ec962,#fde725)'></span> "
                f"{hi:.3g}<br>{note} {grey}</div>")

    def controls(self) -> pn.Column:
        clear = pn.widgets.Button(label="Clear selection", color="default")
        clear.on_click(self.clear)
        layers = pn.widgets.CheckBoxGroup.from_param(self.state.param.layers, name="Show on the map",
                                                     inline=False, css_classes=["mlcm-layers"])
        return pn.Column(
            pn.pane.Markdown("**Show on the map**", margin=(0, 10)), layers,
            pn.widgets.Select.from_param(self.param.color_by, label="Colour by", css_classes=["mlcm-color-by"]),
            pn.widgets.Select.from_param(self.param.prop, label="Property"),
            pn.widgets.TextInput.from_param(self.param.element, label="Element (for 'element present')"),
            pn.widgets.Checkbox.from_param(self.param.show_clusters, label="Label clusters"),
            pn.widgets.Select.from_param(self.param.cluster, label="Select a cluster (HDBSCAN)", size=6),
            clear,
            pn.pane.Markdown("Keys: " + SHORTCUTS_TEXT,
                             css_classes=["mlcm-keys"], styles={"font-size": "11px", "color": "#555"}, margin=(0, 10)),
        )

    def __panel__(self):
        return pn.Column(self._plot, self._legend, sizing_mode="stretch_width", min_width=MIN_WIDTH)
