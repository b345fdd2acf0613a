"""Checkpoints: round trip, clear errors on mismatched shapes, and untrusted files are refused, never run."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from mlcm_core.models.multimodal import MultimodalConfig, MultimodalModel
from mlcm_core.models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_weights,
    read_checkpoint_info,
    save_checkpoint,
)
from mlcm_core.train.schedule import warmup_cosine_schedule

from .conftest import TINY_MODEL


class _Payload:
    """A pickle that, when unpickled, creates a marker file (stands in for arbitrary code execution)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _model(**overrides) -> MultimodalModel:
    torch.manual_seed(0)
    return MultimodalModel(MultimodalConfig.cpu().with_overrides({**TINY_MODEL, **overrides}))


def _trained_step(model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = warmup_cosine_schedule(opt, 2, 10)
    loss = sum(p.sum() for p in model.parameters())
    loss.backward()
    opt.step()
    sched.step()
    return opt, sched


def test_round_trip(tmp_path):
    model = _model()
    opt, sched = _trained_step(model)
    path = save_checkpoint(tmp_path / "ck", model, step=7, epoch=2, optimizer=opt, scheduler=sched,
                           extra={"note": "x"})
    assert sorted(p.name for p in path.iterdir()) == ["checkpoint.json", "model.safetensors", "training_state.pt"]
    info = read_checkpoint_info(path)
    assert (info.step, info.epoch, info.extra["note"], info.model_class) == (7, 2, "x", "MultimodalModel")
    assert MultimodalConfig.from_dict(info.model_config) == model.config

    back = MultimodalModel.from_checkpoint(path)
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    dos = torch.rand(3, 601)
    assert torch.allclose(back.embed("dos", dos), model.embed("dos", dos))

    opt2 = torch.optim.AdamW(back.parameters(), lr=1e-3)
    sched2 = warmup_cosine_schedule(opt2, 2, 10)
    load_checkpoint(path, back, opt2, sched2)
    assert sched2.last_epoch == sched.last_epoch and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"]) for k in s1)


def test_model_save_checkpoint_method_and_overwrite(tmp_path):
    model = _model()
    model.save_checkpoint(tmp_path / "m", step=1)
    model.save_checkpoint(tmp_path / "m", step=2)  # replaces atomically
    assert read_checkpoint_info(tmp_path / "m").step == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_wrong_shapes_name_the_tensor(tmp_path):
    path = save_checkpoint(tmp_path / "ck", _model())
    other = _model(embed_dim=8)
    with pytest.raises(CheckpointError, match=r"shape mismatch for tensor 'encoders\.\w+\..*\(16.*\(8"):
        load_checkpoint(path, other)
    fewer = MultimodalModel(MultimodalConfig.cpu().with_overrides({**TINY_MODEL, "modalities": ["crystal", "dos"]}))
    with pytest.raises(CheckpointError, match="unexpected tensors.*encoders.density"):
        load_checkpoint(path, fewer)
    load_checkpoint(path, fewer, strict=False)  # a subset is fine when asked for


def test_corrupt_weights_detected(tmp_path):
    path = save_checkpoint(tmp_path / "ck", _model())
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(path, _model())


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickles_are_refused_not_executed(tmp_path):
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(_Payload(marker))
    model = _model()
    opt, sched = _trained_step(model)
    path = save_checkpoint(tmp_path / "ck", model, optimizer=opt, scheduler=sched)
    meta = json.loads((path / "checkpoint.json").read_text())

    # 1. a pickle passed off as the safetensors weights (the attacker also fixes the checksum)
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "model.safetensors").write_bytes(payload)
    (evil / "checkpoint.json").write_text(json.dumps({**meta, "files": {}}))
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(evil, _model())

    # 2. pickle-format weight files are refused by name, whatever they contain
    for name in ("weights.pt", "weights.pth", "model.bin", "model.ckpt"):
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(CheckpointError, match="only .safetensors"):
            load_checkpoint(tmp_path / name, _model())
        with pytest.raises(CheckpointError, match="only .safetensors"):
            load_weights(tmp_path / name)

    # 3. training_state.pt replaced by a raw pickle and by a torch.save'd object, checksums updated
    import hashlib

    for variant in ("raw", "torch"):
        state = path / "training_state.pt"
        if variant == "raw":
            state.write_bytes(payload)
        else:
            torch.save({"optimizer": _Payload(marker)}, state)
        meta["files"]["training_state.pt"] = hashlib.sha256(state.read_bytes()).hexdigest()
        (path / "checkpoint.json").write_text(json.dumps(meta))
        opt2 = torch.optim.AdamW(model.parameters())
        with pytest.raises(CheckpointError, match="refusing to load"):
            load_checkpoint(path, model, opt2)
    assert not marker.exists(), "a payload ran"


def test_planted_graph_cache_file_is_not_executed(tiny_store, tmp_path):
    from mlcm_core.featurize.dataset import GraphCache, MultimodalDataset

    marker = tmp_path / "PWNED"
    ids = tiny_store.table.query("has_structure")["id"].head(2).tolist()
    ds = MultimodalDataset(tiny_store, ids, cache_dir=tmp_path / "cache", modalities=("crystal",), progress=False)
    key = GraphCache.key(tiny_store.table.set_index("id").at[ids[0], "structure_json"])
    planted = ds.cache.path(key)
    torch.save({"x": _Payload(marker)}, planted)
    again = MultimodalDataset(tiny_store, ids, cache_dir=tmp_path / "cache", modalities=("crystal",), progress=False)
    assert not marker.exists()
    assert torch.equal(again[0].graph.edge_index, ds[0].graph.edge_index)  # re-featurized instead
    assert torch.load(planted, weights_only=True)["x"].dtype == torch.long  # and the file repaired
