"""Choosing and shipping the default checkpoint: validation-only choice, byte-identical copy, reproduced numbers."""

from __future__ import annotations

import hashlib

import pytest

from mlcm_core.evaluate.ablation import Budget, select_method
from mlcm_core.evaluate.report import render_markdown

from .conftest import TINY_MODEL


def _cell(val: float, test: float) -> dict:
    return {"val_mae": val, "mean": test}


def _run(method: str, seed: int, val_mrr: list[float], test_mrr: float = 0.0) -> dict:
    def rows(values):
        return [{"query": "q", "gallery": str(k), "mrr": v} for k, v in enumerate(values)]
    return {"method": method, "seed": seed, "embedding_val": {"retrieval": rows(val_mrr)},
            "embedding": {"retrieval": rows([test_mrr])}}


def test_select_method_uses_validation_retrieval_and_needs_every_modality():
    ablation = {"targets": ["a", "b"], "finetune": {
        "scratch": {"a": _cell(1.0, 1.0), "b": _cell(2.0, 2.0)},
        "tensor_clip": {"a": _cell(0.8, 5.0), "b": _cell(1.6, 5.0)},
        "anchored_clip": {"a": _cell(0.1, 0.1)},  # a target missing: no fine-tuning score
    }, "runs": [
        _run("scratch", 0, [0.05, 0.05]),
        _run("clip_crystal_dos", 0, [0.9, 0.9]),         # best on val, but crystal+DOS only
        _run("all_pairs_clip", 0, [0.1, 0.2], 0.99),     # best on test: must not matter
        _run("tensor_clip", 0, [0.3, 0.5]), _run("tensor_clip", 1, [0.2, 0.2]),  # mean of seeds 0.4, 0.2 = 0.3
        _run("anchored_clip", 0, [0.25, 0.25]),
    ]}
    choice = select_method(ablation)
    assert choice["scores"]["tensor_clip"] == pytest.approx(0.3) and choice["method"] == "tensor_clip"
    assert choice["scores"]["all_pairs_clip"] == pytest.approx(0.15)
    assert set(choice["candidates"]) == {"all_pairs_clip", "tensor_clip", "anchored_clip"}
    assert choice["finetune_scores"] == {"scratch": 1.0, "tensor_clip": pytest.approx(0.8)}
    with pytest.raises(ValueError, match="no pre-training method"):
        select_method({"targets": [], "finetune": {}, "runs": [_run("clip_crystal_dos", 0, [0.5])]})


def test_evaluate_ships_the_chosen_run_and_reproduces_it(tiny_store, tmp_path, monkeypatch):
    from mlcm_core.evaluate import run
    from mlcm_core.models.multimodal import MultimodalModel

    budget = Budget(name="test", model="cpu", model_overrides=TINY_MODEL, pretrain_epochs=1, pretrain_batch_size=4,
                    pretrain_lr=3e-3, pretrain_warmup_steps=1, finetune_epochs=1, finetune_batch_size=4,
                    finetune_warmup_steps=1, finetune_patience=0, targets=("formation_energy_per_atom",),
                    seeds=(0,), rf_n_estimators=10, inverse_random_seeds=(0,), device="cpu",
                    graph_cache_dir=str(tmp_path / "g"))
    ship = tmp_path / "shipped"
    kwargs = dict(budget=budget, methods=["scratch", "clip_crystal_dos", "all_pairs_clip"], comparison=False,
                  run_dir=tmp_path / "runs", ship=ship, log=lambda s: None)
    res = run.run_evaluation(tiny_store, **kwargs)
    shipped = res["shipped"]
    assert shipped["method"] == "all_pairs_clip"  # the only 3-modal candidate
    assert shipped["reproduces_run"] is True and shipped["max_abs_diff"] == 0.0
    assert sorted(p.name for p in ship.iterdir()) == ["checkpoint.json", "model.safetensors", "pretrain_log.csv",
                                                     "train_config.yaml"]  # no optimizer pickle shipped
    source = next(r for r in res["ablation"]["runs"] if r["method"] == "all_pairs_clip")["pretrain"]["checkpoint"]
    digest = [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in (f"{source}/model.safetensors",
                                                                         ship / "model.safetensors")]
    assert digest[0] == digest[1]
    assert MultimodalModel.from_checkpoint(ship).config.modalities == ("crystal", "dos", "density")
    assert res["checkpoint"]["path"] == str(ship) and res["checkpoint"]["eval"]["retrieval_ids"]
    md = render_markdown(res)
    assert "## The shipped checkpoint" in md and "equal" in md and "Magpie + RF (" in md

    def refuse(*a, **k):
        raise AssertionError("the baseline should come from the run directory's cache")

    monkeypatch.setattr("mlcm_core.evaluate.baseline.magpie_rf_over_seeds", refuse)
    again = run.run_evaluation(tiny_store, **kwargs)  # everything reused: baseline, runs, evaluations
    assert again["baseline"] == res["baseline"] and again["shipped"]["reproduces_run"] is True
