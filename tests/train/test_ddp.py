"""torchrun with 2 CPU processes (gloo): both ranks train, only rank 0 writes, the checkpoint loads."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from mlcm_core.models.checkpoint import read_checkpoint_info
from tests._app_server import free_port
from mlcm_core.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not installed")
def test_torchrun_two_ranks(tiny_store, tiny_config: TrainConfig, tmp_path):
    cfg = replace(tiny_config, epochs=1, checkpoint_every=2)
    cfg_path = tmp_path / "run.yaml"
    cfg.to_yaml(cfg_path)
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = ["torchrun", "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "mlcm_core.cli", "pretrain",
           "--config", str(cfg_path), "--store", str(tiny_store.root), "--out", str(out)]
    r = subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    text = r.stdout + r.stderr
    assert r.returncode == 0, text[-4000:]
    for rank in (0, 1):
        assert f"[rank {rank}/2] start" in text and f"[rank {rank}/2] done" in text, text[-4000:]
    ckpts = sorted((out / "checkpoints").glob("step-*"))
    assert ckpts, "rank 0 wrote no checkpoint"
    info = read_checkpoint_info(out)
    assert info.extra["world_size"] == 2 and info.epoch == 1
    assert (out / "log.csv").exists() and (out / "config.yaml").exists()
    assert not list(out.rglob(".*tmp*"))  # atomic writes / staged folders left nothing behind
    # each rank takes half of the epoch's permutation: 13 rows -> 7 per rank (padded) -> 2 steps of 4 + 3
    assert info.step == 2 and info.extra["steps_per_epoch"] == 2
    lines = (out / "log.csv").read_text().splitlines()
    assert len([ln for ln in lines if ",train," in ln]) == info.step
