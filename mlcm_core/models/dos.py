"""DOS encoder: a small transformer over energy-aware patches of the density of states.

Why this design:

* The DOS lives on one fixed grid (conventions.DOS_ENERGIES, 601 points, -10..10 eV, zero at the VBM
  when gapped else at E_F). What matters physically is *where in energy* a feature sits (a peak just
  below the VBM means something different from one 8 eV below), so every token carries its energy
  explicitly: a patch of `patch_size` consecutive DOS values is embedded linearly and a Fourier
  embedding of the patch's centre energy is *added*. No positional encoding is needed (the energy *is*
  the position), and the same encoder could read a DOS on another reference or grid spacing by passing
  `energies`.
* 601 = 60 * 10 + 1: the grid is zero-padded at the top (energies extrapolated, +10.03..+10.3 eV) to
  61 patches of 10, so the 601st point (+10 eV) has a token of its own instead of being dropped. Zero
  padding is the store's convention anyway: `standardize_dos` writes zeros outside a source's window.
* Input normalisation (see `normalize_dos`): the store holds states/eV *per cell*, which grows with the
  number of sites, so two cells of the same crystal (primitive vs conventional) would differ by a
  factor. We divide each DOS by its mean over the window (= integral / 20 eV, i.e. the number of states
  in the window per eV) and apply log1p. The result is nsites-independent (scaling a DOS by any
  factor leaves it unchanged), has mean-ish 1 before the log, keeps a gap exactly at 0, and log1p
  tames the sharp van Hove / d-band peaks (10-50x the mean) without hiding the weak s-p tails.
  What is discarded is the absolute number of states per cell, a property of the cell choice rather
  than of the material.
* A learnt CLS token (default) or mean pooling, a final LayerNorm and a linear projection to `out_dim`
  (128, the shared embedding size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mlcm_core.data.conventions import DOS_ENERGIES, DOS_N_POINTS

__all__ = ["DOSEncoder", "DOSEncoderConfig", "EnergyEmbedding", "augment_dos", "normalize_dos"]


@dataclass(frozen=True)
class DOSEncoderConfig:
    """Sizes of the DOS encoder. Defaults are the paper sizes; `cpu()` is a small one for 2-core training."""

    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 8
    ff_mult: int = 4  # feed-forward width = ff_mult * d_model
    out_dim: int = 128
    patch_size: int = 10  # DOS points per token: 10 points = 1/3 eV -> 61 tokens
    in_channels: int = 1  # 1 = total DOS; 2 = spin up/down stacked as (B, 2, 601)
    n_frequencies: int = 16  # Fourier features of the token energy
    min_period_ev: float = 0.5
    max_period_ev: float = 40.0
    dropout: float = 0.1
    pool: str = "cls"  # "cls" or "mean"

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {self.pool!r}")
        if self.patch_size < 1 or self.n_frequencies < 1:
            raise ValueError("patch_size and n_frequencies must be positive")

    @classmethod
    def paper(cls) -> DOSEncoderConfig:
        """The paper's sizes: d_model 128, 4 layers, 8 heads, 128-d output."""
        return cls()

    @classmethod
    def cpu(cls) -> DOSEncoderConfig:
        """Small enough to train in minutes on 2 CPU cores."""
        return cls(d_model=64, n_layers=2, n_heads=4, ff_mult=2, n_frequencies=8)

    @property
    def n_tokens(self) -> int:
        """Number of DOS patches for the 601-point grid (the CLS token not included)."""
        return math.ceil(DOS_N_POINTS / self.patch_size)


def normalize_dos(dos: Tensor, eps: float = 1e-8) -> Tensor:
    """log1p(dos / mean(dos)) per material and channel; invariant to scaling the DOS (e.g. by nsites).

    Args:
        dos: (..., n) states/eV per cell (non-negative; small negatives from resampling are clamped).

    Returns:
        (..., n) float tensor; an all-zero DOS stays all-zero.
    """
    dos = dos.clamp_min(0.0)
    scale = dos.mean(dim=-1, keepdim=True).clamp_min(eps)
    return torch.log1p(dos / scale)


def augment_dos(dos: Tensor, generator: torch.Generator | None = None, *, broadening_ev: tuple[float, float] = (0.0, 0.3),
                shift_ev: float = 0.3, p: float = 0.8, top_cut_ev: tuple[float, float] | None = None) -> Tensor:
    """DOS as another code or setting would give it: extra Gaussian broadening and a shifted zero.

    Why: the stored DOS are GPAW's (one smearing, one k-mesh, zero at the GPAW VBM/E_F); a user's DOS comes
    from VASP (tetrahedron or another smearing), another k-mesh, another zero (E_F vs VBM, a code's own
    reference). Each material independently gets, each with probability ``p``:

    * a Gaussian broadening of standard deviation drawn from ``broadening_ev`` (eV), area-preserving
      (a convolution with a normalised kernel on the 1/30 eV grid; zero-padded at the window edges);
    * a shift of the energy zero drawn from U(-shift_ev, shift_ev), by linear interpolation (zeros enter at
      the edge the curve moves away from, as the store writes zeros outside a source's window);
    * with ``top_cut_ev`` = (lo, hi): the DOS fading out above an energy drawn from U(lo, hi) (a 0.3 eV
      logistic ramp), as in a run with few empty bands: VASP's default NBANDS leaves Si's DOS at 0.66
      states/eV at +8 eV where GPAW's has 6.5 (tests/files/vasp-si vs mp-149).

    The overall scale is not augmented: ``normalize_dos`` divides it out exactly, and spin-summed vs one spin
    channel of a non-magnetic DOS differ only by that scale.

    Args:
        dos: (B, n) or (B, C, n) on conventions.DOS_ENERGIES; all C channels of a material move together.

    Returns:
        a new tensor of the same shape and dtype.
    """
    squeeze = dos.dim() == 2
    x = (dos.unsqueeze(1) if squeeze else dos).to(torch.float32)  # (B, C, n)
    b, c, n = x.shape
    step = float(DOS_ENERGIES[1] - DOS_ENERGIES[0])
    dev = x.device

    def draw(size: int) -> Tensor:
        return torch.rand(size, generator=generator).to(dev)

    # broadening: one kernel per material, applied to its C channels (grouped conv)
    lo, hi = broadening_ev
    sigma = (lo + (hi - lo) * draw(b)) * (draw(b) < p).float()  # (B,) eV; 0 = untouched
    half = max(1, math.ceil(3 * hi / step))
    offsets = torch.arange(-half, half + 1, device=dev, dtype=torch.float32) * step  # (K,)
    kernel = torch.exp(-0.5 * (offsets / sigma.clamp_min(1e-6).unsqueeze(1)) ** 2)  # (B, K)
    kernel[sigma <= step / 4] = (offsets.abs() < step / 2).float()  # below a quarter point: identity
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    weight = kernel.repeat_interleave(c, dim=0).unsqueeze(1)  # (B*C, 1, K)
    x = nn.functional.conv1d(x.reshape(1, b * c, n), weight, padding=half, groups=b * c).reshape(b, c, n)

    # shift of the zero: value at energy e becomes the old value at e - shift
    shift = (2 * draw(b) - 1) * shift_ev * (draw(b) < p).float()  # (B,) eV
    src = torch.arange(n, device=dev, dtype=torch.float32).unsqueeze(0) - (shift / step).unsqueeze(1)  # (B, n)
    i0 = src.floor()
    w = (src - i0).unsqueeze(1)  # (B, 1, n)
    i0 = i0.long()

    def take(idx: Tensor) -> Tensor:
        valid = ((idx >= 0) & (idx < n)).unsqueeze(1)
        return torch.gather(x, 2, idx.clamp(0, n - 1).unsqueeze(1).expand(b, c, n)) * valid

    x = (1 - w) * take(i0) + w * take(i0 + 1)

    if top_cut_ev is not None:  # fewer empty bands: the DOS fades out above a drawn energy
        lo, hi = top_cut_ev
        cut = torch.where(draw(b) < p, lo + (hi - lo) * draw(b), torch.full((b,), math.inf, device=dev))  # (B,)
        energies = torch.as_tensor(DOS_ENERGIES, dtype=torch.float32, device=dev)
        x = x * torch.sigmoid((cut.unsqueeze(1) - energies) / 0.3).unsqueeze(1)
    out = x.squeeze(1) if squeeze else x
    return out.to(dos.dtype)


class EnergyEmbedding(nn.Module):
    """Fourier features of an energy in eV (log-spaced periods) plus the energy itself -> d_model."""

    def __init__(self, d_model: int, n_frequencies: int, min_period_ev: float, max_period_ev: float) -> None:
        super().__init__()
        periods = torch.logspace(math.log10(min_period_ev), math.log10(max_period_ev), n_frequencies)
        self.register_buffer("omega", 2 * math.pi / periods, persistent=False)  # (F,) rad/eV
        self.proj = nn.Linear(2 * n_frequencies + 1, d_model)

    def forward(self, energies: Tensor) -> Tensor:
        phase = energies.unsqueeze(-1) * self.omega  # (..., F)
        feats = torch.cat([phase.sin(), phase.cos(), energies.unsqueeze(-1) / 10.0], dim=-1)  # (..., 2F+1)
        return self.proj(feats)  # (..., d)


class DOSEncoder(nn.Module):
    """Transformer over energy-aware DOS patches -> (B, out_dim) embedding."""

    def __init__(self, config: DOSEncoderConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or DOSEncoderConfig()
        self.n_pad = cfg.n_tokens * cfg.patch_size - DOS_N_POINTS
        self.register_buffer("energies", torch.tensor(DOS_ENERGIES, dtype=torch.float32), persistent=False)
        self.value_embed = nn.Linear(cfg.in_channels * cfg.patch_size, cfg.d_model)
        self.energy_embed = EnergyEmbedding(cfg.d_model, cfg.n_frequencies, cfg.min_period_ev, cfg.max_period_ev)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.d_model)) if cfg.pool == "cls" else None
        layer = nn.TransformerEncoderLayer(
            cfg.d_model, cfg.n_heads, dim_feedforward=cfg.ff_mult * cfg.d_model, dropout=cfg.dropout,
            activation="gelu", batch_first=True, norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.out_dim)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        if self.cls is not None:
            nn.init.normal_(self.cls, std=0.02)

    def _patch_energies(self, energies: Tensor, batch: int) -> Tensor:
        """Centre energy of each patch, (B, T); the padded tail is extrapolated on the grid spacing."""
        e = energies.to(self.energies.dtype).expand(batch, -1)  # (B, 601)
        step = e[:, -1:] - e[:, -2:-1]
        tail = e[:, -1:] + step * torch.arange(1, self.n_pad + 1, device=e.device, dtype=e.dtype)
        e = torch.cat([e, tail], dim=1)  # (B, T*P)
        return e.view(batch, self.config.n_tokens, self.config.patch_size).mean(dim=-1)  # (B, T)

    def forward(self, dos: Tensor, energies: Tensor | None = None) -> Tensor:
        """Embed a batch of DOS curves.

        Args:
            dos: (B, 601) total DOS, or (B, C, 601) with C = config.in_channels, states/eV per cell on
                conventions.DOS_ENERGIES (any positive scale: the input is normalised per material).
            energies: optional (601,) or (B, 601) energies in eV of the points, if not DOS_ENERGIES.

        Returns:
            (B, out_dim) embedding.
        """
        cfg = self.config
        if dos.dim() == 2:
            dos = dos.unsqueeze(1)  # (B, 1, 601)
        if dos.shape[1:] != (cfg.in_channels, DOS_N_POINTS):
            raise ValueError(f"expected DOS of shape (B, {cfg.in_channels}, {DOS_N_POINTS}), got {tuple(dos.shape)}")
        b = dos.shape[0]
        x = normalize_dos(dos.to(self.energies.dtype))  # (B, C, 601)
        x = nn.functional.pad(x, (0, self.n_pad))  # (B, C, 610)
        x = x.view(b, cfg.in_channels, cfg.n_tokens, cfg.patch_size).transpose(1, 2)  # (B, 61, C, P)
        tokens = self.value_embed(x.reshape(b, cfg.n_tokens, -1))  # (B, 61, d)
        e_tok = self._patch_energies(self.energies if energies is None else energies, b)  # (B, 61)
        tokens = tokens + self.energy_embed(e_tok)  # (B, 61, d)
        if self.cls is not None:
            tokens = torch.cat([self.cls.expand(b, -1, -1), tokens], dim=1)  # (B, 62, d)
        h = self.blocks(self.embed_dropout(tokens))  # (B, 62, d)
        pooled = h[:, 0] if self.cls is not None else h.mean(dim=1)  # (B, d)
        return self.head(self.norm(pooled))  # (B, out_dim)
