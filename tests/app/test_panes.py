"""Fixed curve slots shared by the DOS and target views."""

from __future__ import annotations

import numpy as np

from app.panes import curve_slots


def test_curve_slots_fill_in_order_and_leave_the_rest_empty():
    x = np.linspace(-10, 10, 601)
    curves = [("mp-149", np.exp(-x**2)), ("mp-2534", np.ones(601, np.float16))]
    slots = curve_slots(curves, x, "slot", 4)
    assert list(slots) == ["slot0", "slot1", "slot2", "slot3"]
    assert [len(c) for c in slots.values()] == [601, 601, 0, 0]
    assert slots["slot0"].label == "slot0" and set(slots["slot1"].data["id"]) == {"mp-2534"}
    assert slots["slot1"].data["DOS"].dtype == np.float64  # float16 store values widened for Bokeh
    np.testing.assert_allclose(slots["slot0"].dimension_values("DOS"), np.exp(-x**2))
    lazy = curve_slots(curves, x, "cand", 2, lazy=True)
    assert all(callable(f) for f in lazy.values())
    assert lazy["cand1"]().data.equals(curve_slots(curves, x, "cand", 2)["cand1"].data)
