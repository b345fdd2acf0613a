"""The classical baseline: Magpie composition features + a random forest, on the fine-tuning rows.

Why: a pre-trained crystal encoder is only worth its cost if it beats what composition alone gives with a
standard, tuned, non-deep model (Ward et al. 2016, the Magpie descriptors in matminer). To be comparable with
``mlcm_core.train.finetune`` the baseline uses exactly the fine-tuning protocol:

* the same rows and target transforms (``finetune.resolve_target``: band gap in eV, formation energy per
  atom in eV/atom, log10 K_VRH and log10 G_VRH in log10 GPa, moduli <= 0 dropped), restricted like
  fine-tuning to rows with a structure, in the store's one de-duplicated split, with the same seeded cap on
  training rows (``max_train_rows`` = ``FinetuneConfig.max_rows``);
* fitted on train only; the hyper-parameters are chosen by validation MAE only; the test MAE of the chosen
  model (still fitted on train only) is reported once, next to the MAE of predicting the training mean.

Features are the 132 Magpie ElementProperty statistics of the store's formula
(``featurize.descriptors.magpie_features``, re-exported here); undefined features (NaN, e.g. noble-gas
properties) are imputed with the training median. The shipped hybrid predictions (``explore/classical.py``)
add structure features to these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mlcm_core.featurize.descriptors import MAGPIE_N_FEATURES, magpie_features

if TYPE_CHECKING:
    from mlcm_core.data.store import DatasetStore

__all__ = ["DEFAULT_RF_GRID", "magpie_features", "magpie_rf_baseline", "magpie_rf_over_seeds", "target_rows"]

DEFAULT_RF_GRID: tuple[dict[str, Any], ...] = (
    {"max_features": 1 / 3, "min_samples_leaf": 1},
    {"max_features": 1 / 3, "min_samples_leaf": 3},
    {"max_features": "sqrt", "min_samples_leaf": 1},
    {"max_features": 1.0, "min_samples_leaf": 1},
)


def target_rows(store: DatasetStore, target: str, split: str) -> tuple[list[str], np.ndarray]:
    """(ids sorted, transformed target) of ``split`` rows with a structure and a valid ``target`` value.

    ``mlcm_core.train.finetune.split_rows`` for the target's name, so baseline and fine-tuning see the same
    materials.
    """
    from mlcm_core.train.finetune import resolve_target, split_rows

    return split_rows(store, resolve_target(target), split)


def _cap(ids: list[str], y: np.ndarray, max_rows: int | None, seed: int) -> tuple[list[str], np.ndarray]:
    """FinetuneConfig.max_rows semantics: a sorted seeded subset of the training rows."""
    if max_rows is None or len(ids) <= max_rows:
        return ids, y
    keep = np.sort(np.random.default_rng(seed).permutation(len(ids))[:max_rows])
    return [ids[k] for k in keep], y[keep]


def magpie_rf_baseline(store: DatasetStore, targets: Sequence[str], *, n_estimators: int = 300,
                       grid: Sequence[Mapping[str, Any]] = DEFAULT_RF_GRID, max_train_rows: int | None = None,
                       seed: int = 0, n_jobs: int = 1) -> dict[str, dict[str, Any]]:
    """Magpie + RandomForestRegressor per target: choose on val, report test MAE (see the module docstring).

    Returns:
        {target: {column, transform, unit, n_train, n_val, n_test, test_mae, val_mae, test_mae_mean_baseline,
        chosen (the grid point), grid_val_mae (one per grid point), n_estimators}}; a target without train rows
        gets {"skipped": reason}.
    """
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.impute import SimpleImputer

    from mlcm_core.train.finetune import resolve_target

    formula = store.table.set_index("id")["formula"]
    out: dict[str, dict[str, Any]] = {}
    for target in targets:
        spec = resolve_target(target)
        data = {s: target_rows(store, target, s) for s in ("train", "val", "test")}
        data["train"] = _cap(*data["train"], max_train_rows, seed)
        info: dict[str, Any] = {"column": spec.column, "transform": spec.transform, "unit": spec.unit,
                                **{f"n_{s}": len(data[s][0]) for s in data}, "n_estimators": n_estimators}
        if len(data["train"][0]) < 2 or not len(data["test"][0]):
            out[spec.name] = {**info, "skipped": "fewer than 2 train rows or no test rows"}
            continue
        imputer = SimpleImputer(strategy="median", keep_empty_features=True)
        x = {s: magpie_features(formula.loc[ids].tolist()) if len(ids) else np.zeros((0, MAGPIE_N_FEATURES))
             for s, (ids, _) in data.items()}
        x["train"] = imputer.fit_transform(x["train"])
        for s in ("val", "test"):
            x[s] = imputer.transform(x[s]) if len(x[s]) else x[s]
        y_train = data["train"][1]
        grid_mae: list[float] = []
        models = []
        for params in grid:
            rf = RandomForestRegressor(n_estimators=n_estimators, random_state=seed, n_jobs=n_jobs,
                                       **params).fit(x["train"], y_train)
            models.append(rf)
            grid_mae.append(float(np.mean(np.abs(rf.predict(x["val"]) - data["val"][1])))
                            if len(x["val"]) else float("nan"))
        best = int(np.nanargmin(grid_mae)) if np.isfinite(grid_mae).any() else 0
        test_pred = models[best].predict(x["test"])
        y_test = data["test"][1]
        out[spec.name] = {**info, "test_mae": float(np.mean(np.abs(test_pred - y_test))),
                          "val_mae": grid_mae[best], "test_mae_mean_baseline": float(np.mean(np.abs(y_train.mean() - y_test))),
                          "chosen": dict(grid[best]), "grid_val_mae": grid_mae}
    return out


def magpie_rf_over_seeds(store: DatasetStore, targets: Sequence[str], seeds: Sequence[int], **options: Any,
                         ) -> dict[str, dict[str, Any]]:
    """``magpie_rf_baseline`` once per seed (forest seed and, with ``max_train_rows``, the same seeded training
    subset as fine-tuning with that seed); test MAE as mean ± sample std over the seeds.

    Returns the first seed's entry per target with ``test_mae`` replaced by the mean over seeds, plus
    ``test_mae_std`` (NaN for one seed), ``test_mae_values``, ``chosen_per_seed`` and ``seeds``.
    """
    runs = [magpie_rf_baseline(store, targets, seed=s, **options) for s in seeds]
    out: dict[str, dict[str, Any]] = {}
    for name, first in runs[0].items():
        if "skipped" in first:
            out[name] = first
            continue
        values = [r[name]["test_mae"] for r in runs]
        out[name] = {**first, "test_mae": float(np.mean(values)),
                     "test_mae_std": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"),
                     "test_mae_values": values, "val_mae": float(np.mean([r[name]["val_mae"] for r in runs])),
                     "test_mae_mean_baseline": float(np.mean([r[name]["test_mae_mean_baseline"] for r in runs])),
                     "chosen_per_seed": [r[name]["chosen"] for r in runs], "seeds": list(seeds)}
    return out
