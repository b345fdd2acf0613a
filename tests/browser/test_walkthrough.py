"""assets/walkthrough/*.jpg: the journeys of docs/app.md's walkthrough, one screenshot per step, each step
checked (opt-in: MLCM_SCREENSHOT=1 python -m pytest -q tests/browser/test_walkthrough.py).

Not part of the normal run: it rewrites tracked files. One browser session goes through what a materials
scientist does: first visit (the introduction), find a material, lasso its neighbourhood, draw a target DOS
with a gap, upload a CIF, export the candidates. Every step asserts what the user should see (the app's debug
state and the page's text) before its picture is taken, so a broken journey fails here instead of leaving a
misleading image in the docs.

A picture is one or more regions of the page (``page.screenshot(clip=...)``, lossless) laid out in rows on a
blank page of the same browser and saved from there as one JPEG (quality 70): no imaging library needed.
Binaries in git stay forever: each file is at most ``MAX_BYTES`` (the picture is scaled down until it fits)
and all of them together at most ``MAX_TOTAL``.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
import time

import pandas as pd
import pytest

from tests.browser.conftest import (
    LONG,
    ROOT,
    app_debug,
    click_tool,
    data_to_px,
    deep_text,
    drag,
    plot_frame,
    poll,
    table_ids,
    wait_for_debug,
    wait_for_map,
    wait_for_text,
)
from tests.browser.test_query_state import THUMB_JS, _wait_glyphs
from tests.browser.test_shortcuts import _blur

pytestmark = pytest.mark.skipif(os.environ.get("MLCM_SCREENSHOT") != "1", reason="set MLCM_SCREENSHOT=1 to refresh it")

OUT = ROOT / "assets" / "walkthrough"
VIEWPORT = {"width": 1400, "height": 900}
MAX_WIDTH = 1400  # px of a picture
MAX_BYTES = 200_000  # per picture
MAX_TOTAL = 1_000_000  # all pictures
QUALITY = 70
K = 25  # AppState.k default
# well-known materials, the first one the store has (with structure and DOS) is searched for
FAMOUS = [("mp-2534", "GaAs"), ("mp-149", "Si"), ("mp-830", "GaN")]
UPLOAD = "mp-830"  # zinc-blende GaN, uploaded as a CIF
# svg elements inside the element with a css class, through shadow roots
SVG_COUNT_JS = """(cls) => { let n = 0;
  function count(root) { for (const e of root.querySelectorAll('*')) {
    if (e.tagName.toLowerCase() === 'svg') n++; if (e.shadowRoot) count(e.shadowRoot); } }
  function walk(root) { for (const e of root.querySelectorAll('*')) {
    if (e.classList && e.classList.contains(cls)) { count(e); if (e.shadowRoot) count(e.shadowRoot); }
    else if (e.shadowRoot) walk(e.shadowRoot); } }
  walk(document); return n; }"""


# ---- pictures -----------------------------------------------------------------------------------------
def _region(page, selectors: list[str], max_height: int | None = None, full_width: bool = False,
            pad: int = 6) -> bytes:
    """A PNG of the page region around the first element of each css selector (scrolled to the first);
    ``full_width``: to the window's right edge (a pane whose content overflows its box)."""
    page.mouse.move(2, 2)  # no hover tooltip in the picture
    page.locator(selectors[0]).first.evaluate("e => e.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(500)
    boxes = [page.locator(s).first.bounding_box() for s in selectors]
    assert all(boxes), f"not all of {selectors} are on the page"
    vw, vh = VIEWPORT["width"], VIEWPORT["height"]
    x0 = max(0.0, min(b["x"] for b in boxes) - pad)
    y0 = max(0.0, min(b["y"] for b in boxes) - pad)
    x1 = vw if full_width else min(float(vw), max(b["x"] + b["width"] for b in boxes) + pad)
    y1 = min(float(vh), max(b["y"] + b["height"] for b in boxes) + pad)
    if max_height:
        y1 = min(y1, y0 + max_height)
    return page.screenshot(clip={"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0})


def _viewport(page) -> bytes:
    page.mouse.move(2, 2)
    page.wait_for_timeout(300)
    return page.screenshot()


def _top(page, until: str) -> bytes:
    """A PNG of the window from its top down to the bottom of the element ``until`` (the page not scrolled)."""
    page.mouse.move(2, 2)
    page.wait_for_timeout(300)
    b = page.locator(until).first.bounding_box()
    bottom = min(float(VIEWPORT["height"]), b["y"] + b["height"] + 8)
    return page.screenshot(clip={"x": 0, "y": 0, "width": VIEWPORT["width"], "height": bottom})


# the composed picture at scale s: images and text scaled, gaps kept
SCALE_JS = """(s) => {
  for (const i of document.images) i.style.width = Math.round(i.naturalWidth * s) + 'px';
  for (const h of document.querySelectorAll('.html')) h.style.fontSize = (13 * s) + 'px';
  return document.getElementById('c').getBoundingClientRect().width; }"""


def _compose(browser, rows: list[list[bytes | str]]) -> bytes:
    """One JPEG of ``rows`` of parts (PNG bytes, or HTML), at most MAX_WIDTH wide and MAX_BYTES large."""
    cells = []
    for row in rows:
        parts = []
        for p in row:
            if isinstance(p, bytes):
                parts.append(f"<img src='data:image/png;base64,{base64.b64encode(p).decode()}'>")
            else:
                parts.append(f"<div class='html'>{p}</div>")
        cells.append(f"<div class='row'>{''.join(parts)}</div>")
    doc = ("<!DOCTYPE html><html><body style='margin:0;background:#fff'><style>"
           "#c{display:flex;flex-direction:column;gap:10px;padding:6px;width:max-content;background:#fff}"
           ".row{display:flex;gap:14px;align-items:flex-start}"
           ".html{font-family:sans-serif;font-size:13px} table{border-collapse:collapse;font-size:inherit}"
           "td,th{border:1px solid #ccc;padding:2px 6px}"
           f"</style><div id='c'>{''.join(cells)}</div></body></html>")
    context = browser.new_context(viewport={"width": 3000, "height": 3000}, device_scale_factor=1)
    try:
        p = context.new_page()
        p.set_content(doc)
        p.wait_for_function("() => [...document.images].every(i => i.complete && i.naturalWidth > 0)")
        scale = 1.0
        for _ in range(12):
            width = p.evaluate(SCALE_JS, scale)
            if width > MAX_WIDTH + 0.5:  # too wide: scale down (gaps and padding stay)
                scale *= MAX_WIDTH / width
                continue
            jpeg = p.locator("#c").screenshot(type="jpeg", quality=QUALITY)
            if len(jpeg) <= MAX_BYTES * 0.95:
                return jpeg
            scale *= 0.85  # too large a file: a smaller picture
        raise AssertionError(f"no picture of at most {MAX_BYTES} bytes and {MAX_WIDTH} px wide")
    finally:
        context.close()


def _save(browser, name: str, rows: list[list[bytes | str]], written: list[str]) -> None:
    """assets/walkthrough/<name>.jpg, written atomically (a temporary file in the same folder, then os.replace)."""
    OUT.mkdir(parents=True, exist_ok=True)
    jpeg = _compose(browser, rows)
    assert jpeg[:3] == b"\xff\xd8\xff" and len(jpeg) <= MAX_BYTES
    out = OUT / f"{name}.jpg"
    tmp = OUT / f".{name}.jpg.tmp"
    tmp.write_bytes(jpeg)
    os.replace(tmp, out)
    written.append(out.name)


# ---- the journeys -------------------------------------------------------------------------------------
def _famous(explorer) -> tuple[str, str, str]:
    """(id, formula, what to type): a well-known material of the store; its formula when that names only it."""
    t = explorer.store.table
    for mid, formula in FAMOUS:
        row = t[t["id"] == mid]
        if len(row) and bool(row["has_structure"].iloc[0]) and bool(row["has_dos"].iloc[0]):
            try:
                only = list(explorer.find(formula).ids) == [mid]
            except Exception:  # noqa: BLE001 - a formula the lookup refuses: type the id
                only = False
            return mid, str(row["formula"].iloc[0]), formula if only else mid
    pytest.skip("none of the well-known materials is in this store")


def _gap_dos(x: float) -> float:
    """A semiconductor-like DOS: a valence band below 0 eV, nothing from 0 to 1.5 eV, a conduction band above."""
    if x < 0:
        return 0.05 + (1.2 + 4.0 * math.exp(-((x + 3.0) ** 2) / 2.5)) * min(1.0, -x / 1.0)
    if x < 1.5:
        return 0.05
    return 0.05 + (1.0 + 3.0 * math.exp(-((x - 4.0) ** 2) / 3.0)) * min(1.0, (x - 1.5) / 1.0)


def _ellipse_px(frame, cx: float, cy: float, radius_px: float, n: int = 40) -> list[tuple[float, float]]:
    rx = radius_px * (frame["x1"] - frame["x0"]) / frame["width"]
    ry = radius_px * (frame["y1"] - frame["y0"]) / frame["height"]
    pts = [data_to_px(frame, cx + rx * math.cos(2 * math.pi * k / n), cy + ry * math.sin(2 * math.pi * k / n))
           for k in range(n)]
    return pts + [pts[0]]


def _wait_frame(page, predicate, timeout_s: float = LONG / 1000) -> dict:
    return poll(lambda: wait_for_map(page), predicate, "the map never showed the expected view", timeout_s, 0.5)


def _until(predicate, what: str, timeout_s: float = LONG / 1000) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(what)


def test_walkthrough_of_the_journeys(browser, app_url, explorer, tmp_path):
    from pymatgen.io.cif import CifWriter

    written: list[str] = []
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(LONG)
    page.goto(app_url, timeout=LONG)

    # 1. first visit: the map and the open "What am I looking at?" introduction
    whole = wait_for_map(page)
    summary = wait_for_text(page, "mlcm-summary", lambda t: "materials" in t)
    assert "map:" in summary and "clusters" in summary
    intro = " ".join(deep_text(page, "mlcm-intro"))
    assert "What am I looking at?" in intro and "UMAP" in intro and "nearby points" in intro
    assert page.locator(".mlcm-intro-close button").first.is_visible()
    state = app_debug(page)
    assert state["n_selected"] == 0 and state["focus"] == "" and state["n_candidates"] == 0
    _save(browser, "01-first-visit", [[_viewport(page)]], written)

    # 2. find a material: typed in the search box, focused, the map zooms to it, the card and DOS show it
    page.locator(".mlcm-intro-close button").first.click()  # "Got it, hide this"
    mid, formula, typed = _famous(explorer)
    box = page.locator(".mlcm-find-box input").first
    box.fill(typed)
    box.press("Enter")
    wait_for_debug(page, lambda d: d["focus"] == mid)
    x, y = map(float, explorer.xy[explorer.embeddings.position(mid)])
    span = whole["x1"] - whole["x0"]
    zoomed = _wait_frame(page, lambda f: f["x1"] - f["x0"] < 0.5 * span)  # zoomed in ...
    assert zoomed["x0"] < x < zoomed["x1"] and zoomed["y0"] < y < zoomed["y1"]  # ... on the material
    state = wait_for_debug(page, lambda d: len(d["map_view"]) == 4 and "view=" in d["url"])  # and shareable
    vx0, vx1, vy0, vy1 = state["map_view"]
    assert vx0 < x < vx1 and vy0 < y < vy1 and f"focus={mid}" in state["url"]
    wait_for_text(page, "mlcm-find-result", lambda t: f"Found {mid}" in t)
    card = wait_for_text(page, "mlcm-card", lambda t: f"{mid} {formula}" in t and "Predicted properties" in t)
    assert "modalities: structure, DOS" in card and "PBE" in card and "Uncertainty hints" in card
    wait_for_text(page, "mlcm-dos", lambda t: mid in t)
    wait_for_map(page)
    top = _top(page, ".mlcm-map-shown")
    below = _region(page, [".mlcm-dos-plot", ".mlcm-dos", ".mlcm-card"], 560, full_width=True)
    _save(browser, "02-search", [[top], [below]], written)

    # 3. lasso the neighbourhood: the selection summary, histograms and the materials table
    frame = wait_for_map(page)
    click_tool(page, "mlcm-map", "hover")  # off: over a dense region the tooltips come under the pointer
    click_tool(page, "mlcm-map", "lasso-select")
    drag(page, _ellipse_px(frame, x, y, 110))
    state = wait_for_debug(page, lambda d: d["selection_origin"] == "lasso" and d["n_selected"] > 1)
    n = state["n_selected"]
    assert n == len(explorer.select(state["polygon"]))
    wait_for_text(page, "mlcm-selection-summary", lambda t: f"Selection: {n:,} materials" in t)
    _until(lambda: page.evaluate(SVG_COUNT_JS, "mlcm-selection-histograms") > 0, "no histograms")
    wait_for_text(page, "mlcm-table-title", lambda t: f"Materials in the selection: {n:,}" in t)
    inside = set(explorer.select(state["polygon"]))
    _until(lambda: (ids := table_ids(page, "mlcm-materials")) and set(ids) <= inside,
           "the materials table does not list the selection")
    map_png = _region(page, [".mlcm-map", ".mlcm-map-shown"])
    sel_png = _region(page, [".mlcm-selection-summary", ".mlcm-selection-histograms"])
    table_png = _region(page, [".mlcm-table-title", ".mlcm-materials"], 430)
    _save(browser, "03-lasso", [[map_png], [sel_png], [table_png]], written)

    # 4. draw a target DOS with a gap: candidates ranked by similarity, their DOS over the target, the query
    tframe = plot_frame(page, "Target DOS")
    xs = [-8 + 16 * i / 64 for i in range(65)]
    drag(page, [data_to_px(tframe, v, _gap_dos(v)) for v in xs], steps=2)
    state = wait_for_debug(page, lambda d: d["n_candidates"] == K)
    wait_for_text(page, "mlcm-candidates-title", lambda t: f"Candidates: {K}" in t and "target DOS (drawn)" in t)
    query = wait_for_text(page, "mlcm-query-state", lambda t: "target DOS: drawn" in t)
    assert "DOS gallery" in query and f"top {K}" in query
    assert page.evaluate(THUMB_JS) > 50  # the target's thumbnail
    _wait_glyphs(page, lambda g: g["candidates"] > 0 and g["target"] > 0)  # their stored DOS over the target
    wait_for_text(page, "mlcm-target-status", lambda t: "drawn" in t)
    shown = table_ids(page, "mlcm-candidates")
    assert shown and shown == state["candidate_ids"][: len(shown)]
    maes = [c.inner_text().strip() for c in
            page.locator(".mlcm-candidates .tabulator-row .tabulator-cell[tabulator-field='dos_mae_to_target']").all()]
    assert maes and all(math.isfinite(float(m)) and float(m) >= 0 for m in maes), maes
    target_png = _region(page, [".mlcm-draw", ".mlcm-target-status"])
    cand_png = _region(page, [".mlcm-query-state", ".mlcm-candidates-title", ".mlcm-candidates"], 520)
    _save(browser, "04-target-dos", [[target_png], [cand_png]], written)

    # 5. upload a CIF: a star on the map where the model places it, its nearest crystals as the candidates
    _blur(page)  # the keys act only while the keyboard is in no text box or button
    page.keyboard.press("Escape")  # the lasso selection cleared
    wait_for_debug(page, lambda d: d["n_selected"] == 0)
    _blur(page)
    page.keyboard.press("r")  # the whole map again
    wait_for_debug(page, lambda d: d["map_view"] == [] and "view=" not in d["url"])
    _wait_frame(page, lambda f: f["x1"] - f["x0"] > 0.99 * span)
    cif = tmp_path / "GaN.cif"
    cif.write_text(str(CifWriter(explorer.store.structure(UPLOAD))))
    page.locator(".mlcm-cif-upload input[type=file]").set_input_files(str(cif))
    state = wait_for_debug(page, lambda d: d["placed"] is not None and d["n_candidates"] > 0
                           and "uploaded structure GaN.cif" in " ".join(deep_text(page, "mlcm-candidates-title")))
    assert state["placed"]["formula"] == "GaN"
    assert UPLOAD in state["candidate_ids"][:3]  # the stored copy of the uploaded crystal is among the nearest
    px, py = state["placed"]["x"], state["placed"]["y"]
    frame = wait_for_map(page)
    assert frame["x0"] < px < frame["x1"] and frame["y0"] < py < frame["y1"]
    page.mouse.move(*data_to_px(frame, px, py))  # a wheel zoom around the star: its neighbourhood
    page.mouse.wheel(0, -400)
    wait_for_debug(page, lambda d: len(d["map_view"]) == 4)
    frame = _wait_frame(page, lambda f: f["x1"] - f["x0"] < 0.6 * span)
    assert frame["x0"] < px < frame["x1"] and frame["y0"] < py < frame["y1"]
    placed = wait_for_text(page, "mlcm-placed", lambda t: "Placed GaN.cif" in t)
    assert "(GaN)" in placed
    wait_for_text(page, "mlcm-query-state", lambda t: "uploaded structure GaN.cif (GaN)" in t)
    _until(lambda: (ids := table_ids(page, "mlcm-candidates")) and ids == state["candidate_ids"][: len(ids)],
           "the candidates table does not list the upload's candidates")
    map_png = _region(page, [".mlcm-map", ".mlcm-map-shown"])
    upload_png = _region(page, [".mlcm-cif-upload", ".mlcm-placed"])
    cand_png = _region(page, [".mlcm-query-state", ".mlcm-candidates-title", ".mlcm-candidates"], 420)
    _save(browser, "05-upload-cif", [[map_png, upload_png], [cand_png]], written)

    # 6. export the candidates: the CSV download, read back with pandas
    ids = app_debug(page)["candidate_ids"]
    with page.expect_download(timeout=LONG) as info:
        page.locator(".mlcm-download-csv button, .mlcm-download-csv a").first.click()
    name = info.value.suggested_filename
    assert re.fullmatch(rf"mlcm-candidates-[\w.-]+-{K}-\d{{8}}-\d{{6}}\.csv", name), name
    path = tmp_path / name
    info.value.save_as(path)
    table = pd.read_csv(path)
    assert table["id"].astype(str).tolist() == ids and len(ids) == K
    assert {"id", "formula"} <= set(table.columns)
    head = table[[c for c in ("rank", "id", "formula", "score", "spacegroup_symbol", "band_gap_mp_pbe")
                  if c in table.columns]].head(8)
    read_back = (f"<p><b>{html.escape(name)}</b> read back: <code>pandas.read_csv</code> → "
                 f"{table.shape[0]} rows × {table.shape[1]} columns</p>" + head.to_html(index=False))
    assert table_ids(page, "mlcm-candidates") == ids[: len(table_ids(page, "mlcm-candidates"))]
    export_png = _region(page, [".mlcm-candidates-title", ".mlcm-candidates", ".mlcm-download-csv"])
    _save(browser, "06-export", [[export_png, read_back]], written)
    context.close()

    # the folder holds exactly these pictures, small enough to keep in git
    for stale in OUT.glob("*.jpg"):
        if stale.name not in written:
            stale.unlink()
    sizes = {p.name: p.stat().st_size for p in sorted(OUT.glob("*.jpg"))}
    assert sorted(sizes) == sorted(written) and len(written) == 6
    assert all(0 < s <= MAX_BYTES for s in sizes.values()), sizes
    assert sum(sizes.values()) <= MAX_TOTAL, sizes
