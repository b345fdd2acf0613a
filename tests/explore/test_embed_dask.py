"""Embedding on Dask (issue #17, item 3): chunks of the store as tasks, the model loaded once per worker, and a
table identical to the in-process one, from the Python API and from `mlcm embed --scheduler ADDRESS`.

One 2-worker LocalCluster serves the whole module (its start is most of the cost); the store is the tiny
explorer fixture (30 real materials, tests/explore/conftest.py) and chunks of 8 materials make 8 tasks.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mlcm_core.explore.embed import EmbeddingTable, embed_store

CHUNK = 8


@pytest.fixture(scope="module")
def client():
    from mlcm_core.scale import dask_client

    with dask_client(workers=2, memory_limit="1GiB") as c:
        yield c


def _assert_same_table(a: EmbeddingTable, b: EmbeddingTable) -> None:
    np.testing.assert_array_equal(a.ids, b.ids)
    assert a.modalities == b.modalities == ("crystal", "dos", "density")
    for m in a.modalities:
        np.testing.assert_array_equal(a.rows[m], b.rows[m])
        assert a.vectors[m].dtype == b.vectors[m].dtype == np.float16
        np.testing.assert_array_equal(a.vectors[m], b.vectors[m])  # bit for bit, not approximately


def test_dask_chunks_equal_the_in_process_table(tiny, client, tmp_path):
    """Same ids, rows and float16 vectors bit for bit; the workers featurize into a fresh graph cache, and each
    loads the model once although 8 tasks ran."""
    from mlcm_core.explore.embed import _plan

    store, ckpt, pre = tiny
    local = embed_store(store, ckpt, chunk=CHUNK, cache_dir=pre.parent / "graphs")
    remote = embed_store(store, ckpt, chunk=CHUNK, cache_dir=tmp_path / "graphs", client=client, torch_threads=1)
    _assert_same_table(local, remote)
    assert len(remote) == 30 and remote.meta["counts"] == {"crystal": 27, "dos": 13, "density": 13}
    assert {k: v for k, v in remote.meta.items() if k != "created"} == {k: v for k, v in local.meta.items()
                                                                       if k != "created"}
    # the table the explorer shipped (built in process with chunks of 512) is the same too
    _assert_same_table(EmbeddingTable.load(pre / "explore"), remote)

    tasks = _plan(store.table, store.table["id"].astype(str).tolist(), ["crystal", "dos", "density"], CHUNK)
    assert len(tasks) == 8  # 27 crystals -> 4 chunks, 13 DOS -> 2, 13 densities -> 2

    def loads() -> list:
        from mlcm_core.explore import embed

        return list(embed.WORKER_LOADS)

    per_worker = client.run(loads)
    assert len(per_worker) == 2
    assert all(len(v) <= 1 for v in per_worker.values()), per_worker  # once per worker, not per task
    assert {tuple(v[0]) for v in per_worker.values() if v} == {(str(ckpt.resolve()), local.meta["checkpoint_sha256"])}
    assert len(list((tmp_path / "graphs").rglob("*.pt"))) == 27  # every crystal featurized on a worker


def test_worker_refuses_other_weights_at_the_path(tiny, client, tmp_path):
    """A worker whose file at the checkpoint path is not the client's weights fails instead of embedding."""
    from mlcm_core.explore.embed import embed_chunk_task
    from mlcm_core.models.checkpoint import CheckpointError

    store, ckpt, _ = tiny
    shards = tuple(sh["name"] for sh in store.manifest["shards"])
    ids = store.table["id"].head(2).tolist()
    future = client.submit(embed_chunk_task, str(store.root), shards, str(ckpt), "0" * 64, "crystal", ids, 64,
                           str(tmp_path / "graphs"), 1, pure=False)
    with pytest.raises(CheckpointError, match="other weights"):
        future.result(timeout=120)


def test_mlcm_embed_by_scheduler_address(tiny, client, tmp_path, capsys):
    """`mlcm embed --scheduler ADDRESS` writes the same embeddings.npz arrays as `mlcm embed --workers 0`."""
    from mlcm_core.cli import build_parser, main

    store, ckpt, pre = tiny
    args = build_parser().parse_args(["embed", "--scheduler", "tcp://head:8786", "--workers", "3", "--chunk", "100"])
    assert (args.scheduler, args.workers, args.chunk) == ("tcp://head:8786", 3, 100)
    args = build_parser().parse_args(["project"])
    assert (args.scheduler, args.workers, args.chunk) == (None, 0, 512)  # in process by default

    tables = {}
    for name, extra in (("local", ["--workers", "0"]), ("dask", ["--scheduler", client.scheduler.address])):
        shutil.copytree(pre, tmp_path / name)
        assert main(["embed", "--store", str(store.root), "--checkpoint", str(ckpt), "--out", str(tmp_path / name),
                     "--chunk", str(CHUNK), *extra]) == 0
        assert '"map": "kept from the previous build"' in capsys.readouterr().out
        explore = tmp_path / name / "explore"
        manifest = json.loads((explore / "manifest.json").read_text())
        tables[name] = EmbeddingTable.load(explore, expected_sha256=manifest["files"]["embeddings.npz"])
    _assert_same_table(tables["local"], tables["dask"])
    assert tables["dask"].meta["checkpoint_path"] == "model"  # the staged copy, made relative as in process


def _worker_diagnostics() -> dict:
    import dask

    return {key: dask.config.get(key) for key in ("distributed.worker.profile.enabled",
                                                  "distributed.admin.tick.interval")}


def test_local_cluster_workers_run_with_thinned_diagnostics(client):
    """The worker processes got LOCAL_CLUSTER_CONFIG (their profiler off: 5 % of 2 cores in a campaign)."""
    per_worker = client.run(_worker_diagnostics)
    assert len(per_worker) == 2
    for cfg in per_worker.values():
        assert cfg == {"distributed.worker.profile.enabled": False, "distributed.admin.tick.interval": "1s"}
