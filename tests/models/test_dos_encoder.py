"""DOS encoder: shapes, sizes, energy awareness, scale invariance, gradients, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlcm_core.data.conventions import DOS_ENERGIES, DOS_N_POINTS
from mlcm_core.models.dos import DOSEncoder, DOSEncoderConfig, normalize_dos

# Parameter counts of the two named configs (asserted exactly: a change of architecture must update them).
PAPER_PARAMS = 815_744
CPU_PARAMS = 77_312


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _peaks(centres: list[float], width: float = 0.3, batch: int = 1) -> torch.Tensor:
    """A DOS made of Gaussian peaks at `centres` (eV) on the convention grid, (batch, 601)."""
    e = DOS_ENERGIES[None, :]
    c = np.asarray(centres, dtype=float)[:, None]
    dos = np.exp(-0.5 * ((e - c) / width) ** 2).sum(axis=0)
    return torch.tensor(dos, dtype=torch.float32).expand(batch, -1).clone()


@pytest.fixture(scope="module")
def cpu_model() -> DOSEncoder:
    torch.manual_seed(0)
    return DOSEncoder(DOSEncoderConfig.cpu()).eval()


@pytest.mark.parametrize("name, expected", [("paper", PAPER_PARAMS), ("cpu", CPU_PARAMS)])
def test_output_shape_and_parameter_count(name: str, expected: int):
    torch.manual_seed(0)
    cfg = getattr(DOSEncoderConfig, name)()
    model = DOSEncoder(cfg)
    n = _n_params(model)
    print(f"DOSEncoder[{name}]: {n:,} parameters")
    assert n == expected
    assert (5e5 < n < 1.5e6) if name == "paper" else (3e4 < n < 2e5)
    out = model(torch.rand(3, DOS_N_POINTS))
    assert out.shape == (3, 128) and torch.isfinite(out).all()


def test_paper_defaults_and_tokens():
    cfg = DOSEncoderConfig.paper()
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.out_dim, cfg.patch_size) == (128, 4, 8, 128, 10)
    assert cfg.n_tokens == 61  # 60 full patches + one for the 601st point
    with pytest.raises(ValueError):
        DOSEncoderConfig(d_model=100, n_heads=8)


def test_batch_of_one_and_spin_channels():
    torch.manual_seed(0)
    model = DOSEncoder(DOSEncoderConfig.cpu()).train()
    assert model(torch.rand(1, DOS_N_POINTS)).shape == (1, 128)
    spin = DOSEncoder(DOSEncoderConfig(d_model=32, n_layers=1, n_heads=2, in_channels=2))
    assert spin(torch.rand(2, 2, DOS_N_POINTS)).shape == (2, 128)
    with pytest.raises(ValueError, match="shape"):
        model(torch.rand(2, 600))


def test_eval_mode_is_deterministic(cpu_model: DOSEncoder):
    x = torch.rand(4, DOS_N_POINTS)
    with torch.no_grad():
        assert torch.equal(cpu_model(x), cpu_model(x))


def test_the_last_grid_point_has_its_own_token(cpu_model: DOSEncoder):
    x = _peaks([-3.0])
    y = x.clone()
    y[0, -1] = 5.0  # only the +10 eV point changes
    with torch.no_grad():
        assert not torch.allclose(cpu_model(x), cpu_model(y), atol=1e-5)


def test_shifting_a_peak_in_energy_changes_the_embedding(cpu_model: DOSEncoder):
    """Same curve shape, 0.5 eV apart: the embedding must move (energies are part of every token)."""
    with torch.no_grad():
        a, b, c = cpu_model(torch.cat([_peaks([-2.0, 1.5]), _peaks([-1.5, 1.5]), _peaks([-2.0, 1.5])]))
    assert torch.equal(a, c)
    assert (a - b).norm() > 1e-2 * a.norm()


def test_a_shift_by_a_whole_patch_still_changes_the_embedding(cpu_model: DOSEncoder):
    """Shifting by exactly one patch (10 points) gives the same token values in other tokens: only the
    energy embedding tells them apart."""
    x = _peaks([-2.0])
    y = torch.roll(x, 10, dims=-1)
    with torch.no_grad():
        a, b = cpu_model(torch.cat([x, y]))
    assert (a - b).norm() > 1e-2 * a.norm()


def test_scale_invariant_per_material(cpu_model: DOSEncoder):
    """states/eV per cell: a supercell doubles the DOS but is the same material."""
    x = _peaks([-4.0, -1.0, 2.5]) + 0.05
    with torch.no_grad():
        torch.testing.assert_close(cpu_model(x), cpu_model(7.0 * x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(normalize_dos(torch.zeros(2, 601)), torch.zeros(2, 601))


def test_gradients_reach_every_input_point_and_every_parameter():
    torch.manual_seed(0)
    model = DOSEncoder(DOSEncoderConfig.cpu()).train()
    x = (torch.rand(2, DOS_N_POINTS) + 0.1).requires_grad_()
    model(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad.abs() > 0).all(), "some DOS points do not influence the embedding"
    missing = [n for n, p in model.named_parameters() if p.grad is None or not (p.grad.abs() > 0).any()]
    assert not missing, f"parameters without gradient: {missing}"


def test_mean_pooling_variant_and_custom_energies():
    torch.manual_seed(0)
    model = DOSEncoder(DOSEncoderConfig(d_model=32, n_layers=1, n_heads=2, pool="mean")).eval()
    assert model.cls is None
    x = _peaks([-1.0])
    e = torch.tensor(DOS_ENERGIES, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x, energies=e))
        assert not torch.allclose(model(x), model(x, energies=e + 1.0))  # same curve, other reference


def test_augment_dos_broadens_and_shifts_like_another_code():
    """augment_dos: area kept, a peak moves by the drawn shift and widens by the drawn broadening
    (variances add), channels move together, p=0 is the identity; seeded draws are reproducible."""
    from mlcm_core.models.dos import augment_dos

    dos = _peaks([-2.0, 1.5], width=0.1, batch=64)
    g = torch.Generator().manual_seed(0)
    out = augment_dos(dos, g, broadening_ev=(0.2, 0.2), shift_ev=0.3, p=1.0)
    step = float(DOS_ENERGIES[1] - DOS_ENERGIES[0])
    np.testing.assert_allclose(out.sum(1).numpy(), dos.sum(1).numpy(), rtol=1e-4)  # peaks far from the edges
    e = torch.tensor(DOS_ENERGIES, dtype=torch.float32)
    left = e < 0
    centre = (out * e * left).sum(1) / (out * left).sum(1)
    spread = ((out * (e - centre[:, None]) ** 2 * left).sum(1) / (out * left).sum(1)).sqrt()
    shifts = centre + 2.0
    assert shifts.abs().max() <= 0.3 + 1e-3 and shifts.std() > 0.1  # drawn in +-0.3 eV, not all alike
    np.testing.assert_allclose(spread.numpy(), np.sqrt(0.1**2 + 0.2**2), atol=0.2 * step)
    # reproducible with the same seed; channels of one material share the draw
    again = augment_dos(dos, torch.Generator().manual_seed(0), broadening_ev=(0.2, 0.2), shift_ev=0.3, p=1.0)
    assert torch.equal(out, again)
    two = augment_dos(torch.stack([dos, 2 * dos], 1), torch.Generator().manual_seed(0),
                      broadening_ev=(0.2, 0.2), shift_ev=0.3, p=1.0)
    torch.testing.assert_close(two[:, 1], 2 * two[:, 0])
    torch.testing.assert_close(two[:, 0], out)
    assert torch.equal(augment_dos(dos, g, p=0.0), dos)


def test_augment_dos_top_cut_fades_the_dos_out_above_the_drawn_energy():
    from mlcm_core.models.dos import augment_dos

    dos = torch.ones(32, DOS_N_POINTS)
    out = augment_dos(dos, torch.Generator().manual_seed(1), broadening_ev=(0.0, 0.0), shift_ev=0.0, p=1.0,
                      top_cut_ev=(3.0, 10.0))
    e = torch.tensor(DOS_ENERGIES, dtype=torch.float32)
    cut = e[(out < 0.5).float().argmax(1)]  # where each curve has fallen to half
    assert torch.all((cut > 2.9) & (cut < 10.1)) and cut.std() > 1.0
    assert torch.allclose(out[:, e < 2.0], torch.ones(1), atol=0.01)  # below +2 eV untouched
    assert torch.equal(augment_dos(dos, p=0.0, top_cut_ev=(3.0, 10.0)), dos)
