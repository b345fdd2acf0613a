"""Security: no untrusted pickle is ever loaded, the app binds locally with the origin check on, uploads are
bounded, exports cannot leave their folder.

The malicious payload is a pickle whose ``__reduce__`` runs ``touch <marker>``; ``test_the_payload_is_live``
shows it really runs under a plain ``pickle.loads`` / ``np.load(allow_pickle=True)``, so "the marker never
appears" below means the project refused to unpickle, not that the payload was inert. It is planted as every
file type the project loads, with the manifests' checksums updated to match (an attacker who can write the
file can write its manifest too: checksums detect corruption, they do not authenticate).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shlex
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mlcm_core.data.sources.structure_files import StructureFileError, StructureFileLimits, read_structure_file
from mlcm_core.explore import Explorer, ExplorerError, ExportPathError
from mlcm_core.models.checkpoint import CheckpointError, load_checkpoint, load_training_state, load_weights

from .conftest import ROOT, copy_tree, rewrite_manifest_digest


class Payload:
    """Unpickling this runs ``touch marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a planted pickle was executed"


def _npz_with_payload(path: Path, marker: Path, **arrays) -> None:
    """An .npz whose 'ids' (or given) entry is an object array: numpy stores it as a pickle."""
    arrays = {"ids": np.array([Payload(marker)], dtype=object), **arrays}
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def test_the_payload_is_live(tmp_path):
    m1, m2 = tmp_path / "m1", tmp_path / "m2"
    pickle.loads(pickle.dumps(Payload(m1)))
    _npz_with_payload(tmp_path / "x.npz", m2)
    np.load(tmp_path / "x.npz", allow_pickle=True)["ids"]
    assert m1.exists() and m2.exists()


# ---- checkpoints ----------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_payload_as_checkpoint_weights(tiny_checkpoint, tmp_path, marker):
    from mlcm_core.models.multimodal import MultimodalModel

    ckpt = copy_tree(tiny_checkpoint, tmp_path / "ckpt")
    (ckpt / "model.safetensors").write_bytes(pickle.dumps(Payload(marker)))
    rewrite_manifest_digest(ckpt / "checkpoint.json", "model.safetensors", ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match="is not a safetensors file"):
        MultimodalModel.from_checkpoint(ckpt)
    for name in ("model.pt", "model.pth", "model.bin", "model.ckpt", "model.pkl"):
        torch.save({"w": Payload(marker)}, ckpt / name)
        with pytest.raises(CheckpointError, match="only .safetensors"):
            load_weights(ckpt / name)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_payload_as_training_state(training_checkpoint, tmp_path, marker):
    from mlcm_core.models.multimodal import MultimodalModel

    ckpt = copy_tree(training_checkpoint, tmp_path / "step-00000007")
    model = MultimodalModel.from_checkpoint(ckpt)
    for variant in ("torch.save", "raw pickle"):
        state = ckpt / "training_state.pt"
        if variant == "torch.save":
            torch.save({"optimizer": Payload(marker), "scheduler": None, "rng": None}, state)
        else:
            state.write_bytes(pickle.dumps(Payload(marker)))
        rewrite_manifest_digest(ckpt / "checkpoint.json", "training_state.pt", state)
        with pytest.raises(CheckpointError, match="refusing to load .*training_state.pt"):
            load_training_state(ckpt)
        with pytest.raises(CheckpointError, match="refusing to load"):  # what `pretrain --resume` calls
            load_checkpoint(ckpt, model, torch.optim.AdamW(model.parameters()), restore_rng=True)


def test_payload_as_graph_cache_entry(tmp_path, marker):
    from mlcm_core.featurize.crystal_graph import CrystalGraphConfig
    from mlcm_core.featurize.dataset import GraphCache

    cache = GraphCache(tmp_path / "graphs", CrystalGraphConfig())
    key = GraphCache.key('{"planted": true}')
    cache.path(key).parent.mkdir(parents=True)
    torch.save({"x": Payload(marker), "num_nodes": torch.tensor(1)}, cache.path(key))
    assert cache.load(key) is None  # unreadable -> featurized again, never executed


# ---- explorer files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["embeddings.npz", "projection.npz", "map.npz"])
def test_payload_as_explorer_npz(name, explore_dir, tiny_store, tmp_path, marker):
    from mlcm_core.explore.embed import EmbeddingTable
    from mlcm_core.explore.projection import UMAPProjection

    pre = copy_tree(explore_dir, tmp_path / "pre")
    path = pre / "explore" / name
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    key = {"embeddings.npz": "meta", "projection.npz": "params", "map.npz": "placed_by"}[name]
    arrays[key] = np.array([Payload(marker)], dtype=object)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    rewrite_manifest_digest(pre / "explore" / "manifest.json", name, path)
    with pytest.raises(ExplorerError, match=rf"{re.escape(name)} is unreadable or malformed .*allow_pickle=False"):
        Explorer.load(pre, store=tiny_store)
    reader = {"embeddings.npz": EmbeddingTable.load, "projection.npz": UMAPProjection.load}.get(name)
    if reader is not None:
        with pytest.raises(ValueError, match="allow_pickle=False"):
            reader(path)


# ---- DFT results, store arrays, structures, configs ---------------------------------------------------


def test_payload_as_dft_result(tmp_path, marker):
    from mlcm_core.data.conventions import DOS_ENERGIES
    from mlcm_core.dft.engine import record_from_npz

    _npz_with_payload(tmp_path / "mp-x.npz", marker, energy_grid=DOS_ENERGIES,
                      protocol=np.array([Payload(marker)], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle=False"):
        record_from_npz(tmp_path / "mp-x.npz", "mp-x")


def _zarr_v2_with_pickle(path: Path, marker: Path) -> None:
    """A zarr v2 group whose 'dos' array decodes its chunk with the numcodecs 'pickle' filter."""
    meta = {"zarr_format": 2, "shape": [16, 601], "chunks": [16, 601], "dtype": "<f2", "compressor": None,
            "fill_value": 0, "filters": [{"id": "pickle"}], "order": "C"}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(".zgroup", json.dumps({"zarr_format": 2}))
        for name in ("dos", "dos_spin", "density"):
            z.writestr(f"{name}/.zarray", json.dumps(meta))
            z.writestr(f"{name}/0.0", pickle.dumps(Payload(marker)))


def _zarr_v3_with_pickle(path: Path, marker: Path) -> None:
    meta = {"zarr_format": 3, "node_type": "array", "shape": [16, 601], "data_type": "float16",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [16, 601]}},
            "chunk_key_encoding": {"name": "default"}, "fill_value": 0,
            "codecs": [{"name": "numcodecs.pickle"}, {"name": "bytes", "configuration": {"endian": "little"}}]}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("zarr.json", json.dumps({"zarr_format": 3, "node_type": "group"}))
        z.writestr("dos/zarr.json", json.dumps(meta))
        z.writestr("dos/c/0/0", pickle.dumps(Payload(marker)))


@pytest.mark.parametrize("writer", [_zarr_v2_with_pickle, _zarr_v3_with_pickle], ids=["zarr-v2", "zarr-v3"])
def test_payload_as_store_arrays(writer, tiny_store, tmp_path, marker):
    from mlcm_core.data.store import DatasetStore

    root = copy_tree(tiny_store.root, tmp_path / "store")
    arrays = root / "shards" / "fixture" / "arrays.zarr.zip"
    writer(arrays, marker)
    doc = json.loads((root / "manifest.json").read_text())
    from mlcm_core.io import sha256_file

    doc["shards"][0]["files"]["shards/fixture/arrays.zarr.zip"] = sha256_file(arrays)
    (root / "manifest.json").write_text(json.dumps(doc))
    store = DatasetStore.open(root)  # the checksums match: the planted file gets as far as the reader
    with pytest.raises(Exception):  # noqa: B017 - zarr refuses the codec/data type; any refusal will do
        store.dos(["mp-test-si"])


def test_structure_json_naming_python_objects_is_refused(tiny_store, tmp_path, marker, monkeypatch):
    """pymatgen decodes site properties with MontyDecoder, which imports the module an '@module' key names."""
    from mlcm_core.data.store import DatasetStore, StoreError
    from mlcm_core.io import sha256_file

    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "hardening_side_effect.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nclass Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    root = copy_tree(tiny_store.root, tmp_path / "store")
    parquet = root / "shards" / "fixture" / "materials.parquet"
    table = pd.read_parquet(parquet)
    doc = json.loads(table.loc[table["id"] == "mp-test-si", "structure_json"].iloc[0])
    doc["sites"][0]["properties"] = {"tag": {"@module": "hardening_side_effect", "@class": "Thing"}}
    table.loc[table["id"] == "mp-test-si", "structure_json"] = json.dumps(doc)
    table.to_parquet(parquet, index=False)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["shards"][0]["files"]["shards/fixture/materials.parquet"] = sha256_file(parquet)
    (root / "manifest.json").write_text(json.dumps(manifest))
    store = DatasetStore.open(root)
    with pytest.raises(StoreError, match="mp-test-si: its structure JSON names Python objects"):
        store.structure("mp-test-si")
    assert store.structure("mp-test-al").composition.reduced_formula == "Al"
    sys.modules.pop("hardening_side_effect", None)


def test_yaml_config_cannot_construct_objects(tmp_path, marker):
    import yaml

    from mlcm_core.train.config import TrainConfig

    path = tmp_path / "evil.yaml"
    path.write_text(f"model: !!python/object/apply:os.system [{json.dumps('touch ' + shlex.quote(str(marker)))}]\n")
    with pytest.raises(yaml.YAMLError):
        TrainConfig.from_yaml(path)


SAFE_LOADERS = {  # file -> the deserialising calls it may make; each is documented in docs/reliability.md
    "mlcm_core/models/checkpoint.py": ["torch.load(state_path, map_location=map_location, weights_only=True)"],
    "mlcm_core/featurize/dataset.py": ["torch.load(path, map_location='cpu', weights_only=True)"],
    "mlcm_core/explore/embed.py": ["np.load(path, allow_pickle=False)"],
    "mlcm_core/explore/projection.py": ["np.load(path, allow_pickle=False)"],
    "mlcm_core/explore/explorer.py": ["np.load(path, allow_pickle=False)"],
    "mlcm_core/explore/clusters.py": ["np.load(path, allow_pickle=False)"],
    "mlcm_core/explore/build.py": ["np.load(explore_dir / 'map.npz', allow_pickle=False)"],
    "mlcm_core/explore/predict.py": ["np.load(directory / PREDICTIONS_FILE, allow_pickle=False)"],
    "mlcm_core/dft/engine.py": ["np.load(path)"],
    "mlcm_core/cli.py": ["np.load(p, allow_pickle=False)"],
    "benchmarks/density_vs_vasp.py": ["np.load(Path(tmp) / 'x.npz', allow_pickle=False)"],
    "mlcm_core/explore/classical.py": ["np.load(path, allow_pickle=False)",
                                       "np.load(heads_dir / PREDICTIONS_FILE, allow_pickle=False)"],
    "mlcm_core/explore/forest.py": ["np.load(path, allow_pickle=False)"],
    "benchmarks/dos_step_cost.py": ["np.load(f, allow_pickle=False)"],
    "benchmarks/predictions_vs_magpie.py": ["np.load(heads / 'predictions.npz', allow_pickle=False)"],
    "mlcm_core/dft/seed.py": ["np.load(npz)"],
    "mlcm_core/data/sources/default.py": ["np.load(path)"],
    "benchmarks/dft_si_gap.py": ["np.load(f'{out}/si-benchmark.npz')"],
}
_RISKY = re.compile(r"^(?:\w+\.)*(?:pickle|cPickle|_pickle|dill|cloudpickle|joblib|marshal|shelve)\.(?:load|loads|open|Unpickler)$"
                    r"|^(?:torch|np|numpy)\.load$|read_pickle$|^yaml\.(?:load|unsafe_load|full_load|load_all)$")


def _deserialising_calls(path: Path) -> list[str]:
    """Every call in the file's code (not its docstrings) that can deserialise, as ast.unparse text, in order."""
    import ast

    calls = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            risky_kw = any(k.arg == "allow_pickle" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                           for k in node.keywords)
            if _RISKY.search(ast.unparse(node.func)) or risky_kw:
                calls.append((node.lineno, node.col_offset, ast.unparse(node)))
    return [c for *_, c in sorted(calls)]


def test_every_deserialiser_in_the_code_is_a_known_safe_one():
    """Parse the project (library, app, benchmarks, scripts) for calls that can unpickle: the list is closed."""
    import ast
    import inspect

    found = {}
    for folder in ("mlcm_core", "app", "benchmarks", "scripts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            calls = _deserialising_calls(path)
            if calls:
                found[str(path.relative_to(ROOT))] = calls
    allowed = {f: {ast.unparse(ast.parse(c)) for c in calls} for f, calls in SAFE_LOADERS.items()}
    unexpected = {f: [c for c in calls if c not in allowed.get(f, set())] for f, calls in found.items()}
    unexpected = {f: c for f, c in unexpected.items() if c}
    assert not unexpected, f"new deserialising calls (check they cannot unpickle, then list them here and in docs): {unexpected}"
    assert set(found) == set(SAFE_LOADERS), "SAFE_LOADERS lists a file that no longer deserialises: update it and the docs"
    assert inspect.signature(np.load).parameters["allow_pickle"].default is False  # so a bare np.load(path) is safe


def test_the_deserialiser_scan_finds_unsafe_calls(tmp_path):
    src = tmp_path / "bad.py"
    src.write_text('import pickle, torch, numpy as np, yaml\n"""torch.load(x) in a docstring is ignored"""\n'
                   "a = pickle.loads(b)\nb = torch.load(p)\nc = np.load(p, allow_pickle=True)\nd = yaml.load(t)\n"
                   "e = torch.load(p, weights_only=True)\nf = yaml.safe_load(t)\n")
    assert _deserialising_calls(src) == ["pickle.loads(b)", "torch.load(p)", "np.load(p, allow_pickle=True)",
                                         "yaml.load(t)", "torch.load(p, weights_only=True)"]


# ---- the app's command line ------------------------------------------------------------------------------


def test_mlcm_app_binds_localhost_with_the_origin_check_on(monkeypatch, capsys):
    from mlcm_core import cli

    cmd = cli.app_command()
    assert cmd[cmd.index("--address") + 1] == "127.0.0.1"
    origins = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--allow-websocket-origin"]
    assert origins == ["localhost:5006", "127.0.0.1:5006"] and "*" not in " ".join(cmd)
    assert cmd[1:4] == ["-m", "panel", "serve"] and cmd[4].endswith(os.path.join("app", "main.py"))
    assert "--show" not in cmd
    # exposing it is deliberate, and the origin check stays on even then
    wide = cli.app_command(address="0.0.0.0", port=8000)
    assert wide[wide.index("--address") + 1] == "0.0.0.0"
    assert [wide[i + 1] for i, a in enumerate(wide) if a == "--allow-websocket-origin"] == ["0.0.0.0:8000"]
    explicit = cli.app_command(allow_websocket_origin="lab.example.org:443")
    assert "lab.example.org:443" in explicit and "--allow-websocket-origin" in explicit
    # the parser's defaults are the safe ones, and cmd_app runs exactly app_command's line
    args = cli.build_parser().parse_args(["app"])
    assert (args.address, args.port, args.allow_websocket_origin, args.num_threads) == ("127.0.0.1", 5006, None, None)
    pooled = cli.app_command(num_threads=4)
    assert pooled[pooled.index("--num-threads") + 1] == "4" and "--num-threads" not in cmd
    ran = []
    monkeypatch.setattr(os, "execv", lambda path, c: ran.append((path, c)))
    assert cli.main(["app", "--port", "5123"]) == 0
    assert ran == [(sys.executable, cli.app_command(port=5123))] and "127.0.0.1" in capsys.readouterr().out


# ---- upload limits ------------------------------------------------------------------------------------------


def test_structure_upload_limits_are_checked_before_parsing(tmp_path):
    big = tmp_path / "big.cif"
    with open(big, "wb") as f:  # 6 MB: refused by size without being parsed
        f.write(b"data_x\n" + b"#" * (6 * 1024**2) + b"\n")
    t0 = time.perf_counter()
    with pytest.raises(StructureFileError, match=r"file is 6\.0 MB, above the 5\.0 MB limit"):
        read_structure_file(big)
    assert time.perf_counter() - t0 < 1.0
    si = ROOT / "tests" / "files" / "structures" / "Si.cif"
    with pytest.raises(StructureFileError, match=r"above the 0\.0 MB limit"):
        read_structure_file(si, StructureFileLimits(max_bytes=100))
    with pytest.raises(StructureFileError, match=r"2 sites, above the 1-site limit"):
        read_structure_file(si, StructureFileLimits(max_sites=1))
    with pytest.raises(StructureFileError, match=r"above the 10 Å\^3 limit"):
        read_structure_file(si, StructureFileLimits(max_volume=10))
    with pytest.raises(StructureFileError, match=r"give up to 2 atoms to generate, above the 1 limit"):
        read_structure_file(si, StructureFileLimits(max_cif_expansion=1))
    assert read_structure_file(si).formula == "Si"


def test_symmetry_bomb_is_refused_fast():
    """60 general positions of Fm-3m (3 kB): pymatgen would spend ~10 s (and hours for 50 kB) expanding them."""
    t0 = time.perf_counter()
    with pytest.raises(StructureFileError, match="symmetry operations"):
        read_structure_file(Path(__file__).parent / "files" / "structures" / "cif_symmetry_bomb.cif")
    assert time.perf_counter() - t0 < 2.0


def test_uploaded_text_goes_through_the_same_limits(explore_dir, tmp_path):
    explorer = Explorer.load(explore_dir, export_root=tmp_path / "exports")
    bomb = (Path(__file__).parent / "files" / "structures" / "cif_symmetry_bomb.cif").read_bytes()
    with pytest.raises(StructureFileError, match="symmetry operations"):
        explorer.place(bomb)
    with pytest.raises(StructureFileError, match="MB limit"):
        explorer.place(b"data_x\n" + b"#" * (6 * 1024**2) + b"\n")


# ---- export paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../escape", "../../tmp/escape", "sub/../../escape", "/etc/escape", "..", ".", "",
                                  "link/escape"])
def test_export_paths_cannot_leave_the_export_folder(name, explore_dir, tmp_path):
    root = tmp_path / "exports"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    explorer = Explorer.load(explore_dir, export_root=root)
    candidates = explorer.neighbours("mp-test-si", k=3)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(ExportPathError):
        explorer.export(candidates, name)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    written = explorer.export(candidates, "ok/run1")
    assert all(p.resolve().is_relative_to(root.resolve()) for p in written.values())


def test_zip_entry_names_cannot_escape(explore_dir, tmp_path):
    explorer = Explorer.load(explore_dir, export_root=tmp_path / "exports")
    candidates = explorer.neighbours("mp-test-si", k=2)
    evil = candidates.copy()
    evil.attrs = candidates.attrs
    evil["id"] = ["../../evil", "/abs/evil"]
    written = explorer.export(evil, "zipped", formats=["cif_zip"])
    with zipfile.ZipFile(written["cif_zip"]) as z:
        assert all("/" not in n and not n.startswith(".") for n in z.namelist())
