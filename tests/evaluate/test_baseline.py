"""Magpie + random forest: the same rows as fine-tuning, and better than the mean on real formation energies."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlcm_core.evaluate.ablation import restrict_rows
from mlcm_core.evaluate.baseline import (
    DEFAULT_RF_GRID,
    magpie_features,
    magpie_rf_baseline,
    magpie_rf_over_seeds,
    target_rows,
)

TARGETS = ("band_gap", "formation_energy_per_atom", "log10_k_vrh", "log10_g_vrh")


@pytest.mark.parametrize("target", TARGETS)
def test_rows_are_finetunes_rows(default_store, target):
    from mlcm_core.train.finetune import resolve_target, split_rows

    spec = resolve_target(target)
    t = default_store.table.set_index("id")
    for split in ("train", "val", "test"):
        ids, y = target_rows(default_store, target, split)
        ft_ids, ft_y = split_rows(default_store, spec, split)
        assert ids == ft_ids and len(ids) > 0 and ids == sorted(ids)
        np.testing.assert_array_equal(y, ft_y)
        # the rows are this split's structures with a value, the value transformed as the target says
        rows = t[(t["split"] == split) & t["has_structure"].fillna(False).astype(bool)]
        values = rows[spec.column].astype(float)
        if split == "train":  # TargetSpec.train_fill: training rows of the named sources without a value
            for column in spec.train_fill:
                values = values.where(values.notna() | ~rows["source"].isin(spec.train_fill_sources),
                                      rows[column].astype(float))
        want, keep = spec.apply(values.to_numpy(dtype=np.float64, na_value=np.nan))
        assert set(ids) == set(rows.index[keep]) and np.all(np.isfinite(y))
        np.testing.assert_allclose(y, pd.Series(want[keep], index=rows.index[keep]).loc[ids].to_numpy())


def test_magpie_features_shape_and_memo():
    x = magpie_features(["NaCl", "Fe2O3", "NaCl", "not a formula"])
    assert x.shape == (4, 132)
    np.testing.assert_array_equal(x[0], x[2])
    assert np.isfinite(x[:3]).all() and np.isnan(x[3]).all()


@pytest.fixture(scope="module")
def sixty_mp_rows(default_store):
    """60 real MP materials with a formation energy (40 train, 10 val, 10 test of the store's own split)."""
    t = default_store.table
    mp = t[(t["source"] == "matminer-0.3.9") & t["formation_energy_per_atom_mp_pbe"].notna()
           & t["has_structure"].astype(bool)].sort_values("id")
    ids = [i for s, n in (("train", 40), ("val", 10), ("test", 10)) for i in mp.loc[mp["split"] == s, "id"][:n]]
    return restrict_rows(default_store, ids)


def test_magpie_rf_beats_the_mean_on_formation_energy(sixty_mp_rows):
    res = magpie_rf_baseline(sixty_mp_rows, ["formation_energy"], n_estimators=100)["formation_energy_per_atom"]
    assert (res["n_train"], res["n_val"], res["n_test"]) == (40, 10, 10)
    assert res["unit"] == "eV/atom" and res["chosen"] in [dict(g) for g in DEFAULT_RF_GRID]
    assert len(res["grid_val_mae"]) == 4
    assert res["test_mae"] < 0.8 * res["test_mae_mean_baseline"]


def test_train_cap_matches_finetune_semantics(sixty_mp_rows):
    res = magpie_rf_baseline(sixty_mp_rows, ["formation_energy"], n_estimators=10, grid=[{"max_features": 1.0}],
                             max_train_rows=25, seed=3)["formation_energy_per_atom"]
    assert res["n_train"] == 25


def test_over_seeds_uses_each_seeds_training_subset(sixty_mp_rows):
    res = magpie_rf_over_seeds(sixty_mp_rows, ["formation_energy"], [0, 1], n_estimators=10,
                               grid=[{"max_features": 1.0}], max_train_rows=25)["formation_energy_per_atom"]
    assert res["seeds"] == [0, 1] and len(res["test_mae_values"]) == 2 and res["test_mae_std"] >= 0
    assert res["test_mae"] == pytest.approx(np.mean(res["test_mae_values"]))
