"""Layout at 1280 px: map, target DOS plot and candidate table inside the window (no horizontal cut), the map
stretching with the window; the map's layers (real materials, perov_5, carbon_24) switched off and on change
the points drawn to the Explorer's count of those sources."""

from __future__ import annotations

import time

from tests.browser.conftest import LONG, deep_text, plot_frame, wait_for_debug, wait_for_map, wait_for_text

TARGET_TITLE = "Target DOS"

# the hover layer's ids (the map's invisible points layer: id + formula, no rank/what) and the number of
# visible pixels of the datashaded image, as the browser holds them
MAP_DATA_JS = """() => {
  const out = {ids: null, pixels: null};
  for (const doc of (window.Bokeh ? Bokeh.documents : [])) {
    for (const m of doc.all_models) {
      const d = m.data;
      if (!d || typeof d !== 'object') continue;
      const keys = Object.keys(d).sort().join(',');
      if (keys === 'formula,id,x,y') out.ids = Array.from(d.id);
      if ('image' in d && d.image.length === 1) {  // RGBA packed in uint32: alpha is the top byte
        const img = d.image[0];
        const arr = ArrayBuffer.isView(img) ? new Uint32Array(img.buffer, img.byteOffset, img.byteLength / 4)
                                            : new Uint32Array(img.data.buffer || img.data);
        let n = 0;
        for (const v of arr) if ((v >>> 24) !== 0) n++;
        out.pixels = n;
      }
    }
  }
  return out;
}"""


def _box(page, selector: str) -> dict:
    loc = page.locator(selector).first
    loc.wait_for(timeout=LONG)
    deadline = time.time() + LONG / 1000
    while time.time() < deadline:
        b = loc.bounding_box()
        if b and b["width"] > 0:
            return b
        time.sleep(0.25)
    raise AssertionError(f"{selector} has no box")


def test_at_1280_px_map_target_and_candidates_are_inside_the_window(browser, app_url):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(LONG)
    page.goto(app_url, timeout=LONG)
    wait_for_map(page)
    plot_frame(page, TARGET_TITLE)  # rendered, nothing loading any more
    for selector in (".mlcm-map", ".mlcm-draw", ".mlcm-candidates"):
        b = _box(page, selector)
        assert b["x"] >= 0 and b["x"] + b["width"] <= 1280 + 0.5, (selector, b)
    target = plot_frame(page, TARGET_TITLE)
    assert target["left"] >= 0 and target["left"] + target["width"] <= 1280
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 1280
    # the map takes the main area's width (sidebar 360 px): it stretches, it is not a fixed 640 px
    narrow = _box(page, ".mlcm-map")["width"]
    assert narrow > 700
    page.set_viewport_size({"width": 1500, "height": 900})  # still below the map: it takes the extra width
    deadline = time.time() + 30
    while time.time() < deadline and _box(page, ".mlcm-map")["width"] <= narrow + 100:
        time.sleep(0.25)
    assert _box(page, ".mlcm-map")["width"] > narrow + 100
    frame = wait_for_map(page)
    assert frame["width"] > 0 and frame["left"] + frame["width"] <= 1500
    context.close()


def test_switching_a_layer_off_and_on_changes_the_points_shown(page, explorer):
    sources = explorer.table["source"].astype(str)
    wait_for_map(page)
    state = wait_for_debug(page, lambda d: "n_shown" in d)
    assert state["n_shown"] == len(sources) and state["layers"] == ["real", "perov_5", "carbon_24"]
    before = page.evaluate(MAP_DATA_JS)
    assert any(i.startswith("carbon24:") for i in before["ids"]) and before["pixels"] > 0

    page.locator(".mlcm-layers").get_by_text("carbon_24").click()
    expected = int((sources != "cdvae-carbon_24").sum())
    state = wait_for_debug(page, lambda d: d["n_shown"] == expected and "layers=" in d["url"])
    assert state["layers"] == ["real", "perov_5"] and "layers=real,perov_5" in state["url"]
    wait_for_text(page, "mlcm-map-shown", lambda t: f"{expected:,} of {len(sources):,} materials shown" in t)
    deadline = time.time() + LONG / 1000
    after = page.evaluate(MAP_DATA_JS)
    while time.time() < deadline and (any(i.startswith("carbon24:") for i in after["ids"])
                                      or after["pixels"] >= before["pixels"]):
        time.sleep(0.25)
        after = page.evaluate(MAP_DATA_JS)
    assert not any(i.startswith("carbon24:") for i in after["ids"])  # hidden points carry no hover
    assert after["pixels"] < before["pixels"]  # and are not drawn

    page.locator(".mlcm-layers").get_by_text("real materials").click()
    only = int(sources.eq("cdvae-perov_5").sum())
    wait_for_debug(page, lambda d: d["n_shown"] == only and d["layers"] == ["perov_5"])

    for label in ("carbon_24", "real materials"):
        page.locator(".mlcm-layers").get_by_text(label).click()
    wait_for_debug(page, lambda d: d["n_shown"] == len(sources) and "layers=" not in d["url"])
    assert f"{len(sources):,} of {len(sources):,}" in " ".join(deep_text(page, "mlcm-map-shown"))
