"""Structure files: real CIF/POSCAR inputs read, and every kind of bad input refused with a clear error."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlcm_core.data.sources.structure_files import (
    StructureFileError,
    StructureFileLimits,
    read_structure_file,
    read_structure_files,
)

FILES = Path(__file__).parents[2] / "files" / "structures"
SI_CIF = FILES / "Si.cif"
GAN_POSCAR = FILES / "GaN.vasp"


def test_cif_read_with_its_own_cell():
    record = read_structure_file(SI_CIF)
    assert record.id == "file:Si"
    assert record.source == "structure-file"
    assert record.formula == "Si"
    assert [str(s.specie) for s in record.structure] == ["Si", "Si"]
    assert record.structure.lattice.abc == pytest.approx((3.86711466,) * 3)
    assert record.structure.volume == pytest.approx(40.89273420, abs=1e-5)  # the CIF's _cell_volume
    assert hashlib.sha256(SI_CIF.read_bytes()).hexdigest()[:16] in record.provenance
    assert record.labels == {} and record.dos is None and record.density is None


def test_poscar_read():
    record = read_structure_file(GAN_POSCAR)
    assert record.id == "file:GaN"
    assert record.structure.composition.reduced_formula == "GaN"
    assert len(record.structure) == 4
    assert record.structure.lattice.c == pytest.approx(5.239962)
    assert "POSCAR" in record.provenance


@pytest.mark.parametrize("name", ["POSCAR", "CONTCAR", "POSCAR.relax", "gan.poscar"])
def test_vasp_file_names(tmp_path, name):
    shutil.copy(GAN_POSCAR, tmp_path / name)
    assert read_structure_file(tmp_path / name).formula == "GaN"


def test_folder_ids_unique_and_other_files_ignored(tmp_path):
    shutil.copy(SI_CIF, tmp_path / "Si.cif")
    shutil.copy(GAN_POSCAR, tmp_path / "POSCAR")
    shutil.copy(GAN_POSCAR, tmp_path / "POSCAR.vasp")  # same stem as POSCAR
    shutil.copy(GAN_POSCAR, tmp_path / "POSCAR-2.vasp")  # stem equal to a suffixed id
    (tmp_path / "notes.txt").write_text("not a structure")
    records = read_structure_files(tmp_path)
    # files in name order: POSCAR, POSCAR-2.vasp, POSCAR.vasp (clashes twice), Si.cif
    assert [r.id for r in records] == ["file:POSCAR", "file:POSCAR-2", "file:POSCAR-3", "file:Si"]
    assert read_structure_files(SI_CIF)[0].id == "file:Si"


def test_folder_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(StructureFileError, match="no structure files"):
        read_structure_files(tmp_path)
    with pytest.raises(StructureFileError, match="not found"):
        read_structure_files(tmp_path / "absent")
    shutil.copy(SI_CIF, tmp_path / "Si.cif")
    (tmp_path / "bad.cif").write_text("hello")
    with pytest.raises(StructureFileError, match=r"bad\.cif"):
        read_structure_files(tmp_path)
    with pytest.warns(UserWarning, match=r"skipped: .*bad\.cif"):
        records = read_structure_files(tmp_path, errors="skip")
    assert [r.id for r in records] == ["file:Si"]


def _refused(path: Path, match: str, limits: StructureFileLimits | None = None) -> None:
    with pytest.raises(StructureFileError) as info:
        read_structure_file(path, limits or StructureFileLimits())
    assert str(path) in str(info.value)
    assert match in str(info.value), str(info.value)


def test_missing_and_unsupported(tmp_path):
    _refused(tmp_path / "absent.cif", "file not found")
    (tmp_path / "si.xyz").write_text("2\n\nSi 0 0 0\nSi 1 1 1\n")
    _refused(tmp_path / "si.xyz", "unsupported file type")
    (tmp_path / "dir.cif").mkdir()
    _refused(tmp_path / "dir.cif", "not a regular file")


def test_garbled_empty_and_binary(tmp_path):
    (tmp_path / "garbled.cif").write_text("hello world\n")
    _refused(tmp_path / "garbled.cif", "unreadable or garbled CIF")
    (tmp_path / "POSCAR").write_text("hello\nworld\n")
    _refused(tmp_path / "POSCAR", "unreadable or garbled POSCAR")
    (tmp_path / "empty.cif").write_text("  \n")
    _refused(tmp_path / "empty.cif", "file is empty")
    (tmp_path / "binary.vasp").write_bytes(b"\x00\x01\x02Si")
    _refused(tmp_path / "binary.vasp", "binary content")


def test_no_atoms(tmp_path):
    text = SI_CIF.read_text()
    (tmp_path / "cell_only.cif").write_text(text[: text.index("loop_\n _atom_site")])
    _refused(tmp_path / "cell_only.cif", "no atoms")
    lines = GAN_POSCAR.read_text().splitlines()
    (tmp_path / "POSCAR").write_text("\n".join([*lines[:5], "Ga", "0", "direct"]) + "\n")
    _refused(tmp_path / "POSCAR", "no atoms")


def test_partial_occupancy(tmp_path):
    site = "0.75000000  0.75000000  0.75000000"
    text = SI_CIF.read_text().replace(f"{site}  1", f"{site}  0.5")
    (tmp_path / "vacancy.cif").write_text(text)
    _refused(tmp_path / "vacancy.cif", "partial occupancies")


def test_poscar_without_element_names(tmp_path):
    lines = GAN_POSCAR.read_text().splitlines()
    del lines[5]  # VASP 4 style: counts without the species line, coordinates without names
    lines = lines[:7] + [" ".join(line.split()[:3]) for line in lines[7:]]
    (tmp_path / "POSCAR").write_text("\n".join(lines) + "\n")
    _refused(tmp_path / "POSCAR", "names no elements")


def test_size_limit(tmp_path):
    big = tmp_path / "big.cif"
    with big.open("wb") as handle:
        handle.truncate(6 * 1024**2)  # sparse: the size check must come before any read
    _refused(big, "above the 5.0 MB limit")
    _refused(SI_CIF, "above the 0.0 MB limit", StructureFileLimits(max_bytes=100))


def test_absurd_cells(tmp_path):
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.cif import CifWriter

    si = read_structure_file(SI_CIF).structure
    CifWriter(si * (6, 6, 7)).write_file(tmp_path / "many.cif")
    _refused(tmp_path / "many.cif", "504 sites, above the 500-site limit")
    huge = Structure(Lattice.cubic(50.0), ["Si"], [[0, 0, 0]])
    CifWriter(huge).write_file(tmp_path / "huge.cif")
    _refused(tmp_path / "huge.cif", "volume 1.25e+05 Å^3, above the 1e+05 Å^3 limit")
    lines = GAN_POSCAR.read_text().splitlines()
    lines[3] = lines[2]  # b = a: a flat cell
    (tmp_path / "flat.vasp").write_text("\n".join(lines) + "\n")
    _refused(tmp_path / "flat.vasp", "absurd cell")


_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _only_structure_file_errors(name: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        try:
            record = read_structure_file(path)
        except StructureFileError as exc:
            assert str(path) in str(exc)
        else:
            assert len(record.structure) > 0 and record.structure.is_ordered


@_FUZZ
@given(name=st.sampled_from(["x.cif", "POSCAR", "x.vasp"]), data=st.binary(max_size=2000))
def test_random_bytes_raise_only_structure_file_error(name, data):
    _only_structure_file_errors(name, data)


@_FUZZ
@given(name=st.sampled_from(["x.cif", "POSCAR"]), text=st.text(max_size=500))
def test_random_text_raises_only_structure_file_error(name, text):
    _only_structure_file_errors(name, text.encode("utf-8"))


@_FUZZ
@given(source=st.sampled_from([SI_CIF, GAN_POSCAR]), cut=st.floats(0.0, 1.0), junk=st.binary(max_size=20))
def test_truncated_and_corrupted_files_raise_only_structure_file_error(source, cut, junk):
    data = source.read_bytes()
    at = int(cut * len(data))
    name = "x.cif" if source.suffix == ".cif" else "POSCAR"
    _only_structure_file_errors(name, data[:at])
    _only_structure_file_errors(name, data[:at] + junk + data[at + len(junk) :])
