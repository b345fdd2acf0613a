"""Checkpoints that can be shared and loaded without trusting their author.

Why this format: ``torch.save`` of a model pickles Python objects, and unpickling a file from someone else
can run arbitrary code. A checkpoint here is a directory of three files:

    model.safetensors    the weights (safetensors: a JSON header + raw tensor bytes, nothing executable)
    checkpoint.json      format_version, model class and ``config.to_dict()`` (``asdict``), step, epoch, training config,
                         SHA-256 of the two binary files, free-form ``extra``
    training_state.pt    optional: optimizer, LR scheduler and RNG states, written with ``torch.save`` of
                         tensors/numbers/strings only and read back with ``torch.load(weights_only=True)``,
                         which refuses any other object (so a planted pickle raises instead of running)

Weights are only ever read from ``.safetensors`` files; any other weight file is refused. Loading checks
every tensor name and shape against the model and names the first mismatch. Writes are atomic: the files go
to a temporary sibling directory that is renamed into place, so an interrupted save never leaves a
half-written checkpoint under the final name.
"""

from __future__ import annotations

import datetime as _dt
import json
import random
import shutil
import struct
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mlcm_core.io import ChecksumError, atomic_write_text, file_digests, sha256_file, staged_dir, verify_file

__all__ = [
    "FORMAT_VERSION",
    "CheckpointChecksumError",
    "CheckpointError",
    "CheckpointInfo",
    "export_checkpoint",
    "get_rng_state",
    "latest_checkpoint",
    "load_checkpoint",
    "load_state_dict_checked",
    "load_training_state",
    "load_weights",
    "read_checkpoint_info",
    "save_checkpoint",
    "set_rng_state",
]

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "checkpoint.json"
STATE_FILE = "training_state.pt"
LATEST_FILE = "latest"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, malformed, unsafe or does not fit the model."""


class CheckpointChecksumError(CheckpointError, ChecksumError):
    """A checkpoint file is missing or differs from the SHA-256 in checkpoint.json (a CheckpointError and an
    ``mlcm_core.io.ChecksumError``)."""


@dataclass
class CheckpointInfo:
    """What checkpoint.json says (plus its directory)."""

    path: Path
    format_version: int
    model_class: str
    model_config: dict[str, Any]
    step: int
    epoch: int
    train_config: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # file name -> SHA-256


# ----------------------------------------------------------------------------------------------------------
# helpers


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return value.to_dict() if hasattr(value, "to_dict") else asdict(value)
    return value


def get_rng_state() -> dict[str, Tensor]:
    """torch (CPU and CUDA), numpy and Python RNG states as tensors (loadable with weights_only=True)."""
    state: dict[str, Tensor] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for k, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda{k}"] = s
    _kind, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    state["numpy_rest"] = torch.tensor([pos, has_gauss, float(cached)], dtype=torch.float64)
    version, internal, gauss = random.getstate()
    state["python"] = torch.tensor([version, *internal], dtype=torch.int64)
    state["python_gauss"] = torch.tensor([float("nan") if gauss is None else gauss], dtype=torch.float64)
    return state


def set_rng_state(state: Mapping[str, Tensor]) -> None:
    """Inverse of get_rng_state (CUDA states for devices that do not exist are ignored)."""
    torch.set_rng_state(state["torch"].cpu())
    if torch.cuda.is_available():
        cuda = [state[f"cuda{k}"].cpu() for k in range(torch.cuda.device_count()) if f"cuda{k}" in state]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    if "numpy_keys" in state:
        pos, has_gauss, cached = state["numpy_rest"].tolist()
        np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    if "python" in state:
        values = state["python"].tolist()
        gauss = float(state["python_gauss"][0])
        random.setstate((values[0], tuple(values[1:]), None if np.isnan(gauss) else gauss))


# ----------------------------------------------------------------------------------------------------------
# saving


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    config: Any = None,
    step: int = 0,
    epoch: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    rng: Mapping[str, Any] | None = None,
    train_config: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory at ``path`` atomically and return it.

    Args:
        model: the module (unwrap DDP first); its ``state_dict`` goes to model.safetensors.
        config: the model's config dataclass (default ``model.config``), stored as ``asdict``.
        optimizer, scheduler: their ``state_dict``s go to training_state.pt (with ``rng``, if given: a dict of
            tensors or lists of tensors, e.g. ``{"rank0": get_rng_state()}``).
        train_config: the training config (dataclass or dict) for reference and resume checks.
        extra: JSON-serialisable details (e.g. the position within an epoch, metrics).
    """
    from safetensors.torch import save_file

    path = Path(path)
    config = config if config is not None else getattr(model, "config", None)
    with staged_dir(path) as tmp:  # re-saving the same name swaps the folders; an interrupted save leaves none
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "mlcm_format_version": str(FORMAT_VERSION)})
        files = [WEIGHTS_FILE]
        if optimizer is not None or scheduler is not None or rng is not None:
            state = {"optimizer": optimizer.state_dict() if optimizer is not None else None,
                     "scheduler": scheduler.state_dict() if scheduler is not None else None,
                     "rng": dict(rng) if rng is not None else None}
            torch.save(state, tmp / STATE_FILE)
            files.append(STATE_FILE)
        meta = {
            "format_version": FORMAT_VERSION,
            "model_class": type(model).__name__,
            "model_config": _jsonable(config) if config is not None else {},
            "step": int(step),
            "epoch": int(epoch),
            "train_config": _jsonable(train_config),
            "extra": dict(extra or {}),
            "files": file_digests(tmp, files),
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "torch_version": torch.__version__,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1, default=str))
    return path


# ----------------------------------------------------------------------------------------------------------
# loading


def _checkpoint_dir(path: str | Path) -> Path:
    """The checkpoint directory for ``path``: itself, or the directory a run's ``latest`` pointer names."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise CheckpointError(
                f"refusing to load {path}: only .safetensors weight files (or checkpoint directories) are accepted; "
                "pickle-based formats (.pt, .pth, .bin, .ckpt, .pkl) can execute code when loaded")
        return path.parent
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint at {path}")
    if not (path / META_FILE).exists():
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"{path} holds no {META_FILE} and no checkpoints")
        return latest
    return path


def read_checkpoint_info(path: str | Path) -> CheckpointInfo:
    """Parse checkpoint.json (no binary file is read)."""
    ckpt = _checkpoint_dir(path)
    meta_path = ckpt / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {meta_path}: {e}") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path}: not a checkpoint description (a JSON object is expected)")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: checkpoint format_version {version!r}, this code reads {FORMAT_VERSION}")
    kinds = {"model_config": dict, "extra": dict, "files": dict, "train_config": dict, "model_class": str}
    for key, kind in kinds.items():
        if meta.get(key) is not None and not isinstance(meta[key], kind):
            raise CheckpointError(f"{meta_path}: {key!r} must be a {kind.__name__}, got {type(meta[key]).__name__}")
    if not all(isinstance(v, str) for v in (meta.get("files") or {}).values()):
        raise CheckpointError(f"{meta_path}: 'files' must map file names to SHA-256 strings")
    for key in ("step", "epoch"):
        if not isinstance(meta.get(key, 0), int) or isinstance(meta.get(key, 0), bool) or meta.get(key, 0) < 0:
            raise CheckpointError(f"{meta_path}: {key!r} must be a non-negative integer, got {meta.get(key)!r}")
    return CheckpointInfo(path=ckpt, format_version=version, model_class=meta.get("model_class", ""),
                          model_config=meta.get("model_config") or {}, step=int(meta.get("step", 0)),
                          epoch=int(meta.get("epoch", 0)), train_config=meta.get("train_config"),
                          extra=meta.get("extra") or {}, files=meta.get("files") or {})


def _verify(info: CheckpointInfo, name: str) -> Path:
    """``info.path / name``, present and (if checkpoint.json records its SHA-256) unmodified."""
    return verify_file(info.path / name, info.files.get(name), error=CheckpointChecksumError)


def _check_safetensors_header(path: Path) -> None:
    """Cheap format check before parsing: 8-byte little-endian header length, then a JSON object."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        raise CheckpointError(f"{path} is not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", head[:8])
    if n + 8 > size or head[8:9] != b"{":
        raise CheckpointError(f"{path} is not a safetensors file (refusing to load it any other way)")


def load_weights(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Tensor]:
    """All tensors of a .safetensors file (or of a checkpoint directory's model.safetensors)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        info = read_checkpoint_info(path)
        path = _verify(info, WEIGHTS_FILE)
    elif path.suffix != ".safetensors":
        _checkpoint_dir(path)  # raises the refusal
    if not path.exists():
        raise CheckpointError(f"no weights file at {path}")
    _check_safetensors_header(path)
    try:
        return load_file(str(path), device=str(map_location))
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not a valid safetensors file: {e}") from e


def load_state_dict_checked(model: nn.Module, tensors: Mapping[str, Tensor], *, strict: bool = True,
                            source: str = "checkpoint") -> None:
    """``model.load_state_dict`` with errors that name the offending tensor and both shapes.

    With ``strict`` every model tensor must be present and no extra tensor may be; without it, missing or
    extra names are allowed but a tensor present in both must still have the same shape.
    """
    own = model.state_dict()
    for name, value in tensors.items():
        if name in own and tuple(own[name].shape) != tuple(value.shape):
            raise CheckpointError(
                f"shape mismatch for tensor {name!r}: {source} has {tuple(value.shape)}, the model expects "
                f"{tuple(own[name].shape)} (was the checkpoint made with another model config?)")
    if strict:
        missing = [k for k in own if k not in tensors]
        unexpected = [k for k in tensors if k not in own]
        if missing or unexpected:
            raise CheckpointError(f"{source} does not match the model: missing tensors {missing[:5]}, "
                                  f"unexpected tensors {unexpected[:5]}")
    model.load_state_dict(dict(tensors), strict=strict)


def load_training_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """training_state.pt read with ``weights_only=True``: any object other than tensors/containers is refused."""
    info = read_checkpoint_info(path)
    state_path = _verify(info, STATE_FILE)
    try:
        return torch.load(state_path, map_location=map_location, weights_only=True)
    except Exception as e:  # UnpicklingError for non-allow-listed globals, RuntimeError for bad archives
        raise CheckpointError(f"refusing to load {state_path}: it is not a plain-tensor state file ({e})") from e


def load_checkpoint(
    path: str | Path,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    *,
    strict: bool = True,
    restore_rng: bool = False,
    map_location: str | torch.device = "cpu",
) -> CheckpointInfo:
    """Load a checkpoint into ``model`` (and optionally optimizer, scheduler, RNG); returns its info.

    ``path`` is a checkpoint directory, a run directory with a ``checkpoints/latest`` pointer, or a
    ``.safetensors`` file inside a checkpoint directory. Raises CheckpointError for unsafe files (anything but
    safetensors weights; non-tensor objects in training_state.pt), checksum mismatches and tensors whose
    names or shapes do not fit the model.
    """
    info = read_checkpoint_info(path)
    if model is not None:
        load_state_dict_checked(model, load_weights(info.path, map_location), strict=strict,
                                source=str(info.path / WEIGHTS_FILE))
    if optimizer is not None or scheduler is not None or restore_rng:
        state = load_training_state(info.path, map_location)
        if optimizer is not None:
            if state.get("optimizer") is None:
                raise CheckpointError(f"{info.path} holds no optimizer state")
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            if state.get("scheduler") is None:
                raise CheckpointError(f"{info.path} holds no scheduler state")
            scheduler.load_state_dict(state["scheduler"])
        if restore_rng and state.get("rng"):
            rng = state["rng"]
            set_rng_state(rng.get("rank0", rng) if isinstance(rng, dict) else rng)
    return info


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest checkpoint under ``directory`` (a run dir or its ``checkpoints/``), or None.

    Follows the ``latest`` pointer when it names an existing checkpoint, else takes the highest step.
    """
    directory = Path(directory)
    for base in (directory / "checkpoints", directory):
        pointer = base / LATEST_FILE
        if pointer.exists():
            target = base / pointer.read_text().strip()
            if (target / META_FILE).exists():
                return target
        candidates = sorted(p for p in base.glob("step-*") if (p / META_FILE).exists())
        if candidates:
            return candidates[-1]
    return None


def write_latest_pointer(checkpoint: Path) -> None:
    """Point ``<dir>/latest`` at ``checkpoint`` (atomically)."""
    atomic_write_text(checkpoint.parent / LATEST_FILE, checkpoint.name + "\n")


def export_checkpoint(source: str | Path, dest: str | Path, *, extra_files: Mapping[str, str | Path] | None = None,
                      note: Mapping[str, Any] | None = None) -> Path:
    """Copy a checkpoint's weights and description (not its optimizer state) to ``dest``, verified and atomic.

    Why: the shipped default must be a byte-identical copy of a run's weights, so that numbers measured on the
    run reproduce on the copy; the optimizer state (a torch pickle) has no place in a shipped folder.
    ``source`` is a checkpoint directory or a run directory (its latest checkpoint); ``extra_files`` maps
    names in ``dest`` to files to copy beside the weights (e.g. the run's config and log); ``note`` is
    recorded under ``extra["exported"]`` together with the source path.
    """
    info = read_checkpoint_info(source)
    weights = _verify(info, WEIGHTS_FILE)
    digest = info.files.get(WEIGHTS_FILE) or sha256_file(weights)
    meta = json.loads((info.path / META_FILE).read_text())
    meta["files"] = {WEIGHTS_FILE: digest}
    meta.setdefault("extra", {})["exported"] = {"from": str(info.path), **_jsonable(dict(note or {}))}
    with staged_dir(dest) as tmp:
        shutil.copyfile(weights, tmp / WEIGHTS_FILE)
        verify_file(tmp / WEIGHTS_FILE, digest, error=CheckpointChecksumError)  # replaced while copying?
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1, default=str))
        for name, path in (extra_files or {}).items():
            shutil.copyfile(path, tmp / name)
    return Path(dest)
