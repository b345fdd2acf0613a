"""Shareable state in the URL: what is selected, focused, filtered, coloured and in view, as a short query string.

``state_query`` writes an AppState (and the map's colouring) as ``{key: text}``; ``restore`` reads such a query
back, value by value: an unknown key or a value that does not parse, names no known material, cluster or
layer, is left out with a notice saying so, never an error. ``ShareLink`` keeps the browser's address in step
(``pn.state.location``: ``history.pushState``, no reload) and restores a session from the address it was
opened with.

Keys (only what differs from a fresh session is written):

========== ===========================================================================================
``ids``     the selected material ids, when there are at most ``MAX_IDS``; else what made the selection:
``cluster`` the map cluster's number, ``lasso`` / ``box`` the polygon (x,y;x,y;..., simplified to at most
            ``MAX_VERTICES`` vertices when that selects the same materials), ``find`` the search text
``focus``   the focused material
``k`` ``gallery`` ``range`` ``min`` ``max`` ``unknown`` ``has`` ``without`` ``sources``: retrieval settings
``layers``  the map layers shown (``real``, ``perov_5``, ``carbon_24``; ``none``)
``view``    the map viewport x0,x1,y0,y1
``color`` ``prop`` ``element``: the map colouring (``color`` one of COLOR_SLUGS' values)
========== ===========================================================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

import numpy as np
import panel as pn
import param

from app.inputs import UserError, element_symbol, element_symbols
from app.logs import log
from app.state import AppState

MAX_IDS = 40  # more selected materials are shared by what selected them (cluster, polygon, search)
MAX_VERTICES = 100  # a lasso polygon in the URL has at most this many vertices (~15 characters each)
DIGITS = 4  # decimals of map coordinates in the URL
COLOR_SLUGS = {"crystal system": "crystal-system", "source": "source", "modality coverage": "coverage",
               "property": "property", "element present": "element", "uncertainty: prediction spread": "spread",
               "uncertainty: modality disagreement": "disagreement", "uncertainty: sparse region": "sparse"}
SELECTION_KEYS = ("ids", "cluster", "lasso", "box", "find")
STATE_KEYS = (*SELECTION_KEYS, "add", "drop", "focus", "k", "gallery", "range", "min", "max", "unknown", "has", "without",
              "sources", "layers", "view")
MAP_KEYS = ("color", "prop", "element")
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _num(v: float) -> str:
    return f"{round(float(v), DIGITS):g}" if abs(v) < 1e4 else f"{float(v):.6g}"


def _points(poly: Any) -> str:
    return ";".join(f"{_num(x)},{_num(y)}" for x, y in poly)


def _parse_points(text: str) -> list[list[float]]:
    pts = [[float(v) for v in p.split(",")] for p in text.split(";") if p.strip()]
    if len(pts) < 3 or any(len(p) != 2 or not all(map(math.isfinite, p)) for p in pts):
        raise ValueError("expected at least 3 points x,y;x,y;x,y")
    return pts


def _floats(text: str, n: int) -> list[float]:
    vals = [float(v) for v in text.split(",")]
    if len(vals) != n or not all(map(math.isfinite, vals)):
        raise ValueError(f"expected {n} finite numbers separated by commas")
    return vals


def _short_polygon(state: AppState, poly: list, ids: list[str]) -> dict[str, str]:
    """``{"poly", "add", "drop"}``: the polygon rounded to DIGITS and simplified to at most MAX_VERTICES
    vertices, and the ids that its selection then lacks (``add``) or has in excess (``drop``), so that the link
    selects exactly ``ids``; the polygon itself when it is short enough, else of the simplifications tried the
    one with the shortest text."""
    from shapely.geometry import Polygon

    shape = Polygon(poly)
    span = max(float(np.ptp(np.asarray(poly, float), axis=0).max()), 1e-9)
    want = set(ids)
    best: dict[str, str] | None = None
    for tol in (0.0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08):
        simple = shape.simplify(tol * span, preserve_topology=True) if tol else shape
        if simple.is_empty or simple.geom_type != "Polygon":
            continue
        pts = [[round(x, DIGITS), round(y, DIGITS)] for x, y in list(simple.exterior.coords)[:-1]]
        if not 3 <= len(pts) <= MAX_VERTICES:
            continue
        got = state.shown_only(list(map(str, state.explorer.select(np.asarray(pts)))))
        have = set(got)
        add = [i for i in ids if i not in have]
        drop = [i for i in got if i not in want]
        if len(add) + len(drop) > MAX_IDS:
            continue
        out = {"poly": _points(pts), "add": ",".join(add), "drop": ",".join(drop)}
        if tol == 0.0:  # short enough as it is (e.g. a link's own polygon): kept, so a link writes itself again
            return out
        if best is None or sum(map(len, out.values())) < sum(map(len, best.values())):
            best = out
    return best or {}


def selection_query(state: AppState) -> dict[str, str]:
    """The selection as few characters as say it: its ids, or the cluster, polygon or search that made it."""
    ids, origin = state.selected_ids, state.selection_origin
    if not ids:
        return {}
    if len(ids) <= MAX_IDS:
        return {"ids": ",".join(ids)}
    if origin.startswith("cluster "):
        hit = state.clusters[state.clusters["label"] == origin.removeprefix("cluster ")]
        if len(hit):
            return {"cluster": str(int(hit["cluster"].iloc[0]))}
    if origin in ("lasso", "box") and state.polygon:
        key = (tuple(map(tuple, state.polygon)), len(ids), tuple(state.layers))
        cache = state.__dict__.setdefault("_share_polygon", {})
        if key not in cache:
            cache.clear()
            cache[key] = _short_polygon(state, state.polygon, ids)
        short = cache[key]
        if short:
            return {origin: short["poly"], **{k: short[k] for k in ("add", "drop") if short[k]}}
    if origin.startswith("search: "):  # "search: formula SiO2": the search text that finds them again
        parts = origin.split(" ", 2)
        if len(parts) == 3:
            return {"find": parts[2]}
    return {}  # a long selection without a recipe is not shared (the page says so: ShareLink)


def state_query(state: AppState, colouring: param.Parameterized | None = None) -> dict[str, str]:
    """The shareable state as ``{key: text}``: only what differs from a fresh session."""
    q = selection_query(state)
    if state.focus_id:
        q["focus"] = state.focus_id
    d = {name: state.param[name].default for name in ("k", "gallery", "range_column", "include_unknown")}
    if state.k != d["k"]:
        q["k"] = str(state.k)
    if state.gallery != d["gallery"]:
        q["gallery"] = state.gallery
    if state.range_column != d["range_column"]:
        q["range"] = state.range_column
    for key, v in (("min", state.range_min), ("max", state.range_max)):
        if v is not None:
            q[key] = f"{v:g}"
    if state.include_unknown != d["include_unknown"]:
        q["unknown"] = "1" if state.include_unknown else "0"
    if state.elements_include.strip():
        q["has"] = state.elements_include.strip()
    if state.elements_exclude.strip():
        q["without"] = state.elements_exclude.strip()
    if state.sources:
        q["sources"] = ",".join(state.sources)
    if state.layer_mask() is not None:
        q["layers"] = ",".join(state.layers) or "none"
    if len(state.map_view) == 4:
        q["view"] = ",".join(_num(v) for v in state.map_view)
    if colouring is not None:
        mode = colouring.color_by
        if mode != colouring.param.color_by.default:
            q["color"] = COLOR_SLUGS.get(mode, mode)
        if mode == "property" and colouring.prop:
            q["prop"] = colouring.prop
        if mode == "element present" and colouring.element.strip():
            q["element"] = colouring.element.strip()
    return q


def query_string(query: Mapping[str, str]) -> str:
    """``?key=value&...`` ('' for an empty query); commas and semicolons stay readable."""
    return "?" + urlencode(query, safe=",;:") if query else ""


def parse_query_string(search: str) -> dict[str, str]:
    """A URL query (with or without its ``?``) as ``{key: last value}``."""
    return dict(parse_qsl(search.lstrip("?"), keep_blank_values=True))


def restore(state: AppState, query: Mapping[str, str], colouring: param.Parameterized | None = None) -> list[str]:
    """Apply a shared query to ``state`` (and the map ``colouring``, when given); returns a notice for each key
    or value left out. Settings come first, then the layers, the selection, the focus and the view."""
    notices: list[str] = []
    known = set(STATE_KEYS) | (set(MAP_KEYS) if colouring is not None else set())
    for key in query:
        if key not in known and not (colouring is None and key in MAP_KEYS):
            notices.append(f"unknown parameter {key!r}")

    def attempt(key: str, fn) -> None:
        if key not in query:
            return
        value = query[key]
        try:
            fn(value)
        except (UserError, ValueError, TypeError, KeyError, IndexError) as e:
            text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            notices.append(f"{key}={value[:60]!r}: {text}")

    def k(v: str) -> None:
        if not v.strip().isdigit():
            raise ValueError("not a whole number")
        n = int(v)
        lo, hi = state.param.k.bounds
        if not lo <= n <= hi:
            raise ValueError(f"k must be {lo}..{hi}")
        state.k = n

    def choice(name: str):
        def set_(v: str) -> None:
            objects = state.param[name].objects
            values = list(objects.values()) if isinstance(objects, dict) else list(objects)
            if v not in values:
                raise ValueError("one of " + ", ".join(map(str, values)))
            setattr(state, name, v)
        return set_

    def number(name: str):
        def set_(v: str) -> None:
            x = float(v)
            if not math.isfinite(x):
                raise ValueError("not a finite number")
            setattr(state, name, x)
        return set_

    def flag(v: str) -> None:
        if v.lower() not in TRUE + FALSE:
            raise ValueError("expected 1 or 0")
        state.include_unknown = v.lower() in TRUE

    def elements(name: str):
        def set_(v: str) -> None:
            element_symbols(v)  # UserError for an unknown symbol
            setattr(state, name, v)
        return set_

    def listed(name: str, what: str, none_ok: bool = False):
        def set_(v: str) -> None:
            objects = state.param[name].objects
            allowed = list(objects.values()) if isinstance(objects, dict) else list(objects)
            items = [] if none_ok and v == "none" else [s for s in v.split(",") if s]
            bad = [s for s in items if s not in allowed]
            if bad:
                notices.append(f"{name}: unknown {what} {', '.join(map(repr, bad))} left out")
            setattr(state, name, [s for s in allowed if s in items])
        return set_

    attempt("k", k)
    attempt("gallery", choice("gallery"))
    attempt("range", choice("range_column"))
    attempt("min", number("range_min"))
    attempt("max", number("range_max"))
    attempt("unknown", flag)
    attempt("has", elements("elements_include"))
    attempt("without", elements("elements_exclude"))
    attempt("sources", listed("sources", "source"))
    attempt("layers", listed("layers", "layer", none_ok=True))

    given = [key for key in SELECTION_KEYS if key in query]
    for extra in given[1:]:
        notices.append(f"{extra}: only one selection per link ({given[0]} used)")
    if given:
        attempt(given[0], lambda v: _restore_selection(state, given[0], v, notices, query))

    def focus(v: str) -> None:
        if v not in state.indexed.index:
            raise ValueError("no such material")
        state.focus_id = v

    def view(v: str) -> None:
        x0, x1, y0, y1 = _floats(v, 4)
        if not (x0 < x1 and y0 < y1):
            raise ValueError("expected x0 < x1 and y0 < y1")
        state.map_view = [x0, x1, y0, y1]

    attempt("focus", focus)
    attempt("view", view)
    if colouring is not None:
        restore_colouring(colouring, query, attempt)
    return notices


def _restore_selection(state: AppState, key: str, value: str, notices: list[str], query: Mapping[str, str]) -> None:
    if key == "ids":
        ids = [i for i in value.split(",") if i]
        known = set(state.frame["id"].to_numpy())
        bad = [i for i in ids if i not in known]
        if bad:
            notices.append(f"ids: {len(bad)} unknown material id(s) left out ({', '.join(bad[:5])})")
        good = [i for i in ids if i in known]
        if good:
            state.select_ids(good, origin="shared link")
    elif key == "cluster":
        n = int(value)
        hit = state.clusters[state.clusters["cluster"] == n]
        if hit.empty:
            raise ValueError("no such map cluster")
        state.select_cluster(str(hit["label"].iloc[0]))
    elif key in ("lasso", "box"):
        state.select_polygon(_parse_points(value), origin=key)
        _correct(state, key, query, notices)
    elif key == "find":
        if not state.find(value):
            raise ValueError("no material matches")


def _correct(state: AppState, origin: str, extra: Mapping[str, str], notices: list[str]) -> None:
    """The ``add`` / ``drop`` ids that make a shortened polygon's selection the one shared."""
    known = set(state.frame["id"].to_numpy())
    add = [i for i in extra.get("add", "").split(",") if i]
    drop = set(i for i in extra.get("drop", "").split(",") if i)
    bad = [i for i in add if i not in known]
    if bad:
        notices.append(f"add: {len(bad)} unknown material id(s) left out ({', '.join(bad[:5])})")
    ids = [i for i in state.selected_ids if i not in drop]
    ids += [i for i in add if i in known and i not in set(ids)]
    if add or drop:  # the polygon stays the selection's recipe
        state.param.update(selected_ids=ids, selection_origin=origin)


def restore_colouring(colouring: param.Parameterized, query: Mapping[str, str], attempt) -> None:
    """The map colouring keys (``color``, ``prop``, ``element``) onto the map view's parameters."""
    by_slug = {slug: mode for mode, slug in COLOR_SLUGS.items()}

    def color(v: str) -> None:
        mode = by_slug.get(v, v)
        if mode not in colouring.param.color_by.objects:
            raise ValueError("one of " + ", ".join(COLOR_SLUGS.values()))
        colouring.color_by = mode

    def prop(v: str) -> None:
        if v not in colouring.param.prop.objects.values():
            raise ValueError("not a property of the map")
        colouring.prop = v

    def element(v: str) -> None:
        colouring.element = element_symbol(v)

    attempt("color", color)
    attempt("prop", prop)
    attempt("element", element)


# what ShareLink watches: a change of any rewrites the URL
STATE_WATCHED = ("selected_ids", "selection_origin", "polygon", "focus_id", "k", "gallery", "range_column", "range_min",
                 "range_max", "include_unknown", "elements_include", "elements_exclude", "sources", "layers", "map_view")
MAP_WATCHED = ("color_by", "prop", "element")


class ShareLink:
    """Restores a session from the URL it was opened with, then keeps the URL (and ``state.url_query``) in step.

    Two steps, because the map view reads the restored viewport when it is built: ``ShareLink(state)`` before
    the views (selection, settings, layers, view), ``attach(map_view)`` after (colouring; starts writing)."""

    def __init__(self, state: AppState, search: str | None = None) -> None:
        self.state = state
        self.location = pn.state.location if pn.state.curdoc is not None and pn.state.curdoc.session_context else None
        if search is None:
            search = self.location.search if self.location is not None else ""
        self.query = parse_query_string(search or "")
        self.colouring: param.Parameterized | None = None
        self._loaded = False  # the address bar is written once the page has loaded (its Location model exists)
        self.notices = restore(state, self.query) if self.query else []

    def attach(self, colouring: param.Parameterized | None = None) -> None:
        self.colouring = colouring
        if colouring is not None and self.query:
            self.notices += restore(self.state, {k: v for k, v in self.query.items() if k in MAP_KEYS}, colouring)
            label = self.state.selection_origin.removeprefix("cluster ")  # the map's cluster list shows it
            if "cluster" in colouring.param and label in (colouring.param.cluster.objects or []):
                colouring.cluster = label
        self.state.param.watch(self.write, list(STATE_WATCHED))
        if colouring is not None:
            colouring.param.watch(self.write, list(MAP_WATCHED))
        self.write()
        if self.location is not None:
            pn.state.onload(self._on_load)
        if self.notices:
            self.state.notify("the link's " + "; ".join(self.notices) + " (ignored)", "warning")
        elif self.query:
            self.state.notify(f"restored from the link: {len(self.state.selected_ids):,} selected"
                              + (f", {self.state.focus_id} shown" if self.state.focus_id else ""), "info")

    def write(self, *_: Any) -> None:
        """The current state into ``state.url_query`` and the browser's address bar (when it changed)."""
        try:
            text = query_string(state_query(self.state, self.colouring))
        except Exception:  # noqa: BLE001 - the URL must never break an interaction
            log.exception("cannot write the shareable URL")
            return
        if text != self.state.url_query:
            self.state.url_query = text
        if self._loaded and self.location is not None and self.location.search != text:
            self.location.search = text

    def _on_load(self) -> None:
        """The page has loaded: the address bar now gets what was understood of the link (and every change)."""
        self._loaded = True
        self.write()
