"""Multimodal pre-training losses for MLCM, by name.

Why a registry: training configs name a loss ("all_pairs_clip", "tensor_clip", ...) and its options; every
loss has one call signature so the training loop does not care which one it runs::

    loss = LOSSES[name](z, masks, logit_scale, **options)

- ``z``: modality name ("crystal", "dos", "density") -> (B, D) embeddings, rows aligned by material.
- ``masks``: modality name -> (B,) bool, True where the material has that modality. Missing rows are
  excluded from every loss (never imputed); a mask is required for every modality a loss uses.
- ``logit_scale``: the model's learnable *log* temperature-scale (0-d tensor; the CLIP losses use
  ``exp(logit_scale)``); ``None`` -> ``log(1/0.07)``. Barlow Twins losses ignore it.
- ``options``: keyword-only, typed, per loss (see each function).

Each loss is a pure function of embeddings and masks (no module state) and returns a 0-d tensor. See
docs/losses.md for the formulas.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from mlcm_core.losses.barlow_twins import (
    barlow_twins_higher_order,
    barlow_twins_pair_loss,
    barlow_twins_pairwise,
    higher_order_loss,
)
from mlcm_core.losses.clip import (
    MODALITIES,
    all_pairs_clip,
    anchored_clip,
    clip_loss,
    clip_loss_unpaired_negatives,
    joint_mask,
    pair_clip,
)
from mlcm_core.losses.tensor_clip import effective_rank, tensor_clip, tensor_clip_loss, triple_similarity

__all__ = [
    "LOSSES",
    "MODALITIES",
    "LossFn",
    "all_pairs_clip",
    "anchored_clip",
    "barlow_twins_higher_order",
    "barlow_twins_pair_loss",
    "barlow_twins_pairwise",
    "clip_loss",
    "clip_loss_unpaired_negatives",
    "effective_rank",
    "get_loss",
    "higher_order_loss",
    "joint_mask",
    "pair_clip",
    "tensor_clip",
    "tensor_clip_loss",
    "triple_similarity",
]


class LossFn(Protocol):
    """The common signature of every registered loss."""

    def __call__(self, z: dict[str, Tensor], masks: dict[str, Tensor], logit_scale: Tensor | None,
                 **options: object) -> Tensor: ...


LOSSES: dict[str, LossFn] = {
    "clip": pair_clip,  # one pair, options a="crystal", b="dos"
    "all_pairs_clip": all_pairs_clip,
    "anchored_clip": anchored_clip,
    "tensor_clip": tensor_clip,
    "barlow_twins_pairwise": barlow_twins_pairwise,
    "barlow_twins_higher_order": barlow_twins_higher_order,
}


def get_loss(name: str) -> LossFn:
    """The registered loss called ``name`` (a KeyError lists the known names)."""
    try:
        return LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown loss {name!r}; known: {sorted(LOSSES)}") from None
