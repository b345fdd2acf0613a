"""One Reset button: the session back to how it started (``AppState.reset``), plus what views hold themselves.

``AppState.reset`` clears the selection, focus, target, candidates, upload, validation and search text, and
sets k, gallery and filters back to their defaults; views that keep widget state of their own (the drawn stroke,
file inputs, the search box) clear it when ``AppState.resets`` changes. Settings that live on a view (the map's
colouring) are given here as ``restore`` and put back to the values they had when the page was built.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import panel as pn
import param

from app.state import AppState, guarded

HELP = ("Start over: clears the selection, focus, target DOS, candidates, upload, filters and search box, and "
        "sets the map's colouring back to the default.")


class ResetView(pn.viewable.Viewer):
    """The Reset button."""

    state = param.ClassSelector(class_=AppState)

    def __init__(self, restore: Iterable[tuple[param.Parameterized, Iterable[str]]] = (), **params):
        super().__init__(**params)
        # (object, {parameter: its value now}) for each view setting that Reset puts back
        self._initial = [(obj, {n: copy.deepcopy(getattr(obj, n)) for n in names if n in obj.param})
                         for obj, names in restore]
        self._button = pn.widgets.Button(label="Reset", color="light", css_classes=["mlcm-reset"], width=90,
                                         description=HELP, align="center")
        self._button.on_click(self.reset)

    @guarded("reset")
    def reset(self, *_) -> None:
        for obj, values in self._initial:
            obj.param.update(**copy.deepcopy(values))
        self.state.reset()

    def __panel__(self):
        return self._button
