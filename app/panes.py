"""Text panes for views that change on every interaction: an update sends the new text, nothing else.

Why: Panel's markup panes (HTML, Markdown, Str, Alert) re-send all their properties when their text changes,
including freshly created style-sheet models. New models make Bokeh re-walk the whole session document
(``DocumentModelManager.recompute``, ~30-50 ms for this dashboard's ~700 models) once per changed pane, and a
lasso changes about eight of them. These subclasses leave the style sheets (set when the pane was first
rendered, never changed by the app) out of the update.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import panel as pn
from panel.io.state import set_curdoc


class _TextOnlyUpdate:
    """Mixin for ``HTMLBasePane`` subclasses: updates skip the ``stylesheets`` property."""

    def _update(self, ref: str, model: Any) -> None:
        props = self._get_properties(model.document)  # type: ignore[attr-defined]
        props.pop("stylesheets", None)
        model.update(**props)


class LiveHTML(_TextOnlyUpdate, pn.pane.HTML):
    """``pn.pane.HTML`` for text replaced on each interaction."""


class LiveMarkdown(_TextOnlyUpdate, pn.pane.Markdown):
    """``pn.pane.Markdown`` for text replaced on each interaction."""


class LiveStr(_TextOnlyUpdate, pn.pane.Str):
    """``pn.pane.Str`` for text replaced on each interaction."""


class LiveAlert(_TextOnlyUpdate, pn.pane.Alert):
    """``pn.pane.Alert`` whose message and level change on each interaction."""


def _leaf_plots(plot: Any):
    """Every element plot under a HoloViews plot (overlays nest their layers in ``subplots``)."""
    subs = getattr(plot, "subplots", None)
    if not subs:
        yield plot
        return
    for sub in subs.values():
        yield from _leaf_plots(sub)


def push_layers(pane: pn.pane.HoloViews, elements: dict[str, Any], keys: dict[str, Any] | None = None) -> int:
    """Put new elements' data straight into the data sources of the layers with those labels; returns how
    many sources changed.

    Why not let HoloViews refresh the plot: a stream on one layer re-renders every layer of the overlay
    (their ranges, the map's hover points and image), ~0.1-0.2 s per change, and re-sends unchanged data.
    The layers' own callbacks read the current state, so a later HoloViews refresh (zoom) draws the same.

    ``elements`` values may be zero-argument factories, built only when sent. ``keys`` (label -> a hashable
    summary of the layer's content, e.g. the material id shown) skips a layer whose key equals the one last
    sent to that source: an empty slot or an unchanged curve is neither rebuilt nor re-sent."""
    changed = 0
    seen: set[str] = set()  # a pane can list the same plot under two roots: send each source's data once
    for plot, _pane in list(pane._plots.values()):
        for sub in _leaf_plots(plot):
            frame = getattr(sub, "current_frame", None)
            source = getattr(sub, "handles", {}).get("source")
            if frame is None or source is None or frame.label not in elements or source.id in seen:
                continue
            seen.add(source.id)
            key = (keys or {}).get(frame.label, _NO_KEY)
            if key is not _NO_KEY and _SENT.get(source) == key:
                continue
            element = elements[frame.label]
            element = element() if callable(element) else element
            data, _mapping, _style = sub.get_data(element, {}, {})
            sub.current_frame = element
            on_document(source.document, partial(source.update, data=dict(data)))
            if key is not _NO_KEY:
                _SENT[source] = key
            else:
                _SENT.pop(source, None)
            changed += 1
    return changed


_NO_KEY = object()


def curve_slots(curves: list[tuple[str, np.ndarray]], x: np.ndarray, prefix: str, count: int,
                kdim: Any = "E", vdim: Any = "DOS", lazy: bool = False) -> dict:
    """``count`` curve layers labelled ``prefix0``... holding ``curves`` ((id, y) pairs, in order); unused slots
    are empty curves.

    Why fixed slots: an overlay keeps its layers, so a new selection only replaces slots' data (push_layers);
    ``lazy`` gives factories instead of elements, so push_layers builds only the slots it sends."""
    import holoviews as hv

    def element(k: int) -> Any:
        if k < len(curves):
            mid, y = curves[k]
            data = pd.DataFrame({"E": x, "DOS": np.asarray(y, np.float64), "id": mid})
        else:
            data = pd.DataFrame({"E": np.array([], float), "DOS": np.array([], float), "id": np.array([], str)})
        return hv.Curve(data, kdim, [vdim, "id"], label=f"{prefix}{k}")

    return {f"{prefix}{k}": partial(element, k) if lazy else element(k) for k in range(count)}


_SENT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # source model -> key of the data it holds


def on_document(doc: Any, change: Callable[[], None]) -> None:
    """Apply a direct Bokeh model change the way Panel applies its own: at once when this thread may touch
    the document (a widget callback), else scheduled on the session's loop under its lock (e.g. a HoloViews
    stream callback such as the lasso runs outside it)."""
    from panel.io.document import unlocked

    if doc is None or not doc.session_context or pn.state._unblocked(doc):
        with unlocked():
            change()
    else:
        with set_curdoc(doc):
            pn.state.execute(change, schedule=True)


def plot_handles(pane: pn.pane.HoloViews) -> list[dict[str, Any]]:
    """The Bokeh handles (x_range, y_range, plot, ...) of each session's top-level plot of ``pane``."""
    return [getattr(plot, "handles", {}) for plot, _pane in list(pane._plots.values())]


def set_y_end(pane: pn.pane.HoloViews, end: float) -> None:
    """Set the y axis of ``pane``'s rendered plots to 0…``end`` (curves pushed with push_layers leave the axis
    where HoloViews first put it, and a fixed axis clipped larger curves)."""
    for handles in plot_handles(pane):
        y_range = handles.get("y_range")
        if y_range is not None and (y_range.start, y_range.end) != (0.0, end):
            on_document(y_range.document, partial(y_range.update, start=0.0, end=end))
