"""AppState: what the dashboard shows and what the user has selected, searched, uploaded.

Everything the views draw comes from here, and everything here comes from the public mlcm_core API (the
Explorer: map positions, lasso selection, retrieval, placement of uploads, export). The heavy objects behind
it are opened once per server process (``app.loaders``); per-session state is plain ``param``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
import traceback
import uuid
import zipfile
from collections import OrderedDict
from functools import wraps
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import panel as pn
import param

from app.inputs import MAX_UPLOAD_BYTES, UserError, element_symbols, formula_of_file, split_csv_header, upload_file_name
from app.loaders import (DEFAULT_DATASET, DEFAULT_EXPLORE, MAP_LAYERS, browse_base, ids_having, indexed_table,
                         map_clusters, map_frame, map_layer, map_layers, open_dataset, open_explorer, property_columns)
from app.logs import log
from mlcm_core.data.conventions import LABELS, label_title

# what a search depends on besides its target (AppState.query_inputs): a change marks the candidates stale
QUERY_INPUTS = ("target", "placed", "k", "gallery", "range_column", "range_min", "range_max", "include_unknown",
                "elements_include", "elements_exclude", "sources")

# what AppState.reset leaves as it is (every other parameter goes back to its default)
RESET_KEEPS = ("name", "dataset_path", "explore_path", "busy", "message", "message_level", "resets")

QUERY_KINDS = {"dos": "DOS", "structure": "uploaded structure", "material_id": "similar to a material"}

QUERY_CACHE_SIZE = 64

TOAST_MS = {"warning": 6000, "error": 10000}  # AppState.notify: toast levels and how long each stays

_QUERY_CACHE: OrderedDict = OrderedDict()  # query key -> candidates (AppState.run_query)

_QUERY_LOCK = threading.Lock()

def guarded(action: str):
    """Decorator for view callbacks: any exception becomes a message in the page, never a broken session."""
    def deco(fn):
        @wraps(fn)
        def wrapper(self, *args, **kwargs):
            state = self if isinstance(self, AppState) else self.state
            try:
                return fn(self, *args, **kwargs)
            except Exception as e:  # noqa: BLE001
                if not isinstance(e, (UserError, ValueError, KeyError, TypeError, FileNotFoundError)):
                    log.error("%s failed:\n%s", action, traceback.format_exc())
                text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
                state.notify(f"{action} failed: {text}", "error")
                return None
        return wrapper
    return deco

class AppState(param.Parameterized):
    """Per-session state. Views watch these parameters; the heavy data behind them is shared."""

    dataset_path = param.String(default=os.environ.get("MLCM_DATASET", str(DEFAULT_DATASET)))
    explore_path = param.String(default=os.environ.get("MLCM_EXPLORE", str(DEFAULT_EXPLORE)))

    selected_ids = param.List(default=[], item_type=str, doc="materials selected on the map (lasso, box, cluster)")
    selection_origin = param.String(default="", doc="how the selection was made")
    polygon = param.List(default=[], doc="the last lasso/box polygon the app received, [[x, y], ...] map coords")
    focus_id = param.String(default="", doc="the material shown in the structure, density and property views")
    zoom_to = param.List(default=[], doc="[x0, x1, y0, y1]: the map extent a search asks the map to show "
                                         "(empty: no request); AppState.find sets it")
    search_text = param.String(default="", doc="the last search (material id, formula or chemical system)")
    layers = param.ListSelector(default=[], objects=[], doc="the map layers shown (MAP_LAYERS keys; every one "
                                "present by default): the map draws, hovers and lasso/box/cluster-selects only these")
    map_view = param.List(default=[], doc="[x0, x1, y0, y1]: the map's viewport after a zoom or pan (empty: the "
                                          "whole map); the map keeps it up to date, the URL shares it")
    url_query = param.String(default="", doc="the shareable state as a URL query string (app/share.py keeps it)")

    candidates = param.DataFrame(default=None, allow_None=True, doc="the last Explorer.query result")
    candidates_origin = param.String(default="")
    candidates_filters = param.String(default="", doc="the filters the candidates' search ran with, in words")
    target = param.Dict(default=None, allow_None=True,
                        doc="target DOS: {'label', 'x', 'y'} (x, y = the curve as given) and 'dos' (601 values)")
    placed = param.Dict(default=None, allow_None=True, doc="an uploaded structure placed on the map")
    validation = param.Dict(default=None, allow_None=True, doc="computed DOS of a DFT validation")
    query = param.Dict(default=None, allow_None=True,
                       doc="what the candidates were searched with (AppState.query_record): kind, target, gallery, "
                           "k, filters in words; None without candidates")
    query_stale = param.Boolean(default=False, doc="an input of the candidates' search (its target or upload, the "
                                                   "gallery, k, a filter) has changed since it ran")
    resets = param.Integer(default=0, doc="AppState.reset count: views clear their own widgets when it changes")

    # retrieval settings (FiltersView shows them)
    k = param.Integer(default=25, bounds=(1, 500), doc="number of candidates")
    gallery = param.Selector(default="auto", objects=["auto", "crystal", "dos", "density"],
                             doc="which embedding represents a candidate; auto: a DOS search ranks the materials "
                                 "by their stored DOS (what matches the target), other searches by their crystal")
    range_column = param.Selector(default="(none)", objects=["(none)"], doc="property range filter")
    range_min = param.Number(default=None, allow_None=True)
    range_max = param.Number(default=None, allow_None=True)
    include_unknown = param.Boolean(default=False, doc="keep candidates whose value is unknown")
    elements_include = param.String(default="", doc="comma-separated: must contain all")
    elements_exclude = param.String(default="", doc="comma-separated: must contain none")
    sources = param.ListSelector(default=[], objects=[], doc="empty = all sources")

    message = param.String(default="")
    message_level = param.Selector(default="info", objects=["info", "success", "warning", "error"])
    busy = param.Boolean(default=False)

    def __init__(self, **params):
        super().__init__(**params)
        self.session_id = uuid.uuid4().hex[:12]
        self._candidates_key: tuple | None = None  # the query whose result `candidates` holds
        t = self.table
        # shown as "Band gap (eV, PBE(+U); Materials Project)", the value stays the column name
        self.param.range_column.objects = {"(none)": "(none)", **{label_title(c): c for c in property_columns(t)}}
        self.param.sources.objects = sorted(t["source"].dropna().astype(str).unique().tolist())
        present = {map_layer(v) for v in self.param.sources.objects}
        shown = [k for k in MAP_LAYERS if k in present]
        self.param.layers.objects = {MAP_LAYERS[k]: k for k in shown}
        self.param.layers.default = list(shown)  # every layer shown, also after a reset
        self.layers = list(shown)
        self.param.watch(self._reselect, "layers")
        self._query_inputs: tuple | None = None  # query_inputs() when the candidates' search ran
        self.param.watch(self._check_stale, list(QUERY_INPUTS))

    # ---- data ---------------------------------------------------------------------------------
    @property
    def dataset(self):
        return open_dataset(self.dataset_path)

    @property
    def explorer(self):
        return open_explorer(self.explore_path, self.dataset_path)

    @property
    def frame(self) -> pd.DataFrame:
        return map_frame(self.explore_path, self.dataset_path)

    @property
    def clusters(self) -> pd.DataFrame:
        return map_clusters(self.explore_path, self.dataset_path)

    @property
    def table(self) -> pd.DataFrame:
        return self.dataset.table

    @property
    def indexed(self) -> pd.DataFrame:
        return indexed_table(self.dataset_path)

    def browse_table(self, ids: list[str] | None = None) -> pd.DataFrame:
        """The columns a scientist scans first: identity, symmetry, modalities, split, labels."""
        base = browse_base(self.dataset_path)
        return (base if ids is None else base.reindex(ids)).reset_index()  # a selection keeps its order

    def label_card(self, material_id: str) -> pd.DataFrame:
        """Known labels of one material with their unit, level of theory and source."""
        row = self.indexed.loc[material_id]
        rows = []
        for name, spec in LABELS.items():
            if name in row.index:
                v = pd.to_numeric(pd.Series([row[name]]), errors="coerce").iloc[0]
                if pd.notna(v):
                    rows.append({"quantity": spec.quantity, "value": float(v), "unit": spec.unit,
                                 "theory": spec.theory, "source": spec.source})
        return pd.DataFrame(rows, columns=["quantity", "value", "unit", "theory", "source"])

    def predictions(self, material_id: str | None = None, structure: Any = None) -> tuple[pd.DataFrame | None, str]:
        """(table, note): the Explorer's predicted properties ± ensemble spread, beside the stored label if any."""
        ex = self.explorer
        if ex.predictor is None:
            return None, "not available: " + ex.predictor_status
        pred = ex.predict(material_id=material_id) if material_id is not None else ex.predict(structure=structure)
        rows = []
        for r in pred.itertuples():
            known = ""
            if material_id is not None and r.label_column in self.indexed.columns:
                v = pd.to_numeric(pd.Series([self.indexed.at[material_id, r.label_column]]), errors="coerce").iloc[0]
                known = f"{v:.4g}" if pd.notna(v) else ""
            rows.append({"quantity": r.quantity, "predicted": f"{r.value:.3g}",
                         "1σ range": f"{r.low_1sigma:.3g} … {r.high_1sigma:.3g}", "unit": r.unit,
                         "stored (MP PBE)": known, "test MAE": f"{r.test_mae:.3g} {r.transformed_unit}"})
        note = pred["theory"].iloc[0] if len(pred) else ""
        return pd.DataFrame(rows), note

    def has(self, material_id: str, column: str) -> bool:
        t = self.indexed
        return material_id in t.index and bool(t.at[material_id, column])

    def shown_material(self, ids: list[str], focus: str = "") -> str:
        """The one material the property card describes and the DOS view draws first (black, thick): the focus,
        else the first selected material with a DOS, else the first selected one ('' when none).

        One rule for both views: the card used to show the last selected id while the DOS view drew another."""
        if focus or not ids:
            return focus
        has_dos = ids_having(self.dataset_path, "has_dos")
        return next((i for i in ids if i in has_dos), ids[0])

    # ---- messages -----------------------------------------------------------------------------
    def notify(self, text: str, level: str = "info") -> None:
        """A message in the page (the alert pane); warnings and errors also as a toast.

        Routine confirmations (a selection, a search) stay in the alert pane only: each toast adds a model
        to the session's notification list, and the lasso/search confirmations came every few seconds."""
        self.param.update(message=text, message_level=level)
        notes = getattr(pn.state, "notifications", None)
        if notes is None:
            return
        try:
            if notes.notifications:  # a new message makes the shown toast stale: at most one, never a pile
                notes.clear()        # over the plots (errors used to stay until closed one by one)
            if level in TOAST_MS:
                getattr(notes, level)(text, duration=TOAST_MS[level])
        except Exception as e:  # noqa: BLE001 - no document (headless tests): the alert pane suffices
            log.debug("no toast for %r: %s", text, e)

    # ---- map selection --------------------------------------------------------------------------
    def select_polygon(self, polygon: Any, origin: str = "lasso") -> list[str]:
        """Explorer.select on a map polygon; the result becomes the selection."""
        poly = np.asarray(polygon, dtype=np.float64)
        if poly.ndim != 2 or poly.shape[1] != 2 or len(poly) < 3 or not np.all(np.isfinite(poly)):
            raise UserError("a selection needs a polygon of at least 3 finite map points")
        ids = self.shown_only(list(map(str, self.explorer.select(poly))))  # what is drawn is what is selected
        self.param.update(polygon=poly.tolist(), selected_ids=ids, selection_origin=origin)
        return self.selected_ids

    # ---- map layers -----------------------------------------------------------------------------
    def layer_mask(self, layers: Any = None) -> np.ndarray | None:
        """Map points (``frame`` rows) on ``layers`` (default: the shown ones); None when every layer is shown."""
        layers = self.layers if layers is None else layers
        if set(self.param.layers.objects.values()) <= set(layers):
            return None
        return np.isin(map_layers(self.explore_path, self.dataset_path), list(layers))

    def n_shown(self) -> int:
        """How many map points the shown layers hold."""
        mask = self.layer_mask()
        return len(self.frame) if mask is None else int(mask.sum())

    def shown_only(self, ids: list[str]) -> list[str]:
        """``ids`` without the materials of hidden layers (order kept)."""
        mask = self.layer_mask()
        if mask is None:
            return ids
        shown = set(self.frame["id"].to_numpy()[mask])
        return [i for i in ids if i in shown]

    def _reselect(self, *_) -> None:
        """A selection made on the map (lasso, box, cluster) is made again for the layers now shown: it is always
        its polygon's or cluster's materials on the shown layers (a shared link then reproduces it)."""
        origin = self.selection_origin
        if origin in ("lasso", "box") and self.polygon:
            self.select_polygon(self.polygon, origin=origin)
        elif origin.startswith("cluster "):
            with contextlib.suppress(UserError):
                self.select_cluster(origin.removeprefix("cluster "))

    def select_cluster(self, label: str) -> list[str]:
        """Every material of the map cluster ``label`` on the shown layers becomes the selection."""
        hit = self.clusters[self.clusters["label"] == label]
        if hit.empty:
            raise UserError(f"no map cluster {label!r}")
        self.select_ids(self.shown_only(list(map(str, hit["ids"].iloc[0]))), origin=f"cluster {label}")
        return self.selected_ids

    def select_ids(self, ids: list[str], origin: str) -> None:
        self.param.update(selected_ids=[str(i) for i in ids], selection_origin=origin, polygon=[])

    def find(self, text: str) -> list[str]:
        """The search box: ``Explorer.find`` (a material id, a formula or a chemical system); returns the ids found.

        One match is focused (as a click or a table row does: structure, density, DOS and card show it); several
        are selected as a lasso selection would be (card, DOS overlay, histograms and tables follow; the focus
        is cleared so the card describes the selection, not an earlier click). Either way ``zoom_to`` asks the
        map to show them. No match or an unreadable query is a message saying why; nothing changes."""
        from mlcm_core.explore.lookup import MaterialNotFound, MaterialQueryError

        self.search_text = str(text or "").strip()
        try:
            match = self.explorer.find(text)
        except MaterialNotFound as e:
            self.notify(str(e), "warning")
            return []
        except MaterialQueryError as e:
            self.notify(str(e), "error")
            return []
        if len(match.ids) == 1:
            mid = match.ids[0]
            self.focus_id = mid
            formula = self.indexed.at[mid, "formula"] if mid in self.indexed.index else None
            what = f"{mid} {formula}" if isinstance(formula, str) and formula else mid
            how = "" if match.kind == "id" else f" (the only material with {match.kind} {match.key})"
            self.notify(f"found {what}{how}: shown below and starred on the map", "success")
        else:
            self.param.update(selected_ids=list(match.ids), selection_origin=f"search: {match.kind} {match.key}",
                              polygon=[], focus_id="")
            self.notify(f"selected {len(match.ids):,} materials with {match.kind} {match.key}", "success")
        self.zoom_to = []  # a new request even when it is the last one's extent (the map may have been panned since)
        self.zoom_to = self.extent_of(match.ids)
        return list(match.ids)

    def extent_of(self, ids: list[str], pad: float = 0.1, min_share: float = 0.08) -> list[float]:
        """[x0, x1, y0, y1] around the materials ``ids`` on the map, padded by ``pad`` of its span and at least
        ``min_share`` of the whole map's span wide and high (one material: a neighbourhood, not one pixel)."""
        f = self.frame
        sub = f[f["id"].isin(ids)]
        if sub.empty:
            return []
        out = []
        for c in ("x", "y"):
            lo, hi = float(sub[c].min()), float(sub[c].max())
            full = float(f[c].max() - f[c].min()) or 1.0
            half = max((hi - lo) * (1 + 2 * pad), min_share * full) / 2
            mid = (lo + hi) / 2
            out += [mid - half, mid + half]
        return out

    def nearest(self, x: float, y: float, max_dist: float | None = None) -> str | None:
        f = self.frame
        d2 = (f["x"].to_numpy() - x) ** 2 + (f["y"].to_numpy() - y) ** 2
        k = int(np.argmin(d2))
        if max_dist is not None and d2[k] > max_dist**2:
            return None
        return str(f["id"].iloc[k])

    # ---- retrieval ------------------------------------------------------------------------------
    def filters(self):
        """The Filters of the current settings (None when nothing is restricted)."""
        from mlcm_core.explore import Filters

        ranges, unknown = {}, {}
        if self.range_column != "(none)" and (self.range_min is not None or self.range_max is not None):
            ranges[self.range_column] = (self.range_min, self.range_max)
            unknown[self.range_column] = self.include_unknown
        inc = element_symbols(self.elements_include)
        exc = element_symbols(self.elements_exclude)
        unknown["elements"] = self.include_unknown
        sources = list(self.sources) if self.sources else None
        f = Filters.build(ranges, include_unknown=unknown, elements_include=inc, elements_exclude=exc, sources=sources)
        return None if f.is_empty else f

    def filters_text(self) -> str:
        """The retrieval filters in force, in words ('' when none): every search names them, an upload's too
        (they apply to every search, and a result missing for that reason must not look like a model's miss)."""
        parts = []
        if self.range_column != "(none)" and (self.range_min is not None or self.range_max is not None):
            lo = "" if self.range_min is None else f"{self.range_min:g}"
            hi = "" if self.range_max is None else f"{self.range_max:g}"
            parts.append(f"{label_title(self.range_column)} {lo}…{hi}")
        if self.elements_include.strip():
            parts.append(f"contains {self.elements_include.strip()}")
        if self.elements_exclude.strip():
            parts.append(f"without {self.elements_exclude.strip()}")
        if self.sources:
            parts.append("sources " + ", ".join(self.sources))
        if parts:
            parts.append("unknown values " + ("kept" if self.include_unknown else "dropped"))
        return "; ".join(parts)

    def _query_key(self, targets: dict[str, Any]) -> tuple | None:
        """A cache key for a DOS / material-id query with the current settings (None: not cacheable)."""
        parts = []
        for name, value in sorted(targets.items()):
            if name == "dos":
                arrays = value if isinstance(value, tuple) else (value,)
                digest = hashlib.sha1()
                for a in arrays:
                    digest.update(np.ascontiguousarray(a, np.float64).tobytes() + b"|")
                parts.append((name, len(arrays), digest.hexdigest()))
            elif name == "material_id":
                parts.append((name, str(value)))
            else:  # an uploaded structure (a temporary file): computed each time
                return None
        settings = (self.k, self.gallery, self.range_column, self.range_min, self.range_max, self.include_unknown,
                    self.elements_include, self.elements_exclude, tuple(self.sources))
        return (str(self.explore_path), tuple(parts), settings)

    def run_query(self, origin: str, **targets: Any) -> pd.DataFrame:
        """Explorer.query with the current filters, k and gallery; the result becomes the candidates.

        Results are kept process-wide (LRU of QUERY_CACHE_SIZE) by target and settings: the same material's
        DOS searched again, or by another session, costs no model embedding."""
        t = time.perf_counter()
        key = self._query_key(targets)
        if key is not None and key == self._candidates_key and origin == self.candidates_origin:
            # the same search again: the same result is already shown, so nothing is recomputed or re-sent
            self.notify(f"{len(self.candidates)} candidates for {origin} (unchanged)", "success")
            return self.candidates
        with _QUERY_LOCK:
            res = _QUERY_CACHE.get(key) if key is not None else None
            if res is not None:
                _QUERY_CACHE.move_to_end(key)
        if res is None:
            self.busy = True
            try:
                res = self.explorer.query(**targets, filters=self.filters(), k=self.k,
                                          gallery=self.search_gallery(targets))
            finally:
                self.busy = False
            if key is not None:
                with _QUERY_LOCK:
                    _QUERY_CACHE[key] = res
                    while len(_QUERY_CACHE) > QUERY_CACHE_SIZE:
                        _QUERY_CACHE.popitem(last=False)
        res = res.copy()  # sessions never share a mutable frame
        self._candidates_key = key
        filters = self.filters_text()
        record = self.query_record(origin, targets, len(res))
        self._query_inputs = self.query_inputs(record["kind"])
        self.param.update(candidates=res, candidates_origin=origin, candidates_filters=filters, query=record,
                          query_stale=False)
        self.notify(f"{len(res)} candidates for {origin} ({time.perf_counter() - t:.2f} s)"
                    + (f"; filters: {filters}" if filters else "; no filters"), "success")
        return res

    def search_gallery(self, targets: dict[str, Any]) -> str:
        """The Explorer gallery of a search: the chosen one, or for "auto" the DOS gallery when the search has
        a DOS target (a drawn 2 eV gap then finds gapped materials, not crystals whose embedding is near),
        else the crystal gallery."""
        if self.gallery != "auto":
            return self.gallery
        return "dos" if "dos" in targets else "crystal"

    def clear_candidates(self) -> None:
        self._candidates_key = None
        self._query_inputs = None
        self.param.update(candidates=None, candidates_origin="", candidates_filters="", query=None, query_stale=False)

    # ---- what the candidates were searched with (the query-state panel) -----------------------------
    def query_record(self, origin: str, targets: dict[str, Any], n: int) -> dict:
        """What a search ran with, for the query-state panel: ``kind`` ("dos", "structure" or "material_id"),
        the target (a DOS: its label and 601 values on the DOS grid; an upload: its file name and formula; a
        material: its id and formula), the gallery searched (as chosen and as resolved for "auto"), k and the
        filters in words (``filters_text``: '' when none)."""
        kind = next((name for name in QUERY_KINDS if name in targets), "query")
        record = {"kind": kind, "what": QUERY_KINDS.get(kind, kind), "origin": origin, "n": int(n), "k": self.k,
                  "gallery_setting": self.gallery, "gallery": self.search_gallery(targets),
                  "filters": self.filters_text()}
        if kind == "dos":
            if self.target:
                label, dos = self.target["label"], self.target["dos"]
            else:  # a DOS given to run_query directly
                from mlcm_core.explore import resample_polyline

                value = targets["dos"]
                label, dos = "DOS", resample_polyline(*value) if isinstance(value, tuple) else value
            record.update(label=label, dos=np.asarray(dos, np.float64).round(4).tolist())
        elif kind == "structure":
            placed = self.placed or {}
            record.update(name=placed.get("name", "structure"), formula=placed.get("formula", "?"))
        elif kind == "material_id":
            mid = str(targets["material_id"])
            formula = self.indexed.at[mid, "formula"] if mid in self.indexed.index else None
            record.update(material_id=mid, formula=formula if isinstance(formula, str) else "")
        return record

    def query_inputs(self, kind: str) -> tuple:
        """What a search of ``kind`` would run with now: its target (the DOS curve or the upload; a material id
        is fixed by the search itself), the resolved gallery, k and the filters. A change after the search marks
        its candidates stale (``query_stale``); an input another kind of search ignores does not."""
        if kind == "dos":
            what = _curve_digest(self.target)
        elif kind == "structure":
            what = None if not self.placed else (self.placed.get("name"), _digest(self.placed.get("text", "")))
        else:
            what = None
        return kind, what, self.search_gallery({kind: None}), self.k, self.filters_text()

    def changed_inputs(self) -> list[str]:
        """The inputs of the candidates' search that have changed since it ran, in words ([] when none)."""
        if not self.query or self._query_inputs is None:
            return []
        kind = self.query["kind"]
        names = ("search", {"dos": "target DOS", "structure": "uploaded structure"}.get(kind, "target"), "gallery",
                 "k", "filters")
        return [n for n, a, b in zip(names, self._query_inputs, self.query_inputs(kind)) if a != b]

    def _check_stale(self, *_) -> None:
        stale = self.query is not None and self._query_inputs != self.query_inputs(self.query["kind"])
        if stale != self.query_stale:
            self.query_stale = stale

    def target_candidates(self) -> pd.DataFrame | None:
        """The candidates when they are the search result of the current target's curve (not an upload's, a
        material's, or an earlier target's with the same label), else None."""
        if not self.target or self.candidates is None or not self.query or self.query["kind"] != "dos":
            return None
        return self.candidates if self._query_inputs and self._query_inputs[1] == _curve_digest(self.target) else None

    def clear_target(self) -> None:
        """No target and no candidates of a DOS search (this target's or an earlier one's: they would stay listed
        and drawn); an upload's or a material's candidates stay."""
        if self.query and self.query["kind"] == "dos":
            self.clear_candidates()
        self.param.update(target=None, validation=None)

    def search_again(self) -> pd.DataFrame:
        """The candidates' search again, with the current target or upload, gallery, k and filters."""
        q = self.query
        if not q:
            raise UserError("nothing searched yet: draw a target DOS, use a material's DOS or upload a structure")
        if q["kind"] == "dos":
            return self.query_target()
        if q["kind"] == "material_id":
            return self.run_query(q["origin"], material_id=q["material_id"])
        if q["kind"] == "structure" and self.placed:
            import tempfile

            with tempfile.TemporaryDirectory(prefix="mlcm-upload-") as d:
                path = Path(d) / upload_file_name(self.placed["name"])
                path.write_text(self.placed["text"], encoding="utf-8")
                return self.run_query(f"uploaded structure {self.placed['name']} ({self.placed['formula']})",
                                      structure=path)
        raise UserError(f"cannot repeat the search for {q['origin']}: search again from its view")

    def home_extent(self) -> list[float]:
        """[x0, x1, y0, y1]: the whole map with a 3 % margin (the map's first view)."""
        f = self.frame
        out = []
        for c in ("x", "y"):
            lo, hi = float(f[c].min()), float(f[c].max())
            pad = 0.03 * (hi - lo)
            out += [lo - pad, hi + pad]
        return out

    def reset(self) -> None:
        """The session as it started: no selection, focus, target, candidates, upload or validation, the search
        box empty, the default k, gallery and filters, the whole map in view; ``resets`` goes up so that views
        clear what only they hold (a drawn stroke, file inputs, colouring)."""
        import copy

        self._candidates_key = None
        self._query_inputs = None
        values = {name: copy.deepcopy(p.default) for name, p in self.param.objects("existing").items()
                  if name not in RESET_KEEPS and not p.constant and not p.readonly}
        self.param.update(**values, resets=self.resets + 1)
        self.zoom_to = self.home_extent()
        self.notify("session reset: no selection, target, candidates, upload or filters", "info")

    def target_origin(self) -> str:
        """The candidates' origin of a search with the current target ('' without a target): the target plot
        overlays only those candidates, not an upload's or a material's drawn over this target."""
        return f"target DOS ({self.target['label']})" if self.target else ""

    def set_target(self, label: str, x: Any, y: Any) -> dict:
        """A target DOS given as a curve (x in eV, y >= 0); validated and resampled by the core's rules."""
        from mlcm_core.explore import target_dos

        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        dos = target_dos(x, y)  # the core's one check; a DrawnDOSError (a ValueError) says what is wrong
        target = {"label": label, "x": x.tolist(), "y": y.tolist(), "dos": dos.tolist()}
        self.param.update(target=target, validation=None)
        return target

    def query_target(self) -> pd.DataFrame:
        if not self.target:
            raise UserError("no target DOS yet: draw one, load a material's DOS or upload a CSV")
        from mlcm_core.explore import on_dos_grid

        x, y = np.asarray(self.target["x"]), np.asarray(self.target["y"])
        dos = np.asarray(self.target["dos"], np.float32) if on_dos_grid(x) else (x, y)  # a polyline is recorded as drawn
        return self.run_query(self.target_origin(), dos=dos)

    def place_upload(self, data: bytes, filename: str = "upload.cif") -> dict:
        """Explorer.place an uploaded CIF/POSCAR and find its neighbours (a structure query)."""
        import tempfile

        if not data:
            raise UserError("the uploaded file is empty")
        if len(data) > MAX_UPLOAD_BYTES:
            raise UserError(f"{filename} is {len(data) / 1e6:.1f} MB; the limit is {MAX_UPLOAD_BYTES / 1e6:.0f} MB")
        with tempfile.TemporaryDirectory(prefix="mlcm-upload-") as d:
            path = Path(d) / upload_file_name(filename)
            path.write_bytes(data)
            try:
                x, y = self.explorer.place(path)  # the core's structure-file reader: limits and clear errors
            except (ValueError, OSError) as e:
                raise UserError(f"cannot place {filename}: {e}".replace(str(path), filename)) from e
            formula = formula_of_file(path)
            preds, _ = self.predictions(structure=path)
            placed = {"name": filename, "formula": formula, "x": x, "y": y, "text": data.decode("utf-8", "replace"),
                      "predictions": None if preds is None else preds.to_dict("records")}
            self.placed = placed
            self.run_query(f"uploaded structure {filename} ({formula})", structure=path)
        return placed

    # ---- export ---------------------------------------------------------------------------------
    def export_table(self, what: str) -> tuple[pd.DataFrame, dict | None]:
        """(table, query) for export: the candidates (their query travels with them) or the map selection."""
        if what == "candidates":
            if self.candidates is None or self.candidates.empty:
                raise UserError("no candidates to export yet: run a search first")
            return self.candidates, None
        if not self.selected_ids:
            raise UserError("nothing selected on the map to export: lasso, box-select or pick a cluster first")
        t = self.browse_table(self.selected_ids)
        m = self.explorer.manifest  # the map's provenance by checksum: no server path in a file users keep
        query = {"kind": "map selection", "origin": self.selection_origin, "polygon": self.polygon,
                 "n": len(t), "checkpoint_sha256": m["checkpoint"]["sha256"],
                 "embeddings_sha256": m.get("files", {}).get("embeddings.npz")}
        return t, query

    def export_name(self, what: str, table: pd.DataFrame, query: dict | None) -> str:
        """A file name (no suffix) that says what the file holds and when: e.g.
        ``mlcm-candidates-dos-search-25-20261203-101500``, ``mlcm-selection-lasso-675-20261203-101500``."""
        from mlcm_core.explore.export import safe_name

        if what == "candidates":
            q = query if query is not None else table.attrs.get("query", {})
            kinds = []
            for t in q.get("targets", []):
                detail = t.get("id") or t.get("formula") or ""
                kinds.append(f"{t.get('kind', 'query')}-{detail}" if detail else str(t.get("kind", "query")))
            kind = "-".join(kinds or ["query"]).replace("material_id", "material") + "-search"
        else:
            kind = self.selection_origin.split(":")[0] or "selection"  # "cluster C3: cubic · O-Ti" -> "cluster C3"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return f"mlcm-{what}-{safe_name(kind.replace(' ', '-'))}-{len(table)}-{stamp}"

    def export(self, what: str, fmt: str) -> Path:
        """Explorer.export of the candidates or the selection, under a name saying what it holds.

        CSV: a plain table (``pandas.read_csv`` reads it as is); the core writes the query as a first-line JSON
        comment, which moves to a ``<name>.query.json`` beside it. JSON and the CIF zip hold the query inside
        (the zip also gets the plain CSV)."""
        table, query = self.export_table(what)
        name = f"app/{self.session_id}/{self.export_name(what, table, query)}"
        path = self.explorer.export(table, name, formats=(fmt,), query=query)[fmt]
        if fmt == "csv":
            split_csv_header(path)
        elif fmt == "cif_zip":  # + the plain table, written by the core under a name of its own, then moved in
            table_csv = self.explorer.export(table, name + "-table", formats=("csv",), query=query)["csv"]
            split_csv_header(table_csv).unlink()
            with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf:
                zf.write(table_csv, "candidates.csv")
            table_csv.unlink()
        return path

def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "replace")).hexdigest()

def _curve_digest(target: dict | None) -> tuple | None:
    """What identifies a target DOS: its label and its values (two strokes are both labelled "drawn")."""
    if not target:
        return None
    return target.get("label"), hashlib.sha1(np.asarray(target["dos"], np.float64).tobytes()).hexdigest()

def debug_json(state: AppState) -> str:
    """What the browser tests read back: the polygon the app received and what it selected/found."""
    cand = state.candidates
    return json.dumps({"polygon": state.polygon, "n_selected": len(state.selected_ids), "zoom_to": state.zoom_to,
                       "selection_origin": state.selection_origin, "focus": state.focus_id,
                       "n_candidates": 0 if cand is None else len(cand),
                       "candidate_ids": [] if cand is None else cand["id"].astype(str).tolist(),
                       "placed": None if not state.placed else {k: state.placed[k] for k in ("x", "y", "formula")},
                       "url": state.url_query, "layers": list(state.layers), "n_shown": state.n_shown(),
                       "map_view": state.map_view})
