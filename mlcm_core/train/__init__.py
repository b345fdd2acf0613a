"""Training: contrastive pre-training of the multimodal model and supervised fine-tuning.

Why a package of its own: training is the only part of MLCM that owns mutable state on disk (checkpoints,
logs) and the only part that runs under torchrun; keeping it apart keeps the data and model modules free
of optimisers, schedules and process groups.

    from mlcm_core.train import TrainConfig, pretrain, FinetuneConfig, finetune
    ckpt = pretrain("precomputed/dataset", TrainConfig(out_dir="var/runs/pt"))
    result = finetune("precomputed/dataset", FinetuneConfig(), "band_gap", pretrained=ckpt)

Heavy modules are imported lazily so that ``import mlcm_core.train`` stays cheap. The checkpoint format
lives beside the models (``mlcm_core.models.checkpoint``): loading a model needs it, training does not own it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlcm_core.train.config import FinetuneConfig, TrainConfig
    from mlcm_core.train.finetune import FinetuneResult, finetune
    from mlcm_core.train.pretrain import pretrain
    from mlcm_core.train.schedule import lr_at, warmup_cosine_schedule

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "TrainConfig",
    "finetune",
    "lr_at",
    "pretrain",
    "warmup_cosine_schedule",
]

_WHERE = {
    "FinetuneConfig": "config", "TrainConfig": "config",
    "FinetuneResult": "finetune", "finetune": "finetune",
    "pretrain": "pretrain",
    "lr_at": "schedule", "warmup_cosine_schedule": "schedule",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"mlcm_core.train.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'mlcm_core.train' has no attribute {name!r}")
