"""MapView: datashaded layers for every colouring, greyed (not hidden) unselected points, exact lasso/box, clusters."""

from __future__ import annotations

import holoviews as hv
import numpy as np
import pytest

from app.views.map import COLOR_MODES, MapView, _over, _shade_categories, color_key


@pytest.fixture
def view(state):
    return MapView(state=state)


def _alpha(rgb: hv.RGB) -> np.ndarray:
    return rgb.dimension_values("A", flat=False)


@pytest.mark.parametrize("mode", COLOR_MODES)
def test_every_colouring_renders_one_image(view, mode):
    view.color_by = mode
    out = view._shade(color_by=mode, prop=view.prop, element="O", selected_ids=[])
    assert isinstance(out, hv.RGB)
    assert (_alpha(out) > 0).sum() > 1000  # the grey layer alone covers every material
    pts, _col, kind = view.coloured(mode, view.prop, "O", [])
    assert len(pts) > 0 and kind in ("cat", "num", "flat")
    assert "grey" in view._legend_html()


@pytest.mark.parametrize("column", ["crystal_system", "source"])
def test_sparse_categorical_shading_equals_datashaders(state, column):
    """The occupied-pixels-only mixing gives datashader's own colours and alphas wherever a pixel shows, on
    the whole map and on a small selection."""
    import datashader as ds
    import datashader.transfer_functions as tf
    import pandas as pd

    f = state.frame
    cats = list(f[column].cat.categories)
    cvs = ds.Canvas(plot_width=300, plot_height=200, x_range=(float(f["x"].min()), float(f["x"].max())),
                    y_range=(float(f["y"].min()), float(f["y"].max())))
    for rows in (f, f.iloc[::37]):
        pts = rows[["x", "y"]].assign(**{column: pd.Categorical(rows[column].astype(str), categories=cats)})
        agg = cvs.points(pts, "x", "y", ds.count_cat(column))
        ours = _shade_categories(agg, color_key(cats), min_alpha=90).data.view(np.uint8).reshape(200, 300, 4)
        theirs = tf.shade(agg, color_key=color_key(cats), min_alpha=90).data.view(np.uint8).reshape(200, 300, 4)
        visible = theirs[..., 3] > 0
        assert visible.sum() > 100
        np.testing.assert_array_equal(ours[visible], theirs[visible])
        assert not ours[~visible].any()


def test_over_is_datashaders_over_where_the_top_layer_shows():
    import datashader.transfer_functions as tf

    rng = np.random.default_rng(0)
    src, dst = (rng.integers(0, 2**32, size=(60, 70), dtype=np.uint32) for _ in range(2))
    src[:10] &= 0x00FFFFFF  # fully transparent source pixels
    dst[:5] = 0
    src[:5, :5] = 0  # both transparent
    theirs = tf.stack(tf.Image(dst, dims=["y", "x"]), tf.Image(src, dims=["y", "x"]), how="over").data
    ours = _over(src, dst)
    shown = (src >> 24) != 0
    np.testing.assert_array_equal(ours[shown], theirs[shown])  # datashader's formula, bit for bit
    np.testing.assert_array_equal(ours[~shown], dst[~shown])  # a transparent pixel changes nothing


def test_unselected_points_are_greyed_not_hidden(view, state):
    ids = state.frame["id"].iloc[:200].tolist()
    full = view._shade(selected_ids=[])
    sel = view._shade(selected_ids=ids)
    # the same pixels are covered (nothing hidden) ...
    assert ((_alpha(sel) > 0) == (_alpha(full) > 0)).mean() > 0.99
    # ... but far fewer are coloured: grey pixels have R == G == B
    def coloured(img):
        r, g, b = (img.dimension_values(c, flat=False).astype(int) for c in "RGB")
        return ((abs(r - g) + abs(g - b)) > 30).sum()
    assert coloured(sel) < coloured(full)
    pts, _, _ = view.coloured("crystal system", None, "O", ids)
    assert len(pts) == 200


def test_lasso_and_box_go_to_explorer_select(view, state):
    poly = [[0, 0], [5, 0], [5, 5], [0, 5]]
    view._on_lasso(geometry=np.asarray(poly, float))
    assert state.selected_ids == state.explorer.select(np.asarray(poly, float)) and state.selection_origin == "lasso"
    view._on_bounds(bounds=(0, 0, 5, 5))
    assert state.selection_origin == "box" and len(state.selected_ids) == len(state.explorer.select(np.asarray(poly, float)))
    view._on_lasso(geometry=[[0, 0], [1, 1]])  # too few vertices: ignored, nothing breaks
    assert state.selection_origin == "box"


def test_cluster_selection_and_labels(view, state):
    clusters = state.clusters
    assert len(clusters) >= 2 and clusters["n"].sum() <= len(state.frame)
    assert all(":" in label for label in clusters["label"])
    label = view.param.cluster.objects[1]
    view.cluster = label
    assert sorted(state.selected_ids) == sorted(clusters.set_index("label").loc[label, "ids"])
    view.clear()
    assert state.selected_ids == [] and view.cluster is None
    labels = view._cluster_labels(show_clusters=True)
    assert len(labels) == len(clusters) and len(view._cluster_labels(show_clusters=False)) == 0


def test_click_focuses_the_nearest_material(view, state):
    f = state.frame
    x, y = float(f["x"].iloc[42]), float(f["y"].iloc[42])
    view.click(x=x, y=y)
    assert state.focus_id == state.nearest(x, y)
    marks = view._marks(placed=None, focus_id=state.focus_id)
    assert len(marks) == 1


def test_overlays_for_candidates_and_uploads(view, state):
    state.run_query("test", material_id="mp-830")
    pts = view._candidates(candidates=state.candidates)
    assert len(pts) == len(state.candidates)
    assert len(view._candidates(candidates=None)) == 0
    marks = view._marks(placed={"x": 1.0, "y": 2.0, "name": "a.cif", "formula": "GaN"}, focus_id="")
    assert len(marks) == 1


def test_map_renders_with_its_selection_streams(view):
    from bokeh.document import Document

    view._plot.get_root(Document())
    plot = next(iter(view._plot._plots.values()))[0]
    callbacks = {type(c).__name__ for sp in plot.subplots.values() for c in sp.callbacks}
    assert {"LassoCallback", "BoundsCallback", "TapCallback", "RangeXYCallback"} <= callbacks


def test_a_change_updates_only_its_layer_of_the_rendered_map(view, state):
    """Colouring, selection and focus go straight into the rendered plot's data sources (app.panes.push_layers)."""
    from bokeh.document import Document

    view._plot.get_root(Document())
    plot = next(iter(view._plot._plots.values()))[0]
    layers = {sp.current_frame.label: sp for sp in plot.subplots.values() if sp.current_frame is not None}
    assert {"shaded", "candidates", "marks", "labels"} <= set(layers)
    image = layers["shaded"].handles["source"]
    before = np.asarray(image.data["image"][0]).copy()
    view.color_by = "source"
    assert not np.array_equal(np.asarray(image.data["image"][0]), before)
    state.focus_id = str(state.frame["id"].iloc[0])
    assert list(layers["marks"].handles["source"].data["x"]) == [state.frame["x"].iloc[0]]


def test_clear_selection_and_a_missed_click_say_so(view, state):
    """"lasso selected N" stayed in the message area after Clear selection; a click far from every point did
    nothing at all."""
    view._on_lasso(geometry=np.asarray([[0, 0], [5, 0], [5, 5], [0, 5]], float))
    assert state.message.startswith("lasso selected")
    view.clear()
    assert state.selected_ids == [] and state.message == "selection cleared: all materials"
    state.focus_id = "mp-830"
    view.click(x=1e6, y=1e6)
    assert state.focus_id == "mp-830" and "no material at the click" in state.message


def test_an_unknown_element_is_said_not_coloured(view, state):
    """"Xx" used to colour as "contains Xx (0)"."""
    view.color_by = "element present"
    view.element = "fe"
    n_fe = int(sum("Fe" in e for e in state.frame["elements"]))
    assert f"contains Fe ({n_fe:,})" in view._legend_html() and n_fe > 0 and state.message_level != "error"
    view.element = "Xx"
    assert "unknown element symbol 'Xx'" in view._legend_html() and "contains" not in view._legend_html()
    assert state.message_level == "error" and "unknown element symbol 'Xx'" in state.message


# ---- hover layer (ViewportSampler) and the x-sorted, sliced rasterisation ---------------------------------
def _zoomed(view, share=0.35):
    """A viewport a ``share`` of the map wide and high, around the densest region's centre of mass."""
    (x0, x1), (y0, y1) = view._xr, view._yr
    f = view.state.frame
    cx, cy = float(f["x"].median()), float(f["y"].median())
    hx, hy = share * (x1 - x0) / 2, share * (y1 - y0) / 2
    return (cx - hx, cx + hx), (cy - hy, cy + hy)


def test_hover_sample_is_capped_in_view_deterministic_and_uniform(view, state):
    from app.views.map import HOVER_SAMPLES

    f = state.frame
    x, y = f["x"].to_numpy(), f["y"].to_numpy()
    for xr, yr in [(view._xr, view._yr), _zoomed(view, 0.6), _zoomed(view, 0.1)]:
        pts = view._hover_view(x_range=xr, y_range=yr)
        assert list(pts.data.columns) == ["x", "y", "id", "formula"] and [d.name for d in pts.vdims] == ["id", "formula"]
        sx, sy = pts.data["x"].to_numpy(), pts.data["y"].to_numpy()
        assert ((sx >= xr[0]) & (sx <= xr[1]) & (sy >= yr[0]) & (sy <= yr[1])).all()
        in_view = (x >= xr[0]) & (x <= xr[1]) & (y >= yr[0]) & (y <= yr[1])
        assert len(pts) == min(HOVER_SAMPLES, int(in_view.sum())) and len(pts) > 0
        assert pts.data["id"].is_unique
        # the rows are the frame's own (id, formula and position belong together)
        rows = f.set_index("id").loc[pts.data["id"]]
        np.testing.assert_array_equal(rows["x"].to_numpy(), sx)
        assert (rows["formula"].to_numpy() == pts.data["formula"].to_numpy()).all()
        again = view._hover_view(x_range=xr, y_range=yr)
        assert again.data.equals(pts.data)  # the same viewport, the same sample
        if in_view.sum() > HOVER_SAMPLES:
            # uniform over the points in view: each quarter of the viewport holds the sample's share it holds of
            # the points in view (3000 draws: a share's standard deviation is under 1 percentage point)
            mx, my = (xr[0] + xr[1]) / 2, (yr[0] + yr[1]) / 2
            for qx in (True, False):
                for qy in (True, False):
                    share_all = ((x[in_view] < mx) == qx) & ((y[in_view] < my) == qy)
                    share_sample = ((sx < mx) == qx) & ((sy < my) == qy)
                    assert abs(share_sample.mean() - share_all.mean()) < 0.04
    # the whole map before the first zoom or pan
    assert len(view._hover_view()) == min(HOVER_SAMPLES, len(f))


def test_a_search_zooms_the_rendered_map_to_its_matches(view, state):
    """AppState.find sets zoom_to; the map's rendered x/y ranges take that extent (as after a wheel zoom)."""
    from bokeh.document import Document

    from app.panes import plot_handles

    view._plot.get_root(Document())
    state.find("SiO2")
    x0, x1, y0, y1 = state.zoom_to
    f = state.frame.set_index("id").loc[state.selected_ids]
    assert x0 <= f["x"].min() and f["x"].max() <= x1 and y0 <= f["y"].min() and f["y"].max() <= y1
    handles = plot_handles(view._plot)[0]
    assert (handles["x_range"].start, handles["x_range"].end) == (x0, x1)
    assert (handles["y_range"].start, handles["y_range"].end) == (y0, y1)
    # the viewport stream follows (a server-side range change fires no browser event): the image is
    # re-aggregated for the new view and the view is shareable
    assert (view._range.x_range, view._range.y_range) == ((x0, x1), (y0, y1))
    assert state.map_view == [x0, x1, y0, y1]
    assert view.param.prop.names["Band gap (eV, PBE(+U); Materials Project)"] == "band_gap_mp_pbe"  # menu labels


def test_hover_layer_follows_the_rendered_maps_viewport(view):
    """A zoom or pan (the RangeXY stream) re-samples the invisible hover layer that carries the tools."""
    from bokeh.document import Document

    from app.views.map import HOVER_SAMPLES

    view._plot.get_root(Document())
    plot = next(iter(view._plot._plots.values()))[0]
    hover = next(sp for sp in plot.subplots.values()
                 if sp.current_frame is not None and "formula" in getattr(sp.current_frame, "data", {}))
    assert len(hover.handles["source"].data["id"]) == min(HOVER_SAMPLES, len(view.state.frame))
    xr, yr = _zoomed(view, 0.1)
    view._range.event(x_range=xr, y_range=yr)
    data = hover.handles["source"].data
    xs, ys = np.asarray(data["x"]), np.asarray(data["y"])
    assert 0 < len(xs) <= HOVER_SAMPLES
    assert ((xs >= xr[0]) & (xs <= xr[1]) & (ys >= yr[0]) & (ys <= yr[1])).all()
    assert {"LassoCallback", "BoundsCallback", "TapCallback"} <= {type(c).__name__ for c in hover.callbacks}


def _reference_image(view, xr, yr, w, h, color_by, ids):
    """The map image as it was computed before the x-sorted slicing: every point of the frame aggregated."""
    import datashader as ds
    import datashader.transfer_functions as tf
    import pandas as pd

    from app.views.map import GREY, NUMERIC_CMAP

    f = view.state.frame
    cvs = ds.Canvas(plot_width=w, plot_height=h, x_range=xr, y_range=yr)
    base = tf.shade(cvs.points(f, "x", "y", ds.count()), cmap=GREY)
    pts, col, kind = view.coloured(color_by, view.prop, "O", ids)
    if kind == "cat":
        cats = list(f[col].cat.categories)
        pts = pts.assign(**{col: pd.Categorical(pts[col].astype(str), categories=cats)})
        top = _shade_categories(cvs.points(pts, "x", "y", ds.count_cat(col)), color_key(cats), min_alpha=90)
    elif kind == "num":
        top = tf.shade(cvs.points(pts, "x", "y", ds.mean(col)), cmap=NUMERIC_CMAP, span=view._value_span(col),
                       how="linear", min_alpha=200)
    else:
        top = tf.shade(cvs.points(pts, "x", "y", ds.count()), cmap=["#d62728", "#d62728"], min_alpha=200)
    return np.flipud(_over(tf.dynspread(top, threshold=0.8, max_px=4).data, base.data))


@pytest.mark.parametrize("mode", COLOR_MODES)
def test_sliced_rasterisation_equals_the_full_one(view, state, mode):
    """A zoomed view aggregates only the x-sorted slice of points in view: the same aggregate and image as
    aggregating every point, for every colouring, with and without a selection; the full view too."""
    import datashader as ds

    from app.views.map import _columns, _map_index

    f = state.frame
    index = _map_index(f)
    w, h = 300, 200
    ids = f["id"].iloc[::7].tolist()
    for xr, yr in [_zoomed(view, 0.35), _zoomed(view, 0.08), (view._xr, view._yr)]:
        rows = index.x_slice(xr)
        zoomed = xr != view._xr
        assert (rows.stop - rows.start < len(f)) == zoomed  # the zoomed views do skip points
        cvs = ds.Canvas(plot_width=w, plot_height=h, x_range=xr, y_range=yr)
        xs, ys = index.sorted_xy()
        sliced = cvs.points(_columns(x=xs[rows], y=ys[rows]), "x", "y", ds.count()).data
        full = cvs.points(f, "x", "y", ds.count()).data
        np.testing.assert_array_equal(sliced, full)
        assert full.sum() > 100
        for sel in ([], ids):
            ours = view._shade_uncached(xr, yr, w, h, mode, view.prop, "O", tuple(sel))
            rgba = np.asarray(ours.data)  # the (h, w, 4) array the element was made of, top row first
            ref = _reference_image(view, xr, yr, w, h, mode, sel).view(np.uint8).reshape(h, w, 4)
            np.testing.assert_array_equal(rgba, ref)
