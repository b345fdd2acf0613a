"""Supervised fine-tuning: the (optionally pre-trained) crystal encoder + an MLP head regressing one label.

Why this protocol: it is how a pre-trained embedding is judged (does contrastive pre-training help a
property predictor?), so it must be leak-free and comparable between runs:

* the model is fitted on split == "train" rows only; validation rows choose the epoch (early stopping on
  validation MAE, best weights kept) and nothing else; test rows are predicted once, at the end, and
  their MAE is the reported number. The split is the store's one de-duplicated split.
* targets: band gap (eV), formation energy per atom (eV/atom), log10 K_VRH and log10 G_VRH (log10 GPa;
  materials with a modulus <= 0 are dropped, the log being undefined). The MAE is reported in these units,
  next to the MAE of always predicting the training mean, as a floor to beat.
* the target is standardised with training-set statistics; the head sees the encoder's raw (not
  L2-normalised) 128-d output.
* uncertainty: ``mc_dropout`` (N stochastic passes with the head's dropout on; BatchNorm stays in eval)
  and/or ``ensemble`` (K independently seeded models); the reported ``y_std`` combines both.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from mlcm_core.data.conventions import LABELS
from mlcm_core.featurize.dataset import MultimodalBatch, MultimodalDataset, collate_multimodal
from mlcm_core.io import atomic_write_text
from mlcm_core.models.crystal import CrystalEncoder, CrystalEncoderConfig
from mlcm_core.models.multimodal import MultimodalConfig
from mlcm_core.models.checkpoint import (META_FILE, load_checkpoint, load_state_dict_checked, load_weights,
                                         read_checkpoint_info, save_checkpoint)
from mlcm_core.train.config import FinetuneConfig
from mlcm_core.train.pretrain import _open_store, param_groups
from mlcm_core.train.schedule import warmup_cosine_schedule

if TYPE_CHECKING:
    from mlcm_core.data.store import DatasetStore

__all__ = ["TARGETS", "FinetuneResult", "PropertyRegressor", "TargetSpec", "finetune", "resolve_target", "split_rows"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetSpec:
    """A regression target: the store column, the transform applied to it and the unit after it."""

    name: str
    column: str
    transform: str  # "identity" or "log10"
    unit: str
    # training rows only: where ``column`` has no value, the first of these columns that has one (the same
    # quantity at the same level of theory from another code), for materials from ``train_fill_sources``
    train_fill: tuple[str, ...] = ()
    train_fill_sources: tuple[str, ...] = ()

    def apply(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(transformed values, rows kept): NaN rows are dropped, and rows <= 0 for log10."""
        values = np.asarray(values, dtype=np.float64)
        keep = np.isfinite(values)
        if self.transform == "log10":
            keep &= values > 0
            out = np.full_like(values, np.nan)
            out[keep] = np.log10(values[keep])
            return out, keep
        return values, keep


TARGETS: dict[str, TargetSpec] = {
    # PBE band gap: MP's value; a training material without one takes our GPAW PBE gap (on the 161 materials
    # with both: MAE 0.093 eV, median 0.030 eV). Only MP materials: adding the hypothetical perov_5 cells made
    # Magpie + RF worse on the MP test rows (0.53 -> 0.59 eV), the MP ones better (0.53 -> 0.51; docs/predictions.md).
    "band_gap": TargetSpec("band_gap", "band_gap_mp_pbe", "identity", "eV", train_fill=("band_gap_gpaw_pbe",),
                           train_fill_sources=("matminer-0.3.9",)),
    "formation_energy_per_atom": TargetSpec("formation_energy_per_atom", "formation_energy_per_atom_mp_pbe",
                                            "identity", "eV/atom"),
    "log10_k_vrh": TargetSpec("log10_k_vrh", "k_vrh_mp_pbe", "log10", "log10(GPa)"),
    "log10_g_vrh": TargetSpec("log10_g_vrh", "g_vrh_mp_pbe", "log10", "log10(GPa)"),
}
_ALIASES = {"formation_energy": "formation_energy_per_atom", "k_vrh": "log10_k_vrh", "g_vrh": "log10_g_vrh"}


def resolve_target(target: str) -> TargetSpec:
    """A name in TARGETS (or an alias: formation_energy, k_vrh, g_vrh) or any registered label column.

    Moduli columns (k_vrh_*, g_vrh_*) are always regressed in log10.
    """
    name = _ALIASES.get(target, target)
    if name in TARGETS:
        return TARGETS[name]
    if target in LABELS:
        is_modulus = target.startswith(("k_vrh_", "g_vrh_"))
        unit = LABELS[target].unit
        return TargetSpec(target, target, "log10" if is_modulus else "identity",
                          f"log10({unit})" if is_modulus else unit)
    raise KeyError(f"unknown target {target!r}; choose from {sorted(TARGETS)}, {sorted(_ALIASES)} or a label column")


class PropertyRegressor(nn.Module):
    """CrystalEncoder -> MLP head -> one scalar per graph (standardised units)."""

    def __init__(self, encoder_config: CrystalEncoderConfig, hidden: int = 128, layers: int = 2,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = CrystalEncoder(encoder_config)
        blocks: list[nn.Module] = []
        width = encoder_config.out_dim
        for _ in range(max(layers - 1, 0)):
            blocks += [nn.Dropout(dropout), nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        blocks += [nn.Dropout(dropout), nn.Linear(width, 1)]
        self.head = nn.Sequential(*blocks)

    def forward(self, graphs: Any) -> Tensor:
        return self.head(self.encoder(graphs)).squeeze(-1)  # (G,)

    def mc_dropout_mode(self) -> None:
        """Eval mode everywhere except the head's dropout layers (for MC-dropout sampling)."""
        self.eval()
        for m in self.head.modules():
            if isinstance(m, nn.Dropout):
                m.train()


@dataclass
class FinetuneResult:
    """What a fine-tuning run reports (MAEs in the target's transformed unit, e.g. log10 GPa)."""

    target: str
    column: str
    transform: str
    unit: str
    n_train: int
    n_val: int
    n_test: int
    val_mae: float
    test_mae: float
    test_mae_mean_baseline: float  # always predicting the training mean
    best_epochs: list[int]
    out_dir: Path
    checkpoints: list[Path]
    predictions: pd.DataFrame  # test rows: id, y_true, y_pred, y_std
    train_ids: list[str] = field(repr=False, default_factory=list)
    val_ids: list[str] = field(repr=False, default_factory=list)
    test_ids: list[str] = field(repr=False, default_factory=list)
    history: list[dict[str, float]] = field(repr=False, default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "column": self.column, "transform": self.transform, "unit": self.unit,
                "n_train": self.n_train, "n_val": self.n_val, "n_test": self.n_test, "val_mae": self.val_mae,
                "test_mae": self.test_mae, "test_mae_mean_baseline": self.test_mae_mean_baseline,
                "best_epochs": self.best_epochs, "out_dir": str(self.out_dir),
                "checkpoints": [str(p) for p in self.checkpoints]}


# ----------------------------------------------------------------------------------------------------------


def split_rows(store: DatasetStore, spec: TargetSpec, split: str) -> tuple[list[str], np.ndarray]:
    """(ids sorted, transformed target) of ``split`` rows with a structure and a valid ``spec`` value.

    Training rows without a value in ``spec.column`` take one from ``spec.train_fill`` (see TargetSpec).

    The one selection of fine-tuning rows; the Magpie baseline (``evaluate.baseline.target_rows``) uses it too,
    so baseline and fine-tuning see the same materials.
    """
    t = store.table
    if spec.column not in t:
        return [], np.zeros(0)
    sub = t[(t["split"] == split) & t["has_structure"].fillna(False).astype(bool)]
    values = sub[spec.column].to_numpy(dtype=np.float64, na_value=np.nan)
    if split == "train":  # val and test rows are the target column's own values, always
        allowed = sub["source"].isin(spec.train_fill_sources).to_numpy()
        for column in (c for c in spec.train_fill if c in sub):
            fill = np.isnan(values) & allowed
            values[fill] = sub[column].to_numpy(dtype=np.float64, na_value=np.nan)[fill]
    y, keep = spec.apply(values)
    ids = sub["id"].astype(str).to_numpy()[keep]
    order = np.argsort(ids)
    return ids[order].tolist(), y[keep][order]


def _encoder_from_pretrained(path: Path) -> tuple[CrystalEncoderConfig, Any, dict[str, Tensor]]:
    """(crystal encoder config, graph config, encoder weights) from a pre-training checkpoint."""
    info = read_checkpoint_info(path)
    mcfg = MultimodalConfig.from_dict(info.model_config)
    if "crystal" not in mcfg.modalities:
        raise ValueError(f"{path}: the pre-trained model has no crystal encoder (modalities {mcfg.modalities})")
    prefix = "encoders.crystal."
    weights = {k[len(prefix):]: v for k, v in load_weights(info.path).items() if k.startswith(prefix)}
    return mcfg.crystal, mcfg.graph, weights


def _predict(model: PropertyRegressor, loader: DataLoader, device: torch.device, passes: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) over ``passes`` stochastic passes (1 = deterministic eval), standardised units."""
    if passes > 1:
        model.mc_dropout_mode()
    else:
        model.eval()
    runs = []
    with torch.no_grad():
        for _ in range(max(passes, 1)):
            preds = [model(b.graphs.to(device)).float().cpu() for b in loader]
            runs.append(torch.cat(preds).numpy() if preds else np.zeros(0))
    model.train()
    stack = np.stack(runs)  # (passes, n)
    return stack.mean(0), stack.std(0)


def _loss(pred: Tensor, y: Tensor, kind: str) -> Tensor:
    if kind == "l1":
        return F.l1_loss(pred, y)
    if kind == "mse":
        return F.mse_loss(pred, y)
    return F.huber_loss(pred, y, delta=1.0)


def _train_member(member: int, cfg: FinetuneConfig, enc_cfg: CrystalEncoderConfig, weights: dict[str, Tensor] | None,
                  train: Subset, val: Subset | None, column: str, stats: tuple[float, float],
                  device: torch.device, history: list[dict[str, float]]) -> tuple[PropertyRegressor, int, float]:
    seed = cfg.seed + member
    torch.manual_seed(seed)
    model = PropertyRegressor(enc_cfg, cfg.head_hidden, cfg.head_layers, cfg.head_dropout)
    if weights is not None:
        load_state_dict_checked(model.encoder, weights, source="pre-trained crystal encoder")
    model.to(device)
    if cfg.freeze_encoder:
        model.encoder.requires_grad_(False)
    enc_lr = cfg.lr * (cfg.encoder_lr_mult if weights is not None else 1.0)
    groups = [dict(g, lr=enc_lr) for g in param_groups(model.encoder, cfg.weight_decay) if g["params"]] \
        + [dict(g, lr=cfg.lr) for g in param_groups(model.head, cfg.weight_decay) if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    drop_last = len(train) > cfg.batch_size
    loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=True, generator=gen, drop_last=drop_last,
                        collate_fn=collate_multimodal, num_workers=cfg.num_workers)
    val_loader = DataLoader(val, batch_size=cfg.batch_size, collate_fn=collate_multimodal) if val is not None else None
    scheduler = warmup_cosine_schedule(optimizer, cfg.warmup_steps, cfg.epochs * len(loader), cfg.min_lr_ratio)
    mean, std = stats
    best_mae, best_epoch, best_state, bad, step = math.inf, cfg.epochs, None, 0, 0
    y_val = val.dataset.label(column)[val.indices] if val is not None else None
    for epoch in range(cfg.epochs):
        model.train()
        total, n = 0.0, 0
        for batch in loader:
            batch: MultimodalBatch
            y = ((batch.labels[column] - mean) / std).to(device)  # (B,) every row has a graph and the label
            loss = _loss(model(batch.graphs.to(device)), y[batch.graph_index.to(device)], cfg.loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            total, n = total + float(loss.detach()) * len(batch), n + len(batch)
        row = {"member": member, "epoch": epoch + 1, "step": step, "train_loss": total / max(n, 1),
               "lr": float(optimizer.param_groups[-1]["lr"])}
        if val_loader is not None:
            pred, _ = _predict(model, val_loader, device, 1)
            row["val_mae"] = float(np.mean(np.abs(pred * std + mean - y_val)))
            if row["val_mae"] < best_mae:
                best_mae, best_epoch, bad = row["val_mae"], epoch + 1, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad += 1
        history.append(row)
        if val_loader is not None and cfg.patience and bad >= cfg.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model, best_epoch, best_mae


# config fields that do not change what member k learns (its seed is config.seed + k whatever the ensemble size)
_NOT_THE_MEMBERS = frozenset({"out_dir", "ensemble", "log_every", "device", "num_workers", "graph_cache_dir"})


def _finished_member(path: Path, config: FinetuneConfig, enc_cfg: CrystalEncoderConfig, column: str,
                     stats: tuple[float, float], device: torch.device,
                     ) -> tuple[PropertyRegressor, int, float, list[dict[str, float]]] | None:
    """A member an earlier run of this config saved at ``path`` (model, best epoch, val MAE, history), or None.

    Why: an ensemble of from-scratch members takes hours on 2 cores, longer than a session; each finished member
    is kept. One saved by a different config, target or training-row statistics is an error, not reused.
    """
    if not (path / META_FILE).exists():
        return None
    info = read_checkpoint_info(path)
    mine = {k: v for k, v in config.to_dict().items() if k not in _NOT_THE_MEMBERS}
    theirs = {k: v for k, v in (info.train_config or {}).items() if k not in _NOT_THE_MEMBERS}
    same_rows = np.allclose([info.extra.get("y_mean", np.nan), info.extra.get("y_std", np.nan)], stats)
    if mine != theirs or info.extra.get("column") != column or not same_rows or "val_mae" not in info.extra:
        raise ValueError(f"{path} holds a member of another fine-tuning (config, target or training rows differ): "
                         "use another out_dir, or remove it to retrain")
    model = PropertyRegressor(enc_cfg, config.head_hidden, config.head_layers, config.head_dropout)
    load_checkpoint(path, model)
    log.info("resumed %s (best epoch %d, val MAE %.4g)", path, info.epoch, info.extra["val_mae"])
    return model.to(device), info.epoch, float(info.extra["val_mae"]), list(info.extra.get("history", []))


def finetune(store: DatasetStore | str | Path, config: FinetuneConfig, target: str,
             pretrained: Path | str | None = None, *, progress: bool = True) -> FinetuneResult:
    """Fit crystal encoder + MLP head on one label of the train split; report validation and test MAE.

    Args:
        store: an open DatasetStore or its path.
        config: FinetuneConfig (epochs, LR, head, early stopping, mc_dropout, ensemble, out_dir, ...).
        target: "band_gap", "formation_energy_per_atom", "log10_k_vrh", "log10_g_vrh" (aliases
            "formation_energy", "k_vrh", "g_vrh") or a label column name.
        pretrained: a pre-training checkpoint (directory, or a run directory) whose crystal encoder and graph
            featurization are used; None trains from scratch with ``config.model``.

    Writes to ``config.out_dir``: model-<k>/ checkpoints (safetensors), predictions.csv, result.json.
    """
    store = _open_store(store)
    spec = resolve_target(target)
    device = torch.device("cuda" if config.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    if pretrained is not None:
        enc_cfg, graph_cfg, weights = _encoder_from_pretrained(Path(pretrained))
    else:
        mcfg = MultimodalConfig.preset(config.model).with_overrides({**config.model_overrides, "modalities": ("crystal",)})
        enc_cfg, graph_cfg, weights = mcfg.crystal, mcfg.graph, None

    ids, ys = {}, {}
    for split in ("train", "val", "test"):
        ids[split], ys[split] = split_rows(store, spec, split)
    if config.max_rows is not None and len(ids["train"]) > config.max_rows:
        keep = np.sort(np.random.default_rng(config.seed).permutation(len(ids["train"]))[: config.max_rows])
        ids["train"], ys["train"] = [ids["train"][k] for k in keep], ys["train"][keep]
    if len(ids["train"]) < 2:
        raise ValueError(f"only {len(ids['train'])} training rows have a structure and {spec.column}")

    subsets: dict[str, Subset | None] = {}
    for split in ("train", "val", "test"):
        if not ids[split]:
            subsets[split] = None
            continue
        ds = MultimodalDataset(store, ids[split], graph_cfg, config.graph_cache_dir, modalities=("crystal",),
                               labels=[spec.column], progress=progress)
        ds.set_label(spec.column, ys[split])  # the transformed target (e.g. log10 GPa), same row order
        ok = np.flatnonzero(ds.has["crystal"])  # structures that could not be featurized are dropped
        ids[split] = [ids[split][k] for k in ok]
        ys[split] = ys[split][ok]
        subsets[split] = Subset(ds, ok.tolist())
    if subsets["val"] is None:
        warnings.warn("no validation rows: the last epoch is kept (no early stopping)", RuntimeWarning, stacklevel=2)
    mean, std = float(np.mean(ys["train"])), float(np.std(ys["train"]) or 1.0)

    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config.to_yaml(out / "config.yaml")
    history: list[dict[str, float]] = []
    test_means, test_vars, best_epochs, val_maes, checkpoints = [], [], [], [], []
    test_loader = DataLoader(subsets["test"], batch_size=config.batch_size, collate_fn=collate_multimodal) \
        if subsets["test"] is not None else None
    for member in range(config.ensemble):
        path = out / f"model-{member}"
        done = _finished_member(path, config, enc_cfg, spec.column, (mean, std), device)
        if done is not None:  # resumed: this member was trained by an earlier (interrupted) run of the same config
            model, best_epoch, val_mae, rows = done
            history.extend(rows)
        else:
            start = len(history)
            model, best_epoch, val_mae = _train_member(member, config, enc_cfg, weights, subsets["train"],
                                                       subsets["val"], spec.column, (mean, std), device, history)
            save_checkpoint(path, model, config=enc_cfg, step=0, epoch=best_epoch, train_config=config,
                            extra={"target": spec.name, "column": spec.column, "transform": spec.transform,
                                   "unit": spec.unit, "y_mean": mean, "y_std": std,
                                   "graph_config": asdict(graph_cfg), "head_hidden": config.head_hidden,
                                   "head_layers": config.head_layers, "head_dropout": config.head_dropout,
                                   "pretrained": str(pretrained) if pretrained is not None else None,
                                   "val_mae": val_mae, "history": history[start:]})
        best_epochs.append(best_epoch)
        val_maes.append(val_mae)
        checkpoints.append(path)
        if test_loader is not None:
            m, s = _predict(model, test_loader, device, config.mc_dropout)
            test_means.append(m * std + mean)
            test_vars.append((s * std) ** 2)

    if test_loader is not None:
        pred = np.mean(test_means, axis=0)
        var = np.mean(test_vars, axis=0) + np.var(test_means, axis=0)  # MC-dropout + ensemble spread
        test_mae = float(np.mean(np.abs(pred - ys["test"])))
        baseline = float(np.mean(np.abs(mean - ys["test"])))
        predictions = pd.DataFrame({"id": ids["test"], "y_true": ys["test"], "y_pred": pred, "y_std": np.sqrt(var)})
    else:
        test_mae = baseline = float("nan")
        predictions = pd.DataFrame(columns=["id", "y_true", "y_pred", "y_std"])
    result = FinetuneResult(
        target=spec.name, column=spec.column, transform=spec.transform, unit=spec.unit,
        n_train=len(ids["train"]), n_val=len(ids["val"]), n_test=len(ids["test"]),
        val_mae=float(np.mean(val_maes)) if subsets["val"] is not None else float("nan"), test_mae=test_mae,
        test_mae_mean_baseline=baseline, best_epochs=best_epochs, out_dir=out, checkpoints=checkpoints,
        predictions=predictions, train_ids=ids["train"], val_ids=ids["val"], test_ids=ids["test"], history=history)
    predictions.to_csv(out / "predictions.csv", index=False)
    pd.DataFrame(history).to_csv(out / "history.csv", index=False)
    atomic_write_text(out / "result.json", json.dumps(result.to_dict(), indent=1))
    log.info("fine-tuned %s: val MAE %.4g, test MAE %.4g %s (mean baseline %.4g)", spec.name, result.val_mae,
             test_mae, spec.unit, baseline)
    return result
