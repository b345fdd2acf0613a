"""A tiny ablation (2 methods, 1 seed) on the tiny store: the table structure, the same-rows comparison."""

from __future__ import annotations

import json
import math

import pytest

from mlcm_core.evaluate.ablation import BUDGETS, METHODS, Budget, restrict_rows, run_ablation
from mlcm_core.evaluate.report import jsonable

from .conftest import TINY_MODEL


@pytest.fixture
def tiny_budget(tmp_path) -> Budget:
    return Budget(name="test", model="cpu", model_overrides=TINY_MODEL, pretrain_epochs=1, pretrain_batch_size=4,
                  pretrain_lr=3e-3, pretrain_warmup_steps=1, finetune_epochs=1, finetune_batch_size=4,
                  finetune_warmup_steps=1, finetune_patience=0, targets=("formation_energy_per_atom",), seeds=(0,),
                  rf_n_estimators=10, inverse_random_seeds=(0,), device="cpu", graph_cache_dir=str(tmp_path / "g"))


def test_budgets_and_methods_are_consistent(tmp_path):
    from mlcm_core.evaluate.ablation import _train_config
    from mlcm_core.losses import LOSSES
    from mlcm_core.train.config import FinetuneConfig

    assert {"quick", "full"} <= set(BUDGETS)
    for m in METHODS.values():
        assert m.loss is None or m.loss in LOSSES
    assert BUDGETS["full"].seeds == (0, 1, 2)
    full = BUDGETS["full"]  # the real run: the shipped pre-training schedule and the default fine-tuning one
    assert (full.pretrain_epochs, full.pretrain_batch_size, full.pretrain_lr) == (30, 32, 5e-4)
    ft = FinetuneConfig()
    assert (full.finetune_epochs, full.finetune_lr, full.finetune_patience) == (ft.epochs, ft.lr, ft.patience)
    for budget in BUDGETS.values():
        for m in METHODS.values():
            if m.loss is not None:
                assert _train_config(m, 0, budget, tmp_path).model_config().modalities == m.modalities
    with pytest.raises(ValueError, match="unknown Budget fields"):
        BUDGETS["quick"].with_overrides({"epochs": 3})
    assert BUDGETS["quick"].with_overrides({"seeds": [4, 5]}).seeds == (4, 5)


def test_restrict_rows_is_a_view(tiny_store):
    ids = tiny_store.table["id"].tolist()[:5]
    view = restrict_rows(tiny_store, ids)
    assert view.table["id"].tolist() == ids and len(tiny_store.table) > 5
    assert view.dos([i for i in ids if view.table.set_index("id").at[i, "has_dos"]]).shape[1] == 601
    with pytest.raises(KeyError):
        view.structure(tiny_store.table["id"].iloc[-1])


def test_tiny_ablation_table_structure(tiny_store, tiny_budget, tmp_path):
    res = run_ablation(tiny_store, ["scratch", "clip_crystal_dos"], [0], tiny_budget, out_dir=tmp_path / "runs")
    target = "formation_energy_per_atom"
    assert res.methods == ["scratch", "clip_crystal_dos"] and res.seeds == [0] and res.targets == [target]
    assert len(res.runs) == 2
    for method in res.methods:
        cell = res.finetune[method][target]
        assert cell["n"] == 1 and math.isfinite(cell["mean"]) and math.isnan(cell["std"])  # one seed: no std
        assert (cell["n_train"], cell["n_val"], cell["n_test"]) == (12, 4, 4)
        emb = res.embedding[method]  # scratch = the randomly initialised control
        assert emb["retrieval"] and emb["effective_rank"]
    assert res.runs[0]["pretrain"] is None and res.runs[1]["pretrain"]["train_rows"] == 11  # crystal+DOS train rows
    assert {(r["query"], r["gallery"]) for r in res.embedding["clip_crystal_dos"]["retrieval"]} == \
        {("crystal", "dos"), ("dos", "crystal")}
    assert list(res.finetune_frame().columns) == ["method", "target", "mean", "std", "n"]

    comp = res.modality_comparison
    assert comp["arms"] == ["clip_crystal_dos", "all_pairs_clip"] and comp["pretrain_rows_identical"]
    assert comp["n_rows"]["train"] == 10  # the tiny store's train rows with all three modalities
    rows = {r["method"]: r["pretrain"]["train_rows_digest"] for r in comp["runs"]}
    assert rows["clip_crystal_dos"] == rows["all_pairs_clip"]
    assert set(comp["finetune"]) == {"clip_crystal_dos", "all_pairs_clip"}
    json.dumps(jsonable(res.to_dict()))  # JSON-ready

    again = run_ablation(tiny_store, ["clip_crystal_dos"], [0], tiny_budget, out_dir=tmp_path / "runs", compare=False,
                         evaluate=False)  # finished runs are reused, not retrained
    assert again.finetune["clip_crystal_dos"][target]["mean"] == res.finetune["clip_crystal_dos"][target]["mean"]
    with pytest.raises(FileExistsError, match="different configuration"):
        run_ablation(tiny_store, ["clip_crystal_dos"], [0], tiny_budget.with_overrides({"pretrain_lr": 1e-2}),
                     out_dir=tmp_path / "runs", compare=False, evaluate=False)
