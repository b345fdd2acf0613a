"""Target DOS: draw it with the mouse, take a material's DOS, or upload a CSV; then find crystals (top-k).

The drawing is a ``hv.streams.FreehandDraw`` on an empty ``hv.Path`` over DOS axes (−10…10 eV). A finished
stroke becomes the target (resampled onto the 601-point DOS grid by the core's ``resample_polyline``, whose
rules decide what is accepted: e.g. a one-point stroke is refused with a message) and, with "search on draw",
is sent to ``Explorer.query(dos=(x, y), filters=..., k=...)`` at once. The candidates' stored DOS (for those
that have one) are overlaid on the target, scaled to the target's mean (the DOS encoder ignores scale), only
when they are that target's candidates (not an upload's or a material's search drawn over an older target).
A target from elsewhere (a material, a CSV, Clear) removes the last stroke; the y axis grows to show the
target and its curves whole.
"""

from __future__ import annotations

from functools import partial

import holoviews as hv
import holoviews.plotting.bokeh
import numpy as np
import pandas as pd
import panel as pn
import param
from holoviews.core.spaces import Callable

from app.inputs import UserError, parse_dos_csv
from app.panes import LiveMarkdown, curve_slots, push_layers, set_y_end
from app.state import AppState, guarded
from mlcm_core.data.conventions import DOS_E_MAX, DOS_E_MIN, DOS_ENERGIES

MAX_OVERLAID = 8
Y_MAX = 10.0  # the y axis's top before any target (room to draw); it grows to fit a larger target
WIDTH, HEIGHT = 560, 330
COLORS = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]


def _curve_key(curve: dict | None) -> tuple | None:
    """What identifies a target or validation curve's data (its label and values)."""
    if not curve:
        return None
    return curve.get("label"), hash(np.asarray(curve["dos"], np.float64).tobytes())


def _scaled(curve: np.ndarray, target: np.ndarray) -> np.ndarray:
    m = float(np.mean(curve))
    return curve * (float(np.mean(target)) / m) if m > 0 else curve


class TargetDOSView(pn.viewable.Viewer):
    """DOS axes to draw on + the target, the candidates' DOS and a DFT validation overlaid."""

    state = param.ClassSelector(class_=AppState)
    search_on_draw = param.Boolean(default=True, doc="run the search as soon as a stroke ends")
    material_id = param.String(default="", doc="use this material's DOS as the target")
    clear_count = param.Integer(default=0)

    def __init__(self, **params):
        super().__init__(**params)
        self._holding = False  # True while a change and the search it starts run: one redraw at the end
        self._draw_src = hv.DynamicMap(lambda clear_count: hv.Path([]),
                                       streams=[hv.streams.Params(self, ["clear_count"])]).opts(
            line_width=3, color="#ff7f0e", active_tools=["freehand_draw"])
        # the stream's source must be the object that is plotted (.opts returns a clone)
        self._draw = hv.streams.FreehandDraw(source=self._draw_src, num_objects=1)
        self._draw.add_subscriber(self._on_draw)
        # a click on the axes is a one-point stroke, which the freehand tool drops without a word
        self._tap = hv.streams.Tap(source=self._draw_src)
        self._tap.add_subscriber(self._on_tap)
        self._csv = pn.widgets.FileInput(accept=".csv,.txt,.dat", multiple=False, label="DOS CSV",
                                         css_classes=["mlcm-dos-csv"])
        self._csv.param.watch(self._on_csv, "value")
        self._plot = self._build()
        self._status = LiveMarkdown(self._status_text, css_classes=["mlcm-target-status"])

    # ---- layers -----------------------------------------------------------------------------------
    def _target_curve(self, target=None):
        if not target:
            return hv.Curve(pd.DataFrame({"E": np.array([], float), "DOS": np.array([], float)}), "E", "DOS",
                            label="target")
        return hv.Curve((DOS_ENERGIES, np.asarray(target["dos"])), "E", "DOS", label="target")

    def own_candidates(self) -> pd.DataFrame | None:
        """The candidates when they are the current target's search result, else None (AppState.target_candidates:
        an earlier stroke's candidates are not drawn over a new stroke, though both are labelled "drawn")."""
        return self.state.target_candidates()

    def candidate_curves(self, candidates: pd.DataFrame | None, target: dict | None) -> list[dict]:
        if candidates is None or candidates.empty:
            return []
        ids = [i for i, h in zip(candidates["id"], candidates["has_dos"]) if bool(h)][:MAX_OVERLAID]
        if not ids:
            return []
        curves = self.state.dataset.dos(ids)
        ref = np.asarray(target["dos"]) if target else None
        return [{"x": DOS_ENERGIES, "y": _scaled(c, ref) if ref is not None else c, "id": i,
                 "color": COLORS[k % len(COLORS)]} for k, (i, c) in enumerate(zip(ids, curves))]

    def _candidate_slots(self, candidates=None, target=None, lazy: bool = False) -> dict:
        """Curve slots cand0..cand7 (app.panes.curve_slots)."""
        return self._slots(self.candidate_curves(candidates, target), lazy)

    @staticmethod
    def _slots(curves: list[dict], lazy: bool) -> dict:
        return curve_slots([(c["id"], c["y"]) for c in curves], DOS_ENERGIES, "cand", MAX_OVERLAID, lazy=lazy)

    def _validation_curve(self, validation=None, target=None):
        if not validation:
            return hv.Curve(pd.DataFrame({"E": np.array([], float), "DOS": np.array([], float)}), "E", "DOS",
                            label="validation")
        y = np.asarray(validation["dos"])
        if target:
            y = _scaled(y, np.asarray(target["dos"]))
        return hv.Curve((DOS_ENERGIES, y), "E", "DOS", label="validation")

    def _layers_now(self) -> hv.Overlay:
        """Candidates, target and DFT result for the current state (HoloViews calls this when it renders)."""
        s = self.state
        cands = [c.opts(color=COLORS[k], line_width=1.5, alpha=0.85, tools=["hover"])
                 for k, c in enumerate(self._candidate_slots(self.own_candidates(), s.target).values())]
        return hv.Overlay([*cands, self._target_curve(s.target).opts(color="black", line_width=3, line_dash="dashed"),
                           self._validation_curve(s.validation, s.target).opts(color="#d62728", line_width=2.5)])

    def _push(self, *_) -> None:
        """Send the changed curves' data only (app.panes.push_layers says why)."""
        if not self._plot._plots or self._holding:
            return
        s = self.state
        curves = self.candidate_curves(self.own_candidates(), s.target)
        # candidates are drawn scaled to the target, so every key includes the target's
        target = _curve_key(s.target)
        keys = {f"cand{k}": (curves[k]["id"], target) if k < len(curves) else None for k in range(MAX_OVERLAID)}
        keys.update(target=target, validation=(_curve_key(s.validation), target) if s.validation else None)
        push_layers(self._plot, {**self._slots(curves, lazy=True), "target": partial(self._target_curve, s.target),
                                 "validation": partial(self._validation_curve, s.validation, s.target)}, keys)
        set_y_end(self._plot, self.y_top(curves))

    def y_top(self, curves: list[dict]) -> float:
        """The y axis's top: Y_MAX (room to draw), or more when the target or its overlaid curves go higher."""
        s = self.state
        highest = [float(np.max(c["y"])) for c in curves]
        if s.target:
            highest.append(float(np.max(s.target["dos"])))
        if s.validation:
            highest.append(float(np.max(self._validation_curve(s.validation, s.target).dimension_values("DOS"))))
        return max(Y_MAX, 1.05 * max(highest, default=0.0))

    def _build(self):
        layers = hv.DynamicMap(Callable(self._layers_now, memoize=False))
        overlay = (layers * self._draw_src).opts(
            responsive=True, min_width=360, height=HEIGHT, xlim=(DOS_E_MIN, DOS_E_MAX), ylim=(0, Y_MAX), show_legend=False,
            xlabel="E - E_ref (eV)", ylabel="DOS (arbitrary scale)",
            title="Target DOS: draw left→right with the mouse (freehand tool)")
        self.state.param.watch(self._push, ["target", "candidates", "validation"])
        self.state.param.watch(self._on_target, "target")
        self.state.param.watch(self._on_reset, "resets")
        return pn.pane.HoloViews(overlay, css_classes=["mlcm-draw"], sizing_mode="stretch_width", min_width=360,
                                 height=HEIGHT, linked_axes=False)

    # ---- inputs -----------------------------------------------------------------------------------
    def _on_target(self, event) -> None:
        """A target that is not the last stroke (a material's DOS, a CSV, none) removes that stroke."""
        if not event.new or event.new.get("label") != "drawn":
            self.clear_count += 1

    @guarded("drawn DOS")
    def _on_tap(self, x=None, y=None, **_):
        self.state.notify("a click draws one point: drag the mouse from left to right to draw a DOS", "warning")

    @guarded("drawn DOS")
    def _on_draw(self, data=None, **_):
        if not data or not data.get("xs"):
            return
        xs, ys = data["xs"][-1], data["ys"][-1]
        if len(xs) == 0:
            return
        try:
            self.use_curve("drawn", np.asarray(xs, float), np.clip(np.asarray(ys, float), 0, None))
        except ValueError:  # a refused stroke (the message says why) is not left drawn as if it were the target
            self.clear_count += 1
            raise

    def use_curve(self, label: str, x: np.ndarray, y: np.ndarray) -> None:
        if not (self.search_on_draw or label != "drawn"):
            self.state.set_target(label, x, y)
            return
        # the search replaces the candidates at once: draw the curves once, not the old candidates rescaled
        # to the new target first
        self._holding = True
        try:
            self.state.set_target(label, x, y)
            self.search()
        finally:
            self._holding = False
            self._push()

    @guarded("search")
    def search(self, *_):
        self.state.query_target()

    @guarded("material DOS")
    def use_material(self, *_):
        mid = self.material_id.strip() or self.state.focus_id
        if not mid:
            raise UserError("type a material id (or click one on the map) to use its DOS")
        if mid not in self.state.indexed.index:
            raise UserError(f"unknown material id {mid!r} (ids look like mp-2 or perov5:1)")
        if not self.state.has(mid, "has_dos"):
            raise UserError(f"{mid} has no DOS in the dataset")
        dos = self.state.dataset.dos([mid])[0]
        self.use_curve(f"DOS of {mid}", DOS_ENERGIES, dos)

    @guarded("DOS CSV upload")
    def _on_csv(self, event):
        if event.new is None:
            return
        x, y = parse_dos_csv(event.new, self._csv.filename or "dos.csv")
        self.use_curve(f"CSV {self._csv.filename}", x, y)

    def clear(self, *_):
        """No target, no stroke, and none of a DOS search's candidates (AppState.clear_target)."""
        had_target = bool(self.state.target)
        self.state.clear_target()  # _on_target removes the stroke
        if not had_target:
            self.clear_count += 1  # a refused stroke is no target but still drawn
        self.state.notify("target cleared", "info")

    def _on_reset(self, *_) -> None:
        """AppState.reset: no stroke, the material box and the CSV input empty, search on draw again."""
        self.param.update(material_id="", search_on_draw=True, clear_count=self.clear_count + 1)
        self._csv.param.update(value=None, filename=None)
        self._csv.clear()

    @param.depends("state.target", "state.candidates", "state.validation")
    def _status_text(self):
        t = self.state.target
        c = self.own_candidates()
        if not t:
            return "_No target yet._"
        if c is None and self.state.candidates is not None:
            earlier = " (an earlier target)" if self.state.candidates_origin == self.state.target_origin() else ""
            return (f"Target (black dashed): **{t['label']}** ({len(t['x'])} points). The candidates below are from "
                    f"{self.state.candidates_origin}{earlier}, not this target: search to get its candidates.")
        n = 0 if c is None else len(c)
        with_dos = 0 if c is None else int(c["has_dos"].sum())
        return (f"Target (black dashed): **{t['label']}** ({len(t['x'])} points). {n} candidates, {with_dos} with a "
                f"stored DOS; up to {MAX_OVERLAID} overlaid in colour (scaled to the target's mean; hover for the id)."
                + (" DFT result: red." if self.state.validation else ""))

    def controls(self) -> pn.Column:
        use = pn.widgets.Button(label="Use this material's DOS", color="default")
        use.on_click(self.use_material)
        search = pn.widgets.Button(label="Search with target", color="primary", css_classes=["mlcm-search"])
        search.on_click(self.search)
        clear = pn.widgets.Button(label="Clear target", color="default")
        clear.on_click(self.clear)
        material = pn.widgets.TextInput.from_param(self.param.material_id, label="Material id (DOS as target)",
                                                   placeholder="e.g. mp-2 (empty: the focused one); Enter",
                                                   css_classes=["mlcm-material-id"])
        material.param.watch(self.use_material, "enter_pressed")  # Enter does what the button does
        return pn.Column(
            pn.widgets.Checkbox.from_param(self.param.search_on_draw, label="search as soon as a stroke ends",
                                           css_classes=["mlcm-search-on-draw"]),
            material,
            use,
            pn.pane.Markdown("Upload a DOS CSV (energy eV, DOS):", margin=(0, 10)),
            self._csv,
            pn.Row(search, clear),
        )

    def __panel__(self):
        return pn.Column(self._plot, self._status, sizing_mode="stretch_width")
