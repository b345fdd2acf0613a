"""The markdown report lists every ordered modality pair with N and chance; `mlcm evaluate` end to end."""

from __future__ import annotations

import json
from itertools import permutations

from mlcm_core.evaluate.report import render_markdown, write_report

from .conftest import TINY_MODEL


def _results_for(tiny_store, tiny_checkpoint):
    from mlcm_core.evaluate.model_eval import evaluate_model
    from mlcm_core.models.multimodal import MultimodalModel

    model = MultimodalModel.from_checkpoint(tiny_checkpoint)
    return {"date": "2025-01-01T00:00:00+00:00", "command": "mlcm evaluate --budget quick",
            "budget": {"name": "quick"}, "split": "test",
            "checkpoint": {"path": str(tiny_checkpoint), "modalities": list(model.config.modalities),
                           "eval": evaluate_model(model, tiny_store, "test", inverse_random_seeds=(0,))}}


def test_markdown_has_every_ordered_pair(tiny_store, tiny_checkpoint, tmp_path):
    results = _results_for(tiny_store, tiny_checkpoint)
    md = render_markdown(results)
    for q, g in permutations(("crystal", "dos", "density"), 2):
        line = next(x for x in md.splitlines() if x.startswith(f"| {q} → {g} |"))
        assert "(" in line  # chance level beside the number
    assert "Quick budget" in md and "mlcm evaluate --budget quick" in md
    assert "## Effective rank" in md and "## Inverse design" in md
    js, out = write_report(results, tmp_path / "r.json", tmp_path / "r.md")
    assert json.loads(js.read_text())["checkpoint"]["path"] == str(tiny_checkpoint)
    assert out.read_text() == md


def test_missing_pair_is_reported_not_dropped():
    row = {"query": "crystal", "gallery": "dos", "n_gallery": 5, "n_queries": 5, "top1": 0.2, "chance_top1": 0.2,
           "top5": 1.0, "chance_top5": 1.0, "top10": 1.0, "chance_top10": 1.0, "median_rank": 3.0,
           "chance_median_rank": 3.0, "n_queries_with_duplicates": 0}
    md = render_markdown({"checkpoint": {"path": "x", "modalities": ["crystal", "dos", "density"],
                                         "eval": {"retrieval": [row], "effective_rank": {}, "inverse_design": None}}})
    for q, g in permutations(("crystal", "dos", "density"), 2):
        assert f"| {q} → {g} |" in md
    assert "no rows with both modalities" in md


def test_cli_end_to_end(tiny_store, tiny_checkpoint, tmp_path):
    from mlcm_core.cli import main

    overrides = {"model_overrides": TINY_MODEL, "pretrain_batch_size": 4, "finetune_batch_size": 4,
                 "rf_n_estimators": 10, "device": "cpu", "graph_cache_dir": str(tmp_path / "g")}
    argv = ["evaluate", "--store", str(tiny_store.root), "--checkpoint", str(tiny_checkpoint), "--methods", "scratch",
            "--seeds", "0", "--targets", "formation_energy_per_atom", "--budget", "quick", "--budget-overrides",
            json.dumps(overrides), "--run-dir", str(tmp_path / "runs"), "--out-json", str(tmp_path / "res.json"),
            "--out-md", str(tmp_path / "res.md"), "--no-comparison", "--threads", "1", "--no-verify"]
    assert main(argv) == 0
    res = json.loads((tmp_path / "res.json").read_text())
    assert res["command"].startswith("mlcm evaluate --store ")
    assert res["ablation"]["finetune"]["scratch"]["formation_energy_per_atom"]["n"] == 1
    assert res["baseline"]["formation_energy_per_atom"]["test_mae"] is not None
    md = (tmp_path / "res.md").read_text()
    assert "Magpie + RF" in md and "| scratch |" in md and "rows train / val / test" in md
    assert main(["evaluate", "--methods", "nonsense", "--store", str(tiny_store.root), "--no-baseline", "--no-verify",
                 "--out-json", str(tmp_path / "x.json"), "--out-md", str(tmp_path / "x.md")]) == 2
