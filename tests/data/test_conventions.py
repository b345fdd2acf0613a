"""The one DOS grid and density storage: hand-computed cases and real densities."""

from __future__ import annotations

import numpy as np
import pytest

from mlcm_core.data.conventions import (
    DOS_ENERGIES,
    dequantize_density,
    dos_gap_and_vbm,
    gaussian_broaden,
    quantize_density,
    resample_density,
    standardize_dos,
)


def test_grid_is_601_points_on_minus10_10():
    assert DOS_ENERGIES.shape == (601,)
    assert DOS_ENERGIES[0] == -10 and DOS_ENERGIES[-1] == 10
    assert np.allclose(np.diff(DOS_ENERGIES), 1 / 30)


def test_standardize_moves_the_zero_to_the_reference():
    e = np.linspace(-20, 20, 4001)
    peak = np.exp(-0.5 * ((e - 3.0) / 0.2) ** 2)  # a peak at 3 eV absolute
    out = standardize_dos(e, peak, reference_energy=1.0)
    assert DOS_ENERGIES[np.argmax(out)] == pytest.approx(2.0, abs=1 / 30)
    assert np.trapezoid(out, DOS_ENERGIES) == pytest.approx(0.2 * np.sqrt(2 * np.pi), rel=1e-3)


def test_standardize_rejects_bad_input():
    e = np.linspace(-5, 5, 11)
    with pytest.raises(ValueError, match="increasing"):
        standardize_dos(e[::-1], np.ones(11), 0.0)
    with pytest.raises(ValueError, match="NaN"):
        standardize_dos(e, np.full(11, np.nan), 0.0)
    with pytest.raises(ValueError, match="points"):
        standardize_dos(e, np.ones(10), 0.0)


def test_gap_and_vbm_from_a_hand_made_dos():
    e = np.linspace(-5, 5, 1001)
    dos = np.where((e < -0.3) | (e > 1.2), 1.0, 0.0)  # VBM -0.3, CBM 1.2
    gap, vbm = dos_gap_and_vbm(e, dos, efermi=0.0)
    assert gap == pytest.approx(1.5, abs=0.02) and vbm == pytest.approx(-0.3, abs=0.01)
    gap, vbm = dos_gap_and_vbm(e, np.ones_like(e), efermi=0.1)
    assert gap == 0 and vbm == 0.1


def test_broadening_keeps_the_area():
    dos = np.zeros(601)
    dos[300] = 30.0  # a delta of area 1 on the 1/30 eV grid
    out = gaussian_broaden(DOS_ENERGIES, dos, sigma=0.1)
    assert np.trapezoid(out, DOS_ENERGIES) == pytest.approx(1.0, rel=1e-3)
    assert out.max() == pytest.approx(1 / (0.1 * np.sqrt(2 * np.pi)), rel=0.02)


def test_resample_keeps_the_mean():
    rng = np.random.default_rng(0)
    grid = rng.random((40, 40, 48))
    out = resample_density(grid)
    assert out.shape == (32, 32, 32)
    assert out.mean() == pytest.approx(grid.mean(), rel=1e-5)


def test_quantization_error_on_real_densities(shared_sources):
    data = np.load(shared_sources / "multimat-mp-partial" / "multimat_mp_partial.npz")
    grids = data["charge_density"][data["has_charge_density"]][:40]
    errs, integral = [], []
    for rho in grids:
        qd = quantize_density(rho)
        back = dequantize_density(qd.q, qd.softness, qd.t_min, qd.t_max)
        errs.append(np.abs(back - rho).mean() / np.abs(rho).mean())
        integral.append(abs(back.mean() - rho.mean()) / abs(rho.mean()))
    assert np.mean(errs) < 0.01 and np.max(errs) < 0.02  # measured: mean 0.6 %, max 1.1 %
    assert np.max(integral) < 2e-3  # electron count kept to 0.2 %
