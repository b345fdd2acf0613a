"""Density encoder: shapes, sizes, periodicity (exact and approximate shift invariance), normalisation."""

from __future__ import annotations

import pytest
import torch

from mlcm_core.data.conventions import DENSITY_GRID
from mlcm_core.models.density import (
    DensityEncoder,
    DensityEncoderConfig,
    PeriodicConv3d,
    ResNeXtBottleneck,
    normalize_density,
    periodic_pad,
    random_periodic_translation,
)

# Parameter counts of the two named configs (asserted exactly: a change of architecture must update them).
PAPER_PARAMS = 26_070_080  # 3D ResNeXt-50 (32x4d); torchvision's 2D resnext50_32x4d has 25.0M
CPU_PARAMS = 506_608
N = DENSITY_GRID


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _crystal_density(n_atoms: int, seed: int, batch: int = 1) -> torch.Tensor:
    """A smooth periodic 'valence density': Gaussians at random fractional positions (minimum image)."""
    g = torch.Generator().manual_seed(seed)
    frac = torch.arange(N, dtype=torch.float64) / N
    a, b, c = torch.meshgrid(frac, frac, frac, indexing="ij")
    grid = torch.stack([a, b, c], dim=-1)  # (N, N, N, 3)
    out = torch.zeros(batch, N, N, N, dtype=torch.float64)
    for k in range(batch):
        for pos, z in zip(torch.rand(n_atoms, 3, generator=g, dtype=torch.float64),
                          1 + 4 * torch.rand(n_atoms, generator=g, dtype=torch.float64)):
            d = grid - pos
            d = d - torch.round(d)  # periodic minimum image
            out[k] += z * torch.exp(-(d**2).sum(-1) / (2 * 0.07**2))
    return (out + 0.02).float()


def _randomised(model: DensityEncoder, seed: int = 0) -> DensityEncoder:
    """Random norm affine params and running stats so that every residual branch contributes."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.weight.data = 0.5 + torch.rand(m.weight.shape, generator=g)
            m.bias.data = 0.2 * torch.randn(m.bias.shape, generator=g)
            m.running_mean = 0.1 * torch.randn(m.running_mean.shape, generator=g)
            m.running_var = 0.5 + torch.rand(m.running_var.shape, generator=g)
    return model


@pytest.fixture(scope="module")
def cpu_model() -> DensityEncoder:
    torch.manual_seed(0)
    return _randomised(DensityEncoder(DensityEncoderConfig.cpu())).eval()


def test_paper_config_is_resnext50_32x4d():
    cfg = DensityEncoderConfig.paper()
    assert cfg.layers == (3, 4, 6, 3) and cfg.cardinality == 32 and cfg.base_width == 4
    assert [cfg.stage_channels(i) for i in range(4)] == [(128, 256), (256, 512), (512, 1024), (1024, 2048)]
    torch.manual_seed(0)
    model = DensityEncoder(cfg)
    n = _n_params(model)
    print(f"DensityEncoder[paper]: {n:,} parameters")
    assert n == PAPER_PARAMS and 2e7 < n < 4e7
    blocks = [m for m in model.modules() if isinstance(m, ResNeXtBottleneck)]
    assert len(blocks) == 16
    assert all(b.grouped[0].groups == 32 and b.grouped[0].periodic_padding == 1 for b in blocks)


def test_paper_forward_shape():
    torch.manual_seed(0)
    model = DensityEncoder(DensityEncoderConfig.paper()).eval()
    with torch.no_grad():
        out = model(torch.rand(1, N, N, N))
    assert out.shape == (1, 128) and torch.isfinite(out).all()


def test_cpu_config_shape_and_parameter_count():
    torch.manual_seed(0)
    model = DensityEncoder(DensityEncoderConfig.cpu())
    n = _n_params(model)
    print(f"DensityEncoder[cpu]: {n:,} parameters")
    assert n == CPU_PARAMS and 2e5 < n < 2e6
    out = model(torch.rand(2, N, N, N))  # train mode, batch statistics
    assert out.shape == (2, 128) and torch.isfinite(out).all()


def test_every_spatial_conv_is_circular():
    model = DensityEncoder(DensityEncoderConfig.cpu())
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    assert all(isinstance(m, PeriodicConv3d) and m.padding == (0, 0, 0) for m in convs)
    assert all(m.periodic_padding == m.kernel_size[0] // 2 for m in convs)
    assert {m.kernel_size for m in convs} == {(5, 5, 5), (3, 3, 3), (1, 1, 1)}


@pytest.mark.parametrize("kernel, stride, groups", [(3, 1, 4), (3, 2, 2), (5, 2, 1)])
def test_periodic_conv_matches_torch_circular_padding(kernel: int, stride: int, groups: int):
    """Same values and gradients as nn.Conv3d(padding_mode="circular"); only the backward is cheaper."""
    torch.manual_seed(0)
    ours = PeriodicConv3d(4, 8, kernel, stride, groups=groups).double()
    ref = torch.nn.Conv3d(4, 8, kernel, stride, padding=kernel // 2, groups=groups, bias=False,
                          padding_mode="circular").double()
    ref.weight.data.copy_(ours.weight.data)
    x1 = torch.randn(2, 4, 8, 6, 10, dtype=torch.float64, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    y1, y2 = ours(x1), ref(x2)
    torch.testing.assert_close(y1, y2)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    assert torch.autograd.gradcheck(lambda t: periodic_pad(t, 2), (torch.randn(1, 2, 3, 4, 5, dtype=torch.float64,
                                                                                requires_grad=True),))


def test_batch_of_one_in_train_and_eval():
    torch.manual_seed(0)
    model = DensityEncoder(DensityEncoderConfig.cpu())
    x = _crystal_density(3, seed=1)
    assert model.train()(x).shape == (1, 128)
    assert model.eval()(x[0][None, None]).shape == (1, 128)  # explicit channel axis
    with pytest.raises(ValueError, match="divisible"):
        model(torch.rand(1, 30, 32, 32))


def test_eval_mode_is_deterministic(cpu_model: DensityEncoder):
    x = _crystal_density(4, seed=2, batch=2)
    with torch.no_grad():
        assert torch.equal(cpu_model(x), cpu_model(x))


def test_exactly_invariant_to_shifts_by_the_total_stride(cpu_model: DensityEncoder):
    stride = cpu_model.config.total_stride
    assert stride == 16
    x = _crystal_density(4, seed=3)
    with torch.no_grad():
        ref = cpu_model(x)
        for shift in [(stride, 0, 0), (0, stride, stride), (stride, stride, stride), (-stride, 0, stride)]:
            out = cpu_model(torch.roll(x, shifts=shift, dims=(-3, -2, -1)))
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_train_mode_batch_statistics_keep_the_invariance():
    torch.manual_seed(0)
    model = _randomised(DensityEncoder(DensityEncoderConfig.cpu())).train()
    x = _crystal_density(4, seed=4, batch=2)
    with torch.no_grad():
        torch.testing.assert_close(model(torch.roll(x, 16, dims=-1)), model(x), rtol=1e-5, atol=1e-5)


def test_one_voxel_shift_moves_the_embedding_far_less_than_another_grid(cpu_model: DensityEncoder):
    """A 1-voxel shift is not exactly absorbed (stride-2 sampling phase), but with circular padding it is
    a small perturbation: far smaller than a random grid, and clearly smaller than another crystal."""
    x = _crystal_density(4, seed=5)
    crystals = _crystal_density(4, seed=6, batch=4)
    noise = torch.rand(4, N, N, N, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = cpu_model(x)
        d_shift = sum((cpu_model(torch.roll(x, 1, dims=d)) - ref).norm().item() for d in (-3, -2, -1)) / 3
        d_noise = (cpu_model(noise) - ref).norm(dim=1).mean().item()
        d_crystal = (cpu_model(crystals) - ref).norm(dim=1).mean().item()
    print(f"1-voxel shift {d_shift:.4f}, random grid {d_noise:.4f}, other crystal {d_crystal:.4f}")
    assert d_shift < 0.25 * d_noise
    assert d_shift < 0.5 * d_crystal


def test_units_do_not_matter():
    """e/Å³ and VASP's rho*V_cell differ by the cell volume: same embedding after normalisation."""
    torch.manual_seed(0)
    model = _randomised(DensityEncoder(DensityEncoderConfig.cpu())).eval()
    x = _crystal_density(3, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(model(x * 47.3), model(x), rtol=1e-4, atol=1e-4)
    t = normalize_density(x)
    assert t.shape == x.shape and torch.isfinite(t).all()
    assert torch.allclose(normalize_density(-x), -t)  # asinh keeps the sign of artefacts


def test_random_periodic_translation():
    x = _crystal_density(3, seed=8, batch=4).unsqueeze(1)  # (4, 1, N, N, N)
    g = torch.Generator().manual_seed(0)
    y = random_periodic_translation(x, generator=g)
    assert y.shape == x.shape
    for k in range(4):  # a pure permutation of each grid's voxels
        assert torch.equal(torch.sort(y[k].flatten()).values, torch.sort(x[k].flatten()).values)
    assert not torch.equal(x, y)
    y2 = random_periodic_translation(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(y, y2)  # reproducible with a generator
    z = random_periodic_translation(x, generator=g, multiple_of=16)
    for k in range(4):
        matches = [s for s in [(a, b, c) for a in (0, 16) for b in (0, 16) for c in (0, 16)]
                   if torch.equal(z[k], torch.roll(x[k], s, dims=(-3, -2, -1)))]
        assert matches


def test_gradients_reach_the_input_and_the_augmentation_is_exact_for_the_encoder(cpu_model: DensityEncoder):
    x = _crystal_density(3, seed=9, batch=2).requires_grad_()
    cpu_model(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and (x.grad.abs() > 0).all()
    with torch.no_grad():
        z = random_periodic_translation(x.detach(), generator=torch.Generator().manual_seed(1), multiple_of=16)
        torch.testing.assert_close(cpu_model(z), cpu_model(x), rtol=1e-5, atol=1e-5)
