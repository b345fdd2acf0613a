"""docs/results.md is made by the shipped code on the shipped data: the shipped checkpoint reproduces it.

Re-embeds the retrieval rows recorded in docs/results.json with precomputed/checkpoint and recomputes every
retrieval number of the report's first section (the ~90 test rows with >= 2 modalities; crystal graphs are
featurized here, ~1 minute on a cold cache).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results.json"
CHECKPOINT = ROOT / "precomputed" / "checkpoint"


@pytest.fixture(scope="module")
def results() -> dict:
    return json.loads(RESULTS.read_text())


def test_results_describe_the_shipped_checkpoint(results):
    from mlcm_core.models.checkpoint import read_checkpoint_info

    shipped = results["shipped"]
    assert results["budget"]["name"] != "quick" and len(results["seeds"]) >= 3
    assert shipped["dest"] == "precomputed/checkpoint" and shipped["reproduces_run"] is True
    assert read_checkpoint_info(CHECKPOINT).files["model.safetensors"] == shipped["weights_sha256"]
    assert shipped["method"] in shipped["candidates"]
    assert shipped["score"] == max(shipped["scores"][m] for m in shipped["candidates"])  # the validation choice
    ablation = results["ablation"]
    for method in ("scratch", "clip_crystal_dos", "all_pairs_clip", "anchored_clip", "tensor_clip", "barlow_twins"):
        for target in ("band_gap", "formation_energy_per_atom", "log10_k_vrh", "log10_g_vrh"):
            assert ablation["finetune"][method][target]["n"] >= 3


def test_shipped_checkpoint_reproduces_the_reported_retrieval(results):
    import torch

    from mlcm_core import load_dataset
    from mlcm_core.evaluate.embedding import embed_split
    from mlcm_core.evaluate.retrieval import retrieval_table_from_embeddings
    from mlcm_core.models.multimodal import MultimodalModel

    torch.set_num_threads(2)
    # the store as the report saw it (later shards may replace densities of these rows: the density backfill)
    store = load_dataset(ROOT / "precomputed" / "dataset", verify=False, shards=results["store"]["shards"])
    model = MultimodalModel.from_checkpoint(CHECKPOINT)
    ids = results["checkpoint"]["eval"]["retrieval_ids"]
    emb = embed_split(model, store, ids)
    table = retrieval_table_from_embeddings(emb, store.table.set_index("id")["dedup_group"])
    mine = {(r["query"], r["gallery"]): r for r in table.to_dict("records")}
    reported = results["checkpoint"]["eval"]["retrieval"]
    assert len(reported) == 6 and set(mine) == {(r["query"], r["gallery"]) for r in reported}
    for row in reported:
        again = mine[(row["query"], row["gallery"])]
        assert again["n_gallery"] == row["n_gallery"]
        for key in ("top1", "top5", "top10", "median_rank"):
            assert again[key] == pytest.approx(row[key], abs=1e-9), (row["query"], row["gallery"], key)
