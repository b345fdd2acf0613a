"""What the candidates were searched with, shown above them; the stale mark; Clear target; the one Reset.

Each test drives the real app in Chromium and reads back what the page shows: the query-state panel's text and
thumbnail, and the data of the curves the browser holds in the target DOS plot (candidate curves, the target,
the drawn stroke).
"""

from __future__ import annotations

import math
import time

from tests.browser.conftest import (LONG, ROOT, app_debug, data_to_px, deep_text, drag, plot_frame, poll,
                                    table_ids, wait_for_debug, wait_for_text)

CANDIDATE_COLOURS = {"#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"}
STALE = "stale — search again"

# every glyph of the "Target DOS" plot: its line colour and how many points its data source holds
TARGET_GLYPHS_JS = """() => {
  const seen = new Set(); const out = [];
  function colour(c) { return (c && typeof c === 'object') ? (c.value ?? c.field ?? '') : (c ?? ''); }
  function walk(v) {
    if (!v || seen.has(v)) return; seen.add(v);
    const m = v.model;
    if (m && m.title && m.title.text && m.title.text.startsWith('Target DOS') && m.renderers) {
      for (const r of m.renderers) {
        if (!r.data_source || !r.glyph) continue;
        const d = r.data_source.data; const get = (k) => d instanceof Map ? d.get(k) : d[k];
        const col = get('E') ?? get('xs') ?? get('x');
        const n = col ? (get('xs') ? [...col].reduce((a, p) => a + p.length, 0) : col.length) : 0;
        out.push({type: r.glyph.type, colour: String(colour(r.glyph.line_color)).toLowerCase(), n: n,
                  dash: JSON.stringify(r.glyph.line_dash ?? '')});
      }
    }
    const kids = v.child_views || (v.children ? [...v.children()] : []);
    for (const k of kids) walk(k);
  }
  if (window.Bokeh && Bokeh.index) for (const v of Object.values(Bokeh.index)) walk(v);
  return out;
}"""

# points of the query panel's target thumbnail (an inline SVG polyline), through shadow roots
THUMB_JS = """() => { let n = -1;
  function walk(root) { for (const e of root.querySelectorAll('*')) {
    if (e.tagName && e.tagName.toLowerCase() === 'svg' && e.classList.contains('mlcm-query-thumb')) {
      const p = e.querySelector('polyline'); n = p ? p.getAttribute('points').trim().split(/\\s+/).length : 0; }
    if (e.shadowRoot) walk(e.shadowRoot); } }
  walk(document); return n; }"""


def _glyphs(page) -> dict[str, int]:
    """Points held by the target plot's candidate curves, its target curve and the drawn stroke."""
    out = {"candidates": 0, "target": 0, "stroke": 0}
    for g in page.evaluate(TARGET_GLYPHS_JS):
        if g["colour"] in CANDIDATE_COLOURS:
            out["candidates"] += g["n"]
        elif g["colour"] == "black":
            out["target"] += g["n"]
        elif g["colour"] == "#ff7f0e":
            out["stroke"] += g["n"]
    return out


def _wait_glyphs(page, predicate, timeout_s: float = LONG / 1000) -> dict[str, int]:
    return poll(lambda: _glyphs(page), predicate, "the target plot never held the expected curves", timeout_s)


def _query_text(page, predicate) -> str:
    return wait_for_text(page, "mlcm-query-state", predicate)


def _stroke(page, bump: float = 0.0) -> None:
    """A freehand stroke across the target axes (``bump`` moves its peak: another curve)."""
    page.locator(".mlcm-draw").first.scroll_into_view_if_needed()  # below the map on a narrower window
    frame = plot_frame(page, "Target DOS")
    xs = [-8 + 16 * i / 40 for i in range(41)]
    pts = [data_to_px(frame, x, 1.0 + 4.0 * math.exp(-((x + 2 - bump) ** 2) / 4) + 2.5 * math.exp(-((x - 3) ** 2)))
           for x in xs]
    drag(page, pts, steps=3)


def _open_filters(page) -> None:
    box = page.locator("input[placeholder='e.g. Pb, Cd']")
    if not box.count() or not box.first.is_visible():
        page.get_by_text("Retrieval filters", exact=True).first.click()
    box.first.wait_for(state="visible")


def _type_filter(page, placeholder: str, text: str) -> None:
    box = page.locator(f"input[placeholder='{placeholder}']").first
    box.fill(text)
    box.press("Enter")


def _cif(tmp_path, material_id: str, name: str):
    from pymatgen.io.cif import CifWriter

    from mlcm_core import load_dataset

    path = tmp_path / name
    path.write_text(str(CifWriter(load_dataset(ROOT / "precomputed" / "dataset", verify=False).structure(material_id))))
    return path


def test_the_query_state_shows_the_target_and_goes_stale_when_a_filter_changes(page):
    assert "nothing yet" in _query_text(page, lambda t: "Searched with" in t)
    _stroke(page)
    wait_for_debug(page, lambda d: d.get("n_candidates", 0) > 0)
    text = _query_text(page, lambda t: "target DOS: drawn" in t)
    assert "DOS gallery" in text and "chosen by auto" in text and "top 25" in text and "Filters: none" in text
    assert STALE not in text
    assert page.evaluate(THUMB_JS) > 100  # the thumbnail of the drawn target
    _open_filters(page)
    _type_filter(page, "e.g. Pb, Cd", "Pb")
    text = _query_text(page, lambda t: STALE in t)
    assert "filters changed" in text and "Filters: none" in text  # still what the shown candidates ran with
    page.locator(".mlcm-search-again button").first.click()
    text = _query_text(page, lambda t: STALE not in t and "without Pb" in t)
    assert "Filters: without Pb; unknown values dropped" in text


def test_a_new_stroke_not_searched_is_stale_its_candidates_not_drawn_and_clear_target_clears_them(page):
    _stroke(page)
    wait_for_debug(page, lambda d: d.get("n_candidates", 0) > 0)
    _wait_glyphs(page, lambda g: g["candidates"] > 0 and g["target"] > 0)
    page.locator(".mlcm-search-on-draw input[type=checkbox]").first.uncheck()
    _stroke(page, bump=4.0)  # another target, not searched: its label is "drawn" too
    text = _query_text(page, lambda t: STALE in t)
    assert "target DOS changed" in text
    _wait_glyphs(page, lambda g: g["candidates"] == 0 and g["target"] > 0)  # not drawn over the new target
    assert app_debug(page)["n_candidates"] > 0  # still listed, under the stale mark
    page.get_by_role("button", name="Clear target").first.click()
    wait_for_debug(page, lambda d: d["n_candidates"] == 0)
    _wait_glyphs(page, lambda g: g == {"candidates": 0, "target": 0, "stroke": 0})
    assert "nothing yet" in _query_text(page, lambda t: "nothing yet" in t)


def test_clear_target_right_after_a_search_clears_the_candidates_and_their_curves(page):
    _stroke(page)
    wait_for_debug(page, lambda d: d.get("n_candidates", 0) > 0)
    _wait_glyphs(page, lambda g: g["candidates"] > 0)
    page.get_by_role("button", name="Clear target").first.click()
    wait_for_debug(page, lambda d: d["n_candidates"] == 0)
    _wait_glyphs(page, lambda g: g == {"candidates": 0, "target": 0, "stroke": 0})
    wait_for_text(page, "mlcm-candidates-title", lambda t: "none yet" in t)


def test_an_upload_shows_its_structure_and_filters_and_is_not_drawn_over_the_target(page, tmp_path):
    _stroke(page)
    wait_for_debug(page, lambda d: d.get("n_candidates", 0) > 0)
    _wait_glyphs(page, lambda g: g["candidates"] > 0)
    _open_filters(page)
    _type_filter(page, "e.g. O, Ti", "N")
    _query_text(page, lambda t: STALE in t)
    page.locator(".mlcm-cif-upload input[type=file]").set_input_files(str(_cif(tmp_path, "mp-830", "GaN.cif")))
    wait_for_debug(page, lambda d: d.get("placed") is not None and d.get("n_candidates", 0) > 0)
    text = _query_text(page, lambda t: "uploaded structure GaN.cif (GaN)" in t)
    assert "Filters: contains N; unknown values dropped" in text  # the filter is shown, not silently applied
    assert "crystal gallery" in text and STALE not in text
    assert page.evaluate(THUMB_JS) == -1  # no target thumbnail for an upload's search
    _wait_glyphs(page, lambda g: g["candidates"] == 0 and g["target"] > 0)  # the upload's are not drawn
    page.get_by_role("button", name="Clear target").first.click()  # the upload's candidates are not the target's
    _wait_glyphs(page, lambda g: g["target"] == 0)
    assert app_debug(page)["n_candidates"] > 0


def test_reset_returns_the_session_to_its_initial_state(page, tmp_path):
    box = page.locator(".mlcm-find-box input").first
    box.fill("SiO2")
    box.press("Enter")
    wait_for_debug(page, lambda d: d["n_selected"] > 1)
    cif = _cif(tmp_path, "mp-830", "GaN.cif")
    page.locator(".mlcm-cif-upload input[type=file]").set_input_files(str(cif))
    wait_for_debug(page, lambda d: d.get("placed") is not None)
    _query_text(page, lambda t: "uploaded structure GaN.cif" in t)  # the upload's search has finished
    _stroke(page)
    wait_for_text(page, "mlcm-candidates-title", lambda t: "target DOS (drawn)" in t)
    page.locator(".mlcm-candidates .tabulator-row").first.locator(".tabulator-cell[tabulator-field='formula']").click()
    wait_for_debug(page, lambda d: d["focus"] != "")
    _open_filters(page)
    _type_filter(page, "e.g. Pb, Cd", "Pb")
    colour = page.locator("select").filter(has=page.locator("option", has_text="modality coverage")).first
    colour.select_option("source")
    _wait_glyphs(page, lambda g: g["candidates"] > 0 and g["target"] > 0 and g["stroke"] > 0)
    _query_text(page, lambda t: STALE in t)

    page.locator(".mlcm-reset button").first.click()
    state = wait_for_debug(page, lambda d: d["n_selected"] == 0 and d["n_candidates"] == 0 and d["placed"] is None
                           and d["focus"] == "")
    assert state["selection_origin"] == "" and state["polygon"] == []
    wait_for_text(page, "mlcm-message", lambda t: "session reset" in t)
    _wait_glyphs(page, lambda g: g == {"candidates": 0, "target": 0, "stroke": 0})
    assert "nothing yet" in _query_text(page, lambda t: "nothing yet" in t)
    wait_for_text(page, "mlcm-placed", lambda t: "Upload a CIF" in t)
    deadline = time.time() + 30
    while time.time() < deadline and (colour.input_value() != "crystal system" or box.input_value() != ""
                                      or page.locator("input[placeholder='e.g. Pb, Cd']").first.input_value() != ""):
        time.sleep(0.25)
    assert colour.input_value() == "crystal system"
    assert box.input_value() == ""
    assert page.locator("input[placeholder='e.g. Pb, Cd']").first.input_value() == ""
    assert any("none yet" in t for t in deep_text(page, "mlcm-candidates-title"))
    # the same file uploaded again is a new upload
    page.locator(".mlcm-cif-upload input[type=file]").set_input_files(str(cif))
    wait_for_debug(page, lambda d: d.get("placed") is not None)
    # ... and its candidates fill the table's rows (after Reset the paged table once stayed empty: title 25, rows 0)
    cand = wait_for_debug(page, lambda d: d["n_candidates"] > 0 and d.get("placed") is not None)["candidate_ids"]
    rows = poll(lambda: table_ids(page, "mlcm-candidates"), lambda ids: len(ids) > 0,
                "the candidates table stayed empty after Reset", timeout_s=60)
    assert rows == cand[: len(rows)] and len(rows) == min(15, len(cand))
