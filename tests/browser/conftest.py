"""A real `mlcm app` server on a free localhost port, driven by Debian's Chromium via Playwright.

The server is started by ``tests/_app_server.serving``: in its own process group under a small wrapper that
terminates the whole group at the end of the session, or as soon as the test process disappears, so no server
outlives the tests. The explorer data is MLCM_EXPLORE when set, else
precomputed/explore, else the development build var/explore_dev/explore (``build_precomputed`` output).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests._app_server import serving
from tests.conftest import skip_unless_ci

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
EXPLORE_CANDIDATES = [ROOT / "precomputed" / "explore", ROOT / "var" / "explore_dev" / "explore"]
LONG = 120_000  # ms: the first query loads the model while the server warms up, on a shared 2-core machine

# text of elements carrying a css class, through Panel's shadow roots (style sheets excluded)
DEEP_TEXT_JS = """(cls) => {
  const out = [];
  function text(node) {  // all text under node, descending into nested shadow roots
    let s = '';
    for (const c of node.childNodes) {
      if (c.nodeType === Node.TEXT_NODE) s += c.nodeValue;
      else if (c.nodeType === Node.ELEMENT_NODE && c.nodeName !== 'STYLE' && c.nodeName !== 'SCRIPT') {
        if (c.shadowRoot) s += text(c.shadowRoot);
        s += text(c);
      }
    }
    return s;
  }
  function walk(root) {
    for (const e of root.querySelectorAll('*')) {
      if (e.classList && e.classList.contains(cls)) out.push(e.shadowRoot ? text(e.shadowRoot) + text(e) : text(e));
      if (e.shadowRoot) walk(e.shadowRoot);
    }
  }
  walk(document);
  return out;
}"""

# the pixel frame and data ranges of the Bokeh plot whose title starts with `title`
FRAME_JS = """(title) => {
  const seen = new Set(); let res = null;
  function walk(v) {
    if (!v || seen.has(v)) return; seen.add(v);
    const m = v.model;
    if (m && m.title && m.title.text && m.title.text.startsWith(title) && v.frame && v.canvas_view) {
      let c = v.canvas_view.el.getBoundingClientRect();
      if (c.top < 0 || c.bottom > window.innerHeight || c.left < 0 || c.right > window.innerWidth) {
        v.canvas_view.el.scrollIntoView({block: "center", inline: "center"});  // below the map on narrow windows
        c = v.canvas_view.el.getBoundingClientRect();
      }
      res = {left: c.left + v.frame.bbox.left, top: c.top + v.frame.bbox.top, width: v.frame.bbox.width,
             height: v.frame.bbox.height, x0: m.x_range.start, x1: m.x_range.end, y0: m.y_range.start,
             y1: m.y_range.end, finished: v.has_finished ? v.has_finished() : true};
    }
    const kids = v.child_views || (v.children ? [...v.children()] : []);
    for (const k of kids) walk(k);
  }
  if (window.Bokeh && Bokeh.index) for (const v of Object.values(Bokeh.index)) walk(v);
  return res;
}"""


def explore_path() -> Path:
    if os.environ.get("MLCM_EXPLORE"):
        return Path(os.environ["MLCM_EXPLORE"])
    for p in EXPLORE_CANDIDATES:
        if (p / "manifest.json").exists():
            return p
    pytest.skip("no explorer data: build it with mlcm_core.explore.build_precomputed (precomputed/explore)")


@pytest.fixture(scope="session")
def app_url(tmp_path_factory):
    env = {**os.environ, "MLCM_EXPLORE": str(explore_path())}
    with serving(env, tmp_path_factory.mktemp("app") / "server.log") as url:
        yield url


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        skip_unless_ci("Debian's chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, app_url):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    p = context.new_page()
    p.set_default_timeout(LONG)
    p.goto(app_url, timeout=LONG)
    wait_for_map(p)
    yield p
    context.close()


@pytest.fixture(scope="session")
def explorer():
    """The same Explorer the app uses, opened in the test process (to check the app's answers)."""
    import warnings

    from mlcm_core import load_dataset
    from mlcm_core.explore import Explorer

    store = load_dataset(ROOT / "precomputed" / "dataset", verify=False)
    with warnings.catch_warnings():  # the DFT worker keeps appending shards; the app warns about it too
        warnings.simplefilter("ignore", RuntimeWarning)
        return Explorer.load(explore_path(), store=store, verify=False)


# ---- helpers ----------------------------------------------------------------------------------------
def deep_text(page, css_class: str) -> list[str]:
    return page.evaluate(DEEP_TEXT_JS, css_class)


def poll(read, predicate, what: str, timeout_s: float = LONG / 1000, interval_s: float = 0.25):
    """``read()`` again every ``interval_s`` until ``predicate`` holds for it; return it, else fail naming ``what``."""
    deadline = time.time() + timeout_s
    last = None
    while time.time() < deadline:
        last = read()
        if predicate(last):
            return last
        time.sleep(interval_s)
    raise AssertionError(f"{what}; last: {last}")


def wait_for_text(page, css_class: str, predicate, timeout_s: float = LONG / 1000) -> str:
    """Poll the text of the first element with ``css_class`` until ``predicate(text)``; return it."""
    deadline = time.time() + timeout_s
    last = None
    while time.time() < deadline:
        texts = deep_text(page, css_class)
        last = texts[0] if texts else None
        if last is not None and predicate(last):
            return last
        time.sleep(0.25)
    raise AssertionError(f".{css_class} never satisfied the condition; last text: {last!r}")


def app_debug(page) -> dict:
    texts = deep_text(page, "mlcm-debug")
    return json.loads(texts[0]) if texts and texts[0].strip() else {}


def wait_for_debug(page, predicate, timeout_s: float = LONG / 1000) -> dict:
    deadline = time.time() + timeout_s
    last: dict = {}
    while time.time() < deadline:
        last = app_debug(page)
        if last and predicate(last):
            return last
        time.sleep(0.25)
    raise AssertionError(f"the app state never satisfied the condition; last: {json.dumps(last)[:500]}; "
                         f"message: {deep_text(page, 'mlcm-message')}")


LOADING_JS = """() => { let n = 0;
  function walk(root) { for (const e of root.querySelectorAll('*')) {
    if (e.classList && e.classList.contains('pn-loading')) n++; if (e.shadowRoot) walk(e.shadowRoot); } }
  walk(document); return n; }"""


def plot_frame(page, title: str, stable_polls: int = 4) -> dict:
    """The plot's frame once rendered, nothing is loading any more (deferred views) and the layout is stable."""
    deadline = time.time() + LONG / 1000
    last, same = None, 0
    while time.time() < deadline:
        f = page.evaluate(FRAME_JS, title)
        ok = bool(f and f["finished"] and f["width"] > 0) and page.evaluate(LOADING_JS) == 0
        same = same + 1 if ok and f == last else 0
        if same >= stable_polls:
            return f
        last = f if ok else None
        time.sleep(0.25)
    raise AssertionError(f"no rendered, settled Bokeh plot titled {title!r}")


def wait_for_map(page) -> dict:
    return plot_frame(page, "Embedding map")


def data_to_px(frame: dict, x: float, y: float) -> tuple[float, float]:
    """Map data coordinates -> page pixels (Bokeh's linear frame mapping, y axis pointing up)."""
    return (frame["left"] + (x - frame["x0"]) / (frame["x1"] - frame["x0"]) * frame["width"],
            frame["top"] + (frame["y1"] - y) / (frame["y1"] - frame["y0"]) * frame["height"])


def px_to_data(frame: dict, px: float, py: float) -> tuple[float, float]:
    return (frame["x0"] + (px - frame["left"]) / frame["width"] * (frame["x1"] - frame["x0"]),
            frame["y1"] - (py - frame["top"]) / frame["height"] * (frame["y1"] - frame["y0"]))


def drag(page, points: list[tuple[float, float]], steps: int = 6) -> None:
    page.mouse.move(*points[0])
    page.mouse.down()
    for p in points[1:]:
        page.mouse.move(*p, steps=steps)
    page.mouse.up()


def click_tool(page, container_class: str, tool: str) -> None:
    """Activate a Bokeh toolbar tool (e.g. 'lasso-select') of the plot inside ``.container_class``."""
    page.locator(f".{container_class} .bk-tool-icon-{tool}").first.click()


def table_ids(page, container_class: str) -> list[str]:
    """The id column of the current page of a Tabulator inside ``.container_class``."""
    cells = page.locator(f".{container_class} .tabulator-row .tabulator-cell[tabulator-field='id']")
    return [c.inner_text().strip() for c in cells.all()]
