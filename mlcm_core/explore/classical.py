"""The classical half of the shipped predictions: a random forest on descriptors, blended with the GNN ensemble.

Why a hybrid: on every target a random forest on Magpie + structure descriptors (``featurize.descriptors``)
is at least as good as the fine-tuned crystal-encoder ensemble on these data sizes (≤ 3,200 training rows), and
their errors differ, so a weighted mean of the two beats both on formation energy and the moduli. Everything
is chosen on the validation split; the test split is predicted once, for the manifest's metrics:

* the forest is fitted on the training rows (the rows of ``finetune.split_rows``, no cap) with the training
  medians imputed for undefined features; its leaf size is chosen among ``ClassicalConfig.grid`` by
  validation MAE;
* the blend is ``w · GNN + (1 − w) · forest`` with ``w`` (the GNN's weight) chosen on the grid 0, 0.05 … 1 by
  validation MAE (the first of equal MAEs);
* σ: the blend is read as a mixture of the two predictive distributions, σ² = w·s_gnn² + (1−w)·s_forest² +
  w(1−w)·(gnn − forest)², with s_gnn the std over the ensemble members, s_forest the std over the trees and the
  last term the two models' disagreement; then one factor per target fitted on validation (the 68.27 %
  quantile of |error| / σ), as for the GNN-only σ.

``add_classical`` adds this to an existing heads folder without touching the GNN members: it reads their
predictions of every store structure from predictions.npz (written by ``build_heads``) and rewrites the folder
(forests, predictions.npz, manifest with SHA-256) as a whole, through ``io.staged_dir``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlcm_core.explore.forest import TreeForest, save_forest
from mlcm_core.io import atomic_write, file_digests, staged_dir

if TYPE_CHECKING:
    from mlcm_core.data.store import DatasetStore

__all__ = ["ClassicalConfig", "add_classical", "blend", "choose_weight", "fit_forest", "store_descriptors"]

NO_VALIDATION_WEIGHT = 0.5  # without validation rows nothing is chosen: an equal blend
WEIGHT_GRID: tuple[float, ...] = tuple(np.round(np.linspace(0.0, 1.0, 21), 2).tolist())


@dataclass(frozen=True)
class ClassicalConfig:
    """The forest of the hybrid: scikit-learn RandomForestRegressor options, the grid chosen on validation."""

    n_estimators: int = 200
    max_features: float = 1 / 3
    grid: tuple[Mapping[str, Any], ...] = ({"min_samples_leaf": 1}, {"min_samples_leaf": 3})
    seed: int = 0
    n_jobs: int = 2
    weight_grid: tuple[float, ...] = field(default=WEIGHT_GRID)


def _structure_key(structure_json: str) -> str:
    return hashlib.sha256(structure_json.encode()).hexdigest()[:20]


def store_descriptors(store: DatasetStore, ids: Sequence[str], cache_dir: str | Path | None = None,
                      progress: bool = False) -> np.ndarray:
    """(len(ids), 137) ``featurize.descriptors`` of each store structure (NaN rows for ids without one).

    With ``cache_dir``, rows are kept in ``descriptors-v<version>.npz`` keyed by a hash of the stored
    structure, so a changed structure is recomputed and a rerun featurizes only new materials.
    """
    from mlcm_core.featurize.descriptors import DESCRIPTORS_VERSION, MAGPIE_N_FEATURES, STRUCTURE_FEATURES, descriptors

    width = MAGPIE_N_FEATURES + len(STRUCTURE_FEATURES)
    table = store.table.set_index("id")
    has = table["has_structure"].fillna(False).astype(bool)
    keys = [(_structure_key(str(table.at[i, "structure_json"])) if i in table.index and has.get(i, False) else None)
            for i in ids]
    cached: dict[str, np.ndarray] = {}
    path = Path(cache_dir) / f"descriptors-v{DESCRIPTORS_VERSION}.npz" if cache_dir is not None else None
    if path is not None and path.exists():
        with np.load(path, allow_pickle=False) as z:
            cached = dict(zip(z["keys"].tolist(), z["x"]))
    todo = sorted({(k, i) for k, i in zip(keys, ids) if k is not None and k not in cached})
    step = 2000
    for s in range(0, len(todo), step):
        part = todo[s:s + step]
        x = descriptors([store.structure(i) for _, i in part])
        cached.update({k: row for (k, _), row in zip(part, x)})
        if path is not None:
            arrays = {"keys": np.array(list(cached), dtype=str), "x": np.array(list(cached.values()))}
            atomic_write(path, lambda f, a=arrays: np.savez(f, **a))
        if progress:
            print(f"descriptors: {min(s + step, len(todo))}/{len(todo)} structures", flush=True)
    out = np.full((len(ids), width), np.nan)
    for r, k in enumerate(keys):
        if k is not None:
            out[r] = cached[k]
    return out


def fit_forest(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
               config: ClassicalConfig) -> tuple[TreeForest, np.ndarray, dict[str, Any]]:
    """The grid point of ``config`` with the lowest validation MAE, fitted on train (inputs already imputed).

    Returns (forest as arrays, training medians used for imputation, info: chosen, grid_val_mae).
    """
    from sklearn.ensemble import RandomForestRegressor

    fits, maes = [], []
    for params in config.grid:
        rf = RandomForestRegressor(n_estimators=config.n_estimators, max_features=config.max_features,
                                   random_state=config.seed, n_jobs=config.n_jobs, **params).fit(x_train, y_train)
        rf.n_jobs = 1  # predict adds the trees in order, as TreeForest does
        fits.append(rf)
        maes.append(float(np.mean(np.abs(rf.predict(x_val) - y_val))) if len(y_val) else float("nan"))
        if not len(y_val):
            break  # nothing to choose on: the first grid point
    best = int(np.nanargmin(maes)) if np.isfinite(maes).any() else 0
    return TreeForest.from_sklearn(fits[best]), best, {"chosen": dict(config.grid[best]), "grid_val_mae": maes}


def impute(x: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """``x`` with NaN replaced by ``fill`` (the training medians), column-wise."""
    return np.where(np.isnan(x), fill[None, :], x)


def training_medians(x: np.ndarray) -> np.ndarray:
    """Column medians of the training rows; 0 for a column that is NaN throughout."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(x, axis=0)
    return np.where(np.isnan(med), 0.0, med)


def blend(gnn_mean: np.ndarray, gnn_std: np.ndarray, forest_mean: np.ndarray, forest_std: np.ndarray,
          w: float) -> tuple[np.ndarray, np.ndarray]:
    """(mean, raw σ) of ``w · gnn + (1 − w) · forest``; σ of the two-component mixture (module docstring)."""
    mean = w * gnn_mean + (1.0 - w) * forest_mean
    var = w * gnn_std ** 2 + (1.0 - w) * forest_std ** 2 + w * (1.0 - w) * (gnn_mean - forest_mean) ** 2
    return mean, np.sqrt(var)


def choose_weight(gnn: np.ndarray, forest: np.ndarray, y: np.ndarray,
                  grid: Sequence[float] = WEIGHT_GRID) -> tuple[float, list[float]]:
    """(the GNN weight with the lowest MAE of the blend on ``y``, the MAE at every grid point)."""
    maes = [float(np.mean(np.abs(w * gnn + (1.0 - w) * forest - y))) for w in grid]
    return float(grid[int(np.argmin(maes))]), maes


def _mae(pred: np.ndarray, idx: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.abs(pred[idx] - y))) if len(idx) else float("nan")


def _sigma_scale(err: np.ndarray, sigma: np.ndarray) -> float:
    from mlcm_core.explore.predict import sigma_scale

    return sigma_scale(err, sigma) if len(err) >= 10 else 1.0


def add_classical(heads_dir: str | Path, store: DatasetStore | str | Path, *,
                  config: ClassicalConfig = ClassicalConfig(), targets: Sequence[str] | None = None,
                  cache_dir: str | Path | None = None, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Fit the forest, blend weight and σ scale per target and rewrite ``heads_dir`` with them (GNN untouched).

    Returns {target: the metrics written to the manifest}.
    """
    from mlcm_core.data.store import DatasetStore
    from mlcm_core.explore.predict import PREDICTIONS_FILE, HeadsError, calibration, verify_heads
    from mlcm_core.featurize.descriptors import DESCRIPTORS_VERSION, descriptor_names
    from mlcm_core.train.finetune import resolve_target, split_rows

    heads_dir = Path(heads_dir)
    store = DatasetStore.open(store, verify=False) if not hasattr(store, "table") else store
    manifest = verify_heads(heads_dir)
    if PREDICTIONS_FILE not in manifest.get("files", {}):
        raise HeadsError(f"{heads_dir} has no {PREDICTIONS_FILE}: the GNN predictions of the store are needed")
    with np.load(heads_dir / PREDICTIONS_FILE, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    ids = arrays["ids"].astype(str)
    pos = {m: k for k, m in enumerate(ids.tolist())}
    x_all = store_descriptors(store, ids.tolist(), cache_dir, progress)
    names = descriptor_names()

    specs = {s["name"]: s for s in manifest["targets"]}
    chosen_targets = list(targets) if targets is not None else list(specs)
    results: dict[str, dict[str, Any]] = {}
    forests: dict[str, tuple[TreeForest, np.ndarray]] = {}
    for name in chosen_targets:
        spec = specs[name]
        old = spec.get("classical")
        gnn_scale = float(old["gnn_sigma_scale"]) if old else float(spec.get("sigma_scale", 1.0))
        if f"{name}__gnn_mean" not in arrays:  # first time: the stored means are the GNN's
            arrays[f"{name}__gnn_mean"], arrays[f"{name}__gnn_std"] = arrays[f"{name}__mean"], arrays[f"{name}__std"]
        gnn_mean = arrays[f"{name}__gnn_mean"].astype(np.float64)
        gnn_raw = arrays[f"{name}__gnn_std"].astype(np.float64) / gnn_scale

        target = resolve_target(name)
        rows = {}
        for split in ("train", "val", "test"):
            split_ids, y = split_rows(store, target, split)
            keep = [k for k, m in enumerate(split_ids) if m in pos]
            rows[split] = (np.array([pos[split_ids[k]] for k in keep], dtype=np.int64), y[keep])
        (tr, y_tr), (va, y_va), (te, y_te) = rows["train"], rows["val"], rows["test"]
        if len(tr) < 2:
            raise HeadsError(f"{name}: {len(tr)} training rows; a forest needs at least 2")
        if not len(va):
            warnings.warn(f"{name}: no validation rows: the first grid point and w = {NO_VALIDATION_WEIGHT} are used",
                          RuntimeWarning, stacklevel=2)
        fill = training_medians(x_all[tr])
        forest, _, info = fit_forest(impute(x_all[tr], fill), y_tr, impute(x_all[va], fill), y_va, config)
        f_mean, f_std = forest.predict_with_spread(impute(x_all, fill))
        w, w_maes = (choose_weight(gnn_mean[va], f_mean[va], y_va, config.weight_grid) if len(va)
                     else (NO_VALIDATION_WEIGHT, []))
        mean, raw = blend(gnn_mean, gnn_raw, f_mean, f_std, w)
        scale = _sigma_scale(mean[va] - y_va, raw[va])
        forests[name] = (forest, fill)

        cal = calibration(y_te, mean[te], raw[te] * scale)
        gnn_metrics = spec["metrics"].get("gnn", spec["metrics"])  # the GNN-only numbers, kept on a refit
        metrics = {
            "n_train": len(tr), "n_val": len(va), "n_test": len(te),
            "val_mae": _mae(mean, va, y_va), "test_mae": _mae(mean, te, y_te),
            "test_mae_mean_baseline": float(np.mean(np.abs(y_tr.mean() - y_te))) if len(te) else float("nan"),
            **cal, "sigma_scale_fitted_on": f"{len(va)} validation rows",
            "within_1sigma_calibrated": cal["within_1sigma"], "within_2sigma_calibrated": cal["within_2sigma"],
            "mean_sigma_calibrated": cal["mean_sigma"],
            "gnn": gnn_metrics,
            "forest": {"val_mae": _mae(f_mean, va, y_va), "test_mae": _mae(f_mean, te, y_te), **info,
                       **{f"{k}_tree_spread": v for k, v in calibration(y_te, f_mean[te], f_std[te]).items()
                          if k in ("within_1sigma", "spearman_abs_error_vs_sigma")}},
            "weight_gnn": w, "weight_grid_val_mae": w_maes,
        }
        spec["metrics"] = metrics
        spec["classical"] = {
            "forest": f"{name}/forest.npz", "weight_gnn": w, "sigma_scale": scale, "gnn_sigma_scale": gnn_scale,
            "descriptors": f"featurize.descriptors v{DESCRIPTORS_VERSION}: Magpie (132) + " + ", ".join(names[132:]),
            "n_features": len(names), "n_trees": forest.n_trees, "n_nodes": len(forest.left),
            "forest_options": {**{k: v for k, v in asdict(config).items() if k not in ("grid", "weight_grid")},
                               **info["chosen"]},
            "sigma": "sqrt(w s_gnn^2 + (1-w) s_forest^2 + w(1-w)(gnn-forest)^2) x sigma_scale (fitted on validation)",
        }
        spec["sigma_scale"] = scale  # the σ shipped for this target is the blend's
        arrays[f"{name}__forest_mean"], arrays[f"{name}__forest_std"] = f_mean.astype(np.float32), f_std.astype(np.float32)
        arrays[f"{name}__mean"], arrays[f"{name}__std"] = mean.astype(np.float32), (raw * scale).astype(np.float32)
        results[name] = metrics
        if progress:
            print(f"{name}: w_gnn {w:.2f}, val MAE {metrics['val_mae']:.4g}, test MAE gnn "
                  f"{gnn_metrics.get('test_mae', float('nan')):.4g} forest {metrics['forest']['test_mae']:.4g} "
                  f"hybrid {metrics['test_mae']:.4g}", flush=True)

    with staged_dir(heads_dir) as tmp:
        for item in heads_dir.iterdir():
            if item.name in ("manifest.json", PREDICTIONS_FILE):
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        for name, (forest, fill) in forests.items():
            save_forest(tmp / name / "forest.npz", forest, fill=fill.astype(np.float64))
        atomic_write(tmp / PREDICTIONS_FILE, lambda f: np.savez_compressed(f, **arrays))
        files = dict(manifest["files"])
        files.update(file_digests(tmp, [f"{n}/forest.npz" for n in forests] + [PREDICTIONS_FILE]))
        manifest.update({
            "files": files, "classical_added": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "uncertainty": ("σ = the blend's mixture spread (ensemble members' std, trees' std and the GNN–forest "
                            "disagreement, weighted by w) × the target's sigma_scale, fitted on the validation split; "
                            "targets without a forest: std over the ensemble members × sigma_scale")})
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return results
