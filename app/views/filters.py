"""Retrieval settings: k, gallery and filters (property range with include-unknown, elements, sources)."""

from __future__ import annotations

import math

import panel as pn
import param

from app.state import AppState


class OptionalFloatInput(pn.widgets.FloatInput):
    """A FloatInput whose empty value (None: no limit) shows as an empty box. Panel sends None to the browser
    as NaN, which the box then showed as the text "NaN" after a limit was cleared."""

    def _process_param_change(self, params):
        params = super()._process_param_change(params)
        for name in ("value", "value_throttled"):
            if isinstance(params.get(name), float) and math.isnan(params[name]):
                params[name] = None
        return params


class FiltersView(pn.viewable.Viewer):
    """Widgets for the AppState retrieval parameters; ``AppState.filters()`` turns them into ``Filters``."""

    state = param.ClassSelector(class_=AppState)

    def __panel__(self):
        s = self.state
        return pn.Column(
            pn.widgets.IntSlider.from_param(s.param.k, label="k (candidates)", start=1, end=200),
            pn.widgets.Select.from_param(s.param.gallery, label="Search among (gallery)"),
            pn.widgets.Select.from_param(s.param.range_column, label="Property range"),
            pn.Row(OptionalFloatInput.from_param(s.param.range_min, label="min", width=110, placeholder="no limit"),
                   OptionalFloatInput.from_param(s.param.range_max, label="max", width=110, placeholder="no limit")),
            pn.widgets.Checkbox.from_param(s.param.include_unknown, label="include unknown values/compositions"),
            pn.widgets.TextInput.from_param(s.param.elements_include, label="Elements: must contain all",
                                            placeholder="e.g. O, Ti", css_classes=["mlcm-filter-has"]),
            pn.widgets.TextInput.from_param(s.param.elements_exclude, label="Elements: must contain none",
                                            placeholder="e.g. Pb, Cd"),
            pn.widgets.MultiChoice.from_param(s.param.sources, label="Sources (empty = all)"),
        )
