"""Fuzzing the parsers: random bytes, truncations and mutations of valid inputs; only documented errors escape.

Documented error types (each is a subclass of ValueError or RuntimeError with a message naming the input):

    read_structure_file                       StructureFileError
    density_from_chgcar, dos_from_doscar,     VaspInputError
    read_vasp_dir
    read_target_dos, standardize_dos          ValueError
    resample_polyline                         DrawnDOSError
    DatasetStore.open                         StoreError (ChecksumError is one)
    load_checkpoint, from_checkpoint          CheckpointError
    Explorer.load                             ExplorerError, or StoreError for the store it opens

When a parser accepts a mutated input, its output must still satisfy the conventions (finite, right shape,
DOS >= 0), so a mutation can be refused or survive, never produce garbage. Runs are derandomized (the same
examples every CI run); set HYPOTHESIS_PROFILE=fuzz for a longer, random run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mlcm_core.data.sources.structure_files import StructureFileError, read_structure_file
from mlcm_core.data.sources.vasp import VaspInputError, density_from_chgcar, dos_from_doscar, read_vasp_dir
from mlcm_core.data.store import DatasetStore, StoreError
from mlcm_core.dft.validate import read_target_dos
from mlcm_core.explore import Explorer, ExplorerError
from mlcm_core.explore.resample import DrawnDOSError, resample_polyline
from mlcm_core.models.checkpoint import CheckpointError

from .conftest import copy_tree, rewrite_manifest_digest
from .make_corpus import OUT

settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("fuzz", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
FUZZ = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
FEW = settings(FUZZ, max_examples=max(20, FUZZ.max_examples // 3))  # for the slower targets

SPECIAL = ["nan", "-nan", "inf", "-inf", "1e400", "-1e308", "0", "-0", "1e-320", "999999999999", "-1", "x", "",
           "1.0.0", "0x10", "NaN", "2 2", "\x00"]


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """``data`` after 1-4 random edits: truncation, byte flips, insertions, line deletion/duplication, tokens
    replaced by special values (nan, inf, huge, empty, garbage)."""
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["truncate", "flip", "insert", "del_line", "dup_line", "token"]))
        if op == "truncate":
            data = data[: draw(st.integers(0, len(data)))]
        elif op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1 :]
        elif op == "insert":
            i = draw(st.integers(0, len(data)))
            data = data[:i] + draw(st.binary(min_size=1, max_size=16)) + data[i:]
        elif op in ("del_line", "dup_line"):
            lines = data.split(b"\n")
            i = draw(st.integers(0, len(lines) - 1))
            lines = lines[:i] + lines[i + 1 :] if op == "del_line" else lines[: i + 1] + lines[i:]
            data = b"\n".join(lines)
        elif op == "token":
            tokens = data.split(b" ")
            i = draw(st.integers(0, len(tokens) - 1))
            tokens[i] = draw(st.sampled_from(SPECIAL)).encode()
            data = b" ".join(tokens)
    return data


def inputs(valid: Path):
    """Random bytes, or a mutation of a valid file."""
    return st.one_of(st.binary(max_size=600), mutated(valid.read_bytes()))


def _quiet():
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("ignore")
    return ctx


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory(prefix="mlcm-fuzz-") as d:
        yield Path(d)


# ---- structure files -------------------------------------------------------------------------------------


@FUZZ
@given(data=inputs(OUT / "valid" / "Si.cif"))
def test_cif(scratch, data):
    path = scratch / "fuzz.cif"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            rec = read_structure_file(path)
        except StructureFileError as e:
            assert str(path) in str(e)
            return
    s = rec.structure
    assert 0 < len(s) <= 500 and s.is_ordered and np.isfinite(s.lattice.matrix).all() and s.volume > 0


@FUZZ
@given(data=inputs(OUT / "valid" / "GaN.vasp"))
def test_poscar(scratch, data):
    path = scratch / "POSCAR"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            rec = read_structure_file(path)
        except StructureFileError as e:
            assert str(path) in str(e)
            return
    assert 0 < len(rec.structure) <= 500 and np.isfinite(rec.structure.frac_coords).all()


# ---- VASP outputs -----------------------------------------------------------------------------------------


@FUZZ
@given(data=inputs(OUT / "valid" / "vasp" / "CHGCAR"))
def test_chgcar(scratch, data):
    path = scratch / "CHGCAR"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            d = density_from_chgcar(path)
        except VaspInputError as e:
            assert str(path) in str(e)
            return
    assert d.grid.shape == (32, 32, 32) and np.isfinite(d.grid).all()


@FUZZ
@given(data=inputs(OUT / "valid" / "vasp" / "DOSCAR"))
def test_doscar(scratch, data):
    path = scratch / "DOSCAR"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            d = dos_from_doscar(path)
        except VaspInputError as e:
            assert str(path) in str(e)
            return
    assert d.total.shape == (601,) and np.isfinite(d.total).all() and d.total.min() >= 0


@FEW
@given(which=st.sampled_from(["POSCAR", "CHGCAR", "DOSCAR"]), data=st.data())
def test_vasp_folder(scratch, which, data):
    folder = scratch / "run"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(OUT / "valid" / "vasp", folder)
    if which != "DOSCAR":
        (folder / "DOSCAR").unlink()
    (folder / which).write_bytes(data.draw(inputs(OUT / "valid" / "vasp" / which)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            rec = read_vasp_dir(folder)
        except VaspInputError as e:
            assert str(folder) in str(e)
            return
    assert rec.structure is not None and len(rec.structure) > 0


# ---- DOS: files, drawn curves, standardisation ---------------------------------------------------------------


@FUZZ
@given(data=inputs(OUT / "valid" / "dos.csv"))
def test_target_dos_file(scratch, data):
    path = scratch / "target.csv"
    path.write_bytes(data)
    try:
        target = read_target_dos(path)
    except ValueError as e:
        assert str(path) in str(e)
        return
    assert target.shape == (601,) and np.isfinite(target).all() and target.min() >= 0


NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**30, 10**30),
                    st.sampled_from([-10.0, -1e-9, 0.0, 1e-9, 10.0, 1e308]))
JUNK = st.one_of(NUMBERS, st.none(), st.text(max_size=3), st.lists(NUMBERS, max_size=2), st.booleans())


@FUZZ
@given(x=st.one_of(st.lists(NUMBERS, max_size=40), st.lists(JUNK, max_size=5), JUNK),
       y=st.one_of(st.lists(NUMBERS, max_size=40), st.lists(JUNK, max_size=5), JUNK))
@example(x=[0.0, 1.0], y=[0.0, 1e308])  # found by the long run: overflowed the float32 result to inf
def test_drawn_polyline(x, y):
    try:
        with np.errstate(all="ignore"):
            out = resample_polyline(x, y)
    except DrawnDOSError:
        return
    assert out.shape == (601,) and out.dtype == np.float32 and np.isfinite(out).all() and out.min() >= 0 and out.max() > 0


@FUZZ
@given(data=st.data())
def test_drawn_polyline_from_sorted_points(data):
    """Well-formed drawings (sorted or reversed x, y >= 0, overlapping the window) are accepted."""
    n = data.draw(st.integers(2, 50))
    x = np.sort(data.draw(st.lists(st.floats(-15, 15), min_size=n, max_size=n, unique=True)))
    y = np.asarray(data.draw(st.lists(st.floats(0.01, 100), min_size=n, max_size=n)))
    if min(x[-1], 10.0) - max(x[0], -10.0) < 0.1:  # narrower than ~3 grid steps inside the window: may miss every grid point
        return
    if data.draw(st.booleans()):
        x, y = x[::-1], y[::-1]
    out = resample_polyline(x, y)
    assert out.shape == (601,) and np.isfinite(out).all() and out.max() > 0


@FUZZ
@given(energies=st.lists(NUMBERS, max_size=30), values=st.lists(NUMBERS, max_size=30), ref=NUMBERS)
@example(energies=[-1.0, 1.0], values=[1e308, 1e308], ref=0.0)  # the same float32 overflow
def test_standardize_dos(energies, values, ref):
    from mlcm_core.data.conventions import standardize_dos

    try:
        with np.errstate(all="ignore"):
            out = standardize_dos(np.asarray(energies, dtype=float), np.asarray(values, dtype=float), float(ref))
    except ValueError:
        return
    assert out.shape == (601,) and np.isfinite(out).all() and out.min() >= 0


# ---- store, checkpoint and explorer manifests ---------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
                    max_leaves=8)


@st.composite
def json_mutation(draw, doc: dict) -> bytes:
    """Either mutated bytes of the document, or the document with one value replaced (at any depth)."""
    if draw(st.booleans()):
        return draw(mutated(json.dumps(doc, indent=1).encode()))
    doc = json.loads(json.dumps(doc))
    node, parent, key = doc, None, None
    for _ in range(draw(st.integers(1, 4))):
        if isinstance(node, dict) and node:
            k = draw(st.sampled_from(sorted(node)))
        elif isinstance(node, list) and node:
            k = draw(st.integers(0, len(node) - 1))
        else:
            break
        parent, key = node, k
        if not isinstance(node[k], (dict, list)) or draw(st.booleans()):
            break
        node = node[k]
    if parent is None:
        return json.dumps(draw(JSON)).encode()
    parent[key] = draw(JSON)
    return json.dumps(doc).encode()


@pytest.fixture(scope="module")
def store_copy(tiny_store, scratch):
    return copy_tree(tiny_store.root, scratch / "store")


@FUZZ
@given(data=st.data())
def test_store_manifest(store_copy, tiny_store, data):
    original = (tiny_store.root / "manifest.json").read_bytes()
    (store_copy / "manifest.json").write_bytes(data.draw(json_mutation(json.loads(original))))
    try:
        store = DatasetStore.open(store_copy)
    except StoreError:
        return
    assert isinstance(store.manifest["shards"], list)


@pytest.fixture(scope="module")
def ckpt_copy(tiny_checkpoint, scratch):
    return copy_tree(tiny_checkpoint, scratch / "ckpt")


@FEW
@given(data=st.data(), target=st.sampled_from(["checkpoint.json", "model.safetensors"]))
def test_checkpoint(ckpt_copy, tiny_checkpoint, data, target):
    from mlcm_core.models.multimodal import MultimodalModel

    for name in ("checkpoint.json", "model.safetensors"):
        shutil.copy(tiny_checkpoint / name, ckpt_copy / name)
    if target == "checkpoint.json":
        (ckpt_copy / target).write_bytes(data.draw(json_mutation(json.loads((tiny_checkpoint / target).read_bytes()))))
    else:  # damaged weights whose checksum the attacker updated, so the content checks are reached
        (ckpt_copy / target).write_bytes(data.draw(mutated((tiny_checkpoint / target).read_bytes())))
        rewrite_manifest_digest(ckpt_copy / "checkpoint.json", target, ckpt_copy / target)
    try:
        model = MultimodalModel.from_checkpoint(ckpt_copy)
    except CheckpointError:
        return
    assert model.config.embed_dim > 0


@pytest.fixture(scope="module")
def explore_copy(explore_dir, scratch):
    return copy_tree(explore_dir, scratch / "pre")


@FEW
@given(data=st.data(), target=st.sampled_from(["manifest.json", "embeddings.npz", "projection.npz", "map.npz"]))
def test_explorer_folder(explore_copy, explore_dir, tiny_store, data, target):
    ex, good = explore_copy / "explore", explore_dir / "explore"
    for name in ("manifest.json", "embeddings.npz", "projection.npz", "map.npz"):
        shutil.copy(good / name, ex / name)
    if target == "manifest.json":
        (ex / target).write_bytes(data.draw(json_mutation(json.loads((good / target).read_bytes()))))
    else:
        (ex / target).write_bytes(data.draw(mutated((good / target).read_bytes())))
        if data.draw(st.booleans()):  # with the checksum updated: the content checks are reached
            rewrite_manifest_digest(ex / "manifest.json", target, ex / target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            explorer = Explorer.load(explore_copy, store=tiny_store)
        except (ExplorerError, StoreError):
            return
    assert len(explorer.table) == len(explorer.xy) == len(explorer.embeddings.ids)
