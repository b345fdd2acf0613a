"""Charge-density encoder: a periodic 3D ResNeXt over the 32³ valence density grid.

Why this design:

* The grid (conventions.DENSITY_GRID = 32 points per lattice vector, fractional coordinates, index
  (a, b, c)) is periodic in all three axes: voxel 31 touches voxel 0. Every spatial convolution therefore
  pads *circularly* (`PeriodicConv3d`), so there is no artificial boundary and the features near
  a face of the cell see the atoms across it. Global average pooling at the end makes the embedding
  independent of where the cell origin is put: exactly for translations by multiples of the total stride
  (16 here: a stride-2 stem and three stride-2 stages), approximately for any other shift (the
  stride-2 sampling phase changes).
* ResNeXt bottleneck blocks (1x1x1 reduce -> 3x3x3 grouped conv with `cardinality` groups -> 1x1x1
  expand, residual) give ResNet-50 capacity with fewer FLOPs per parameter than dense 3x3x3 convs;
  `paper()` is ResNeXt-50 (32x4d): layers [3, 4, 6, 3], cardinality 32, base width 4. The ImageNet stem
  (7x7 stride 2 + max-pool, /4) is replaced by one 5³ stride-2 conv (/2): a 32³ grid is already coarse
  (0.1-0.4 Å per voxel), so four stages run at 16³, 8³, 4³, 2³.
* Input transform (`normalize_density`): the store holds some densities in e/Å³ and some in VASP's
  CHGCAR convention rho*V_cell (e), which differ by the cell volume. Each grid is divided by its own mean
  |rho| (the mean valence electron density of the material), which removes that factor exactly and makes
  the two conventions identical, then asinh: linear for the interstitial/bonding density (~0.1-1x the
  mean), logarithmic for the 10-100x peaks at the cores, and sign-preserving for the small negative
  resampling artefacts some sources carry. The absolute electron density is discarded on purpose (it
  depends on the convention and on how many semicore states a pseudopotential keeps).
* `random_periodic_translation` is the matching augmentation: moving the cell origin is a symmetry of
  the crystal, and `torch.roll` implements it exactly on a periodic grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "DensityEncoder",
    "DensityEncoderConfig",
    "PeriodicConv3d",
    "ResNeXtBottleneck",
    "normalize_density",
    "periodic_pad",
    "random_periodic_translation",
]


@dataclass(frozen=True)
class DensityEncoderConfig:
    """Sizes of the 3D ResNeXt. Defaults are the paper's ResNeXt-50 (32x4d); `cpu()` trains on 2 cores.

    Stage i (i = 0..3) has `base_planes * 2**i` planes, a grouped-conv width of
    `int(planes * base_width / 64) * cardinality` and `planes * expansion` output channels (torchvision's
    convention, so the paper config matches resnext50_32x4d channel for channel).
    """

    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    cardinality: int = 32
    base_width: int = 4
    base_planes: int = 64
    expansion: int = 4
    stem_channels: int = 64
    stem_kernel: int = 5
    in_channels: int = 1
    out_dim: int = 128
    norm: str = "batch"  # "batch" or "group" (GroupNorm, for very small batches)
    dropout: float = 0.0  # before the projection
    softness: float = 1.0  # asinh(rho / (softness * mean|rho|))
    zero_init_residual: bool = True  # last norm of each block starts at 0 (Goyal et al. 2017)

    def __post_init__(self) -> None:
        if len(self.layers) != 4 or min(self.layers) < 1:
            raise ValueError(f"layers must be four positive block counts, got {self.layers}")
        if self.norm not in ("batch", "group"):
            raise ValueError(f"norm must be 'batch' or 'group', got {self.norm!r}")
        if self.softness <= 0:
            raise ValueError("softness must be positive")

    @classmethod
    def paper(cls) -> DensityEncoderConfig:
        """3D ResNeXt-50 (32x4d): layers [3, 4, 6, 3], cardinality 32, base width 4, 2048 final channels."""
        return cls()

    @classmethod
    def cpu(cls) -> DensityEncoderConfig:
        """One block per stage, cardinality 8, an eighth of the planes: widths 32-256, 256 final channels."""
        return cls(layers=(1, 1, 1, 1), cardinality=8, base_width=32, base_planes=8, stem_channels=16)

    @property
    def total_stride(self) -> int:
        """Downsampling factor from the input grid to the last stage (stem /2, stages 2-4 /2 each)."""
        return 16

    def stage_channels(self, i: int) -> tuple[int, int]:
        """(grouped-conv width, output channels) of stage i."""
        planes = self.base_planes * 2**i
        return int(planes * self.base_width / 64) * self.cardinality, planes * self.expansion


def normalize_density(rho: Tensor, softness: float = 1.0, eps: float = 1e-12) -> Tensor:
    """asinh(rho / (softness * mean|rho|)) per material over the last three (spatial) axes.

    Invariant to multiplying a grid by a positive constant, so e/Å³ and rho*V_cell (VASP) agree exactly.
    """
    scale = rho.abs().mean(dim=(-3, -2, -1), keepdim=True).clamp_min(eps)
    return torch.asinh(rho / (softness * scale))


def random_periodic_translation(
    grid: Tensor, generator: torch.Generator | None = None, multiple_of: int = 1
) -> Tensor:
    """Move the cell origin of each grid by a random whole number of voxels along a, b and c.

    Args:
        grid: (B, Na, Nb, Nc) or (B, C, Na, Nb, Nc) periodic grids; each material b gets its own shift,
            and all C channels of one material move together.
        generator: optional torch.Generator for reproducible shifts.
        multiple_of: draw shifts that are multiples of this (e.g. the encoder's total stride, for which
            the encoder is exactly invariant).

    Returns:
        A new tensor of the same shape; values are only permuted (torch.roll), none interpolated.
    """
    if grid.dim() < 4:
        raise ValueError(f"expected (B, [C,] Na, Nb, Nc), got shape {tuple(grid.shape)}")
    sizes = grid.shape[-3:]
    out = torch.empty_like(grid)
    for k in range(grid.shape[0]):
        shifts = [int(torch.randint(0, max(n // multiple_of, 1), (1,), generator=generator)) * multiple_of
                  for n in sizes]
        out[k] = torch.roll(grid[k], shifts=shifts, dims=(-3, -2, -1))
    return out


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    return nn.GroupNorm(min(32, channels), channels)


class _PeriodicPad(torch.autograd.Function):
    """Circular padding of the last three axes with a cheap backward.

    F.pad(mode="circular")'s autograd allocates a zero-filled full-size gradient for every wrapped slab,
    which doubled the training time of the cpu config; here the padded gradient is folded back instead
    (the halo's gradient is added onto the voxels it was copied from).
    """

    @staticmethod
    def forward(ctx, x: Tensor, pad: int) -> Tensor:  # type: ignore[override]
        ctx.pad = pad
        return nn.functional.pad(x, (pad,) * 6, mode="circular")

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        p = ctx.pad
        for dim in (-3, -2, -1):
            n = grad.shape[dim] - 2 * p
            inner = grad.narrow(dim, p, n).clone()
            inner.narrow(dim, 0, p).add_(grad.narrow(dim, p + n, p))  # right halo = first p voxels
            inner.narrow(dim, n - p, p).add_(grad.narrow(dim, 0, p))  # left halo = last p voxels
            grad = inner
        return grad, None


def periodic_pad(x: Tensor, pad: int) -> Tensor:
    """Pad the last three axes of a periodic grid by `pad` voxels on each side with wrapped values."""
    return _PeriodicPad.apply(x, pad) if pad > 0 else x


class PeriodicConv3d(nn.Conv3d):
    """Conv3d on a periodic grid: circular padding of kernel//2 ('same' size at stride 1), no bias.

    Equivalent to nn.Conv3d(padding=kernel // 2, padding_mode="circular"), with a faster backward.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride=stride, padding=0, groups=groups, bias=False)
        self.periodic_padding = kernel // 2

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(periodic_pad(x, self.periodic_padding))


class ResNeXtBottleneck(nn.Module):
    """1x1x1 reduce -> 3x3x3 grouped conv (stride here) -> 1x1x1 expand, plus a (projected) shortcut."""

    def __init__(self, cin: int, width: int, cout: int, cardinality: int, stride: int, norm: str) -> None:
        super().__init__()
        self.reduce = nn.Sequential(PeriodicConv3d(cin, width, 1), _norm(norm, width), nn.ReLU(inplace=True))
        self.grouped = nn.Sequential(PeriodicConv3d(width, width, 3, stride, groups=cardinality),
                                     _norm(norm, width), nn.ReLU(inplace=True))
        self.expand = nn.Sequential(PeriodicConv3d(width, cout, 1), _norm(norm, cout))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(PeriodicConv3d(cin, cout, 1, stride), _norm(norm, cout))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        h = self.expand(self.grouped(self.reduce(x)))  # (B, cout, N/stride, ...)
        return self.act(h + self.shortcut(x))


class DensityEncoder(nn.Module):
    """Periodic 3D ResNeXt over a (B, [C,] 32, 32, 32) density grid -> (B, out_dim) embedding."""

    def __init__(self, config: DensityEncoderConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or DensityEncoderConfig()
        self.stem = nn.Sequential(PeriodicConv3d(cfg.in_channels, cfg.stem_channels, cfg.stem_kernel, stride=2),
                                  _norm(cfg.norm, cfg.stem_channels), nn.ReLU(inplace=True))
        stages: list[nn.Module] = []
        cin = cfg.stem_channels
        for i, n_blocks in enumerate(cfg.layers):
            width, cout = cfg.stage_channels(i)
            blocks = []
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(ResNeXtBottleneck(cin, width, cout, cfg.cardinality, stride, cfg.norm))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cin, cfg.out_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm3d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.config.zero_init_residual:
            for m in self.modules():
                if isinstance(m, ResNeXtBottleneck):
                    nn.init.zeros_(m.expand[1].weight)

    def forward(self, rho: Tensor) -> Tensor:
        """Embed a batch of density grids.

        Args:
            rho: (B, Na, Nb, Nc) or (B, C, Na, Nb, Nc) with C = config.in_channels, any positive scale
                (e/Å³ or rho*V_cell); the grid is normalised per material. Na, Nb, Nc are normally 32
                (conventions.DENSITY_GRID) and must be divisible by the total stride (16).

        Returns:
            (B, out_dim) embedding.
        """
        if rho.dim() == 4:
            rho = rho.unsqueeze(1)  # (B, 1, 32, 32, 32)
        if rho.dim() != 5 or rho.shape[1] != self.config.in_channels:
            raise ValueError(f"expected (B, {self.config.in_channels}, Na, Nb, Nc), got {tuple(rho.shape)}")
        if any(n % self.config.total_stride for n in rho.shape[-3:]):
            raise ValueError(f"grid {tuple(rho.shape[-3:])} is not divisible by the stride {self.config.total_stride}")
        x = normalize_density(rho.to(self.head.weight.dtype), self.config.softness)  # (B, C, 32, 32, 32)
        x = self.stem(x)  # (B, stem, 16, 16, 16)
        x = self.stages(x)  # (B, 2048, 2, 2, 2) for the paper config
        x = x.mean(dim=(-3, -2, -1))  # (B, 2048)
        return self.head(self.dropout(x))  # (B, out_dim)

