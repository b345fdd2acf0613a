"""TensorCLIP: one contrastive loss over a three-way similarity of crystal, DOS and density embeddings.

Why: pairwise CLIP aligns each pair separately; a three-way similarity ``T[i, j, k]`` scores a *triple*
(crystal of material i, DOS of material j, density of material k) jointly, so the positive is the triple
(i, i, i) and a negative may be wrong in just one of the three slots.

Similarity (the normalisation choice). The raw triple product ``Σ_d c_id d_jd ρ_kd`` of unit vectors is tiny
— at most 1/√D for three identical spread-out unit vectors (all |u_d| = 1/√D) and of order 1/D for random
directions — so it is unusable as a logit. We use the cosine between the elementwise product of the first two
embeddings and the third::

    T[i, j, k] = exp(logit_scale) · <c_i ⊙ d_j, ρ_k> / (‖c_i ⊙ d_j‖ · ‖ρ_k‖)        ∈ [-s, s]

i.e. ``s · Σ_d c_id d_jd ρ_kd`` with the product normalised per (i, j) and ρ per k. It is invariant to the
scale of each embedding, bounded like a CLIP logit, and attains its maximum when ρ_k ∝ c_i ⊙ d_j. It is not
symmetric in the modalities: the third one (density by default) is the one compared with the product.

Contrast (the loss). Positives lie on the diagonal i = j = k. We contrast along each of the three axes and
average the three cross-entropies, each a mean over the N rows that have all three modalities::

    L = ⅓ [ mean_i CE(T[i, i, :], i)      # which density goes with crystal i and DOS i   (over k)
          + mean_i CE(T[i, :, i], i)      # which DOS goes with crystal i and density i   (over j)
          + mean_i CE(T[:, i, i], i) ]    # which crystal goes with DOS i and density i   (over i')

Only these three N×N slices of the N×N×N cube are needed, so the loss is computed in O(N²D) time and O(N²)
memory without building the cube (``triple_similarity`` builds it, for analysis and tests).

Masking: a row takes part only if all three modalities exist (AND of the three masks); the other rows are
neither positives nor negatives and get exactly zero gradient. With one valid row the loss is 0.

``effective_rank`` reports dimensional collapse of an embedding matrix (RankMe, Garrido et al. 2023).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mlcm_core.losses.clip import MODALITIES, graph_zero, joint_mask, resolve_scale

__all__ = ["effective_rank", "tensor_clip", "tensor_clip_loss", "triple_similarity"]

_EPS = 1e-12


def _unit(x: Tensor) -> Tensor:
    return F.normalize(x, dim=-1, eps=_EPS)


def triple_similarity(c: Tensor, d: Tensor, rho: Tensor, logit_scale: Tensor | float | None) -> Tensor:
    """The full cube ``T[i, j, k] = s · cos(c_i ⊙ d_j, ρ_k)``, shape (N, N, N). O(N²D) memory: small N only."""
    scale = resolve_scale(logit_scale, c)  # ()
    cd = _unit(c[:, None, :] * d[None, :, :])  # (N, N, D)
    return scale * torch.einsum("ijd,kd->ijk", cd, _unit(rho))  # (N, N, N)


def tensor_clip_loss(c: Tensor, d: Tensor, rho: Tensor, logit_scale: Tensor | float | None) -> Tensor:
    """TensorCLIP on rows that all exist: c, d, rho are (N, D) embeddings of the same N materials.

    Returns the mean of the three axis-wise cross-entropies described in the module docstring.
    """
    if not (c.dim() == d.dim() == rho.dim() == 2) or not (c.shape == d.shape == rho.shape):
        raise ValueError(f"c, d, rho must be (N, D) of one shape, got {tuple(c.shape)}, {tuple(d.shape)}, "
                         f"{tuple(rho.shape)}")
    n = c.shape[0]
    if n == 0:
        return graph_zero(c, d, rho, logit_scale if isinstance(logit_scale, Tensor) else None)
    scale = resolve_scale(logit_scale, c)  # ()
    r = _unit(rho)  # (N, D) unit density embeddings; T is invariant to the scale of c and d
    # ‖c_i ⊙ d_j‖ for every (i, j): Σ_d c_id² d_jd² = (c² @ d²ᵀ)[i, j]
    prod_norm = ((c * c) @ (d * d).T).clamp_min(_EPS * _EPS).sqrt()  # (N, N)
    # over k: T[i, i, k] = s · <unit(c_i ⊙ d_i), ρ̂_k>
    logits_k = scale * (_unit(c * d) @ r.T)  # (N, N): [i, k]
    # over j: T[i, j, i] = s · <c_i ⊙ ρ̂_i, d_j> / ‖c_i ⊙ d_j‖
    logits_j = scale * ((c * r) @ d.T) / prod_norm  # (N, N): [i, j]
    # over i': T[i', i, i] = s · <d_i ⊙ ρ̂_i, c_i'> / ‖c_i' ⊙ d_i‖
    logits_i = scale * ((d * r) @ c.T) / prod_norm.T  # (N, N): [i, i']
    labels = torch.arange(n, device=c.device)  # (N,)
    return (F.cross_entropy(logits_k, labels) + F.cross_entropy(logits_j, labels)
            + F.cross_entropy(logits_i, labels)) / 3


def tensor_clip(
    z: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    logit_scale: Tensor | float | None = None,
    *,
    modalities: Sequence[str] = MODALITIES,
    min_rows: int = 2,
) -> Tensor:
    """TensorCLIP in the registry's common signature, on the rows that have all three ``modalities``.

    ``modalities`` = (c, d, ρ) in the order of the formula (default crystal, dos, density). Fewer than
    ``min_rows`` complete rows gives a graph-connected 0.
    """
    if len(modalities) != 3:
        raise ValueError(f"tensor_clip needs exactly three modalities, got {list(modalities)}")
    zc, zd, zr = (z[m] for m in modalities)
    m = joint_mask(masks, modalities, zc.shape[0], zc.device)  # (B,)
    if int(m.sum()) < min_rows:
        return graph_zero(zc, zd, zr, logit_scale if isinstance(logit_scale, Tensor) else None)
    return tensor_clip_loss(zc[m], zd[m], zr[m], logit_scale)


def effective_rank(z: Tensor, mask: Tensor | None = None, *, center: bool = False) -> Tensor:
    """``exp(H(p))`` with ``p = σ / Σσ`` the normalised singular values of z (N, D) — RankMe.

    Between 1 (all rows on one line: collapsed) and min(N, D) (all singular values equal). A zero matrix
    gives 0. ``mask`` (N,) selects rows; ``center`` subtracts the column mean first (then a batch of
    identical rows has rank 0).
    """
    if z.dim() != 2:
        raise ValueError(f"z must be (N, D), got shape {tuple(z.shape)}")
    if mask is not None:
        z = z[mask]
    if center:
        z = z - z.mean(dim=0, keepdim=True)
    sv = torch.linalg.svdvals(z)  # (min(N, D),)
    total = sv.sum()
    if z.numel() == 0 or total <= 0:
        return z.new_zeros(())
    p = sv / total  # (min(N, D),)
    return torch.exp(-torch.xlogy(p, p).sum())
