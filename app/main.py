"""Assembles the MLCM dashboard; serve with `mlcm app` (127.0.0.1) or `panel serve app/main.py`.

Data: the dataset store (MLCM_DATASET, default precomputed/dataset) and the explorer folder written by
``build_precomputed`` (MLCM_EXPLORE, default precomputed/explore). Layout and views: docs/app.md.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import panel as pn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `panel serve app/main.py` from a checkout

from app.logs import configure_logging, log
from app.panes import LiveAlert, LiveStr
from app.share import ShareLink
from app.state import AppState, debug_json
from app.views.candidates import CandidatesView
from app.views.card import PropertyCard
from app.views.density import DensityView
from app.views.dos import DOSView
from app.views.filters import FiltersView
from app.views.intro import IntroView
from app.views.map import MapView
from app.views.materials import MaterialsTable
from app.views.reset import ResetView
from app.views.search import SearchView
from app.views.selection import SelectionSummary
from app.views.shortcuts import Shortcuts
from app.views.structure import StructureView
from app.views.target import TargetDOSView
from app.views.upload import UploadView
from app.views.validate import ValidateView
from app.warm import release_memory, warm_up, warm_views

MAP_MIN_WIDTH = 460
ALERT = {"info": "info", "success": "success", "warning": "warning", "error": "danger"}


class _Controls:
    """Adapts a ``controls()`` method to the ``__panel__`` protocol ``Dashboard.defer`` expects."""

    def __init__(self, make):
        self._make = make

    def __panel__(self):
        return self._make()


class Dashboard:
    """All views over one AppState (one per browser session)."""

    def __init__(self, state: AppState | None = None, lazy: bool = False):
        self.state = state = state or AppState()
        self.lazy = lazy
        self.share = ShareLink(state)  # a shared link's state, before the map reads its viewport
        self.map = MapView(state=state)
        self.selection = SelectionSummary(state=state)
        self.materials = MaterialsTable(state=state)
        self.target = TargetDOSView(state=state)
        self.filters = FiltersView(state=state)
        self.candidates = CandidatesView(state=state)
        self.dos = DOSView(state=state)
        self.card = PropertyCard(state=state)
        self.structure = StructureView(state=state)
        self.density = DensityView(state=state)
        self.upload = UploadView(state=state)
        self.validate = ValidateView(state=state)
        self.search = SearchView(state=state)
        self.intro = IntroView(state=state)
        # one Reset for the whole session; the map's colouring is the map's own setting, put back here too
        self.reset = ResetView(state=state, restore=[(self.map, ["color_by", "prop", "element", "show_clusters",
                                                                 "cluster"])])
        self.share.attach(self.map)  # the link's colouring (after Reset noted the defaults); the URL follows
        self.shortcuts = Shortcuts(actions={"clear": self.map.clear, "reset": self.map.reset_view,
                                            "help": lambda: setattr(self.intro.card, "collapsed", False)})

    def summary(self) -> str:
        info = self.state.dataset.info()
        mods = info["modalities"]
        return (f"**{info['materials']:,} materials** · structure {mods['structure']:,} · DOS {mods['dos']:,} · "
                f"charge density {mods['charge_density']:,} · all three {info['all_three']:,} · "
                f"map: {len(self.state.frame):,} points, {len(self.state.clusters)} clusters")

    def message_area(self) -> LiveAlert:
        """The message area: one pane per session, updated in place (a new pane per message cost new models)."""
        pane = LiveAlert(css_classes=["mlcm-message"], margin=(0, 10), sizing_mode="stretch_width")

        def show(*_) -> None:
            msg, lvl = self.state.message, self.state.message_level
            pane.param.update(object=msg or "Ready.", alert_type=ALERT.get(lvl, "info") if msg else "light")

        show()
        self.state.param.watch(show, ["message", "message_level"])
        return pane

    @staticmethod
    def defer(view, **kwargs):
        """Render ``view`` after the page (and the map) has loaded: a smaller first document paints sooner."""
        return pn.panel(lambda: view.__panel__(), defer_load=True, sizing_mode="stretch_width", **kwargs)

    def debug(self, *_):
        return debug_json(self.state)

    def template(self) -> pn.template.BootstrapTemplate:
        s = self.state
        later = self.defer if self.lazy else (lambda view, **_: view)
        controls = _Controls
        sidebar = [
            self.intro,  # at the top of the sidebar: open, it must not push the map below the fold
            pn.Card(self.search, title="Find a material", collapsed=False, css_classes=["mlcm-find"]),
            pn.Card(self.map.controls(), title="Map", collapsed=False),
            pn.Card(later(controls(self.target.controls)), title="Target DOS", collapsed=False),
            pn.Card(later(self.filters), title="Retrieval filters", collapsed=True),
            pn.Card(later(self.upload), title="Upload a structure (CIF/POSCAR)", collapsed=False),
            pn.Card(later(self.validate), title="Validate by DFT", collapsed=True),
        ]
        deps = [s.param.polygon, s.param.selected_ids, s.param.candidates, s.param.placed, s.param.focus_id,
                s.param.url_query, s.param.layers]
        # what the browser tests read back (the polygon the app received, counts); invisible, not display:none
        debug = LiveStr(pn.bind(self.debug, *deps), css_classes=["mlcm-debug"], height=1, margin=0,
                            styles={"overflow": "hidden", "opacity": "0", "font-size": "1px"})
        main = [
            pn.Column(pn.pane.Markdown(self.summary(), css_classes=["mlcm-summary"]),
                      self.message_area(), debug, self.shortcuts,
                      sizing_mode="stretch_width"),
            # the map takes the width there is; the target DOS and the summary sit beside it on a wide window,
            # below it on a narrower one (1280 px): nothing is cut off
            pn.FlexBox(pn.Column(self.map, styles={"flex": "1 1 640px"}, min_width=MAP_MIN_WIDTH),
                       pn.Column(later(self.target), later(self.selection), styles={"flex": "1 1 580px"},
                                 min_width=580), flex_wrap="wrap", sizing_mode="stretch_width"),
            later(self.candidates),
            pn.Row(later(self.dos), later(self.card), sizing_mode="stretch_width"),
            pn.Row(later(self.structure), later(self.density), sizing_mode="stretch_width"),
            later(self.materials),
        ]
        return pn.template.BootstrapTemplate(  # bundled assets only: no web font or CDN request (offline)
            title="MLCM — Multimodal Learning for Crystalline Materials", sidebar=sidebar, main=main,
            sidebar_width=360, header_background="#1f5f8b", header=[self.reset])


def _skip_mathjax() -> None:
    """Panel adds MathJax (1.8 MB of JS) to any page with a Markdown/HTML pane; this app has no LaTeX."""
    with contextlib.suppress(ImportError):  # an optimisation only
        from panel.io import resources

        if hasattr(resources, "_panel_use_mathjax"):
            resources._panel_use_mathjax = lambda roots: False


def build_app(state: AppState | None = None, lazy: bool = False) -> pn.template.BootstrapTemplate:
    return Dashboard(state, lazy=lazy).template()


if pn.state.served:
    import time as _time

    _t0 = _time.perf_counter()
    configure_logging()
    pn.extension("tabulator", notifications=True)  # no "plotly": the 3-D views load plotly.js in an iframe
    _skip_mathjax()
    _state = AppState()
    warm_up(_state.explore_path, _state.dataset_path)  # no-op after the first session of this process
    build_app(_state, lazy=True).servable()
    log.info("session %s built in %.2f s", _state.session_id, _time.perf_counter() - _t0)
    pn.state.on_session_destroyed(release_memory)
    pn.state.onload(warm_views)  # after the page has loaded: compiling kernels must not delay the first page
