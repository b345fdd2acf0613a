"""The modality registry: one ``ModalitySpec`` per input kind the model embeds (crystal, dos, density).

Why one home: featurization, the model, the losses, training, the explorer and the evaluation all loop over
the modalities; each reads what it needs from the spec (store column, batch mask key, array shape, encoder)
instead of keeping its own tuple or map. Adding a modality is ``register(ModalitySpec(...))``:
tests/test_modalities.py takes an extra one from the store to a query without editing another module.

Two input kinds exist:

* ``"graph"``: the crystal. Structures (the store column ``structure_json``) are featurized into periodic
  graphs; a batch holds one PyG ``Batch`` of the rows that have one (``MultimodalBatch.graphs``). At most one
  graph modality can be registered.
* ``"array"``: a fixed-shape float32 array per material (a DOS curve, a density grid, ...), read from the store
  by ``spec.read(store, ids)``; a batch holds ``(B, *shape)`` zeros where missing (``MultimodalBatch.inputs``).

Names are the modality's one name in the core API (model encoders, batch ``inputs``, loss ``z``/``masks``,
embedding tables, galleries). Names kept elsewhere for shipped formats and the app are written in the spec:
``store_flag`` (the store table's ``has_structure`` / ``has_charge_density`` columns), ``mask_key``
(``MultimodalBatch.masks``), and ``target`` (the ``Explorer.query`` argument ``structure``).

Importing this module does no work and imports no torch: encoder and config classes are named by import
path and resolved on first use (data and featurize sit below models).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np

    from mlcm_core.data.store import DatasetStore

__all__ = ["BUILTIN", "MODALITIES", "ModalitySpec", "get", "modality_names", "register", "registered", "specs",
           "unregister"]


@dataclass(frozen=True)
class ModalitySpec:
    """Everything the pipeline needs to know about one modality.

    Attributes:
        name: the modality's one name in the core API ("crystal", "dos", "density").
        kind: "graph" (structures featurized into crystal graphs) or "array" (fixed-shape arrays).
        store_flag: boolean column of the store table saying a material has it (e.g. "has_structure").
        store_column: "graph": the table column holding the structure JSON; "array": the store's array name
            (documentation; ``read`` does the reading).
        mask_key: key of its (B,) bool mask in ``MultimodalBatch.masks`` (e.g. "has_crystal").
        shape: per-material array shape, e.g. (601,); None for graphs.
        units: units of the array values ("" when dimensionless or not an array).
        label: display label (plots, reports, the app).
        encoder: the encoder class, or its "module:Class" path; built as ``encoder(config)``.
        config: the encoder config dataclass, or its "module:Class" path. Its ``paper()`` / ``cpu()``
            classmethods (if any) are the presets; it must have an ``out_dim`` field.
        read: "array": ``read(store, ids) -> (n, *shape)`` float32 (None for graphs).
        target: the name of its argument in ``Explorer.query`` (default: ``name``).
        chunk: materials read from the store at a time when embedding a store (bounds memory).
    """

    name: str
    kind: Literal["graph", "array"]
    store_flag: str
    store_column: str
    mask_key: str
    encoder: type | str
    config: type | str
    shape: tuple[int, ...] | None = None
    units: str = ""
    label: str = ""
    read: Callable[[DatasetStore, Sequence[str]], np.ndarray] | None = None
    target: str | None = None
    chunk: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("graph", "array"):
            raise ValueError(f"{self.name}: kind must be 'graph' or 'array', got {self.kind!r}")
        if self.kind == "array" and (self.shape is None or self.read is None):
            raise ValueError(f"{self.name}: an array modality needs a shape and a read function")
        if self.target is None:
            object.__setattr__(self, "target", self.name)
        if not self.label:
            object.__setattr__(self, "label", self.name)

    @property
    def config_cls(self) -> type:
        return _resolve(self.config)

    @property
    def encoder_cls(self) -> type:
        return _resolve(self.encoder)

    def build(self, config: Any) -> Any:
        """The encoder module for ``config`` (an instance of ``config_cls``)."""
        return self.encoder_cls(config)

    def preset_config(self, preset: str = "paper", out_dim: int | None = None) -> Any:
        """The encoder config of a named preset ("paper" | "cpu"; a config without it uses its defaults)."""
        cls = self.config_cls
        cfg = getattr(cls, preset)() if hasattr(cls, preset) else cls()
        return cfg if out_dim is None else replace(cfg, out_dim=out_dim)

    def config_from_dict(self, data: Any) -> Any:
        """The encoder config from its ``asdict`` form (lists become tuples; unknown keys are an error)."""
        cls = self.config_cls
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def _resolve(obj: type | str) -> type:
    if not isinstance(obj, str):
        return obj
    module, _, attr = obj.partition(":")
    return getattr(importlib.import_module(module), attr)


def _read_dos(store: DatasetStore, ids: Sequence[str]) -> np.ndarray:
    return store.dos(list(ids))


def _read_density(store: DatasetStore, ids: Sequence[str]) -> np.ndarray:
    return store.density(list(ids))


BUILTIN: tuple[ModalitySpec, ...] = (
    ModalitySpec(name="crystal", kind="graph", store_flag="has_structure", store_column="structure_json",
                 mask_key="has_crystal", encoder="mlcm_core.models.crystal:CrystalEncoder",
                 config="mlcm_core.models.crystal:CrystalEncoderConfig", label="crystal structure",
                 target="structure"),
    ModalitySpec(name="dos", kind="array", store_flag="has_dos", store_column="dos", mask_key="has_dos",
                 encoder="mlcm_core.models.dos:DOSEncoder", config="mlcm_core.models.dos:DOSEncoderConfig",
                 shape=(601,), units="states/eV per cell", label="DOS", read=_read_dos),
    ModalitySpec(name="density", kind="array", store_flag="has_charge_density", store_column="density",
                 mask_key="has_density", encoder="mlcm_core.models.density:DensityEncoder",
                 config="mlcm_core.models.density:DensityEncoderConfig", shape=(32, 32, 32),
                 units="each row's density_units (rho*V_cell, electrons per cell)", label="charge density",
                 read=_read_density, chunk=64),
)
MODALITIES: tuple[str, ...] = tuple(s.name for s in BUILTIN)  # the built-in three, in registry order

_REGISTRY: dict[str, ModalitySpec] = {s.name: s for s in BUILTIN}


def register(spec: ModalitySpec) -> ModalitySpec:
    """Add a modality (after the registered ones). Its name and mask key must be new; one graph modality at most."""
    if spec.name in _REGISTRY:
        raise ValueError(f"modality {spec.name!r} is already registered")
    if spec.mask_key in {s.mask_key for s in _REGISTRY.values()}:
        raise ValueError(f"mask key {spec.mask_key!r} is already used")
    if spec.kind == "graph" and any(s.kind == "graph" for s in _REGISTRY.values()):
        raise ValueError("only one graph modality can be registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a modality added by ``register`` (the built-in ones stay)."""
    if name in MODALITIES:
        raise ValueError(f"the built-in modality {name!r} cannot be unregistered")
    _REGISTRY.pop(name)


def get(name: str) -> ModalitySpec:
    """The spec of ``name`` (KeyError naming the registered ones)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown modality {name!r}; registered: {list(_REGISTRY)}") from None


def specs(names: Sequence[str] | None = None) -> Iterator[ModalitySpec]:
    """The registered specs in registry order (only ``names`` if given, still in registry order)."""
    return (s for s in _REGISTRY.values() if names is None or s.name in names)


def modality_names() -> tuple[str, ...]:
    """Every registered modality name, in registry order (the built-in three first)."""
    return tuple(_REGISTRY)


def registered(name: str) -> bool:
    return name in _REGISTRY
