"""The multimodal model: one encoder per modality into one shared, L2-normalised embedding space.

Why this shape: contrastive pre-training (mlcm_core.losses) needs, for a batch of B materials, a (B, D)
embedding per modality with rows aligned by material, plus a learnable temperature. Most materials lack
some modalities, so each encoder runs ONLY on the rows that have its input (no compute, no BatchNorm
statistics and no gradient from zero-filled placeholders) and its output is scattered back into a (B, D)
zero tensor; the rows that are not masked hold zeros and are meaningless (the losses select rows by mask).

The temperature is CLIP's: a learnable log scale initialised at log(1/init_temperature); ``forward`` returns
it clamped to <= log(max_logit_scale) (= log 100 by default) and ``clamp_logit_scale_`` clamps the parameter
itself after each optimizer step, as CLIP does.

``MultimodalConfig`` nests the three encoder configs and the graph featurization (the crystal encoder only
makes sense with the featurization it was trained on), so a checkpoint's JSON rebuilds the whole model and
its input pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlcm_core.featurize.crystal_graph import CrystalGraphConfig, collate_graphs, structure_to_graph
from mlcm_core.models.crystal import CrystalEncoder, CrystalEncoderConfig
from mlcm_core.models.density import DensityEncoder, DensityEncoderConfig
from mlcm_core.models.dos import DOSEncoder, DOSEncoderConfig

if TYPE_CHECKING:
    from mlcm_core.featurize.dataset import MultimodalBatch

__all__ = ["MODALITIES", "MultimodalConfig", "MultimodalModel", "config_from_dict"]

MODALITIES: tuple[str, ...] = ("crystal", "dos", "density")
_MASK_KEYS = {"crystal": "has_crystal", "dos": "has_dos", "density": "has_density"}


def config_from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """Rebuild a (nested) config dataclass from ``asdict`` output: JSON/YAML lists become tuples again.

    Unknown keys are an error (a typo in a config file must not be silently ignored).
    """
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    defaults = cls() if _has_defaults(cls) else None
    for name, value in data.items():
        default = getattr(defaults, name, None)
        if is_dataclass(default) and isinstance(value, Mapping):
            value = config_from_dict(type(default), value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def _has_defaults(cls: type) -> bool:
    try:
        cls()
    except TypeError:
        return False
    return True


@dataclass(frozen=True)
class MultimodalConfig:
    """Everything needed to rebuild a MultimodalModel.

    Attributes:
        crystal, dos, density: the encoder configs; each ``out_dim`` must equal ``embed_dim``.
        graph: how structures are featurized for the crystal encoder (``num_rbf`` must match).
        embed_dim: size of the shared embedding space (128 in the paper).
        modalities: which encoders exist (any non-empty subset of MODALITIES, in this order).
        init_temperature: CLIP temperature at initialisation (logit scale = 1 / temperature).
        max_logit_scale: the scale is clamped to at most this (CLIP: 100).
        learn_temperature: if False the logit scale is a fixed buffer.
    """

    crystal: CrystalEncoderConfig = field(default_factory=CrystalEncoderConfig.paper)
    dos: DOSEncoderConfig = field(default_factory=DOSEncoderConfig.paper)
    density: DensityEncoderConfig = field(default_factory=DensityEncoderConfig.paper)
    graph: CrystalGraphConfig = field(default_factory=CrystalGraphConfig)
    embed_dim: int = 128
    modalities: tuple[str, ...] = MODALITIES
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    learn_temperature: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "modalities", tuple(self.modalities))
        if not self.modalities or set(self.modalities) - set(MODALITIES) or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {self.modalities}")
        for name in self.modalities:
            out_dim = getattr(self, name).out_dim
            if out_dim != self.embed_dim:
                raise ValueError(f"{name} encoder out_dim {out_dim} != embed_dim {self.embed_dim}")
        if "crystal" in self.modalities and self.crystal.num_rbf != self.graph.num_rbf:
            raise ValueError(f"crystal encoder num_rbf {self.crystal.num_rbf} != graph num_rbf {self.graph.num_rbf}")
        if self.init_temperature <= 0 or self.max_logit_scale <= 0:
            raise ValueError("init_temperature and max_logit_scale must be positive")

    @classmethod
    def paper(cls, embed_dim: int = 128, **overrides: Any) -> MultimodalConfig:
        """Paper sizes: PotNet (256 hidden), DOS transformer (d 128, 4 layers), 3D ResNeXt-50 (32x4d)."""
        base = cls(crystal=CrystalEncoderConfig.paper(out_dim=embed_dim), dos=replace(DOSEncoderConfig.paper(), out_dim=embed_dim),
                   density=replace(DensityEncoderConfig.paper(), out_dim=embed_dim), embed_dim=embed_dim)
        return replace(base, **overrides)

    @classmethod
    def cpu(cls, embed_dim: int = 128, **overrides: Any) -> MultimodalConfig:
        """Small encoders that train on 2 CPU cores (each encoder's own ``cpu()`` preset)."""
        base = cls(crystal=CrystalEncoderConfig.cpu(out_dim=embed_dim), dos=replace(DOSEncoderConfig.cpu(), out_dim=embed_dim),
                   density=replace(DensityEncoderConfig.cpu(), out_dim=embed_dim), embed_dim=embed_dim)
        return replace(base, **overrides)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> MultimodalConfig:
        if name not in ("paper", "cpu"):
            raise KeyError(f"unknown model preset {name!r}; choose 'paper' or 'cpu'")
        return getattr(cls, name)(**overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MultimodalConfig:
        """Inverse of ``to_dict`` (missing fields take their defaults, i.e. the paper sizes)."""
        return config_from_dict(cls, data)

    def with_overrides(self, overrides: Mapping[str, Any]) -> MultimodalConfig:
        """A copy with nested overrides, e.g. ``{"crystal": {"hidden": 32}, "embed_dim": 64}``.

        Changing ``embed_dim`` also sets every encoder's ``out_dim`` unless the override names it.
        """
        data = asdict(self)
        for key, value in overrides.items():
            if isinstance(value, Mapping) and isinstance(data.get(key), dict):
                unknown = set(value) - set(data[key])
                if unknown:
                    raise ValueError(f"unknown {key} config fields: {sorted(unknown)}")
                data[key].update(value)
            else:
                data[key] = value
        if "embed_dim" in overrides:
            for name in MODALITIES:
                if "out_dim" not in (overrides.get(name) or {}):
                    data[name]["out_dim"] = overrides["embed_dim"]
        return config_from_dict(type(self), data)


class MultimodalModel(nn.Module):
    """Crystal / DOS / density encoders -> L2-normalised (B, embed_dim) embeddings + a clamped log scale."""

    def __init__(self, config: MultimodalConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or MultimodalConfig.paper()
        builders = {"crystal": lambda: CrystalEncoder(cfg.crystal), "dos": lambda: DOSEncoder(cfg.dos),
                    "density": lambda: DensityEncoder(cfg.density)}
        self.encoders = nn.ModuleDict({m: builders[m]() for m in cfg.modalities})
        init = torch.tensor(math.log(1.0 / cfg.init_temperature))
        if cfg.learn_temperature:
            self.logit_scale = nn.Parameter(init)
        else:
            self.register_buffer("logit_scale", init)

    @property
    def max_log_scale(self) -> float:
        return math.log(self.config.max_logit_scale)

    def forward(self, batch: MultimodalBatch) -> dict[str, Tensor]:
        """Embed every modality of a MultimodalBatch.

        Returns:
            {modality: (B, D) unit rows where the batch has that modality, zero rows elsewhere,
             "logit_scale": 0-d log scale clamped to <= log(max_logit_scale)}.
        """
        b = len(batch)
        out: dict[str, Tensor] = {}
        for name in self.config.modalities:
            if name == "crystal":
                rows = batch.graph_index  # (G,) batch rows of the graphs
                inputs = batch.graphs
            else:
                rows = batch.masks[_MASK_KEYS[name]].nonzero().squeeze(1)  # (n,)
                inputs = (batch.dos if name == "dos" else batch.density)[rows]  # (n, 601) / (n, 32, 32, 32)
            out[name] = self._scatter(name, inputs, rows, b)  # (B, D)
        out["logit_scale"] = self.logit_scale.clamp(max=self.max_log_scale)  # ()
        return out

    def _scatter(self, name: str, inputs: Any, rows: Tensor, b: int) -> Tensor:
        """Encode the n present rows, normalise, and place them into a (B, D) zero tensor."""
        ref = self.logit_scale
        if rows.numel() == 0:
            return ref.new_zeros(b, self.config.embed_dim)
        z = F.normalize(self.encoders[name](inputs).float(), dim=-1)  # (n, D), float32 also under autocast
        return z.new_zeros(b, z.shape[1]).index_copy(0, rows, z)  # (B, D)

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Clamp the parameter in place (call after each optimizer step)."""
        self.logit_scale.clamp_(max=self.max_log_scale)

    # -- inference ------------------------------------------------------------------------------------
    def embed(self, modality: str, inputs: Any) -> Tensor:
        """L2-normalised embeddings of one modality, in eval mode and without gradients.

        Args:
            modality: "crystal", "dos" or "density".
            inputs: crystal: a pymatgen Structure, a list of them, a Data graph, a list of graphs or a PyG
                Batch (structures are featurized with ``config.graph``); dos: (601,) or (B, 601) array or
                tensor; density: (32, 32, 32) or (B, 32, 32, 32).

        Returns:
            (B, embed_dim) float tensor on the model's device.
        """
        if modality not in self.encoders:
            raise KeyError(f"this model has no {modality!r} encoder (has {list(self.encoders)})")
        device = self.logit_scale.device
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                if modality == "crystal":
                    x = self._as_graph_batch(inputs).to(device)
                else:
                    x = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, Tensor) else inputs,
                                        dtype=torch.float32, device=device)
                    single = x.dim() == (1 if modality == "dos" else 3)
                    x = x.unsqueeze(0) if single else x
                return F.normalize(self.encoders[modality](x), dim=-1)
        finally:
            self.train(was_training)

    def _as_graph_batch(self, inputs: Any) -> Any:
        from pymatgen.core import Structure
        from torch_geometric.data import Batch, Data

        if isinstance(inputs, Batch):
            return inputs
        items = [inputs] if isinstance(inputs, (Structure, Data)) else list(inputs)
        graphs = [structure_to_graph(x, self.config.graph) if isinstance(x, Structure) else x for x in items]
        return collate_graphs(graphs)

    # -- persistence ----------------------------------------------------------------------------------
    def save_checkpoint(self, path: str | Path, *, step: int = 0, epoch: int = 0,
                        extra: Mapping[str, Any] | None = None) -> Path:
        """Weights (safetensors) + config JSON in the directory ``path`` (see mlcm_core.train.checkpoint)."""
        from mlcm_core.train.checkpoint import save_checkpoint

        return save_checkpoint(path, self, step=step, epoch=epoch, extra=extra)

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> MultimodalModel:
        """Rebuild the model from a checkpoint directory written by ``save_checkpoint`` / pre-training."""
        from mlcm_core.train.checkpoint import META_FILE, CheckpointError, load_checkpoint, read_checkpoint_info

        info = read_checkpoint_info(path)
        try:
            model = cls(MultimodalConfig.from_dict(info.model_config))
        except (ValueError, TypeError, KeyError) as e:
            raise CheckpointError(f"{info.path / META_FILE}: its model_config does not build a model: {e}") from e
        load_checkpoint(path, model, map_location=map_location)
        return model.to(map_location)

    def num_parameters(self) -> dict[str, int]:
        return {m: sum(p.numel() for p in enc.parameters()) for m, enc in self.encoders.items()}
