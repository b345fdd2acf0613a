"""Server warm-up: the slow first calls done once per process, so that sessions start fast.

Synchronous (the first page needs them): the dataset store, the Explorer, the map frame and the clusters
(``app.store.warm_up``). In background threads, after the first page is served: the query model and the
placement kernels (``warm_up``), crystal_toolkit, and datashader's compiled kernels for every map colouring
(``warm_views``). This lives in an importable module (not app/main.py): Bokeh discards the served script's
module after each session, so threads must not depend on its globals.
"""

from __future__ import annotations

import threading
import time

from app.store import _WARM, AppState, log, warm_up

__all__ = ["release_memory", "warm_up", "warm_views"]


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
