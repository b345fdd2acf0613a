"""The search box: a material id, a formula or a chemical system; Enter (or Find) focuses or selects the matches.

What a query means is the core's rule (``Explorer.find`` / ``mlcm_core.explore.lookup``); what the app does
with the result is ``AppState.find``: one match is focused, several are selected as a lasso selection is, and
``zoom_to`` asks the map to show them. This view only reads the box and says what happened.
"""

from __future__ import annotations

import panel as pn
import param

from app.panes import LiveMarkdown
from app.state import AppState, guarded

PLACEHOLDER = "mp-149, SiO2 or Li-Fe-O; Enter"
HELP = ("A **material id** (`mp-149`), a **formula** in any order (`SiO2`, `O2Si`: every polymorph with that "
        "reduced formula) or a **chemical system** (`Li-Fe-O`: materials made of exactly those elements). "
        "One match is shown below and starred on the map; several are selected, as with the lasso.")


class SearchView(pn.viewable.Viewer):
    """A text box (Enter searches), a Find button and a one-line result."""

    state = param.ClassSelector(class_=AppState)

    def __init__(self, **params):
        super().__init__(**params)
        self._box = pn.widgets.TextInput(placeholder=PLACEHOLDER,
                                         css_classes=["mlcm-find-box"], sizing_mode="stretch_width")
        self._box.param.watch(self.search, "enter_pressed")  # Enter does what the button does
        self._button = pn.widgets.Button(label="Find", color="primary", css_classes=["mlcm-find-button"],
                                         width=80, align="end")
        self._button.on_click(self.search)
        self._result = LiveMarkdown("", css_classes=["mlcm-find-result"], margin=(0, 10),
                                    sizing_mode="stretch_width")
        self.state.param.watch(self._on_reset, "resets")

    def _on_reset(self, *_) -> None:
        """AppState.reset: an empty box and no result line."""
        self._box.param.update(value="", value_input="")
        self._result.object = ""

    def text(self) -> str:
        """What the box holds: the text as typed so far (``value`` is only synced on Enter or leaving the box)."""
        return self._box.value_input if self._box.value_input is not None else self._box.value

    @guarded("search")
    def search(self, *_) -> list[str]:
        """Search for the box's text; the result line repeats the page message (the count or why nothing)."""
        ids = self.state.find(self.text())
        self._result.object = self.result_text(ids)
        return ids

    def result_text(self, ids: list[str]) -> str:
        if not ids:
            return f"_{self.state.message}_"
        if len(ids) == 1:
            return f"Found **{ids[0]}**: shown below, starred on the map."
        return f"**{len(ids):,} materials selected** ({self.state.selection_origin.removeprefix('search: ')})."

    def __panel__(self):
        return pn.Column(pn.Row(self._box, self._button, sizing_mode="stretch_width"), self._result,
                         pn.pane.Markdown(HELP, styles={"font-size": "11px", "color": "#555"}, margin=(0, 10)),
                         sizing_mode="stretch_width")
