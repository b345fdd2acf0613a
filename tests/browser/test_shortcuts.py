"""Keyboard shortcuts in a real browser: "/" puts the keyboard in the search box, "l" switches the map to the
lasso, Esc clears the selection, "r" shows the whole map again; none of them acts while typing in a box."""

from __future__ import annotations

from tests.browser.conftest import (
    LONG,
    app_debug,
    data_to_px,
    deep_text,
    drag,
    wait_for_debug,
    wait_for_map,
    wait_for_text,
)
from tests.browser.test_lasso import _pick_lasso

# the element that has the keyboard, through shadow roots: its tag and whether it is the search box
ACTIVE_JS = """() => {
  let a = document.activeElement;
  while (a && a.shadowRoot && a.shadowRoot.activeElement) a = a.shadowRoot.activeElement;
  if (!a) return null;
  let host = a.getRootNode().host; let box = false;
  while (host) { if (host.classList && host.classList.contains('mlcm-find-box')) box = true;
                 host = host.getRootNode().host; }
  return {tag: a.tagName, box: box};
}"""

LASSO_ACTIVE_JS = """() => {
  let hit = null;
  function walk(root) { for (const e of root.querySelectorAll('*')) {
    if (e.classList && e.classList.contains('bk-tool-icon-lasso-select')) hit = e;
    if (e.shadowRoot) walk(e.shadowRoot); } }
  walk(document);
  if (!hit) return null;
  const button = hit.getRootNode().host || hit;  // the toolbar button (the icon sits in its shadow root)
  return button.classList.contains('bk-active');
}"""


def _blur(page) -> None:
    """The keyboard back on the page itself (no box focused)."""
    page.evaluate("() => { let a = document.activeElement; while (a && a.shadowRoot && a.shadowRoot.activeElement) "
                  "a = a.shadowRoot.activeElement; if (a && a.blur) a.blur(); document.activeElement.blur(); }")


def test_slash_focuses_the_search_box_and_keys_typed_there_are_text(page):
    _blur(page)
    page.keyboard.press("/")
    assert page.evaluate(ACTIVE_JS) == {"tag": "INPUT", "box": True}
    page.keyboard.type("lr")  # typed into the box: no lasso, no reset
    assert page.locator(".mlcm-find-box input").first.input_value() == "lr"
    assert page.evaluate(LASSO_ACTIVE_JS) is False
    page.locator(".mlcm-find-box input").first.fill("mp-149")
    page.keyboard.press("Enter")
    wait_for_debug(page, lambda d: d["focus"] == "mp-149")
    page.keyboard.press("Escape")  # in the box: not the shortcut
    assert app_debug(page)["focus"] == "mp-149"


def test_l_switches_to_the_lasso_and_escape_clears_the_selection(page, explorer):
    frame = wait_for_map(page)
    assert page.evaluate(LASSO_ACTIVE_JS) is False
    _blur(page)
    page.keyboard.press("l")
    page.wait_for_function(LASSO_ACTIVE_JS, timeout=LONG)
    poly = _pick_lasso(frame, explorer)
    pixels = [data_to_px(frame, x, y) for x, y in poly]
    drag(page, pixels + [pixels[0]])  # no toolbar click: the key chose the lasso
    state = wait_for_debug(page, lambda d: d.get("selection_origin") == "lasso" and d["n_selected"] > 0)
    assert state["n_selected"] == len(explorer.select(state["polygon"]))
    _blur(page)
    page.keyboard.press("Escape")
    wait_for_debug(page, lambda d: d["n_selected"] == 0)
    wait_for_text(page, "mlcm-message", lambda t: "selection cleared" in t)


def test_r_resets_the_map_view(page):
    home = wait_for_map(page)
    page.mouse.move(home["left"] + home["width"] / 3, home["top"] + home["height"] / 3)
    page.mouse.wheel(0, -500)
    wait_for_debug(page, lambda d: len(d["map_view"]) == 4)
    zoomed = wait_for_map(page)
    assert zoomed["x1"] - zoomed["x0"] < 0.9 * (home["x1"] - home["x0"])
    _blur(page)
    page.keyboard.press("r")
    wait_for_debug(page, lambda d: d["map_view"] == [] and "view=" not in d["url"])
    back = wait_for_map(page)
    span = home["x1"] - home["x0"]
    assert abs(back["x0"] - home["x0"]) < 1e-6 * span and abs(back["x1"] - home["x1"]) < 1e-6 * span


def test_the_shortcuts_are_listed_in_the_page(page):
    text = " ".join(deep_text(page, "mlcm-keys"))
    for key in ("/", "Esc", "lasso", "reset"):
        assert key in text
