"""Dashboard start-up: cold start, warm first paint (Playwright + Debian chromium) and server memory.

    python benchmarks/app_startup.py [--runs 5] [--explore var/explore_dev]

* cold start: from launching ``mlcm app`` to the first HTTP 200 of /main (imports, opening the dataset and
  the Explorer, clusters, first session), then to the map rendered in a browser for that first session;
* warm first paint: once the server's background warm-up has finished, ``--runs`` page loads, each in a
  fresh browser context (no HTTP cache): navigation start -> the map's Bokeh plot has rendered its image
  (``PlotView.has_finished()``). Also reported: the server's share (HTML response) and the browser's;
* server RSS: the ``panel serve`` process (VmRSS now, VmHWM peak) after the warm-up and after the runs.

Prints one JSON object at the end. The machine is shared: load average is printed next to the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
MAP_RENDERED_JS = """() => { const seen = new Set(); let ok = false;
  function walk(v) { if (!v || seen.has(v)) return; seen.add(v);
    const m = v.model;
    if (m && m.title && m.title.text && m.title.text.startsWith('Embedding map') && v.has_finished && v.has_finished()) ok = true;
    const kids = v.child_views || (v.children ? [...v.children()] : []); for (const k of kids) walk(k); }
  if (window.Bokeh && Bokeh.index) for (const v of Object.values(Bokeh.index)) walk(v);
  return ok; }"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _panel_pid(cli_pid: int) -> int | None:
    """`mlcm app` execs `panel serve` (same pid): the server whose memory we report is that process."""
    return cli_pid if Path(f"/proc/{cli_pid}/status").exists() else None


def _mem_mb(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = round(int(line.split()[1]) / 1024, 1)
    return out


def _paint(browser, url: str) -> dict[str, float]:
    ctx = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = ctx.new_page()
    t0 = time.perf_counter()
    page.goto(url, wait_until="commit", timeout=180_000)
    page.wait_for_function(MAP_RENDERED_JS, timeout=180_000, polling=50)
    paint = time.perf_counter() - t0
    nav = json.loads(page.evaluate("JSON.stringify(performance.getEntriesByType('navigation')[0])"))
    ctx.close()
    return {"paint_s": round(paint, 2), "server_html_s": round(nav["responseStart"] / 1000, 2),
            "browser_s": round(paint - nav["responseStart"] / 1000, 2)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--explore", default=os.environ.get("MLCM_EXPLORE"))
    ap.add_argument("--warm-timeout", type=float, default=300.0)
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    explore = args.explore
    if explore is None:
        explore = next((str(p) for p in (ROOT / "precomputed" / "explore", ROOT / "var" / "explore_dev" / "explore")
                        if (p / "manifest.json").exists()), str(ROOT / "precomputed" / "explore"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}/main"
    log_path = Path(tempfile.mkdtemp(prefix="mlcm-bench-")) / "server.log"
    log = open(log_path, "w")  # noqa: SIM115 - the server writes to it until it is stopped (finally below)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLCM_EXPLORE": explore}
    result: dict = {"explore": explore, "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()[0]}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "mlcm_core.cli", "app", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            # cold: the first page load of a fresh server process
            while True:
                try:
                    with urllib.request.urlopen(url, timeout=300) as r:
                        if r.status == 200:
                            break
                except OSError:
                    if proc.poll() is not None:
                        raise RuntimeError(log_path.read_text()[-3000:]) from None
                    time.sleep(0.2)
            result["cold_first_response_s"] = round(time.perf_counter() - t0, 2)
            cold = _paint(browser, url)
            result["cold_start_to_map_s"] = round(time.perf_counter() - t0, 2)
            result["cold_second_session_paint"] = cold
            # warm: wait until the background warm-up is over (it logs a line), then measure
            deadline = time.perf_counter() + args.warm_timeout
            while time.perf_counter() < deadline and "warm-up (background) done" not in log_path.read_text():
                time.sleep(1)
            while time.perf_counter() < deadline and "views warm" not in log_path.read_text():
                time.sleep(1)
            result["warm_up_s"] = round(time.perf_counter() - t0, 2)
            pid = _panel_pid(proc.pid)
            if pid:
                result["server_mem_after_warm_up_mb"] = _mem_mb(pid)
            runs = [_paint(browser, url) for _ in range(args.runs)]
            paints = [r["paint_s"] for r in runs]
            result["warm_first_paint_runs"] = runs
            result["warm_first_paint_s"] = {"median": round(statistics.median(paints), 2), "min": min(paints),
                                            "max": max(paints)}
            if pid:
                time.sleep(2)
                result["server_mem_after_runs_mb"] = _mem_mb(pid)
            browser.close()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    result["load_avg_end"] = os.getloadavg()[0]
    warm = [ln for ln in log_path.read_text().splitlines() if "warm-up" in ln or "views warm" in ln]
    result["server_warm_up_log"] = warm
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
