"""The malformed-input corpus (tests/hardening/files, written by make_corpus.py) against the real parsers.

For every case: the parser raises its documented error type with a message that names the file and the
problem; the CLI that ingests such a file exits with status 2 and that message, leaves the target store
byte-for-byte unchanged; and the same API then reads a valid file correctly (nothing is left in a bad state).
"""

from __future__ import annotations

import importlib
import re
import shutil
import warnings

import numpy as np
import pytest

from mlcm_core.data.sources.structure_files import StructureFileError, read_structure_file
from mlcm_core.data.sources.vasp import VaspInputError, density_from_chgcar, dos_from_doscar, read_vasp_dir
from mlcm_core.dft.validate import read_target_dos
from mlcm_core.explore.resample import DrawnDOSError, resample_polyline

from .conftest import copy_tree, tree_digest
from .make_corpus import ACCEPTED, CASES, OUT, VALID, Case, build

PARSERS = {"structure": (read_structure_file, StructureFileError), "chgcar": (density_from_chgcar, VaspInputError),
           "doscar": (dos_from_doscar, VaspInputError), "dos_csv": (read_target_dos, ValueError)}


def test_corpus_is_large_and_up_to_date():
    assert len(CASES) >= 30
    assert {c.kind for c in CASES} == set(PARSERS)
    expected = build(out=None)
    on_disk = {str(p.relative_to(OUT)): p.read_bytes() for p in OUT.rglob("*") if p.is_file()}
    assert on_disk == expected, "tests/hardening/files differs from make_corpus.py: run python tests/hardening/make_corpus.py"


def _assert_usable(kind: str) -> None:
    """The API that just refused a file still reads a valid one correctly."""
    if kind == "structure":
        assert read_structure_file(OUT / VALID["structures"][0]).formula == "Si"
        assert len(read_structure_file(OUT / VALID["structures"][1]).structure) == 4
    elif kind == "chgcar":
        d = density_from_chgcar(OUT / VALID["chgcar"])
        assert d.grid.shape == (32, 32, 32) and d.integral == pytest.approx(8.0, abs=0.01)
    elif kind == "doscar":
        assert dos_from_doscar(OUT / VALID["doscar"]).band_gap > 1.0
    else:
        target = read_target_dos(OUT / VALID["dos_csv"])
        assert target.shape == (601,) and target.max() > 4


@pytest.mark.parametrize("case", CASES, ids=[c.path for c in CASES])
def test_parser_names_the_file_and_the_problem(case: Case):
    parse, error = PARSERS[case.kind]
    path = OUT / case.path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(error) as info:
            parse(path)
    message = str(info.value)
    assert str(path) in message, f"the message does not name the file: {message}"
    assert re.search(case.error, message), f"{message!r} does not match {case.error!r}"
    _assert_usable(case.kind)


@pytest.mark.parametrize("case", [c for c in CASES if c.polyline_error is not None],
                         ids=[c.path for c in CASES if c.polyline_error is not None])
def test_two_column_dos_through_the_drawn_curve_path(case: Case):
    """An uploaded (energy, DOS) file reaches queries through resample_polyline: same refusals, except direction."""
    table = np.loadtxt(OUT / case.path, delimiter=",", skiprows=1, ndmin=2)
    if case.polyline_error == ACCEPTED:
        curve = resample_polyline(table[:, 0], table[:, 1])
        forward = resample_polyline(table[::-1, 0], table[::-1, 1])
        np.testing.assert_array_equal(curve, forward)
        return
    with pytest.raises(DrawnDOSError, match=case.polyline_error):
        resample_polyline(table[:, 0], table[:, 1])
    x = np.linspace(-5, 5, 11)
    assert resample_polyline(x, np.ones(11)).shape == (601,)


@pytest.mark.parametrize("case", [c for c in CASES if c.kind in ("chgcar", "doscar")],
                         ids=[c.path for c in CASES if c.kind in ("chgcar", "doscar")])
def test_vasp_folder_reader_refuses_the_folder(case: Case):
    folder = (OUT / case.path).parent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(VaspInputError) as info:
            read_vasp_dir(folder)
        assert str(OUT / case.path) in str(info.value) and re.search(case.error, str(info.value))
        assert read_vasp_dir(OUT / "valid" / "vasp").density is not None


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    from mlcm_core.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(argv)
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[c.path for c in CASES])
def test_cli_refuses_and_writes_nothing(case: Case, tiny_store, tmp_path, capsys, monkeypatch):
    """The commands that take these files exit 2 with the message and leave the store and inputs untouched."""
    validate_mod = importlib.import_module("mlcm_core.dft.validate")  # the package re-exports a function of that name

    store = copy_tree(tiny_store.root, tmp_path / "store")
    inputs = tmp_path / "inputs"
    src = OUT / case.path
    if case.kind in ("chgcar", "doscar"):
        shutil.copytree(src.parent, inputs / src.parent.name)
        target = inputs / src.parent.name
        argv = ["data", "ingest-vasp", str(target), "--store", str(store)]
        named = target / src.name
    elif case.kind == "structure":
        inputs.mkdir()
        target = named = inputs / src.name
        shutil.copy(src, target)
        argv = ["data", "ingest-structures", str(target), "--store", str(store)]
    else:
        inputs.mkdir()
        target = named = inputs / src.name
        shutil.copy(src, target)
        argv = ["dft", "validate", "mp-test-si", "--target-dos", str(target), "--store", str(store)]

        def no_run(*a, **k):  # the target must be refused before any calculation starts
            raise AssertionError("validate started a calculation for a bad target")

        monkeypatch.setattr(validate_mod, "compute", no_run)
        monkeypatch.setattr(validate_mod, "estimate_cost", no_run)
    before_store, before_inputs = tree_digest(store), tree_digest(inputs)
    rc, err = _cli(argv, capsys)
    assert rc == 2
    assert err.startswith("error: ") and str(named) in err and re.search(case.error, err), err
    assert tree_digest(store) == before_store, "a refused input changed the store"
    assert tree_digest(inputs) == before_inputs, "a refused input was modified"
    # the store is still whole and usable
    from mlcm_core.data.store import DatasetStore

    assert DatasetStore.open(store).info()["materials"] == 16
