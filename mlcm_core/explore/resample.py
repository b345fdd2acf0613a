"""A DOS drawn by hand (a polyline of (energy, value) points) resampled onto the model's DOS grid.

Why strict: the drawn curve becomes a query embedding, and a silently "repaired" curve would return
confident results for something the user did not draw. The rules:

* at least 2 points; x and y 1-D, the same length, finite (no NaN or inf), at most ``MAX_POINTS``;
* 0 <= y <= 1e30 (a density of states cannot be negative; the result is float32); its scale is free
  (the DOS encoder normalises each curve by its mean, so only the shape matters);
* x in eV on the project's convention (zero at the VBM for gapped materials, else E_F);
* direction: a polyline drawn right-to-left (x strictly decreasing overall) is REVERSED and accepted,
  since the drawing direction carries no meaning; a polyline whose x goes back and forth is REJECTED
  (the curve would not be a function of energy); repeated x values (vertical strokes; x within 1e-9 eV)
  are merged to the mean of their y values;
* outside the drawn energy range the DOS is 0 (as for every stored DOS outside its source's window);
  the drawing must overlap -10..10 eV and be non-zero somewhere on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mlcm_core.data.conventions import DOS_E_MAX, DOS_E_MIN, DOS_ENERGIES

__all__ = ["MAX_POINTS", "DrawnDOSError", "on_dos_grid", "resample_polyline", "target_dos"]

MAX_POINTS = 100_000
_Y_MAX = 1e30  # far above any DOS; keeps the float32 curve and the encoder's per-curve mean finite


class DrawnDOSError(ValueError):
    """A drawn DOS polyline that cannot become a query; the message says why."""


def resample_polyline(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray,
                      energies: np.ndarray = DOS_ENERGIES) -> np.ndarray:
    """Linear interpolation of a drawn polyline onto ``energies`` (default DOS_ENERGIES, 601 points).

    Args:
        x: energies of the drawn points, eV.
        y: DOS values (any non-negative scale).

    Returns:
        (len(energies),) float32, 0 outside the drawn range.

    Raises:
        DrawnDOSError: see the module docstring for the rules.
    """
    try:
        xa = np.asarray(x, dtype=np.float64)
        ya = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DrawnDOSError(f"x and y must be numbers: {e}") from e
    if xa.ndim != 1 or ya.ndim != 1:
        raise DrawnDOSError(f"x and y must be 1-D sequences, got shapes {xa.shape} and {ya.shape}")
    if len(xa) != len(ya):
        raise DrawnDOSError(f"x has {len(xa)} points but y has {len(ya)}")
    if len(xa) == 0:
        raise DrawnDOSError("the drawn DOS has no points; draw a curve with at least 2 points")
    if len(xa) == 1:
        raise DrawnDOSError("the drawn DOS has only 1 point; a curve needs at least 2")
    if len(xa) > MAX_POINTS:
        raise DrawnDOSError(f"the drawn DOS has {len(xa)} points, above the limit of {MAX_POINTS}")
    for name, arr in (("x", xa), ("y", ya)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if len(bad):
            raise DrawnDOSError(f"{name} contains NaN or infinite values (first at point {bad[0]})")
    neg = np.flatnonzero(ya < 0)
    if len(neg):
        raise DrawnDOSError(f"DOS values must be >= 0; point {neg[0]} has y = {ya[neg[0]]:g} at x = {xa[neg[0]]:g} eV")
    big = np.flatnonzero(ya > _Y_MAX)
    if len(big):
        raise DrawnDOSError(f"DOS values must be below {_Y_MAX:.3g}; point {big[0]} has y = {ya[big[0]]:g}")

    dx = np.diff(xa)
    if np.all(dx <= 0) and xa[-1] < xa[0]:  # drawn right-to-left: same curve, reversed order
        xa, ya, dx = xa[::-1], ya[::-1], -dx[::-1]
    if np.any(dx < 0):
        k = int(np.flatnonzero(dx < 0)[0]) + 1
        raise DrawnDOSError(f"x goes back at point {k} ({xa[k - 1]:g} -> {xa[k]:g} eV): a DOS must be drawn in one "
                            "direction along the energy axis")
    # merge repeated x (vertical strokes) into the mean y; x closer than 1e-9 eV counts as repeated (a
    # near-zero step would make the interpolation slope overflow to inf/NaN)
    xa = np.round(xa, 9)
    ux, start = np.unique(xa, return_index=True)
    if len(ux) < len(xa):
        ya = np.add.reduceat(ya, start) / np.diff(np.append(start, len(xa)))
        xa = ux
    if len(xa) < 2:
        raise DrawnDOSError(f"all points are at the same energy ({xa[0]:g} eV); the curve has no width")
    if xa[-1] < DOS_E_MIN or xa[0] > DOS_E_MAX:
        raise DrawnDOSError(f"the drawn range {xa[0]:g}..{xa[-1]:g} eV does not overlap the DOS window "
                            f"{DOS_E_MIN:g}..{DOS_E_MAX:g} eV")
    out = np.interp(np.asarray(energies, dtype=np.float64), xa, ya, left=0.0, right=0.0)
    if not np.any(out > 0):
        raise DrawnDOSError(f"the drawn DOS is zero everywhere on {DOS_E_MIN:g}..{DOS_E_MAX:g} eV")
    return out.astype(np.float32)


def on_dos_grid(x: Sequence[float] | np.ndarray) -> bool:
    """Whether energies ``x`` are the DOS grid itself (601 points on DOS_ENERGIES): a stored or uploaded DOS
    rather than a drawn polyline."""
    xa = np.asarray(x, dtype=np.float64)
    return xa.shape == DOS_ENERGIES.shape and bool(np.allclose(xa, DOS_ENERGIES))


def target_dos(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> np.ndarray:
    """A DOS target on DOS_ENERGIES from any curve: on the grid, checked as it is (finite, >= 0, not zero
    everywhere); otherwise a drawn polyline, resampled by ``resample_polyline``'s rules.

    The one validation path for targets: ``Explorer.query(dos=...)`` and the app's target plot both use it.
    Raises DrawnDOSError (a ValueError) naming what is wrong.
    """
    if not on_dos_grid(x):
        return resample_polyline(x, y)
    arr = np.asarray(y, dtype=np.float64)
    if arr.shape != DOS_ENERGIES.shape:
        raise DrawnDOSError(f"the DOS has {arr.size} values for {DOS_ENERGIES.size} energies")
    if not np.all(np.isfinite(arr)):
        raise DrawnDOSError("dos contains NaN or infinite values")
    if np.any(arr < 0) or not np.any(arr > 0):
        raise DrawnDOSError("dos must be >= 0 and not zero everywhere")
    return arr.astype(np.float32)
