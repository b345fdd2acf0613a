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

__all__ = ["DOSEncoder", "DOSEncoderConfig", "EnergyEmbedding", "normalize_dos"]


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
