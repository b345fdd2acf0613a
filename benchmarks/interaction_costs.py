"""Server-side cost of each dashboard interaction, in one process, without a network or a client.

    python benchmarks/interaction_costs.py                    # every interaction, 5 repeats each
    python benchmarks/interaction_costs.py lasso --profile var/prof   # + cProfile listing per interaction

Why: the load benchmark (load_sessions.py) measures what users wait for, which on 2 cores is mostly queueing;
this one measures what each interaction costs the server's one thread — the callbacks, the Bokeh model
changes and the serialisation of the PATCH-DOC message a session would receive (its size too) — so a change to
a view can be judged in seconds. The dashboard is built on a Bokeh ``Document`` over the shipped
``precomputed/`` data, as ``panel serve`` builds it for a session (all views rendered, none deferred).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("interactions", nargs="*", help="default: all")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--profile", type=Path, default=None, help="write a cProfile listing per interaction here")
    args = p.parse_args(argv)

    import panel as pn
    from bokeh.document import Document
    from bokeh.protocol import Protocol

    from app.main import Dashboard
    from app.state import AppState

    pn.extension("tabulator")
    state = AppState()
    dash = Dashboard(state, lazy=False)
    doc = Document()
    t0 = time.perf_counter()
    dash.template().server_doc(doc)
    print(f"session document: {len(doc.models)} models, built in {time.perf_counter() - t0:.2f} s (first, cold)")
    from app.views.map import COLOR_MODES

    some = state.frame["id"].iloc[:50].tolist()
    for mode in COLOR_MODES:  # compile datashader's kernels, as app.warm.warm_views does in the server
        dash.map._shade(color_by=mode, prop=dash.map.prop, element="O", selected_ids=[])
        dash.map._shade(color_by=mode, prop=dash.map.prop, element="O", selected_ids=some)
    pending: list = []
    doc.callbacks.on_change(pending.append)
    protocol = Protocol()

    def patch_bytes() -> int:
        """Serialise the changes since the last call as the server would send them; their size in bytes."""
        events = list(pending)
        pending.clear()
        if not events:
            return 0
        msg = protocol.create("PATCH-DOC", events)
        return len(msg.content_json) + sum(len(b.to_bytes()) for b in msg.buffers or [])

    rng = np.random.default_rng(0)
    frame, table = state.frame, state.table
    with_dos = table.loc[table["has_dos"], "id"].to_numpy()
    clusters = [c for c in dash.map.param.cluster.objects if c is not None]

    def lasso() -> None:
        cx = rng.uniform(*frame["x"].quantile([0.2, 0.8]))
        cy = rng.uniform(*frame["y"].quantile([0.2, 0.8]))
        r = rng.uniform(0.5, 2.0)
        theta = np.linspace(0, 2 * np.pi, 20)
        dash.map._on_lasso(geometry=np.c_[cx + r * np.cos(theta), cy + r * np.sin(theta)])

    x0, x1 = dash.map._xr
    y0, y1 = dash.map._yr

    def zoom() -> None:  # what the map's RangeXY stream receives on a zoom or pan (HoloViews re-renders the map)
        f = rng.uniform(0.3, 0.9)
        cx, cy = rng.uniform(x0 + f * (x1 - x0) / 2, x1 - f * (x1 - x0) / 2), rng.uniform(y0 + f * (y1 - y0) / 2, y1 - f * (y1 - y0) / 2)
        dash.map._range.event(x_range=(cx - f * (x1 - x0) / 2, cx + f * (x1 - x0) / 2),
                              y_range=(cy - f * (y1 - y0) / 2, cy + f * (y1 - y0) / 2))

    def cluster() -> None:
        dash.map.cluster = clusters[rng.integers(len(clusters))]

    def colour() -> None:
        modes = [m for m in dash.map.param.color_by.objects if m != dash.map.color_by]
        dash.map.color_by = modes[rng.integers(len(modes))]

    def focus() -> None:
        state.focus_id = str(table["id"].iloc[rng.integers(len(table))])

    def set_k() -> None:
        state.k = int(rng.integers(5, 50))

    def dos_search() -> None:  # what the load benchmark's dos_search does: focus, use its DOS, search
        state.focus_id = str(with_dos[rng.integers(len(with_dos))])
        dash.target.use_material()
        dash.target.search()

    def draw() -> None:  # a freehand stroke ends: resample, set the target, search (as load_sessions.py draws)
        xs = np.linspace(-10, 10, int(rng.integers(30, 80)))
        peaks = rng.uniform([-8, 0.5, 1], [8, 2.5, 6], size=(3, 3))
        ys = sum(h * np.exp(-(((xs - c) / w) ** 2)) for c, w, h in peaks) + 0.2
        dash.target._on_draw(data={"xs": [xs.tolist()], "ys": [ys.tolist()]})

    actions = {"lasso": lasso, "zoom": zoom, "draw": draw, "cluster": cluster, "colour": colour, "focus": focus, "set_k": set_k,
               "dos_search": dos_search}
    unknown = set(args.interactions) - set(actions)
    if unknown:
        p.error(f"unknown interaction(s) {sorted(unknown)}; choose from {sorted(actions)}")
    report = {}
    for name in args.interactions or list(actions):
        act = actions[name]
        act()  # warm: imports, numba compilation, caches of this viewport
        patch_bytes()
        prof = cProfile.Profile() if args.profile else None
        times, sizes = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            if prof:
                prof.enable()
            act()
            sizes.append(patch_bytes())
            if prof:
                prof.disable()
            times.append(time.perf_counter() - t)
        report[name] = {"median_ms": 1000 * float(np.median(times)), "max_ms": 1000 * max(times),
                        "patch_kB": float(np.median(sizes)) / 1e3}
        print(f"{name:11s} median {report[name]['median_ms']:6.0f} ms  max {report[name]['max_ms']:6.0f} ms  "
              f"patch {report[name]['patch_kB']:7.1f} kB", flush=True)
        if prof:
            args.profile.mkdir(parents=True, exist_ok=True)
            with open(args.profile / f"{name}.txt", "w") as fh:
                pstats.Stats(prof, stream=fh).sort_stats("cumulative").print_stats(60)
    return report


if __name__ == "__main__":
    main()
