"""Warm-up + cosine schedule: values at known steps, LambdaLR agreement, and the logged LR is the applied LR."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from mlcm_core.train.schedule import lr_at, lr_factor, warmup_cosine_schedule


def test_known_values():
    # W = 10 warm-up steps, T = 110 total: linear to 1.0 at step 10, cosine to 0 at step 110
    assert lr_at(1, 1.0, 10, 110) == pytest.approx(0.1)
    assert lr_at(5, 1.0, 10, 110) == pytest.approx(0.5)
    assert lr_at(10, 1.0, 10, 110) == pytest.approx(1.0)
    assert lr_at(35, 1.0, 10, 110) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))  # a quarter of the decay
    assert lr_at(60, 1.0, 10, 110) == pytest.approx(0.5)  # half-way
    assert lr_at(110, 1.0, 10, 110) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(500, 1.0, 10, 110) == pytest.approx(0.0, abs=1e-12)  # stays at the floor
    assert lr_at(60, 2e-3, 10, 110, min_lr_ratio=0.1) == pytest.approx(2e-3 * (0.1 + 0.9 * 0.5))
    assert lr_at(1, 1.0, 0, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi / 100)))  # no warm-up
    with pytest.raises(ValueError):
        lr_factor(0, 10, 100)


def test_lambda_lr_applies_lr_at():
    p = torch.nn.Parameter(torch.zeros(()))
    opt = torch.optim.SGD([p], lr=0.3)
    sched = warmup_cosine_schedule(opt, warmup_steps=4, total_steps=20, min_lr_ratio=0.05)
    for step in range(1, 26):
        assert opt.param_groups[0]["lr"] == pytest.approx(lr_at(step, 0.3, 4, 20, 0.05))
        opt.step()
        sched.step()


def test_logged_lr_is_the_optimizers(tiny_store, tiny_config, monkeypatch):
    from mlcm_core.models.checkpoint import read_checkpoint_info
    from mlcm_core.train.pretrain import pretrain

    applied: list[float] = []
    real_step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        applied.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    ckpt = pretrain(tiny_store, tiny_config, progress=False)
    with open(tiny_config.out_dir + "/log.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["phase"] == "train"]
    total = read_checkpoint_info(ckpt).extra["total_steps"]
    assert [int(r["step"]) for r in rows] == list(range(1, total + 1))  # log_every = 1
    logged = [float(r["lr"]) for r in rows]
    assert logged == pytest.approx(applied, rel=1e-12)  # what the optimizer actually used
    expected = [lr_at(s, tiny_config.lr, tiny_config.warmup_steps, total, tiny_config.min_lr_ratio)
                for s in range(1, total + 1)]
    assert logged == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_config_round_trip(tmp_path, suffix):
    from mlcm_core.train.config import FinetuneConfig, TrainConfig

    cfg = TrainConfig(model="cpu", model_overrides={"embed_dim": 32, "density": {"layers": [1, 1, 1, 1]}},
                      loss="anchored_clip", loss_options={"anchor": "crystal", "min_rows": 2},
                      modalities=("crystal", "dos"), epochs=3)
    cfg.to_yaml(tmp_path / f"c{suffix}")
    back = TrainConfig.from_yaml(tmp_path / f"c{suffix}")
    assert back == cfg
    mc = back.model_config()
    assert mc.embed_dim == 32 and mc.crystal.out_dim == 32 and mc.modalities == ("crystal", "dos")
    assert mc.density.layers == (1, 1, 1, 1)
    ft = FinetuneConfig(ensemble=3, mc_dropout=5)
    ft.to_yaml(tmp_path / f"f{suffix}")
    assert FinetuneConfig.from_yaml(tmp_path / f"f{suffix}") == ft
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"epochz": 3})
