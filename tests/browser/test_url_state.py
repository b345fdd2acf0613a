"""Shareable state: what a session shows is in its URL, and that URL opened in a new page shows the same
(selection, colouring, filters, layers, map view); a URL with unknown or invalid values says so and loads."""

from __future__ import annotations

import math
from urllib.parse import parse_qs, urlparse

import numpy as np

from tests.browser.conftest import (
    LONG,
    app_debug,
    click_tool,
    data_to_px,
    deep_text,
    drag,
    wait_for_debug,
    wait_for_map,
    wait_for_text,
)

# the value a Panel widget shows, through its shadow root (inputs and selects inside the element with `cls`)
WIDGET_VALUE_JS = """(cls) => {
  function walk(root) {
    for (const e of root.querySelectorAll('*')) {
      if (e.classList && e.classList.contains(cls)) {
        const r = e.shadowRoot || e; const w = r.querySelector('select, input');
        if (w) return w.value;
      }
      if (e.shadowRoot) { const v = walk(e.shadowRoot); if (v !== null) return v; }
    }
    return null;
  }
  return walk(document);
}"""


def _query(url: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlparse(url).query).items()}


def _big_lasso(frame, explorer):
    """A lasso (data coordinates) around the map's densest spot in view: far more materials than a URL lists."""
    xy = explorer.xy
    inside = (xy[:, 0] > frame["x0"]) & (xy[:, 0] < frame["x1"]) & (xy[:, 1] > frame["y0"]) & (xy[:, 1] < frame["y1"])
    cx, cy = (float(v) for v in np.median(xy[inside], axis=0))
    rx = 70 * (frame["x1"] - frame["x0"]) / frame["width"]
    ry = 70 * (frame["y1"] - frame["y0"]) / frame["height"]
    return [(cx + rx * math.cos(2 * math.pi * k / 60), cy + ry * math.sin(2 * math.pi * k / 60)) for k in range(60)]


def test_a_url_round_trip_restores_selection_colouring_filters_layers_and_view(page, browser, explorer):
    frame = wait_for_map(page)
    # a lasso of more materials than the URL lists: shared by its polygon
    pixels = [data_to_px(frame, x, y) for x, y in _big_lasso(frame, explorer)]
    click_tool(page, "mlcm-map", "hover")  # off: over a dense region the tooltips come under the pointer
    click_tool(page, "mlcm-map", "lasso-select")
    drag(page, pixels + [pixels[0]])
    state = wait_for_debug(page, lambda d: d.get("selection_origin") == "lasso" and d["n_selected"] > 40)
    n = state["n_selected"]
    # colouring, a retrieval filter, a hidden layer
    page.locator(".mlcm-color-by select").select_option("source")
    page.get_by_text("Retrieval filters").first.click()
    box = page.locator(".mlcm-filter-has input").first
    box.fill("O")
    box.press("Enter")
    page.locator(".mlcm-layers").get_by_text("carbon_24").click()
    state = wait_for_debug(page, lambda d: all(f"{k}=" in d["url"] for k in ("lasso", "color", "has", "layers")))
    n = state["n_selected"]  # the lasso's materials on the layers still shown
    shown = explorer.table["source"].astype(str) != "cdvae-carbon_24"
    assert state["n_shown"] == int(shown.sum())
    # the map view: a wheel zoom is written too
    page.mouse.move(frame["left"] + frame["width"] / 2, frame["top"] + frame["height"] / 2)
    page.mouse.wheel(0, -400)
    state = wait_for_debug(page, lambda d: "view=" in d["url"])
    # the address bar holds exactly the state's query (no reload needed to share it)
    page.wait_for_function("(q) => window.location.search === q", arg=state["url"], timeout=LONG)
    q = _query(page.url)
    assert q["color"] == "source" and q["has"] == "O" and q["layers"] == "real,perov_5" and "lasso" in q
    assert len(page.url) < 2500
    zoomed = wait_for_map(page)

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    other = context.new_page()
    other.set_default_timeout(LONG)
    other.goto(page.url, timeout=LONG)
    again = wait_for_map(other)
    restored = wait_for_debug(other, lambda d: d["n_selected"] > 0)
    assert restored["n_selected"] == n and restored["selection_origin"] == "lasso"
    assert restored["url"] == state["url"]  # the same state writes the same URL
    assert restored["n_shown"] == int(shown.sum()) and restored["layers"] == ["real", "perov_5"]
    assert other.evaluate(WIDGET_VALUE_JS, "mlcm-color-by") == "source"
    wait_for_text(other, "mlcm-selection-summary", lambda t: f"Selection: {n:,} materials" in t or f"Selection: {n} materials" in t)
    span = zoomed["x1"] - zoomed["x0"]
    assert abs(again["x0"] - zoomed["x0"]) < 1e-3 * span and abs(again["x1"] - zoomed["x1"]) < 1e-3 * span
    other.get_by_text("Retrieval filters").first.click()
    other.locator(".mlcm-filter-has input").first.wait_for()
    assert other.evaluate(WIDGET_VALUE_JS, "mlcm-filter-has") == "O"
    context.close()


def test_a_short_selection_is_shared_by_its_ids_and_bad_values_are_ignored_with_a_notice(browser, app_url, explorer):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(LONG)
    ids = list(explorer.find("SiO2").ids)[:3]
    page.goto(f"{app_url}?ids={','.join(ids)},nope-1&focus=mp-149&k=abc&color=bogus&layers=real,moon&frobnicate=1",
              timeout=LONG)
    wait_for_map(page)
    state = wait_for_debug(page, lambda d: d["n_selected"] > 0)
    assert state["n_selected"] == len(ids) and state["focus"] == "mp-149"
    assert state["layers"] == ["real"]
    message = wait_for_text(page, "mlcm-message", lambda t: "ignored" in t)
    for bad in ("nope-1", "'abc'", "'bogus'", "'moon'", "'frobnicate'"):
        assert bad in message, (bad, message)
    # the URL now holds only what was understood
    page.wait_for_function("() => !window.location.search.includes('bogus')", timeout=LONG)
    assert _query(page.url) == {"ids": ",".join(ids), "focus": "mp-149", "layers": "real"}
    assert app_debug(page)["n_shown"] == int((~explorer.table["source"].astype(str).str.startswith("cdvae-")).sum())
    assert "mp-149" in " ".join(deep_text(page, "mlcm-card"))
    context.close()
