"""The drawn-DOS resampler: exact interpolation, and a clear refusal for every unusable polyline."""

from __future__ import annotations

import numpy as np
import pytest

from mlcm_core.data.conventions import DOS_ENERGIES
from mlcm_core.explore.resample import DrawnDOSError, resample_polyline


def test_linear_polyline_is_reproduced_exactly():
    x = np.array([-4.0, 0.0, 2.0, 6.0])
    y = np.array([1.0, 3.0, 0.0, 2.0])
    out = resample_polyline(x, y)
    assert out.shape == DOS_ENERGIES.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, np.interp(DOS_ENERGIES, x, y, left=0, right=0), atol=1e-6)
    assert np.all(out[DOS_ENERGIES < -4.0 - 1e-9] == 0) and np.all(out[DOS_ENERGIES > 6.0 + 1e-9] == 0)
    k = int(np.argmin(np.abs(DOS_ENERGIES - 0.0)))
    assert out[k] == pytest.approx(3.0)


def test_wider_than_the_window_and_lists_accepted():
    out = resample_polyline([-30, 30], [2, 2])
    np.testing.assert_allclose(out, 2.0)


def test_reversed_polyline_is_accepted_as_the_same_curve():
    x = np.linspace(-5, 5, 11)
    y = np.abs(np.sin(x)) + 0.1
    np.testing.assert_array_equal(resample_polyline(x[::-1], y[::-1]), resample_polyline(x, y))


def test_repeated_x_is_merged_to_the_mean():
    out = resample_polyline([-1, 0, 0, 1], [0, 1, 3, 0])
    k = int(np.argmin(np.abs(DOS_ENERGIES)))
    assert out[k] == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        ([], [], "no points"),
        ([1.0], [1.0], "only 1 point"),
        ([0, np.nan, 2], [1, 1, 1], "NaN"),
        ([0, 1, 2], [1, np.inf, 1], "NaN or infinite"),
        ([0, 2, 1, 3], [1, 1, 1, 1], "goes back"),
        ([0, 1, 2], [1, -0.5, 1], ">= 0"),
        ([0, 1], [1, 1, 1], "x has 2 points but y has 3"),
        ([[0, 1], [1, 2]], [[1, 1], [1, 1]], "1-D"),
        ([2, 2, 2], [1, 2, 3], "same energy"),
        ([12, 15], [1, 1], "does not overlap"),
        ([-1, 1], [0, 0], "zero everywhere"),
        (["a", "b"], [1, 1], "numbers"),
    ],
)
def test_unusable_polylines_are_refused(x, y, match):
    with pytest.raises(DrawnDOSError, match=match):
        resample_polyline(x, y)


def test_too_many_points_refused():
    n = 100_001
    with pytest.raises(DrawnDOSError, match="limit"):
        resample_polyline(np.linspace(-5, 5, n), np.ones(n))


def test_target_dos_is_the_one_check_for_curves_on_the_grid_and_drawn():
    """On the 601-point grid a curve is checked as it is; off it, it is a drawn polyline (resample_polyline)."""
    from mlcm_core.explore.resample import on_dos_grid, target_dos

    y = np.exp(-((DOS_ENERGIES - 1.0) ** 2))
    on = target_dos(DOS_ENERGIES, y)
    assert on.dtype == np.float32 and on_dos_grid(DOS_ENERGIES) and not on_dos_grid(DOS_ENERGIES[::2])
    np.testing.assert_array_equal(on, y.astype(np.float32))  # not resampled
    np.testing.assert_array_equal(target_dos([-1.0, 1.0], [1.0, 1.0]), resample_polyline([-1.0, 1.0], [1.0, 1.0]))
    for bad, message in ((-y, "not zero everywhere"), (np.where(DOS_ENERGIES == DOS_ENERGIES[7], np.nan, y), "NaN"),
                         (np.zeros_like(y), "not zero everywhere")):
        with pytest.raises(DrawnDOSError, match=message):
            target_dos(DOS_ENERGIES, bad)

