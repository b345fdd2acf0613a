"""assets/screenshot.png: the real app with every view populated (opt-in: MLCM_SCREENSHOT=1 python -m pytest ...).

Not part of the normal run: it rewrites a tracked file.
"""

from __future__ import annotations

import math
import os

import pytest

from tests.browser.conftest import ROOT, data_to_px, drag, plot_frame, wait_for_debug, wait_for_map, wait_for_text

pytestmark = pytest.mark.skipif(os.environ.get("MLCM_SCREENSHOT") != "1", reason="set MLCM_SCREENSHOT=1 to refresh it")


def test_screenshot_with_every_view_populated(browser, app_url, explorer, tmp_path):
    from pymatgen.io.cif import CifWriter

    context = browser.new_context(viewport={"width": 1800, "height": 2600}, device_scale_factor=1)
    page = context.new_page()
    page.set_default_timeout(120_000)
    page.goto(app_url)
    frame = wait_for_map(page)

    # 1. upload a CIF: a star on the map
    t = explorer.store.table
    rich = t[t["has_structure"] & t["has_dos"] & t["has_charge_density"]].copy()
    rich["n"] = rich["nsites"].astype(float)
    pick = rich[(rich["n"] >= 4) & (rich["n"] <= 10)]
    focus = str((pick if len(pick) else rich)["id"].iloc[0])
    cif = tmp_path / "upload.cif"
    cif.write_text(str(CifWriter(explorer.store.structure("mp-830"))))
    page.locator(".mlcm-cif-upload input[type=file]").set_input_files(str(cif))
    wait_for_debug(page, lambda d: d.get("placed") is not None)

    # 2. lasso a region: selection summary, histograms and the materials table
    x, y = map(float, explorer.xy[explorer.embeddings.position(focus)])
    r = 60
    pts = [data_to_px(frame, x + r * (frame["x1"] - frame["x0"]) / frame["width"] * math.cos(a),
                      y + r * (frame["y1"] - frame["y0"]) / frame["height"] * math.sin(a))
           for a in [2 * math.pi * k / 30 for k in range(31)]]
    page.locator(".mlcm-map .bk-tool-icon-lasso-select").first.click()
    drag(page, pts)
    wait_for_debug(page, lambda d: d.get("n_selected", 0) > 0)

    # 3. draw a target DOS: candidates on the map, in the table and overlaid on the target
    tframe = plot_frame(page, "Target DOS")
    xs = [-8 + 16 * i / 50 for i in range(51)]
    stroke = [data_to_px(tframe, v, 0.8 + 5 * math.exp(-((v + 2.5) ** 2) / 3) + 3 * math.exp(-((v - 3) ** 2) / 2)) for v in xs]
    drag(page, stroke, steps=2)
    wait_for_debug(page, lambda d: d.get("n_candidates", 0) > 0 and d.get("placed") is not None)

    # 4. focus a material with structure, DOS and density: its row in the (selection) materials table
    page.locator(".mlcm-materials .tabulator-header-filter input").nth(0).fill(focus)
    page.keyboard.press("Enter")
    page.locator(".mlcm-materials .tabulator-row", has_text=focus).first.locator(
        ".tabulator-cell[tabulator-field='formula']").click()
    wait_for_debug(page, lambda d: d.get("focus") == focus)
    page.locator(".mlcm-materials .tabulator-header-filter input").nth(0).fill("")
    page.keyboard.press("Enter")
    page.frame_locator(".mlcm-structure iframe").locator("body[data-rendered='1']").wait_for()
    page.frame_locator(".mlcm-density iframe").locator("body[data-rendered='1']").wait_for()
    wait_for_text(page, "mlcm-card", lambda s: "Uncertainty hints" in s)
    page.wait_for_timeout(2000)
    # the template scrolls its main area: show it from the top, with a viewport as tall as its content
    height = page.evaluate("""() => { let best = null;
      for (const e of document.querySelectorAll('*')) if (e.scrollHeight > e.clientHeight + 50 &&
          getComputedStyle(e).overflowY.match(/auto|scroll/) && (!best || e.scrollHeight > best.scrollHeight)) best = e;
      if (!best) return document.body.scrollHeight; best.scrollTop = 0; return best.scrollHeight + best.getBoundingClientRect().top; }""")
    page.set_viewport_size({"width": 1800, "height": int(min(max(height, 1200), 6000))})
    page.wait_for_timeout(2000)
    out = ROOT / "assets" / "screenshot.png"
    page.screenshot(path=str(out), full_page=True)
    context.close()
    assert out.stat().st_size > 50_000
