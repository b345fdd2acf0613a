"""Fixtures for the evaluation tests: the training tests' tiny store (reused as is) and a tiny checkpoint."""

from __future__ import annotations

import pytest

from tests.train.conftest import TINY_MODEL, _one_thread, tiny_store  # noqa: F401  (fixtures re-exported)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_store, tmp_path_factory):  # noqa: F811  (the imported fixture)
    """A 3-modal tiny model pre-trained for one epoch on the tiny store (checkpoint directory)."""
    import torch

    from mlcm_core.train.config import TrainConfig
    from mlcm_core.train.pretrain import pretrain

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("eval-ckpt")
    cfg = TrainConfig(model="cpu", model_overrides=TINY_MODEL, epochs=1, batch_size=4, lr=3e-3, warmup_steps=1,
                      seed=0, out_dir=str(root / "run"), device="cpu", graph_cache_dir=str(root / "graphs"))
    return pretrain(tiny_store, cfg, progress=False)
