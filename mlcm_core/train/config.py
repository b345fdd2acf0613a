"""Training configurations as plain dataclasses that round-trip through YAML (or JSON).

Why dataclasses: one typed object is what the training functions, the CLI and the checkpoint JSON all
share; ``asdict`` of it is stored in every checkpoint so a run can be reproduced or resumed from its
directory alone. YAML is used when PyYAML is installed, JSON otherwise (a ``.json`` file is always JSON).

The model is named by a preset ("cpu" or "paper", see ``MultimodalConfig``) plus optional nested
overrides, e.g. in YAML::

    model: cpu
    model_overrides: {embed_dim: 128, crystal: {hidden: 96}}
    loss: all_pairs_clip
    loss_options: {min_rows: 2}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mlcm_core.modalities import MODALITIES, modality_names
from mlcm_core.models.multimodal import MultimodalConfig

__all__ = ["FinetuneConfig", "TrainConfig", "dump_config", "load_config"]


def _yaml():
    try:
        import yaml
    except ImportError:
        return None
    return yaml


class _ConfigIO:
    """from_dict / to_dict / from_yaml / to_yaml shared by the config dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)} (known: {sorted(known)})")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    def to_yaml(self, path: str | Path | None = None) -> str:
        """YAML text (JSON if PyYAML is missing or ``path`` ends in .json); written to ``path`` if given."""
        data = _plain(self.to_dict())
        yaml = _yaml()
        as_json = yaml is None or (path is not None and str(path).endswith(".json"))
        text = json.dumps(data, indent=1) + "\n" if as_json else yaml.safe_dump(data, sort_keys=False)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, path_or_text: str | Path):
        """Read a config file (YAML, or JSON for .json files / without PyYAML) or YAML/JSON text."""
        p = Path(path_or_text) if not (isinstance(path_or_text, str) and "\n" in path_or_text) else None
        text = p.read_text() if p is not None and p.exists() else str(path_or_text)
        yaml = _yaml()
        if (p is not None and p.suffix == ".json") or yaml is None:
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)  # safe_load: plain data only, no Python objects
        if not isinstance(data, dict):
            raise TypeError(f"{path_or_text}: a config must be a mapping, got {type(data).__name__}")
        return cls.from_dict(data)


def _plain(value: Any) -> Any:
    """Tuples -> lists (for YAML safe_dump), recursively."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass
class TrainConfig(_ConfigIO):
    """Contrastive pre-training.

    Attributes:
        model, model_overrides: MultimodalConfig preset ("cpu" | "paper") and nested overrides.
        loss, loss_options: a name in mlcm_core.losses.LOSSES and its keyword options.
        epochs, batch_size: per process (under torchrun the global batch is batch_size x world size).
        lr, weight_decay, warmup_steps, min_lr_ratio: AdamW and the warm-up + cosine schedule
            (weight decay only on weight matrices/kernels, not on biases, norms or the temperature).
        grad_clip: max global gradient norm (None = off).
        seed: model init, data order, augmentation.
        modalities: encoders to train (a subset of the registered modalities: crystal, dos, density, ...).
        min_modalities: rows used = train-split materials with at least this many of ``modalities``.
        max_rows: cap on the rows used per split (quick runs); None = all.
        unpaired_per_batch: train-split rows having fewer than ``min_modalities`` of ``modalities`` (e.g.
            crystals without a DOS) added at random to every batch; with the loss option
            ``unpaired_negatives`` they are extra negatives, as the app's gallery of every crystal is.
        augment_density: random periodic translation of density grids (exact symmetry of the crystal).
        augment_dos: DOS as another code would give it (``models.dos.augment_dos``: extra Gaussian
            broadening, shifted zero); ``augment_dos_options`` are its keyword options.
        out_dir: run directory (config, log.csv, checkpoints/).
        log_every, checkpoint_every: in optimizer steps; a checkpoint is also written at every epoch end.
        keep_last: step checkpoints kept (older ones deleted; 0 keeps all).
        device: "auto" (CUDA if available), "cpu" or "cuda".
        amp: bfloat16 autocast on CUDA.
        num_workers: DataLoader worker processes.
        graph_cache_dir: featurized-graph cache (None = var/cache/graphs).
    """

    model: str = "cpu"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    loss: str = "all_pairs_clip"
    loss_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 20
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01
    grad_clip: float | None = 1.0
    seed: int = 0
    modalities: tuple[str, ...] = MODALITIES
    min_modalities: int = 2
    max_rows: int | None = None
    unpaired_per_batch: int = 0
    augment_density: bool = True
    augment_dos: bool = False
    augment_dos_options: dict[str, Any] = field(default_factory=dict)
    out_dir: str = "var/runs/pretrain"
    log_every: int = 10
    checkpoint_every: int = 500
    keep_last: int = 3
    device: str = "auto"
    amp: bool = False
    num_workers: int = 0
    graph_cache_dir: str | None = None

    def __post_init__(self) -> None:
        self.modalities = tuple(self.modalities)
        names = modality_names()
        if set(self.modalities) - set(names) or not self.modalities:
            raise ValueError(f"modalities must be a non-empty subset of {names}, got {self.modalities}")
        if self.epochs < 1 or self.batch_size < 1 or self.log_every < 1 or self.checkpoint_every < 1:
            raise ValueError("epochs, batch_size, log_every and checkpoint_every must be >= 1")
        if not 1 <= self.min_modalities <= len(self.modalities):
            raise ValueError(f"min_modalities must be in 1..{len(self.modalities)}, got {self.min_modalities}")

    def model_config(self) -> MultimodalConfig:
        """The MultimodalConfig this run trains (preset + overrides, restricted to ``modalities``)."""
        cfg = MultimodalConfig.preset(self.model)
        overrides = {**self.model_overrides}
        overrides.setdefault("modalities", tuple(m for m in modality_names() if m in self.modalities))
        return cfg.with_overrides(overrides)


@dataclass
class FinetuneConfig(_ConfigIO):
    """Supervised fine-tuning of the crystal encoder + an MLP head on one label.

    Attributes:
        model, model_overrides: crystal-encoder preset used when no pre-trained checkpoint is given.
        epochs, batch_size, lr, weight_decay, warmup_steps, min_lr_ratio, grad_clip, seed: as TrainConfig.
        encoder_lr_mult: LR multiplier of the (pre-trained) encoder relative to the head.
        freeze_encoder: train the head only (linear-probe style).
        head_hidden, head_layers, head_dropout: the MLP head (dropout also drives MC-dropout).
        loss: "l1", "mse" or "huber", on the standardised target.
        patience: early stopping on validation MAE (epochs without improvement; 0 = off).
        mc_dropout: if > 0, test predictions average this many stochastic passes (head dropout on) and
            report their standard deviation as the uncertainty.
        ensemble: train this many models (seeds seed, seed+1, ...) and average; their spread is the uncertainty.
        max_rows: cap on training rows (quick runs); val/test are never capped.
        out_dir, log_every, device, num_workers, graph_cache_dir: as TrainConfig.
    """

    model: str = "cpu"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    min_lr_ratio: float = 0.01
    grad_clip: float | None = 5.0
    seed: int = 0
    encoder_lr_mult: float = 0.1
    freeze_encoder: bool = False
    head_hidden: int = 128
    head_layers: int = 2
    head_dropout: float = 0.1
    loss: str = "l1"
    patience: int = 20
    mc_dropout: int = 0
    ensemble: int = 1
    max_rows: int | None = None
    out_dir: str = "var/runs/finetune"
    log_every: int = 50
    device: str = "auto"
    num_workers: int = 0
    graph_cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.loss not in ("l1", "mse", "huber"):
            raise ValueError(f"loss must be 'l1', 'mse' or 'huber', got {self.loss!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.ensemble < 1 or self.mc_dropout < 0:
            raise ValueError("epochs, batch_size, ensemble must be >= 1 and mc_dropout >= 0")


def load_config(path: str | Path, kind: str = "pretrain") -> TrainConfig | FinetuneConfig:
    """Read a TrainConfig ("pretrain") or FinetuneConfig ("finetune") file."""
    return (TrainConfig if kind == "pretrain" else FinetuneConfig).from_yaml(path)


def dump_config(config: TrainConfig | FinetuneConfig, path: str | Path) -> None:
    config.to_yaml(path)
