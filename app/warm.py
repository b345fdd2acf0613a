"""Server warm-up: the slow first calls done once per process, so that sessions start fast.

Synchronous (the first page needs them): the dataset store, the Explorer, the map frame and the clusters
(``warm_up``). In background threads, after the first page is served: the query model and the
placement kernels (``warm_up``), crystal_toolkit, and datashader's compiled kernels for every map colouring
(``warm_views``). This lives in an importable module (not app/main.py): Bokeh discards the served script's
module after each session, so threads must not depend on its globals.
"""

from __future__ import annotations

import threading
import time
import traceback

import numpy as np
import panel as pn

from app.loaders import map_clusters, map_frame, open_dataset, open_explorer
from app.logs import log
from app.state import AppState

__all__ = ["release_memory", "warm_background", "warm_up", "warm_views"]

_WARM = {"started": False, "done": {}, "lock": threading.Lock()}

def warm_up(explore_path: str, dataset_path: str, background: bool = True) -> dict[str, float]:
    """Do the slow first calls once per process: store, Explorer, map, clusters (synchronously, the first
    paint needs them), then the query model, the placement kernels and crystal_toolkit (``warm_background``).

    With ``background`` the second part starts in a thread once the calling session's page has loaded in the
    browser (``pn.state.onload``; at once outside a served session): started earlier, its imports compete
    for the interpreter with building and sending the first page (cold start 18 s -> see docs/app.md).
    """
    timings: dict[str, float] = _WARM["done"]
    with _WARM["lock"]:
        first = not _WARM["started"]
        _WARM["started"] = True
    if first:
        for name, fn in (("dataset", lambda: open_dataset(dataset_path)),
                         ("explorer", lambda: open_explorer(explore_path, dataset_path)),
                         ("map", lambda: map_frame(explore_path, dataset_path)),
                         ("clusters", lambda: map_clusters(explore_path, dataset_path))):
            t = time.perf_counter()
            fn()
            timings[name] = time.perf_counter() - t
        log.info("warm-up (first page) done: %s", {k: round(v, 2) for k, v in timings.items()})
    if not background:
        warm_background(explore_path, dataset_path, thread=False)
    elif pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
        pn.state.onload(lambda: warm_background(explore_path, dataset_path))
    else:
        warm_background(explore_path, dataset_path)
    return timings

def warm_background(explore_path: str, dataset_path: str, thread: bool = True) -> None:
    """The query model, the placement kernels and crystal_toolkit, once per process (in a thread)."""
    with _WARM["lock"]:
        if _WARM.get("background_started"):
            return
        _WARM["background_started"] = True
    timings: dict[str, float] = _WARM["done"]

    def slow() -> None:
        ex = open_explorer(explore_path, dataset_path)
        steps = [("query_model", lambda: ex.query(material_id=str(ex.table["id"].iloc[0]), k=5)),
                 ("dos_query", lambda: ex.query(dos=(np.array([-5.0, 0.0, 5.0]), np.array([1.0, 2.0, 1.0])), k=5))]
        st = ex.table.loc[ex.table["has_structure"].fillna(False).astype(bool), "id"]
        if len(st):
            s = open_dataset(dataset_path).structure(str(st.iloc[0]))
            steps.append(("place", lambda: ex.place(s)))
        steps.append(("crystal_toolkit", _import_crystal_toolkit))
        for name, fn in steps:
            t = time.perf_counter()
            try:
                fn()
            except Exception:  # noqa: BLE001 - warm-up must never take the server down
                log.warning("warm-up step %s failed:\n%s", name, traceback.format_exc())
            timings[name] = time.perf_counter() - t
        _WARM["background_done"] = True
        log.info("warm-up (background) done: %s", {k: round(v, 2) for k, v in timings.items()})

    if thread:
        threading.Thread(target=slow, name="mlcm-warm-up", daemon=True).start()
    else:
        slow()

def _import_crystal_toolkit() -> None:
    import crystal_toolkit  # noqa: F401  (patches StructureGraph.get_scene)


def release_memory(*_) -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``).

    The warm-up (model loading, numba compilation, HDBSCAN) and closed sessions leave large freed blocks in
    the allocator; without the trim they stay counted in the server's RSS."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def warm_views() -> None:
    """Compile the map's datashader kernels for every colouring (once per process, background thread)."""
    with _WARM["lock"]:
        if _WARM.get("views_started"):
            return
        _WARM["views_started"] = True

    def run() -> None:
        from app.views.map import COLOR_MODES, MapView

        t0 = time.perf_counter()
        try:
            state = AppState()
            m = MapView(state=state)
            some = state.frame["id"].iloc[:50].tolist()
            for mode in COLOR_MODES:
                m._shade(color_by=mode, prop=m.prop, element="O", selected_ids=[])
                m._shade(color_by=mode, prop=m.prop, element="O", selected_ids=some)
            _warm_3d(state)
        except Exception:  # noqa: BLE001 - warm-up must never take the server down
            log.exception("view warm-up failed")
        _WARM["done"]["views"] = time.perf_counter() - t0
        while not _WARM.get("background_done"):  # the other warm-up thread (model, placement, crystal_toolkit)
            time.sleep(1)
        release_memory()
        log.info("views warm in %.1f s", _WARM["done"]["views"])

    threading.Thread(target=run, name="mlcm-warm-views", daemon=True).start()


def _warm_3d(state: AppState) -> None:
    """First structure scene (crystal_toolkit) and first isosurface (skimage) of the process."""
    from app.views.density import isosurface
    from app.views.structure import structure_scene_traces

    t = state.table
    both = t[t["has_structure"] & t["has_charge_density"]]
    if len(both):
        mid = str(both["id"].iloc[0])
        structure_scene_traces(state.dataset.structure(mid))
        rho = state.dataset.density([mid])[0]
        isosurface(rho, float(rho.min() + 0.3 * (rho.max() - rho.min())), state.dataset.structure(mid).lattice.matrix)
