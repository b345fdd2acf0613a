"""A lasso drawn with the mouse on the map selects exactly what Explorer.select returns for that polygon."""

from __future__ import annotations

import math

import numpy as np

from tests.browser.conftest import (
    app_debug,
    click_tool,
    data_to_px,
    drag,
    px_to_data,
    table_ids,
    wait_for_debug,
    wait_for_map,
    wait_for_text,
)

RADIUS_PX = 40
PAGE_SIZE = 20  # app/views/materials.py


def _ellipse(frame, cx, cy, n=24, radius_px=RADIUS_PX):
    rx = radius_px * (frame["x1"] - frame["x0"]) / frame["width"]
    ry = radius_px * (frame["y1"] - frame["y0"]) / frame["height"]
    return [(cx + rx * math.cos(2 * math.pi * k / n), cy + ry * math.sin(2 * math.pi * k / n)) for k in range(n)]


def _pick_lasso(frame, explorer):
    """A lasso (in data coordinates) around a sparse spot holding 2..PAGE_SIZE materials, inside the frame.

    Tries smaller rings when the map (refitted with each new checkpoint) has no such spot at the larger one."""
    xy = explorer.xy
    sparse = np.argsort(explorer.density_hint().region_count.to_numpy(), kind="stable")  # sparse regions first
    margin_x = 2 * RADIUS_PX * (frame["x1"] - frame["x0"]) / frame["width"]
    margin_y = 2 * RADIUS_PX * (frame["y1"] - frame["y0"]) / frame["height"]
    inside = [i for i in sparse if frame["x0"] + margin_x < xy[i, 0] < frame["x1"] - margin_x
              and frame["y0"] + margin_y < xy[i, 1] < frame["y1"] - margin_y]
    for radius in (RADIUS_PX, RADIUS_PX // 2, RADIUS_PX // 4):
        for i in inside[::3][:1500]:  # select() takes ms
            poly = _ellipse(frame, float(xy[i, 0]), float(xy[i, 1]), radius_px=radius)
            if 2 <= len(explorer.select(poly)) <= PAGE_SIZE:
                return poly
    raise AssertionError("no sparse spot found for the lasso")


def test_lasso_selects_what_explorer_select_returns(page, explorer):
    frame = wait_for_map(page)
    poly = _pick_lasso(frame, explorer)
    pixels = [data_to_px(frame, x, y) for x, y in poly]
    click_tool(page, "mlcm-map", "lasso-select")
    drag(page, pixels + [pixels[0]])

    state = wait_for_debug(page, lambda d: d.get("selection_origin") == "lasso" and d.get("polygon"))
    received = np.asarray(state["polygon"], float)
    # the polygon the app received is the one drawn: same extent within a couple of pixels
    px = np.asarray([px_to_data(frame, *p) for p in pixels])
    tol = 3 * (frame["x1"] - frame["x0"]) / frame["width"]
    assert np.allclose(received.min(0), px.min(0), atol=tol) and np.allclose(received.max(0), px.max(0), atol=tol)

    expected = explorer.select(received)
    assert 1 <= len(expected) <= PAGE_SIZE
    assert state["n_selected"] == len(expected)
    wait_for_text(page, "mlcm-table-title", lambda t: f"Materials in the selection: {len(expected)}" in t)
    assert sorted(table_ids(page, "mlcm-materials")) == sorted(expected)
    wait_for_text(page, "mlcm-selection-summary", lambda t: f"Selection: {len(expected)} materials" in t)
    assert app_debug(page)["n_selected"] == len(expected)


def test_box_select_uses_the_same_exact_selection(page, explorer):
    frame = wait_for_map(page)
    poly = _pick_lasso(frame, explorer)
    xs, ys = zip(*poly)
    a = data_to_px(frame, min(xs), max(ys))
    b = data_to_px(frame, max(xs), min(ys))
    click_tool(page, "mlcm-map", "box-select")
    drag(page, [a, ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2), b])
    state = wait_for_debug(page, lambda d: d.get("selection_origin") == "box" and d.get("polygon"))
    expected = explorer.select(np.asarray(state["polygon"], float))
    assert state["n_selected"] == len(expected)
    if len(expected) <= PAGE_SIZE:
        wait_for_text(page, "mlcm-table-title", lambda t: f"Materials in the selection: {len(expected)}" in t)
        assert sorted(table_ids(page, "mlcm-materials")) == sorted(expected)


def test_a_click_on_the_map_focuses_the_nearest_material(page, explorer):
    frame = wait_for_map(page)
    poly = _pick_lasso(frame, explorer)  # a sparse spot: one clear nearest material
    cx = sum(p[0] for p in poly) / len(poly)
    cy = sum(p[1] for p in poly) / len(poly)
    d = np.hypot(explorer.xy[:, 0] - cx, explorer.xy[:, 1] - cy)
    target = explorer.embeddings.ids[int(np.argmin(d))]
    tx, ty = map(float, explorer.xy[int(np.argmin(d))])
    page.mouse.click(*data_to_px(frame, tx, ty))
    state = wait_for_debug(page, lambda s: bool(s.get("focus")))
    assert state["focus"] == target
    wait_for_text(page, "mlcm-card", lambda t: target in t)
