"""Damaged artefacts written by the project itself: checkpoints, store manifests and files, explorer folders,
plus drawn DOS curves and standardize_dos inputs.

Each case: the documented error type, a message naming the file (or the input) and the problem, nothing on
disk changed by the failed load, and the same API working on an intact copy right afterwards.
"""

from __future__ import annotations

import json
import pickle
import shutil
import struct

import numpy as np
import pytest
import torch

from mlcm_core.data.conventions import DOS_ENERGIES, standardize_dos
from mlcm_core.data.store import ChecksumError, DatasetStore, StoreError
from mlcm_core.explore import Explorer, ExplorerError
from mlcm_core.explore.resample import MAX_POINTS, DrawnDOSError, resample_polyline
from mlcm_core.models.multimodal import MultimodalConfig, MultimodalModel
from mlcm_core.models.checkpoint import CheckpointError, load_checkpoint, load_training_state, load_weights

from .conftest import TINY_MODEL, copy_tree, rewrite_manifest_digest, tree_digest

# ---- checkpoints ---------------------------------------------------------------------------------


def _tiny_model(**overrides) -> MultimodalModel:
    torch.manual_seed(1)
    return MultimodalModel(MultimodalConfig.cpu().with_overrides({**TINY_MODEL, **overrides}))


def _set_files_digest(ckpt, name: str) -> None:
    """Make checkpoint.json vouch for the current ``name`` (so the content check, not the checksum, is tested)."""
    rewrite_manifest_digest(ckpt / "checkpoint.json", name, ckpt / name)


def _other_config_weights(tmp_path):
    other = _tiny_model(crystal={"hidden": 24, "num_layers": 1, "potential_bins": 8})
    return other.save_checkpoint(tmp_path / "other") / "model.safetensors"


def _flip(path, where: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[where] ^= 0x55
    path.write_bytes(bytes(data))


CHECKPOINT_CASES = {
    # name: (damage(ckpt, tmp_path), expected message)
    "weights_of_another_config": (
        lambda c, t: (shutil.copy(_other_config_weights(t), c / "model.safetensors"), _set_files_digest(c, "model.safetensors")),
        r"shape mismatch for tensor '.*': .* has \(\d+, 24\)|shape mismatch for tensor '.*': .*24"),
    "weights_are_a_pickle": (
        lambda c, t: ((c / "model.safetensors").write_bytes(pickle.dumps({"w": np.zeros(3)})), _set_files_digest(c, "model.safetensors")),
        r"model\.safetensors is not a safetensors file"),
    "weights_are_torch_save": (
        lambda c, t: (torch.save(_tiny_model().state_dict(), c / "model.safetensors"), _set_files_digest(c, "model.safetensors")),
        r"model\.safetensors is not a safetensors file"),
    "weights_truncated": (
        lambda c, t: ((c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:5000]),
                      _set_files_digest(c, "model.safetensors")),
        r"model\.safetensors is not a (valid )?safetensors file"),
    "weights_header_lies": (
        lambda c, t: ((c / "model.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{" + b" " * 64),
                      _set_files_digest(c, "model.safetensors")),
        r"model\.safetensors is not a safetensors file"),
    "weights_flipped_byte": (lambda c, t: _flip(c / "model.safetensors", -10), r"checksum mismatch for .*model\.safetensors"),
    "weights_missing": (lambda c, t: (c / "model.safetensors").unlink(), r"missing .*model\.safetensors"),
    "meta_garbled": (lambda c, t: (c / "checkpoint.json").write_text('{"format_version": 1, "step": '),
                     r"cannot read .*checkpoint\.json"),
    "meta_binary": (lambda c, t: (c / "checkpoint.json").write_bytes(b"\xff\xfe\x00garbage"), r"cannot read .*checkpoint\.json"),
    "meta_future_version": (
        lambda c, t: (c / "checkpoint.json").write_text(json.dumps({**json.loads((c / "checkpoint.json").read_text()),
                                                                    "format_version": 99})),
        r"checkpoint\.json: checkpoint format_version 99"),
    "meta_step_not_a_number": (
        lambda c, t: (c / "checkpoint.json").write_text(json.dumps({**json.loads((c / "checkpoint.json").read_text()),
                                                                    "step": "ten"})),
        r"checkpoint\.json: 'step' must be a non-negative integer"),
    "meta_config_unknown_field": (
        lambda c, t: (c / "checkpoint.json").write_text(json.dumps({**(m := json.loads((c / "checkpoint.json").read_text())),
                                                                    "model_config": {**m["model_config"], "bogus": 1}})),
        r"checkpoint\.json: its model_config does not build a model: unknown MultimodalConfig fields: \['bogus'\]"),
    "meta_config_not_a_dict": (
        lambda c, t: (c / "checkpoint.json").write_text(json.dumps({**json.loads((c / "checkpoint.json").read_text()),
                                                                    "model_config": [1, 2]})),
        r"checkpoint\.json: 'model_config' must be a dict"),
}


@pytest.mark.parametrize("name", list(CHECKPOINT_CASES))
def test_damaged_checkpoint_is_refused_and_untouched(name, tiny_checkpoint, tmp_path):
    damage, message = CHECKPOINT_CASES[name]
    ckpt = copy_tree(tiny_checkpoint, tmp_path / "ckpt")
    damage(ckpt, tmp_path)
    before = tree_digest(ckpt)
    with pytest.raises(CheckpointError, match=message):
        MultimodalModel.from_checkpoint(ckpt)
    if name != "meta_config_unknown_field":  # loading into a given model does not build one from the config
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(ckpt, _tiny_model())
    assert tree_digest(ckpt) == before
    assert MultimodalModel.from_checkpoint(tiny_checkpoint).config.embed_dim == 16  # still usable


def test_wrong_shapes_and_missing_tensors_name_the_tensor(tiny_checkpoint):
    with pytest.raises(CheckpointError, match=r"shape mismatch for tensor '[\w.]+': .* has \(.*\), the model expects"):
        load_checkpoint(tiny_checkpoint, _tiny_model(embed_dim=8, crystal={"hidden": 16, "num_layers": 1, "potential_bins": 8,
                                                                           "out_dim": 8},
                                                     dos={"d_model": 16, "n_layers": 1, "n_heads": 2, "ff_mult": 2,
                                                          "n_frequencies": 4, "out_dim": 8},
                                                     density={**TINY_MODEL["density"], "out_dim": 8}))
    tensors = load_weights(tiny_checkpoint)
    model = _tiny_model()
    from mlcm_core.models.checkpoint import load_state_dict_checked

    partial = dict(list(tensors.items())[1:])
    with pytest.raises(CheckpointError, match=r"missing tensors \['"):
        load_state_dict_checked(model, partial)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt", ".pkl"])
def test_pickle_weight_formats_are_refused_by_name(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    torch.save(_tiny_model().state_dict(), path)
    with pytest.raises(CheckpointError, match=r"only \.safetensors weight files"):
        load_weights(path)
    with pytest.raises(CheckpointError, match=r"only \.safetensors weight files"):
        load_checkpoint(path, _tiny_model())


def test_damaged_training_state_is_refused(training_checkpoint, tmp_path):
    ckpt = copy_tree(training_checkpoint, tmp_path / "step-00000007")
    (ckpt / "training_state.pt").write_bytes(b"PK\x03\x04 not really a zip")
    _set_files_digest(ckpt, "training_state.pt")
    model = _tiny_model()
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(CheckpointError, match=r"refusing to load .*training_state\.pt"):
        load_checkpoint(ckpt, model, opt)
    # the intact one restores optimizer and step
    assert load_checkpoint(training_checkpoint, model, opt).step == 7
    assert load_training_state(training_checkpoint)["optimizer"] is not None


# ---- store -----------------------------------------------------------------------------------------

def _manifest(store):
    return json.loads((store / "manifest.json").read_text())


def _write_manifest(store, doc) -> None:
    (store / "manifest.json").write_text(json.dumps(doc))


STORE_CASES = {
    "manifest_wrong_checksum": (
        lambda s: _write_manifest(s, (m := _manifest(s)) | {"shards": [m["shards"][0] | {"files": m["shards"][0]["files"]
                                                                                       | {"shards/fixture/materials.parquet": "0" * 64}}]}),
        ChecksumError, r"checksum mismatch for .*shards/fixture/materials\.parquet"),
    "parquet_flipped_byte": (lambda s: _flip(s / "shards/fixture/materials.parquet"), ChecksumError,
                             r"checksum mismatch for .*materials\.parquet"),
    "zarr_truncated": (lambda s: (s / "shards/fixture/arrays.zarr.zip").write_bytes(
        (s / "shards/fixture/arrays.zarr.zip").read_bytes()[:1000]), ChecksumError, r"checksum mismatch for .*arrays\.zarr\.zip"),
    "shard_file_missing": (lambda s: (s / "shards/fixture/arrays.zarr.zip").unlink(), ChecksumError,
                           r"missing file .*arrays\.zarr\.zip listed in the manifest"),
    "manifest_garbled": (lambda s: (s / "manifest.json").write_text('{"schema_version": 1, "shards": ['), StoreError,
                         r"manifest\.json is not valid JSON"),
    "manifest_missing": (lambda s: (s / "manifest.json").unlink(), StoreError, r"no dataset store at .*missing manifest\.json"),
    "manifest_future_schema": (lambda s: _write_manifest(s, _manifest(s) | {"schema_version": 2}), StoreError,
                               r"manifest\.json: schema version 2 != 1"),
    "manifest_not_an_object": (lambda s: _write_manifest(s, [1, 2]), StoreError, r"manifest\.json: not a store manifest"),
    "manifest_path_escapes": (
        lambda s: _write_manifest(s, (m := _manifest(s)) | {"shards": [m["shards"][0] | {"files": {"shards/fixture/../../../etc/hostname": "0" * 64}}]}),
        StoreError, r"lists 'shards/fixture/\.\./\.\./\.\./etc/hostname', outside shards/fixture/"),
    "manifest_shard_name_escapes": (
        lambda s: _write_manifest(s, (m := _manifest(s)) | {"shards": [m["shards"][0] | {"name": "../x"}]}),
        StoreError, r"shard 0 has no valid name"),
}


@pytest.mark.parametrize("name", list(STORE_CASES))
def test_damaged_store_is_refused_and_untouched(name, tiny_store, tmp_path):
    damage, error, message = STORE_CASES[name]
    store = copy_tree(tiny_store.root, tmp_path / "store")
    damage(store)
    before = tree_digest(store)
    with pytest.raises(error, match=message):
        DatasetStore.open(store)
    assert tree_digest(store) == before
    assert DatasetStore.open(tiny_store.root).dos("mp-test-si").shape == (1, 601)


# ---- explorer folder ----------------------------------------------------------------------------


def _ex(pre):
    return pre / "explore"


def _resave_npz(path, **arrays) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _npz_without(path, key: str) -> None:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != key}
    _resave_npz(path, **arrays)


EXPLORER_CASES = {
    "embeddings_checksum": (lambda p: _flip(_ex(p) / "embeddings.npz"), r"checksum mismatch for .*embeddings\.npz"),
    "map_missing": (lambda p: (_ex(p) / "map.npz").unlink(), r"missing .*map\.npz listed in the explorer manifest"),
    "manifest_garbled": (lambda p: (_ex(p) / "manifest.json").write_text("{not json"), r"manifest\.json is not valid JSON"),
    "manifest_not_ours": (lambda p: (_ex(p) / "manifest.json").write_text('{"format": "something-else"}'), r"no explorer data under"),
    "manifest_lacks_a_checksum": (
        lambda p: (_ex(p) / "manifest.json").write_text(json.dumps((m := json.loads((_ex(p) / "manifest.json").read_text()))
                                                                 | {"files": {k: v for k, v in m["files"].items() if k != "map.npz"}})),
        r"lists no checksum for \['map\.npz'\]"),
    "manifest_path_escapes": (
        lambda p: (_ex(p) / "manifest.json").write_text(json.dumps((m := json.loads((_ex(p) / "manifest.json").read_text()))
                                                                 | {"files": m["files"] | {"../../etc/hostname": "0" * 64}})),
        r"file names leave the explorer folder"),
    "embeddings_missing_ids": (
        lambda p: (_npz_without(_ex(p) / "embeddings.npz", "ids"), rewrite_manifest_digest(_ex(p) / "manifest.json", "embeddings.npz",
                                                                                           _ex(p) / "embeddings.npz")),
        r"embeddings\.npz is unreadable or malformed \(KeyError"),
    "projection_not_a_zip": (
        lambda p: ((_ex(p) / "projection.npz").write_bytes(b"PK\x03\x04" + b"\x00" * 64),
                   rewrite_manifest_digest(_ex(p) / "manifest.json", "projection.npz", _ex(p) / "projection.npz")),
        r"projection\.npz is unreadable or malformed"),
    "map_wrong_shape": (
        lambda p: (_resave_npz(_ex(p) / "map.npz", ids=np.load(_ex(p) / "map.npz")["ids"], xy=np.zeros((16, 3), np.float32),
                               placed_by=np.array(["umap"] * 16)),
                   rewrite_manifest_digest(_ex(p) / "manifest.json", "map.npz", _ex(p) / "map.npz")),
        r"map\.npz is unreadable or malformed \(ValueError: xy has shape \(16, 3\)"),
    "embeddings_of_another_checkpoint": (
        lambda p: (_resave_npz(_ex(p) / "embeddings.npz", **{k: (np.array(json.dumps({"checkpoint_sha256": "f" * 64}))
                                                                  if k == "meta" else v)
                                                              for k, v in np.load(_ex(p) / "embeddings.npz").items()}),
                   rewrite_manifest_digest(_ex(p) / "manifest.json", "embeddings.npz", _ex(p) / "embeddings.npz")),
        r"embeddings\.npz was made with another checkpoint"),
}


@pytest.mark.parametrize("name", list(EXPLORER_CASES))
def test_damaged_explorer_folder_is_refused_and_untouched(name, explore_dir, tiny_store, tmp_path):
    damage, message = EXPLORER_CASES[name]
    pre = copy_tree(explore_dir, tmp_path / "pre")
    damage(pre)
    before = tree_digest(pre)
    with pytest.raises(ExplorerError, match=message):
        Explorer.load(pre, store=tiny_store, export_root=tmp_path / "exports")
    assert tree_digest(pre) == before
    assert not (tmp_path / "exports").exists()
    ok = Explorer.load(explore_dir, export_root=tmp_path / "exports")  # the intact folder, via its own store path
    assert ok.neighbours("mp-test-si", k=3)["id"].tolist()[0] != "mp-test-si"


def test_explorer_refuses_a_store_without_its_shards(explore_dir, tmp_path):
    other = DatasetStore.create(tmp_path / "empty-store")
    with pytest.raises(ExplorerError, match=r"lacks shards the embeddings were built from: \['fixture'\]"):
        Explorer.load(explore_dir, store=other)


# ---- drawn DOS curves -------------------------------------------------------------------------------

X = np.linspace(-6, 6, 25)
Y = np.exp(-X**2 / 4) + 0.1
DRAWN_CASES = {
    "no_points": (([], []), r"no points"),
    "one_point": (([0.5], [1.0]), r"only 1 point"),
    "zigzag_x": (([-2, 0, -1, 1], [1, 1, 1, 1]), r"x goes back at point 2"),
    "same_x": (([1.0, 1.0, 1.0], [1, 2, 3]), r"all points are at the same energy"),
    "length_mismatch": ((X, Y[:-1]), r"x has 25 points but y has 24"),
    "nan_y": ((X, np.where(X == X[3], np.nan, Y)), r"y contains NaN or infinite values \(first at point 3\)"),
    "inf_x": ((np.where(X == X[0], -np.inf, X), Y), r"x contains NaN or infinite"),
    "negative_y": ((X, Y - 0.5), r"DOS values must be >= 0"),
    "two_dimensional": ((np.ones((3, 2)), np.ones((3, 2))), r"must be 1-D"),
    "not_numbers": ((["a", "b"], [1, 2]), r"x and y must be numbers"),
    "outside_window": ((X + 40, Y), r"does not overlap the DOS window"),
    "all_zero": ((X, np.zeros_like(X)), r"zero everywhere"),
    "huge_y": ((X, Y * 1e35), r"DOS values must be below 1e\+30; point 0"),
    "too_many_points": ((np.linspace(-5, 5, MAX_POINTS + 1), np.ones(MAX_POINTS + 1)), r"above the limit of 100000"),
}


@pytest.mark.parametrize("name", list(DRAWN_CASES))
def test_bad_drawn_curves_are_refused(name, explore_dir, tmp_path):
    (x, y), message = DRAWN_CASES[name]
    with pytest.raises(DrawnDOSError, match=message):
        resample_polyline(x, y)
    explorer = Explorer.load(explore_dir, export_root=tmp_path / "exports")
    with pytest.raises(DrawnDOSError, match=message):
        explorer.query(dos=(x, y))
    assert resample_polyline(X, Y).shape == (601,)


def test_reversed_drawing_is_the_same_curve():
    np.testing.assert_array_equal(resample_polyline(X[::-1], Y[::-1]), resample_polyline(X, Y))


def test_near_vertical_stroke_stays_finite():
    """Found by fuzzing: x steps of 1e-308 eV made the interpolation slope overflow (NaN in the query)."""
    out = resample_polyline([-1.0, 0.0, 2.2e-308, 1.0], [1.0, 1.0, 2.0, 1.0])
    assert np.isfinite(out).all() and out.max() > 0


# ---- standardize_dos -----------------------------------------------------------------------------------

def test_standardize_dos_refusals_and_clipping():
    e = np.linspace(-12, 12, 200)
    d = np.ones(200)
    with pytest.raises(ValueError, match="1-D array with at least two points"):
        standardize_dos([0.0], [1.0], 0.0)
    with pytest.raises(ValueError, match="strictly increasing"):
        standardize_dos(e[::-1], d, 0.0)
    with pytest.raises(ValueError, match="DOS has 199 points but 200 energies"):
        standardize_dos(e, d[:-1], 0.0)
    with pytest.raises(ValueError, match="NaN or infinite"):
        standardize_dos(e, np.where(e > 3, np.nan, d), 0.0)
    # source DOS (VASP tetrahedron method) may dip slightly below zero: clipped by design, documented
    out = standardize_dos(e, d - 1.5 * (np.abs(e) < 1), 0.0)
    assert out.min() == 0.0 and out.shape == DOS_ENERGIES.shape


# ---- dft validate: the target is checked before any calculation ------------------------------------------

@pytest.mark.parametrize(("target", "message"), [
    (np.ones(600), r"shape \(600,\)"), (np.full(601, np.nan), "NaN"), (-np.ones(601), "negative value at point 0"),
    (np.where(np.abs(DOS_ENERGIES) < 6, 0.0, 1.0), "zero everywhere on the scored window")])
def test_validate_refuses_a_bad_target_before_running(target, message, monkeypatch):
    import importlib

    from pymatgen.core import Lattice, Structure

    mod = importlib.import_module("mlcm_core.dft.validate")

    def never(*a, **k):
        raise AssertionError("a calculation was started for a target that cannot be scored")

    monkeypatch.setattr(mod, "compute", never)
    monkeypatch.setattr(mod, "estimate_cost", never)
    si = Structure(Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])
    with pytest.raises(ValueError, match=message):
        mod.validate(si, target, report=lambda _m: None)
