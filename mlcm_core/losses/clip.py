"""CLIP (symmetric InfoNCE) losses for aligning crystal, DOS and charge-density embeddings.

Why: contrastive alignment is the default way to put several modalities of the same material into one
embedding space; a material's embeddings from two modalities are a positive pair and every other material in
the batch supplies the negatives.

Masking rule (shared by every loss in ``mlcm_core.losses``): a material that lacks a modality has no embedding
for it, so it is *excluded*, never imputed. For a pair of modalities only the rows where both exist take part:
they are neither anchors nor negatives otherwise, the values held in the masked rows (zeros, garbage, even NaN)
never reach the loss, and their gradient is exactly zero (rows are selected by indexing, not multiplied by 0).

Temperature: ``logit_scale`` is the model's learnable *log* scale, as in CLIP (``log(1/0.07)`` at init); the
losses use ``exp(logit_scale)`` as the multiplier of the cosine similarities. The model owns the parameter and
should clamp it (CLIP clamps it to ``<= log(100)`` after each step); the losses do not clamp. ``None`` means the
fixed CLIP initial value ``log(1/0.07)``.

Embeddings are L2-normalised inside the losses (a no-op for embeddings that already are unit vectors), so the
logits are ``exp(logit_scale) * cosine``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import Tensor

from mlcm_core.modalities import MODALITIES  # the default (crystal, dos, density) of the three-way losses

__all__ = [
    "DEFAULT_LOGIT_SCALE",
    "MODALITIES",
    "all_pairs_clip",
    "anchored_clip",
    "clip_loss",
    "clip_loss_unpaired_negatives",
    "joint_mask",
    "pair_clip",
    "resolve_scale",
]

DEFAULT_LOGIT_SCALE: float = math.log(1 / 0.07)  # CLIP's initial log scale (temperature 0.07)
_NORM_EPS = 1e-12


def resolve_scale(logit_scale: Tensor | float | None, like: Tensor) -> Tensor:
    """``exp(logit_scale)`` as a 0-d tensor on ``like``'s device/dtype (``None`` -> CLIP's 1/0.07)."""
    if logit_scale is None:
        logit_scale = DEFAULT_LOGIT_SCALE
    ls = torch.as_tensor(logit_scale, device=like.device, dtype=like.dtype)
    if ls.numel() != 1:
        raise ValueError(f"logit_scale must be a scalar, got shape {tuple(ls.shape)}")
    return ls.reshape(()).exp()


def _check_embedding(name: str, z: Tensor) -> None:
    if z.dim() != 2:
        raise ValueError(f"embedding {name!r} must be (B, D), got shape {tuple(z.shape)}")


def joint_mask(masks: Mapping[str, Tensor], names: Sequence[str], batch_size: int, device: torch.device) -> Tensor:
    """Rows where every modality in ``names`` exists: the AND of their boolean masks, shape (B,).

    Every named modality must have a mask: a missing mask is an error, not "all present", because silently
    treating absent embeddings as real would be imputation.
    """
    out = torch.ones(batch_size, dtype=torch.bool, device=device)  # (B,)
    for n in names:
        if n not in masks:
            raise KeyError(f"no mask for modality {n!r}; pass a boolean (B,) mask for every modality")
        m = torch.as_tensor(masks[n], device=device)
        if m.shape != (batch_size,):
            raise ValueError(f"mask for {n!r} must have shape ({batch_size},), got {tuple(m.shape)}")
        if m.dtype != torch.bool:
            raise TypeError(f"mask for {n!r} must be bool, got {m.dtype}")
        out = out & m
    return out


def graph_zero(*tensors: Tensor | None) -> Tensor:
    """A 0-d zero that is connected to the autograd graph of ``tensors`` with an exactly-zero gradient.

    Built from empty slices, so NaN/inf in the inputs cannot leak into it (``0 * nan`` would).
    """
    real = [t for t in tensors if isinstance(t, Tensor)]
    zero = real[0].new_zeros(())
    for t in real:
        zero = zero + t.reshape(-1)[:0].sum()
    return zero


def clip_loss(z_a: Tensor, z_b: Tensor, logit_scale: Tensor | float | None, mask: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE between two modalities over the rows where ``mask`` is True.

    ``L = ½ [ mean_i CE(s·cos(a_i, b_·), i) + mean_i CE(s·cos(a_·, b_i), i) ]`` with ``s = exp(logit_scale)``,
    where i and the negatives range over the valid rows only. One valid row gives 0 (it has no negatives);
    no valid row gives a graph-connected 0.

    Args:
        z_a, z_b: (B, D) embeddings of the same B materials in two modalities.
        logit_scale: the learnable log scale (0-d); ``None`` -> ``log(1/0.07)``.
        mask: (B,) bool, True where both modalities exist (see ``joint_mask``); ``None`` = all rows.
    """
    _check_embedding("z_a", z_a)
    _check_embedding("z_b", z_b)
    if z_a.shape[0] != z_b.shape[0]:
        raise ValueError(f"batch sizes differ: {z_a.shape[0]} vs {z_b.shape[0]}")
    if mask is not None:
        if mask.shape != (z_a.shape[0],) or mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool of shape ({z_a.shape[0]},), got {mask.dtype} {tuple(mask.shape)}")
        a, b = z_a[mask], z_b[mask]  # (N, D), (N, D)
    else:
        a, b = z_a, z_b
    n = a.shape[0]
    if n == 0:
        return graph_zero(z_a, z_b, logit_scale if isinstance(logit_scale, Tensor) else None)
    a = F.normalize(a, dim=-1, eps=_NORM_EPS)  # (N, D)
    b = F.normalize(b, dim=-1, eps=_NORM_EPS)  # (N, D)
    scale = resolve_scale(logit_scale, a)  # ()
    logits = scale * (a @ b.T)  # (N, N): [i, j] = s·cos(a_i, b_j)
    labels = torch.arange(n, device=a.device)  # (N,)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def clip_loss_unpaired_negatives(z_a: Tensor, z_b: Tensor, logit_scale: Tensor | float | None, mask_a: Tensor,
                                 mask_b: Tensor) -> Tensor:
    """Symmetric InfoNCE whose candidates are *every* row having the other modality, paired or not.

    Why: in the app a DOS is compared with every stored crystal, most of which have no DOS; with ``clip_loss``
    the crystal encoder only ever sees crystals that have a DOS, so the thousands it never trained on can land
    anywhere, next to other materials' DOS. Here rows having only ``b`` (e.g. crystals without a DOS) are extra
    negatives for the ``a`` queries of the joint rows, and rows having only ``a`` for the ``b`` queries; the
    queries are the joint rows (an unpaired row has no positive). Masking as in ``clip_loss``: rows lacking a
    modality never enter the logits of that modality (selected by indexing).

    Args:
        z_a, z_b: (B, D) embeddings of the same B materials in two modalities.
        logit_scale: the learnable log scale (0-d); ``None`` -> ``log(1/0.07)``.
        mask_a, mask_b: (B,) bool, rows having ``a`` (resp. ``b``).
    """
    _check_embedding("z_a", z_a)
    _check_embedding("z_b", z_b)
    joint = mask_a & mask_b  # (B,)
    n = int(joint.sum())
    if n == 0:
        return graph_zero(z_a, z_b, logit_scale if isinstance(logit_scale, Tensor) else None)
    a_all = F.normalize(z_a[mask_a], dim=-1, eps=_NORM_EPS)  # (Na, D)
    b_all = F.normalize(z_b[mask_b], dim=-1, eps=_NORM_EPS)  # (Nb, D)
    # position of each joint row among the rows having a (resp. b)
    pos_a = (torch.cumsum(mask_a.long(), 0) - 1)[joint]  # (N,)
    pos_b = (torch.cumsum(mask_b.long(), 0) - 1)[joint]  # (N,)
    scale = resolve_scale(logit_scale, a_all)
    a_to_b = scale * (a_all[pos_a] @ b_all.T)  # (N, Nb)
    b_to_a = scale * (b_all[pos_b] @ a_all.T)  # (N, Na)
    return 0.5 * (F.cross_entropy(a_to_b, pos_b) + F.cross_entropy(b_to_a, pos_a))


def _pairs_clip(
    z: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    logit_scale: Tensor | float | None,
    pairs: Sequence[tuple[str, str]],
    min_rows: int,
    unpaired_negatives: bool = False,
) -> Tensor:
    """Unweighted mean of ``clip_loss`` over ``pairs``; a pair with fewer than ``min_rows`` joint rows is skipped.

    ``unpaired_negatives``: use ``clip_loss_unpaired_negatives`` (rows with one of the two modalities are
    extra negatives) instead of ``clip_loss`` (joint rows only)."""
    terms: list[Tensor] = []
    for a, b in pairs:
        za, zb = z[a], z[b]
        m = joint_mask(masks, (a, b), za.shape[0], za.device)  # (B,)
        if int(m.sum()) < min_rows:
            continue
        if unpaired_negatives:
            ma = joint_mask(masks, (a,), za.shape[0], za.device)
            mb = joint_mask(masks, (b,), za.shape[0], za.device)
            terms.append(clip_loss_unpaired_negatives(za, zb, logit_scale, ma, mb))
        else:
            terms.append(clip_loss(za, zb, logit_scale, m))
    if not terms:
        return graph_zero(*z.values(), logit_scale if isinstance(logit_scale, Tensor) else None)
    return torch.stack(terms).mean()


def all_pairs_clip(
    z: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    logit_scale: Tensor | float | None = None,
    *,
    modalities: Sequence[str] | None = None,
    min_rows: int = 2,
    unpaired_negatives: bool = False,
) -> Tensor:
    """Mean symmetric CLIP over every unordered pair of modalities, each on the rows where both exist.

    ``modalities`` defaults to the keys of ``z`` (in order); pairs with fewer than ``min_rows`` (default 2)
    joint rows are skipped and the mean is over the remaining pairs (unweighted: each pair counts once,
    whatever its number of rows). If every pair is skipped the result is a graph-connected 0.
    ``unpaired_negatives``: rows having one modality of a pair are extra negatives of that pair
    (``clip_loss_unpaired_negatives``).
    """
    names = list(z) if modalities is None else list(modalities)
    return _pairs_clip(z, masks, logit_scale, list(combinations(names, 2)), min_rows, unpaired_negatives)


def anchored_clip(
    z: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    logit_scale: Tensor | float | None = None,
    *,
    anchor: str = "crystal",
    modalities: Sequence[str] | None = None,
    min_rows: int = 2,
    unpaired_negatives: bool = False,
) -> Tensor:
    """Mean symmetric CLIP over the pairs (anchor, other) only — e.g. crystal–DOS and crystal–density.

    ImageBind-style: the non-anchor modalities are never contrasted with each other directly. Same masking,
    skipping, averaging and ``unpaired_negatives`` rules as ``all_pairs_clip``.
    """
    names = list(z) if modalities is None else list(modalities)
    if anchor not in z:
        raise KeyError(f"anchor modality {anchor!r} not in z (have {sorted(z)})")
    return _pairs_clip(z, masks, logit_scale, [(anchor, o) for o in names if o != anchor], min_rows,
                       unpaired_negatives)


def pair_clip(
    z: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    logit_scale: Tensor | float | None = None,
    *,
    a: str = "crystal",
    b: str = "dos",
) -> Tensor:
    """``clip_loss`` of one named pair of modalities in the registry's common signature."""
    m = joint_mask(masks, (a, b), z[a].shape[0], z[a].device)  # (B,)
    return clip_loss(z[a], z[b], logit_scale, m)
