"""Load benchmark (not a CI test): N concurrent lightweight sessions against `mlcm app` for a few minutes.

    python benchmarks/load_sessions.py                       # 20 sessions arriving over 20 s, 120 s, think 5 s
    python benchmarks/load_sessions.py --sessions 5 --duration 30 --json var/bench/load.json
    python benchmarks/load_sessions.py --url http://127.0.0.1:5006/main --server-pid 1234   # an existing server

What a session does (no browser: Bokeh's own protocol, from Python, with Panel's models imported so every
document deserialises):

1. **Document load**, as a browser does it: GET the page (the server runs the app and builds the session's
   document), take the session id from the page's token, open the websocket to *that* session and pull the
   document, then send ``DocumentReady`` (what BokehJS sends once the page has rendered), which makes Panel
   render the deferred views. The three steps are timed separately.
2. **Interactions**, once every session is open (or has failed), for --duration seconds, one every think
   time (uniform in [0.5, 1.5] x --think), picked at random among those the dashboard exposes when the
   benchmark runs (found by title/label/CSS class; whatever is missing is skipped and reported): colour the
   map by another quantity, pick a cluster, zoom/pan the map (new x/y ranges: datashader re-rasterizes),
   lasso-select a random polygon (a ``SelectionGeometry`` event, as the lasso tool sends), focus a random row
   of the materials table (structure, DOS, density and property views update), set k, draw a target DOS (a
   random smooth stroke across -10..10 eV written into the freehand-draw tool's source, as BokehJS does when a
   stroke ends: the app resamples it, sets it as the target and searches), and the DOS search (focus a
   material with a DOS on the table's page, "Use this material's DOS", "Search with target": a model
   embedding + exact top-k; the three requests are timed together).
   If none of these exist, it falls back to changing any Select/Slider value.
   Latency of an interaction = from sending its PATCH-DOC to the server's OK for it. The server handles a
   connection's messages in order and runs the Python callbacks synchronously, so this covers the callbacks
   and the document changes they push back (received before the OK).

Reported: server errors (ERROR replies, disconnects, ``ERROR``/``Traceback`` lines the server logged during the
run, and danger alerts the app displayed), p50/p95/max latency per interaction and overall, page-load timings,
and the server's RSS (before, with all sessions open, peak, after) with the increase per session. The client runs on the same machine
(one process, one thread per session), so on a small machine it competes with the server for CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import importlib
import json
import os
import pkgutil
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TIMED_OUT = object()
QUIET_S = 0.3  # after the awaited change: no further patch for this long ends an interaction (Session._exchange)
sys.path.insert(0, str(ROOT))


def _import_models() -> None:
    """Register every custom Bokeh model the app can send (Panel's, HoloViews' plotting, the app's own)."""
    import panel.models

    names = [f"panel.models.{mod.name}" for mod in pkgutil.iter_modules(panel.models.__path__)]
    for name in [*names, "holoviews.plotting.bokeh", "app.main"]:
        with contextlib.suppress(Exception):  # optional extras (e.g. a missing JS library wrapper)
            importlib.import_module(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def stats(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50_s": percentile(values, 0.5), "p95_s": percentile(values, 0.95),
            "max_s": max(values) if values else None, "mean_s": statistics.fmean(values) if values else None}


# ---- the server -------------------------------------------------------------------------------------


class Server:
    """`mlcm app` on a free port in its own process group (ours to stop), its log in a temp file."""

    def __init__(self, port: int, log: Path, app_args: Sequence[str] = ()) -> None:
        self.port, self.log_path = port, log
        self.log = open(log, "w")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "mlcm_core.cli", "app", "--port", str(port), *app_args],
                                     cwd=ROOT,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/main"

    def panel_process(self):
        """The `panel serve` process: `mlcm app` execs it (same pid; a child with an older `mlcm app`)."""
        import psutil

        parent = psutil.Process(self.proc.pid)
        kids = [p for p in parent.children(recursive=True) if "panel" in " ".join(p.cmdline())]
        return kids[0] if kids else parent

    def wait_ready(self, timeout: float) -> float:
        import requests

        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlcm app exited ({self.proc.returncode}); see {self.log_path}")
            try:
                if requests.get(self.url, timeout=60).status_code == 200:
                    return time.monotonic() - t0
            except requests.RequestException:
                pass
            time.sleep(1.0)
        raise TimeoutError(f"mlcm app not ready after {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        """SIGTERM to the process group started here (`mlcm app` and its panel child), SIGKILL after 20 s."""
        import psutil

        try:
            members = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            members = []
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        _, alive = psutil.wait_procs(members, timeout=20)
        if alive:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.log.close()


def rss_of(proc) -> int:
    import psutil

    try:
        return proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
    except psutil.NoSuchProcess:
        return 0


# ---- one session ------------------------------------------------------------------------------------


class SessionError(RuntimeError):
    pass


class Session:
    """One simulated user: a Bokeh client session attached to the document the page GET created."""

    def __init__(self, url: str, rng: random.Random, timeout: float) -> None:
        self.url, self.rng, self.timeout = url, rng, timeout
        self.last_patch = 0.0  # when the last document patch of the current request arrived
        self.spent = 0.0  # sum over requests of (last patch - sent): an interaction's latency
        self._reading = None  # a websocket read still pending from the previous request
        self.session = None
        self.pending: list = []
        self.alerts_seen: set[str] = set()

    # -- protocol ------------------------------------------------------------------------------------
    def open(self) -> dict[str, float]:
        import requests
        from bokeh.client.session import ClientSession
        from bokeh.events import DocumentReady
        from bokeh.util.token import get_session_id

        times = {}
        t0 = time.perf_counter()
        r = requests.get(self.url, timeout=self.timeout)
        if r.status_code != 200:
            raise SessionError(f"GET {self.url}: HTTP {r.status_code}")
        token = re.search(r'"token":\s*"([^"]+)"', r.text)
        if token is None:
            raise SessionError("no session token in the page")
        times["page_get"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        self.session = ClientSession(session_id=get_session_id(token.group(1)),
                                     websocket_url=self.url.replace("http", "ws", 1) + "/ws")
        self.session.pull()
        if not self.session.connected:
            raise SessionError(f"websocket: {self.session._connection.error_reason}")
        conn = self.session._connection
        conn._send_patch_document = lambda _sid, event: self.pending.append(event)  # we send (and time) them
        times["ws_pull"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        # Panel renders the deferred views after DocumentReady; the page is ready when they have arrived
        self.event(DocumentReady(), until=lambda _ids: self._deferred_rendered())
        times["document_ready"] = time.perf_counter() - t2
        times["total"] = time.perf_counter() - t0
        return times

    def close(self) -> None:
        if self.session is not None:
            with contextlib.suppress(Exception):
                self.session.close()

    def _exchange(self, events: list, until=None) -> str:
        """Send one PATCH-DOC with ``events`` and apply the server's patches until its work is done.

        The server answers OK as soon as it has *queued* the change: Panel runs the callbacks afterwards (a
        50 ms debounced timeout, or a thread pool). So after the OK this waits until ``until(ids)`` is true
        (``ids``: the models changed so far, e.g. the map image for a recolouring), then until no patch has come
        for QUIET_S, and returns when the last patch arrived. Without ``until`` (nothing visible changes, e.g.
        k), it waits for the OK and the quiet window. Returns the reply type (OK, ERROR, DISCONNECTED,
        TIMEOUT: ``until`` never became true)."""
        import asyncio

        conn = self.session._connection
        msg = conn._protocol.create("PATCH-DOC", events)
        changed: set[str] = set()
        sent = time.perf_counter()
        self.last_patch = sent

        def apply(reply) -> None:
            self.session._handle_patch(reply)
            for e in reply.content.get("events", []):
                model = e.get("model")
                if isinstance(model, dict) and "id" in model:
                    changed.add(model["id"])
            self.last_patch = time.perf_counter()

        async def next_message(timeout: float | None):
            """The next message, or TIMED_OUT. The read is never cancelled: a websocket read cancelled midway
            loses a fragment of a multi-part message (the client then fails to parse everything after it), so
            a read still pending at a timeout is kept for the next call."""
            if self._reading is None:
                self._reading = asyncio.ensure_future(conn._pop_message())
            done, _ = await asyncio.wait({self._reading}, timeout=timeout)
            if not done:
                return TIMED_OUT
            reply, self._reading = self._reading.result(), None
            return reply

        async def run() -> str:
            await conn.send_message(msg)
            outcome = None
            while outcome is None:
                reply = await next_message(None)
                if reply is None:
                    return "DISCONNECTED"
                if reply.msgtype == "PATCH-DOC":
                    apply(reply)
                elif reply.header.get("reqid") == msg.header["msgid"]:
                    outcome = reply.msgtype
            self.last_patch = max(self.last_patch, time.perf_counter())
            if outcome != "OK":
                return outcome
            deadline = time.monotonic() + self.timeout
            while until is not None and not until(changed):
                reply = await next_message(max(0.1, deadline - time.monotonic()))
                if reply is TIMED_OUT:
                    return "TIMEOUT"
                if reply is None:
                    return "DISCONNECTED"
                if reply.msgtype == "PATCH-DOC":
                    apply(reply)
            while True:  # the rest of the same callback's changes
                reply = await next_message(QUIET_S)
                if reply is TIMED_OUT:
                    return "OK"
                if reply is None:
                    return "DISCONNECTED"
                if reply.msgtype == "PATCH-DOC":
                    apply(reply)

        try:
            return conn._loop.run_sync(run, timeout=self.timeout + 30)
        finally:
            self.spent += self.last_patch - sent

    def _deferred_rendered(self) -> bool:
        return self.find(("DataTabulator",), css_classes="materials") is not None

    def _css_model(self, css: str):
        for m in self.session.document.models:
            if any(css in c for c in (getattr(m, "css_classes", None) or [])):
                return m
        return None

    def debug_state(self) -> dict:
        """The app's debug line (JSON in a <pre>: polygon, selection size, focus, candidates)."""
        text = html.unescape(re.sub(r"<[^>]+>", "", html.unescape(self._text_of("mlcm-debug"))))
        try:
            return json.loads(text or "{}")
        except ValueError:
            return {}

    def _text_of(self, css: str) -> str:
        m = self._css_model(css)
        return "" if m is None else str(getattr(m, "text", ""))

    def _check(self, kind: str, outcome: str) -> None:
        if outcome != "OK":
            raise SessionError(f"{kind}: server replied {outcome}")

    def change(self, kind: str, model, until=None, **props) -> None:
        self.pending.clear()
        for k, v in props.items():
            setattr(model, k, v)
        events, self.pending[:] = list(self.pending), []
        if events:
            self._check(kind, self._exchange(events, until))

    def event(self, bokeh_event, kind: str = "event", until=None) -> None:
        from bokeh.document.events import MessageSentEvent

        self._check(kind, self._exchange([MessageSentEvent(self.session.document, "bokeh_event", bokeh_event)], until))

    def _changes(self, model) -> Any:
        """An ``until`` for _exchange: true once ``model`` (or, for a figure, its image source) has changed."""
        ids = {model.id} if model is not None else set()
        return (lambda changed: bool(ids & changed)) if ids else None

    def new_alerts(self) -> list[str]:
        """Danger alerts the app shows that this session has not seen yet (its error messages)."""
        out = []
        for m in self.session.document.models:
            if "alert-danger" in (getattr(m, "css_classes", None) or []):
                text = str(getattr(m, "text", "") or getattr(m, "object", ""))[:200]
                if text not in self.alerts_seen:
                    self.alerts_seen.add(text)
                    out.append(text)
        return out

    # -- finding the dashboard's controls ----------------------------------------------------------
    def find(self, type_names: tuple[str, ...], **match: str):
        """The first model of one of ``type_names`` whose attributes match the regular expressions given."""
        for m in self.session.document.models:
            if type(m).__name__ in type_names and all(re.search(p, _text(m, a), re.IGNORECASE) for a, p in match.items()):
                return m
        return None

    def interactions(self) -> dict[str, Any]:
        """{name: callable} for what this dashboard exposes.

        Each waits for the change the user would see: the map image (colour, zoom), the app's debug line
        (lasso, cluster, focus: it echoes the polygon, selection and focus), the target status (a material's DOS
        as target); set k and a repeated search change nothing visible and end with the server's quiet window."""
        found: dict[str, Any] = {}
        debug = self._css_model("mlcm-debug")
        status = self._css_model("mlcm-target-status")
        fig = self.find(("figure", "Plot"), title="map")
        image = self._image_source(fig)
        on_debug, on_image, on_status = self._changes(debug), self._changes(image), self._changes(status)
        colour = self.find(("Select", "CustomSelect"), title="colou?r")
        if colour is not None and len(colour.options) > 1:
            found["map_colour_by"] = lambda: self.change("map_colour_by", colour, on_image, value=self._option(colour))
        cluster = self.find(("Select", "CustomSelect", "SingleSelect"), title="cluster")
        if cluster is not None and len(cluster.options) > 1:
            found["map_cluster"] = lambda: self.change("map_cluster", cluster, on_debug, value=self._option(cluster))
        if fig is not None and hasattr(fig.x_range, "start"):
            x0, x1, y0, y1 = fig.x_range.start, fig.x_range.end, fig.y_range.start, fig.y_range.end
            found["map_zoom"] = lambda: self._zoom(fig, x0, x1, y0, y1, on_image)
            if any(type(t).__name__ == "LassoSelectTool" for t in fig.toolbar.tools):
                found["map_lasso"] = lambda: self._lasso(fig, x0, x1, y0, y1, on_debug)
        table = self.find(("DataTabulator",), css_classes="materials") or self.find(("DataTabulator",))
        if table is not None:
            found["focus_material"] = lambda: self._focus(table, on_debug)
            use = self.find(("Button",), label="use this material")
            search = self.find(("Button",), label="search")
            if use is not None and search is not None:
                found["dos_search"] = lambda: self._dos_search(table, use, search, on_debug, on_status)
        target_fig = self.find(("figure", "Plot"), title="target dos")
        draw = self._draw_source(target_fig)
        if draw is not None:  # done when the drawn target's curve arrives (the search's changes come with it)
            curves = {r.data_source.id for r in target_fig.renderers if r.data_source is not draw}
            found["draw_dos"] = lambda: self._draw(draw, lambda changed: bool(curves & changed))
        k = self.find(("Slider", "IntSlider", "Spinner"), title=r"\bk\b")
        if k is not None:
            found["set_k"] = lambda: self.change("set_k", k, value=self.rng.choice([v for v in (10, 25, 50) if v != k.value]))
        if not found:  # generic fallback: any select or slider
            for m in self.session.document.models:
                if type(m).__name__ in ("Select", "CustomSelect") and len(m.options) > 1:
                    found.setdefault("param_change_select", lambda m=m: self.change("param_change_select", m,
                                                                                    value=self._option(m)))
                elif type(m).__name__ == "Slider":
                    found.setdefault("param_change_slider", lambda m=m: self.change(
                        "param_change_slider", m, value=self.rng.uniform(m.start, m.end)))
        return found

    @staticmethod
    def _image_source(fig):
        """The data source of the map's image (ImageRGBA) renderer, or None."""
        for r in getattr(fig, "renderers", []) if fig is not None else []:
            if type(getattr(r, "glyph", None)).__name__ == "ImageRGBA":
                return r.data_source
        return None

    @staticmethod
    def _draw_source(fig):
        """The data source the target figure's FreehandDrawTool writes its strokes into, or None."""
        tools = getattr(getattr(fig, "toolbar", None), "tools", []) if fig is not None else []
        for t in tools:
            if type(t).__name__ == "FreehandDrawTool" and t.renderers:
                return t.renderers[0].data_source
        return None

    def _draw(self, source, until=None) -> None:
        """What BokehJS sends when a freehand stroke ends: the stroke's points in the draw source (HoloViews'
        FreehandDraw stream picks them up; the app resamples the curve, sets it as target and searches).
        A random smooth DOS-like stroke drawn left to right across -10..10 eV."""
        import math

        n = self.rng.randint(30, 80)
        peaks = [(self.rng.uniform(-8, 8), self.rng.uniform(0.5, 2.5), self.rng.uniform(1, 6)) for _ in range(3)]
        xs = [-10 + 20 * i / (n - 1) for i in range(n)]
        ys = [sum(h * math.exp(-((x - c) / w) ** 2) for c, w, h in peaks) + 0.2 for x in xs]
        self.change("draw_dos", source, until, data={"xs": [xs], "ys": [ys]})

    def _option(self, select) -> str:
        """Another option than the current one; never the empty choice (e.g. "no cluster": nothing happens)."""
        opts = [o[0] if isinstance(o, (list, tuple)) else o for o in select.options]
        real = [o for o in opts if str(o).strip() not in ("", "None")]
        return self.rng.choice([o for o in real if o != select.value] or real or opts)

    def _window(self, x0, x1, y0, y1) -> tuple[float, float, float, float]:
        f = self.rng.uniform(0.15, 0.6)
        w, h = (x1 - x0) * f, (y1 - y0) * f
        cx, cy = self.rng.uniform(x0 + w / 2, x1 - w / 2), self.rng.uniform(y0 + h / 2, y1 - h / 2)
        return cx - w / 2, cx + w / 2, cy - h / 2, cy + h / 2

    def _zoom(self, fig, x0, x1, y0, y1, until=None) -> None:
        """What BokehJS sends at the end of a zoom/pan: the new ranges, then a RangesUpdate event (which
        HoloViews' RangeXY stream listens to: the map is re-aggregated for the new viewport)."""
        from bokeh.document.events import MessageSentEvent
        from bokeh.events import RangesUpdate

        a, b, c, d = self._window(x0, x1, y0, y1)
        self.pending.clear()
        fig.x_range.start, fig.x_range.end, fig.y_range.start, fig.y_range.end = a, b, c, d
        events, self.pending[:] = list(self.pending), []
        event = RangesUpdate(fig, x0=a, x1=b, y0=c, y1=d)
        event.event_values = lambda: {"model": fig, "x0": a, "x1": b, "y0": c, "y1": d}
        events.append(MessageSentEvent(self.session.document, "bokeh_event", event))
        self._check("map_zoom", self._exchange(events, until))

    def _lasso(self, fig, x0, x1, y0, y1, until=None) -> None:
        import math

        from bokeh.events import SelectionGeometry

        a, b, c, d = self._window(x0, x1, y0, y1)
        n = self.rng.randint(5, 12)
        ang = sorted(self.rng.uniform(0, 6.283) for _ in range(n))
        xs = [(a + b) / 2 + (b - a) / 2 * math.cos(t) for t in ang]
        ys = [(c + d) / 2 + (d - c) / 2 * math.sin(t) for t in ang]
        event = SelectionGeometry(fig, geometry={"type": "poly", "sx": xs, "sy": ys, "x": xs, "y": ys}, final=True)
        # Bokeh's Python events serialise only their model; send geometry and final as BokehJS does
        event.event_values = lambda: {"model": fig, "geometry": event.geometry, "final": event.final}
        self.event(event, "map_lasso", until)

    def _focus(self, table, until=None, need: str | None = None) -> bool:
        """Click a random row of the table's current page (with ``need`` true, e.g. has_dos, when it can) whose
        material is not the focused one already (so the views change). Returns whether the row has ``need``."""
        focus = self.debug_state().get("focus", "")
        data = table.source.data
        ids = [str(i) for i in data.get("id", [])]
        n = len(ids)
        has = [need is None or bool(data.get(need, [True] * n)[i]) for i in range(n)]
        rows = [i for i in range(n) if ids[i] != focus and has[i]] or [i for i in range(n) if ids[i] != focus]
        if not rows:
            return False
        row = self.rng.choice(rows)
        # what clicking a row does: the source's selected indices (Panel maps them to the row)
        self.change("focus_material", table.source.selected, until, indices=[row])
        return has[row]

    def _dos_search(self, table, use, search, on_debug=None, on_status=None) -> None:
        """Focus a material with a DOS, "Use this material's DOS" (the target changes and a search runs),
        then "Search with target" (the same search again: a user pressing the button)."""
        from bokeh.events import ButtonClick

        with_dos = self._focus(table, on_debug, need="has_dos")
        self.event(ButtonClick(use), "dos_search", on_status if with_dos else None)  # else: the app's message
        self.event(ButtonClick(search), "dos_search")


def _text(model, attr: str) -> str:
    try:
        value = getattr(model, attr)
    except Exception:  # noqa: BLE001 - unset or absent property
        return ""
    value = getattr(value, "text", value)  # a figure's Title
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value or "")


# ---- the run ----------------------------------------------------------------------------------------


def patient_websocket_handshake(timeout: float) -> None:
    """Bokeh's client gives up on a websocket handshake after tornado's default 20 s; a browser waits longer."""
    from tornado.httpclient import HTTPRequest

    HTTPRequest._DEFAULTS = {**HTTPRequest._DEFAULTS, "connect_timeout": timeout, "request_timeout": timeout}


def run(url: str, n_sessions: int, duration: float, think: float, timeout: float, seed: int,
        rss_proc=None, log_path: Path | None = None, ramp: float = 20.0) -> dict[str, Any]:
    """Phase 1: the sessions open (arrivals spread over ``ramp`` s); phase 2, once all are open (or failed):
    every session interacts for ``duration`` s. Page loads and interactions are reported separately."""
    lock = threading.Lock()
    latencies: dict[str, list[float]] = defaultdict(list)
    loads: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []
    alerts: list[str] = []
    exposed: dict[str, int] = defaultdict(int)
    opened = [0]
    go = threading.Event()
    stop_at = [0.0]
    log_start = log_path.stat().st_size if log_path is not None and log_path.exists() else 0
    rss_samples: list[int] = []
    rss_before = rss_of(rss_proc) if rss_proc is not None else None

    def user(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        time.sleep(ramp * k / max(1, n_sessions - 1) if ramp > 0 else 0.0)  # arrivals spread over `ramp` s
        s = Session(url, rng, timeout)
        actions: dict[str, Any] = {}
        try:
            try:
                times = s.open()
                actions = s.interactions()
                with lock:
                    for key, v in times.items():
                        loads[key].append(v)
                    for name in actions:
                        exposed[name] += 1
            finally:
                with lock:
                    opened[0] += 1
            go.wait()
            while actions:
                time.sleep(max(0.0, rng.uniform(0.5, 1.5) * think - QUIET_S))  # think time from the last update
                if time.monotonic() >= stop_at[0]:
                    break
                name = rng.choice(sorted(actions))
                s.spent = 0.0
                try:
                    actions[name]()
                except SessionError as e:
                    with lock:
                        errors.append(f"session {k}: {e}")
                    if not s.session.connected:
                        break
                    continue
                dt = s.spent  # to the last update the user sees, without the quiet windows between steps
                new = s.new_alerts()
                with lock:
                    latencies[name].append(dt)
                    alerts.extend(f"session {k} after {name}: {a}" for a in new)
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            with lock:
                errors.append(f"session {k}: {type(e).__name__}: {e}")
                if os.environ.get("LOAD_DEBUG"):
                    traceback.print_exc()
        finally:
            s.close()

    threads = [threading.Thread(target=user, args=(k,), daemon=True) for k in range(n_sessions)]
    t_start = time.monotonic()
    for t in threads:
        t.start()
    while opened[0] < n_sessions and time.monotonic() - t_start < ramp + 3 * timeout:
        time.sleep(0.5)
    load_phase = time.monotonic() - t_start
    rss_loaded = rss_of(rss_proc) if rss_proc is not None else None
    stop_at[0] = time.monotonic() + duration
    go.set()
    print(f"all sessions opened after {load_phase:.0f} s; interacting for {duration:.0f} s ...", flush=True)
    while any(t.is_alive() for t in threads):
        if rss_proc is not None:
            rss_samples.append(rss_of(rss_proc))
        time.sleep(2.0)
        if time.monotonic() > stop_at[0] + timeout + 30:
            errors.append("sessions still running long after the end: abandoned")
            break
    wall = time.monotonic() - t_start
    rss_after = rss_of(rss_proc) if rss_proc is not None else None

    server_errors: list[str] = []
    builds: list[float] = []
    if log_path is not None and log_path.exists():
        with open(log_path, errors="replace") as f:
            f.seek(log_start)
            for line in f:
                if re.search(r"\bERROR\b|Traceback|Exception", line):
                    server_errors.append(line.strip()[:300])
                built = re.search(r"session \w+ built in ([\d.]+) s", line)  # the app logs its document builds
                if built:
                    builds.append(float(built.group(1)))
    all_lat = [v for vs in latencies.values() for v in vs]
    report: dict[str, Any] = {
        "url": url, "sessions": n_sessions, "duration_s": duration, "think_s": think, "wall_s": round(wall, 1),
        "load_phase_s": round(load_phase, 1), "sessions_opened": len(loads.get("total", [])),
        "interactions_exposed": dict(exposed),
        "interactions": {k: stats(v) for k, v in sorted(latencies.items())},
        "all_interactions": stats(all_lat),
        "ramp_s": ramp,
        "page_load": {k: stats(v) for k, v in loads.items()},
        "server_session_build": stats(builds),
        "errors": {"client_or_protocol": errors, "server_log": server_errors, "app_alerts": alerts,
                   "total_server_errors": len(errors) + len(server_errors)},
    }
    if rss_proc is not None:
        peak = max(rss_samples + [rss_after or 0, rss_loaded or 0])
        report["server_rss_mib"] = {"before": rss_before / 2**20, "all_sessions_open": rss_loaded / 2**20,
                                    "peak": peak / 2**20, "after": rss_after / 2**20,
                                    "per_session_when_open": (rss_loaded - rss_before) / 2**20 / max(1, n_sessions),
                                    "per_session_peak_increase": (peak - rss_before) / 2**20 / max(1, n_sessions)}
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--duration", type=float, default=120.0, help="seconds of interactions")
    p.add_argument("--think", type=float, default=5.0, help="mean think time between interactions (s)")
    p.add_argument("--timeout", type=float, default=120.0, help="per request, websocket handshake included (s)")
    p.add_argument("--ramp", type=float, default=20.0, help="sessions arrive evenly over this many seconds (0: at once)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--url", default=None, help="an already running app (default: start `mlcm app` on a free port)")
    p.add_argument("--server-pid", type=int, default=None, help="with --url: the server process, for RSS")
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    p.add_argument("--app-args", default="", help='extra `mlcm app` options, e.g. "--num-threads 4"')
    args = p.parse_args(argv)

    _import_models()
    patient_websocket_handshake(args.timeout)
    import psutil

    server = None
    try:
        if args.url is None:
            log = Path(tempfile.mkstemp(prefix="mlcm-load-", suffix=".log")[1])
            server = Server(free_port(), log, args.app_args.split())
            print(f"starting mlcm app on port {server.port} (log {log}) ...", flush=True)
            ready = server.wait_ready(600)
            print(f"first page after {ready:.1f} s; warming up one session ...", flush=True)
            warm = Session(server.url, random.Random(-1), args.timeout)
            warm_times = warm.open()
            warm.close()
            time.sleep(5)  # let the server drop the warm-up session's work before the baseline
            url, proc, log_path = server.url, server.panel_process(), log
        else:
            url, proc, log_path, warm_times = args.url, (psutil.Process(args.server_pid) if args.server_pid else None), None, None
        print(f"{args.sessions} sessions for {args.duration:.0f} s, think time {args.think:g} s ...", flush=True)
        report = run(url, args.sessions, args.duration, args.think, args.timeout, args.seed, proc, log_path,
                     ramp=args.ramp)
        report["warm_up_session"] = warm_times
        report["machine"] = {"cpus": os.cpu_count(), "load_avg_1m_at_end": os.getloadavg()[0]}
        report["app_args"] = args.app_args
    finally:
        if server is not None:
            server.stop()
    text = json.dumps(report, indent=1, default=float)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    return 0 if report["errors"]["total_server_errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
