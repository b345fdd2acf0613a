"""The multimodal model: one encoder per modality into one shared, L2-normalised embedding space.

Why this shape: contrastive pre-training (mlcm_core.losses) needs, for a batch of B materials, a (B, D)
embedding per modality with rows aligned by material, plus a learnable temperature. Most materials lack
some modalities, so each encoder runs ONLY on the rows that have its input (no compute, no BatchNorm
statistics and no gradient from zero-filled placeholders) and its output is scattered back into a (B, D)
zero tensor; the rows that are not masked hold zeros and are meaningless (the losses select rows by mask).

The temperature is CLIP's: a learnable log scale initialised at log(1/init_temperature); ``forward`` returns
it clamped to <= log(max_logit_scale) (= log 100 by default) and ``clamp_logit_scale_`` clamps the parameter
itself after each optimizer step, as CLIP does.

``MultimodalConfig`` nests the encoder configs and the graph featurization (the crystal encoder only
makes sense with the featurization it was trained on), so a checkpoint's JSON rebuilds the whole model and
its input pipeline. Every modality comes from the registry (``mlcm_core.modalities``): the built-in three
keep their config fields (``crystal``, ``dos``, ``density``: the checkpoint format), a registered extra one
keeps its config in ``encoders`` and, in ``to_dict``, under its own name beside them.
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

from mlcm_core import modalities as _modalities
from mlcm_core.featurize.crystal_graph import CrystalGraphConfig, collate_graphs, structure_to_graph
from mlcm_core.modalities import MODALITIES
from mlcm_core.models.crystal import CrystalEncoderConfig
from mlcm_core.models.density import DensityEncoderConfig
from mlcm_core.models.dos import DOSEncoderConfig

if TYPE_CHECKING:
    from mlcm_core.featurize.dataset import MultimodalBatch

__all__ = ["MODALITIES", "MultimodalConfig", "MultimodalModel", "config_from_dict"]



def config_from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """Rebuild a (nested) config dataclass from ``asdict`` output: JSON/YAML lists become tuples again.

    Unknown keys are an error (a typo in a config file must not be silently ignored). For a
    MultimodalConfig, a key naming a registered modality without a config field of its own is that
    modality's encoder config (see ``MultimodalConfig.to_dict``).
    """
    known = {f.name: f for f in fields(cls)}
    if cls is MultimodalConfig:
        extra = {k: v for k, v in data.items() if k not in known and _modalities.registered(k)}
        if extra:
            encoders = {**dict(data.get("encoders") or {}),
                        **{k: _modalities.get(k).config_from_dict(v) if isinstance(v, Mapping) else v
                           for k, v in extra.items()}}
            data = {**{k: v for k, v in data.items() if k not in extra}, "encoders": encoders}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    defaults = cls() if _has_defaults(cls) else None
    for name, value in data.items():
        default = getattr(defaults, name, None)
        if is_dataclass(default) and isinstance(value, Mapping):
            value = config_from_dict(type(default), value)
        elif name == "encoders" and isinstance(value, Mapping):
            value = {k: _modalities.get(k).config_from_dict(v) if isinstance(v, Mapping) else v for k, v in value.items()}
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
        modalities: which encoders exist (any non-empty subset of the registered modalities).
        init_temperature: CLIP temperature at initialisation (logit scale = 1 / temperature).
        max_logit_scale: the scale is clamped to at most this (CLIP: 100).
        learn_temperature: if False the logit scale is a fixed buffer.
        encoders: encoder configs of registered modalities other than the built-in three (a missing one
            takes its spec's paper preset); empty for the built-in three.
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
    encoders: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "modalities", tuple(self.modalities))
        names = _modalities.modality_names()
        if not self.modalities or set(self.modalities) - set(names) or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities must be a non-empty subset of {names}, got {self.modalities}")
        encoders = dict(self.encoders)
        for name in encoders:
            if name in MODALITIES or not _modalities.registered(name):
                raise ValueError(f"encoders holds configs of registered extra modalities only, got {name!r}")
        for name in self.modalities:
            if name not in MODALITIES and name not in encoders:
                encoders[name] = _modalities.get(name).preset_config("paper", self.embed_dim)
        object.__setattr__(self, "encoders", encoders)
        for name in self.modalities:
            out_dim = self.encoder_config(name).out_dim
            if out_dim != self.embed_dim:
                raise ValueError(f"{name} encoder out_dim {out_dim} != embed_dim {self.embed_dim}")
        if "crystal" in self.modalities and self.crystal.num_rbf != self.graph.num_rbf:
            raise ValueError(f"crystal encoder num_rbf {self.crystal.num_rbf} != graph num_rbf {self.graph.num_rbf}")
        if self.init_temperature <= 0 or self.max_logit_scale <= 0:
            raise ValueError("init_temperature and max_logit_scale must be positive")

    def encoder_config(self, name: str) -> Any:
        """The encoder config of modality ``name`` (its own field for the built-in three, else ``encoders``)."""
        return getattr(self, name) if name in MODALITIES else self.encoders[name]

    @classmethod
    def _from_preset(cls, preset: str, embed_dim: int) -> MultimodalConfig:
        configs = {s.name: s.preset_config(preset, embed_dim) for s in _modalities.specs()}
        return cls(**{m: configs.pop(m) for m in MODALITIES}, encoders=configs, embed_dim=embed_dim)

    @classmethod
    def paper(cls, embed_dim: int = 128, **overrides: Any) -> MultimodalConfig:
        """Paper sizes: PotNet (256 hidden), DOS transformer (d 128, 4 layers), 3D ResNeXt-50 (32x4d)."""
        return replace(cls._from_preset("paper", embed_dim), **overrides)

    @classmethod
    def cpu(cls, embed_dim: int = 128, **overrides: Any) -> MultimodalConfig:
        """Small encoders that train on 2 CPU cores (each encoder's own ``cpu()`` preset)."""
        return replace(cls._from_preset("cpu", embed_dim), **overrides)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> MultimodalConfig:
        if name not in ("paper", "cpu"):
            raise KeyError(f"unknown model preset {name!r}; choose 'paper' or 'cpu'")
        return getattr(cls, name)(**overrides)

    def to_dict(self) -> dict[str, Any]:
        """``asdict`` with each extra modality's encoder config under its own name (the checkpoint's
        ``model_config``; identical to plain ``asdict`` of the fields without extra modalities)."""
        data = asdict(self)
        data.update({k: v for k, v in data.pop("encoders").items() if k in self.modalities})
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MultimodalConfig:
        """Inverse of ``to_dict`` (missing fields take their defaults, i.e. the paper sizes)."""
        return config_from_dict(cls, data)

    def with_overrides(self, overrides: Mapping[str, Any]) -> MultimodalConfig:
        """A copy with nested overrides, e.g. ``{"crystal": {"hidden": 32}, "embed_dim": 64}``.

        Changing ``embed_dim`` also sets every encoder's ``out_dim`` unless the override names it.
        """
        data = asdict(self)
        data.update(data.pop("encoders"))  # every extra modality's config, also those not (yet) in modalities
        for key, value in overrides.items():
            if isinstance(value, Mapping) and isinstance(data.get(key), dict):
                unknown = set(value) - set(data[key])
                if unknown:
                    raise ValueError(f"unknown {key} config fields: {sorted(unknown)}")
                data[key].update(value)
            else:
                data[key] = value
        if "embed_dim" in overrides:
            for name in (m for m in _modalities.modality_names() if m in data):
                if "out_dim" not in (overrides.get(name) or {}):
                    data[name]["out_dim"] = overrides["embed_dim"]
        return config_from_dict(type(self), data)


class MultimodalModel(nn.Module):
    """Crystal / DOS / density encoders -> L2-normalised (B, embed_dim) embeddings + a clamped log scale."""

    def __init__(self, config: MultimodalConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or MultimodalConfig.paper()
        self.encoders = nn.ModuleDict({m: _modalities.get(m).build(cfg.encoder_config(m)) for m in cfg.modalities})
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
        for spec in map(_modalities.get, self.config.modalities):
            if spec.kind == "graph":
                rows = batch.graph_index  # (G,) batch rows of the graphs
                inputs = batch.graphs
            else:
                rows = batch.masks[spec.mask_key].nonzero().squeeze(1)  # (n,)
                inputs = batch.inputs[spec.name][rows]  # (n, *spec.shape)
            out[spec.name] = self._scatter(spec.name, inputs, rows, b)  # (B, D)
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
            modality: a modality of this model ("crystal", "dos", "density", or a registered one).
            inputs: crystal: a pymatgen Structure, a list of them, a Data graph, a list of graphs or a PyG
                Batch (structures are featurized with ``config.graph``); an array modality: one array of
                its spec's shape or a batch of them, e.g. dos (601,) or (B, 601), density (32, 32, 32) or
                (B, 32, 32, 32).

        Returns:
            (B, embed_dim) float tensor on the model's device.
        """
        if modality not in self.encoders:
            raise KeyError(f"this model has no {modality!r} encoder (has {list(self.encoders)})")
        spec = _modalities.get(modality)
        device = self.logit_scale.device
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                if spec.kind == "graph":
                    x = self._as_graph_batch(inputs).to(device)
                else:
                    x = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, Tensor) else inputs,
                                        dtype=torch.float32, device=device)
                    single = x.dim() == len(spec.shape)
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
        """Weights (safetensors) + config JSON in the directory ``path`` (see mlcm_core.models.checkpoint)."""
        from mlcm_core.models.checkpoint import save_checkpoint

        return save_checkpoint(path, self, step=step, epoch=epoch, extra=extra)

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> MultimodalModel:
        """Rebuild the model from a checkpoint directory written by ``save_checkpoint`` / pre-training."""
        from mlcm_core.models.checkpoint import META_FILE, CheckpointError, load_checkpoint, read_checkpoint_info

        info = read_checkpoint_info(path)
        try:
            model = cls(MultimodalConfig.from_dict(info.model_config))
        except (ValueError, TypeError, KeyError) as e:
            raise CheckpointError(f"{info.path / META_FILE}: its model_config does not build a model: {e}") from e
        load_checkpoint(path, model, map_location=map_location)
        return model.to(map_location)

    def num_parameters(self) -> dict[str, int]:
        return {m: sum(p.numel() for p in enc.parameters()) for m, enc in self.encoders.items()}
