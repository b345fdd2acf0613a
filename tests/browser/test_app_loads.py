"""The dashboard in a real browser: it loads offline, draws the map, and a clicked row fills the linked views."""

from __future__ import annotations

from tests.browser.conftest import deep_text, wait_for_map, wait_for_text


def test_app_loads_with_the_default_dataset(page):
    summary = wait_for_text(page, "mlcm-summary", lambda t: "materials" in t)
    assert "18," in summary and "map:" in summary and "clusters" in summary
    frame = wait_for_map(page)
    assert frame["width"] > 300 and frame["height"] > 300
    assert page.locator(".mlcm-materials .tabulator-row").count() > 0


def test_no_request_leaves_the_machine(browser, app_url):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    outside = []
    page.on("request", lambda r: outside.append(r.url)
            if not r.url.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:", "about:")) else None)
    page.goto(app_url)
    wait_for_map(page)
    context.close()
    assert outside == []


def test_selecting_a_row_shows_its_linked_views(page):
    page.locator(".mlcm-materials .tabulator-header-filter input").nth(0).fill("mp-830")
    page.keyboard.press("Enter")
    row = page.locator(".mlcm-materials .tabulator-row", has_text="mp-830").first
    row.wait_for()
    row.locator(".tabulator-cell[tabulator-field='formula']").click()
    card = wait_for_text(page, "mlcm-card", lambda t: "mp-830" in t and "1.57" in t)  # MP PBE gap of zinc-blende GaN
    assert "PBE" in card and "Materials Project" in card
    # structure and density are drawn by plotly in iframes once the material is focused
    structure = page.frame_locator(".mlcm-structure iframe")
    structure.locator("body[data-rendered='1']").wait_for()
    assert "mp-830 GaN" in structure.locator(".gtitle").text_content()
    density = page.frame_locator(".mlcm-density iframe")
    density.locator("body[data-rendered='1']").wait_for()
    assert "isosurface" in density.locator(".gtitle").text_content()
    assert "marching cubes" in " ".join(deep_text(page, "mlcm-density-note"))
