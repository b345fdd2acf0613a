"""Multimodal Barlow Twins: redundancy-reduction losses across crystal, DOS and density embeddings.

Why: Barlow Twins needs no negatives and no temperature, so it does not depend on the batch composition the
way CLIP does, and it directly fights dimensional collapse (the off-diagonal term decorrelates features).

Two multimodal forms are provided.

(a) ``barlow_twins_pairwise`` — the mean of the original two-view loss (Zbontar et al. 2021) over modality
    pairs. Each feature is batch-normalised over the rows where *both* modalities exist (mean 0, biased
    variance 1, eps 1e-5 as ``BatchNorm1d(affine=False)``), ``C = aᵀb / N`` is the D×D cross-correlation and::

        L_ab = Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²,        λ = 1/D by default (1/128 ≈ 7.8e-3 for D = 128)

    The paper's λ = 5.1e-3 was tuned for D = 8192; 1/D keeps the total off-diagonal weight (D(D−1) terms)
    comparable to the D diagonal terms for any D. Pairs with fewer than 2 joint rows are skipped; the result
    is the unweighted mean over the remaining pairs.

(b) ``barlow_twins_higher_order`` — one third-order cross-correlation tensor over the rows that have all
    three modalities: ``C_ijk = mean_n ã_ni b̃_nj c̃_nk``. The hyper-diagonal of batch-normalised features is a
    third moment E[a·b·c], which is *not* 1 for identical inputs (it is their skewness, 0 for any symmetric
    distribution), so a target of 1 needs a different normalisation. We batch-normalise each feature and then
    divide it by the cube root of its third absolute moment, ``ã = a / (mean_n |a_n|³)^{1/3}``. By Hölder,
    ``|C_ijk| ≤ 1`` for every entry, and ``C_iii = 1`` is attained exactly when, for every row n,
    ``|ã_ni| = |b̃_ni| = |c̃_ni|`` and ``sign(ã_ni b̃_ni c̃_ni) = +1``. So the hyper-diagonal target is 1
    (its supremum) and::

        L = Σ_i (1 − C_iii)² + λ₃ Σ_{(i,j,k) not all equal} C_ijk²,     λ₃ = 1/D² by default

    (1/D² plays the role of 1/D above: D³ − D off-diagonal entries against D diagonal ones.) The
    off-diagonal sum is computed without materialising the D³ tensor, via
    Σ_ijk C_ijk² = (1/N²) Σ_{n,m} (ã_n·ã_m)(b̃_n·b̃_m)(c̃_n·c̃_m) — three N×N Gram matrices, O(N²D) — minus
    the D diagonal terms.

Comparison. (a) is a second-moment criterion whose optimum is "each pair of modalities carries the same
decorrelated features" (identity C); it uses every row where a *pair* exists, so materials missing one
modality still contribute, and costs O(N D²) per pair. (b) constrains the joint third moment: it rewards
features whose magnitudes agree across all three modalities and whose signs multiply to +1 (so, e.g., one
modality's sign pattern can be the product of the other two) — identical features are *not* its optimum —
and it decorrelates all three-way feature combinations. It only sees rows with all three modalities and costs
O(N²D). (b) is therefore a complement to (a) rather than a replacement for alignment.

Masking: rows without the needed modalities are excluded before batch normalisation (their values never enter
the statistics) and get exactly zero gradient. ``logit_scale`` is accepted for the common registry signature
and ignored: these losses have no temperature.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

import torch
from torch import Tensor

from mlcm_core.losses.clip import MODALITIES, graph_zero, joint_mask

__all__ = [
    "barlow_twins_higher_order",
    "barlow_twins_pair_loss",
    "barlow_twins_pairwise",
    "batch_normalise",
    "higher_order_loss",
    "third_moment_normalise",
]

BN_EPS = 1e-5
_EPS = 1e-12


def batch_normalise(x: Tensor, eps: float = BN_EPS) -> Tensor:
    """Per-feature batch normalisation over rows: (x − mean) / sqrt(biased var + eps), shape (N, D)."""
    mean = x.mean(dim=0, keepdim=True)  # (1, D)
    var = x.var(dim=0, unbiased=False, keepdim=True)  # (1, D)
    return (x - mean) / torch.sqrt(var + eps)  # (N, D)


def third_moment_normalise(x: Tensor, eps: float = BN_EPS) -> Tensor:
    """Batch-normalise, then scale each feature to unit third absolute moment: mean_n |x̃_n|³ = 1, (N, D)."""
    a = batch_normalise(x, eps)  # (N, D)
    m3 = a.abs().pow(3).mean(dim=0, keepdim=True)  # (1, D)
    return a / m3.clamp_min(_EPS).pow(1.0 / 3.0)  # (N, D)


def barlow_twins_pair_loss(z1: Tensor, z2: Tensor, lambda_offdiag: float | None = None,
                           eps: float = BN_EPS) -> Tensor:
    """Two-view Barlow Twins on (N, D) embeddings of the same N rows: Σ(1−C_ii)² + λ Σ_{i≠j} C_ij²."""
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1, z2 must be (N, D) of one shape, got {tuple(z1.shape)}, {tuple(z2.shape)}")
    n, dim = z1.shape
    lam = 1.0 / dim if lambda_offdiag is None else lambda_offdiag
    a, b = batch_normalise(z1, eps), batch_normalise(z2, eps)  # (N, D), (N, D)
    c = a.T @ b / n  # (D, D)
    diag = torch.diagonal(c)  # (D,)
    on = (1 - diag).pow(2).sum()
    off = (c - torch.diag_embed(diag)).pow(2).sum()
    return on + lam * off


def higher_order_loss(z1: Tensor, z2: Tensor, z3: Tensor, lambda_offdiag: float | None = None,
                      eps: float = BN_EPS) -> Tensor:
    """Third-order Barlow Twins on (N, D) embeddings of the same N rows (see the module docstring)."""
    if not (z1.shape == z2.shape == z3.shape) or z1.dim() != 2:
        raise ValueError(f"z1, z2, z3 must be (N, D) of one shape, got {tuple(z1.shape)}, {tuple(z2.shape)}, "
                         f"{tuple(z3.shape)}")
    n, dim = z1.shape
    lam = 1.0 / dim**2 if lambda_offdiag is None else lambda_offdiag
    a, b, c = (third_moment_normalise(x, eps) for x in (z1, z2, z3))  # (N, D) each
    diag = (a * b * c).mean(dim=0)  # (D,): C_iii
    # Σ_ijk C_ijk² = (1/N²) Σ_{n,m} G_a[n,m] G_b[n,m] G_c[n,m], without the (D, D, D) tensor
    total_sq = ((a @ a.T) * (b @ b.T) * (c @ c.T)).sum() / n**2  # ()
    off = total_sq - diag.pow(2).sum()
    return (1 - diag).pow(2).sum() + lam * off


def barlow_twins_pairwise(
    z: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    logit_scale: Tensor | float | None = None,
    *,
    modalities: Sequence[str] | None = None,
    lambda_offdiag: float | None = None,
    min_rows: int = 2,
    eps: float = BN_EPS,
) -> Tensor:
    """Form (a): mean pairwise Barlow Twins over every pair of ``modalities`` (default: keys of z).

    Each pair on the rows where both exist; pairs with fewer than ``min_rows`` such rows are skipped; all
    skipped gives a graph-connected 0. ``logit_scale`` is ignored.
    """
    names = list(z) if modalities is None else list(modalities)
    terms: list[Tensor] = []
    for p, q in combinations(names, 2):
        m = joint_mask(masks, (p, q), z[p].shape[0], z[p].device)  # (B,)
        if int(m.sum()) < min_rows:
            continue
        terms.append(barlow_twins_pair_loss(z[p][m], z[q][m], lambda_offdiag, eps))
    if not terms:
        return graph_zero(*(z[k] for k in names))
    return torch.stack(terms).mean()


def barlow_twins_higher_order(
    z: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    logit_scale: Tensor | float | None = None,
    *,
    modalities: Sequence[str] = MODALITIES,
    lambda_offdiag: float | None = None,
    min_rows: int = 2,
    eps: float = BN_EPS,
) -> Tensor:
    """Form (b): third-order cross-correlation loss on the rows that have all three ``modalities``.

    Fewer than ``min_rows`` complete rows gives a graph-connected 0. ``logit_scale`` is ignored.
    """
    if len(modalities) != 3:
        raise ValueError(f"barlow_twins_higher_order needs exactly three modalities, got {list(modalities)}")
    z1, z2, z3 = (z[k] for k in modalities)
    m = joint_mask(masks, modalities, z1.shape[0], z1.device)  # (B,)
    if int(m.sum()) < min_rows:
        return graph_zero(z1, z2, z3)
    return higher_order_loss(z1[m], z2[m], z3[m], lambda_offdiag, eps)
