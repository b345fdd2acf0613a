"""User structure files (CIF, POSCAR/CONTCAR, *.vasp) as MaterialRecords, with clear refusals.

These files come from users, so every failure (missing, garbled, disordered, absurdly large) is
turned into a StructureFileError that names the file and the problem, never a parser traceback.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from mlcm_core.data.record import MaterialRecord

if TYPE_CHECKING:
    from pymatgen.core import Structure

__all__ = ["StructureFileError", "StructureFileLimits", "read_structure_file", "read_structure_files"]

Format = Literal["cif", "poscar"]
_SUPPORTED = "*.cif, POSCAR*, CONTCAR*, *.vasp, *.poscar"
_MIN_VOLUME_PER_SITE = 0.5  # Å^3; even compressed solid hydrogen has more room per atom


class StructureFileError(ValueError):
    """A structure file that cannot become a record; the message names the file and the reason."""


@dataclass(frozen=True)
class StructureFileLimits:
    """Bounds that keep a stray or hostile file from reaching the models (and the parser)."""

    max_bytes: int = 5 * 1024**2
    max_sites: int = 500
    max_volume: float = 1e5  # Å^3
    # CIF atom rows x symmetry operations, checked BEFORE pymatgen expands them: the expansion costs
    # O(generated x unique) time, so a 50 kB CIF of general positions in a 192-operation group would
    # otherwise pin a core for most of an hour before max_sites could refuse it (~2 s at this bound).
    max_cif_expansion: int = 4000


def _format_of(path: Path) -> Format | None:
    name = path.name.lower()
    if name.endswith(".cif"):
        return "cif"
    if name.startswith(("poscar", "contcar")) or name.endswith((".vasp", ".poscar")):
        return "poscar"
    return None


def _read_text(path: Path, max_bytes: int) -> tuple[str, bytes]:
    """The file's text (UTF-8, else Latin-1 as old CIF writers use) and raw bytes, size-checked first."""
    if not path.exists():
        raise StructureFileError(f"{path}: file not found")
    if not path.is_file():
        raise StructureFileError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size > max_bytes:
        mb, limit_mb = size / 1024**2, max_bytes / 1024**2
        raise StructureFileError(f"{path}: file is {mb:.1f} MB, above the {limit_mb:.1f} MB limit")
    data = path.read_bytes()
    if not data.strip():
        raise StructureFileError(f"{path}: file is empty")
    if b"\x00" in data:
        raise StructureFileError(f"{path}: binary content, not a text structure file")
    try:
        return data.decode("utf-8"), data
    except UnicodeDecodeError:
        return data.decode("latin-1"), data


def _check_cif_expansion(path: Path, text: str, limit: int) -> None:
    """Refuse a CIF whose symmetry expansion would be too costly, from its rows and operations alone."""
    from pymatgen.io.cif import CifParser

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pymatgen's warnings come (once) from _parse
            parser = CifParser.from_str(text)
            total = 0
            for block in parser._cif.data.values():  # pymatgen expands every block, not only the first
                rows = max((len(block.data.get(k, [])) for k in
                            ("_atom_site_label", "_atom_site_type_symbol", "_atom_site_fract_x", "_atom_site_Cartn_x")),
                           default=0)
                if rows:
                    total += rows * max(1, len(parser.get_symops(block)))
    except Exception:  # noqa: BLE001 - unparsable here means unparsable in _parse, which names the problem
        return
    if total > limit:
        raise StructureFileError(f"{path}: absurd cell: the CIF's atom rows x symmetry operations give up to {total} "
                                 f"atoms to generate, above the {limit} limit")


def _parse(path: Path, text: str, fmt: Format, limits: StructureFileLimits = StructureFileLimits()) -> Structure:
    """Parse with pymatgen, turning its many exception types and silent guesses into one error."""
    from pymatgen.core import Structure

    if fmt == "cif":
        _check_cif_expansion(path, text, limits.max_cif_expansion)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            structure = Structure.from_str(text, fmt=fmt)
        except Exception as exc:  # pymatgen raises ValueError, IndexError, KeyError, ... on bad input
            raise StructureFileError(f"{path}: {_why_unparsable(text, fmt, exc)}") from exc
    if any("cannot be determined" in str(w.message) for w in caught):  # VASP 4 POSCAR, no species line
        raise StructureFileError(f"{path}: POSCAR names no elements (add the species line above the counts)")
    return structure


def _why_unparsable(text: str, fmt: Format, exc: Exception) -> str:
    lower = text.lower()
    if "at least 1 site" in str(exc):
        return "no atoms"
    has_atom_loop = "_atom_site_fract_x" in lower or "_atom_site_cartn_x" in lower
    if fmt == "cif" and "_cell_length_a" in lower and not has_atom_loop:
        return "no atoms (the CIF has a cell but no _atom_site loop)"
    detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return f"unreadable or garbled {fmt.upper()} content ({detail})"


def _check(path: Path, structure: Structure, limits: StructureFileLimits) -> None:
    """Refuse structures the rest of the pipeline cannot represent or that cannot be real crystals."""
    n_sites = len(structure)
    if n_sites == 0:
        raise StructureFileError(f"{path}: no atoms")
    from pymatgen.core import DummySpecies

    unknown = sorted({el.symbol for el in structure.composition.elements if isinstance(el, DummySpecies)})
    if unknown:  # pymatgen turns an unknown symbol (a typo, garbled text) into a dummy species
        raise StructureFileError(f"{path}: unknown element symbol(s) {unknown}")
    if not structure.is_ordered:
        site = next(site for site in structure if not site.is_ordered)
        where = np.round(site.frac_coords, 4).tolist()
        raise StructureFileError(
            f"{path}: partial occupancies (e.g. {site.species_string} at {where}); "
            "only ordered structures are supported"
        )
    lattice = structure.lattice.matrix
    if not (np.all(np.isfinite(lattice)) and np.all(np.isfinite(structure.frac_coords))):
        raise StructureFileError(f"{path}: non-finite lattice or coordinates")
    with np.errstate(all="ignore"):  # a 1e308 Å lattice overflows to inf, which the bound below refuses
        volume = abs(float(np.linalg.det(lattice)))
    if n_sites > limits.max_sites:
        raise StructureFileError(f"{path}: absurd cell: {n_sites} sites, above the {limits.max_sites}-site limit")
    if volume > limits.max_volume:
        raise StructureFileError(
            f"{path}: absurd cell: volume {volume:.3g} Å^3, above the {limits.max_volume:.3g} Å^3 limit"
        )
    if volume < _MIN_VOLUME_PER_SITE * n_sites:
        raise StructureFileError(
            f"{path}: absurd cell: volume {volume:.3g} Å^3 for {n_sites} sites (degenerate lattice?)"
        )


def read_structure_file(path: str | Path, limits: StructureFileLimits = StructureFileLimits()) -> MaterialRecord:
    """Read one CIF or POSCAR-style file into a record (structure only, no labels).

    Args:
        path: a *.cif, POSCAR*, CONTCAR*, *.vasp or *.poscar file.
        limits: size, site-count and volume bounds.

    Raises:
        StructureFileError: the file is missing, too large, unsupported, garbled, empty of atoms,
            disordered or an absurd cell.
    """
    path = Path(path)
    fmt = _format_of(path)
    if fmt is None:
        raise StructureFileError(f"{path}: unsupported file type (expected {_SUPPORTED})")
    text, data = _read_text(path, limits.max_bytes)
    structure = _parse(path, text, fmt, limits)
    _check(path, structure, limits)
    return MaterialRecord(
        id=f"file:{path.stem}",
        source="structure-file",
        structure=structure,
        provenance=f"structure file {path.name} ({fmt.upper()}, sha256 {hashlib.sha256(data).hexdigest()[:16]})",
        formula=structure.composition.reduced_formula,
    )


def read_structure_files(
    path: str | Path,
    limits: StructureFileLimits = StructureFileLimits(),
    errors: Literal["raise", "skip"] = "raise",
) -> list[MaterialRecord]:
    """Read a structure file, or every supported file directly inside a folder (sorted by name).

    Ids are `file:<stem>`, suffixed -2, -3, ... where stems clash (e.g. POSCAR and POSCAR.vasp).

    Args:
        path: a file or a folder.
        limits: size, site-count and volume bounds for each file.
        errors: "skip" warns and leaves out a bad file instead of raising, so one stray file
            does not block a whole folder.

    Raises:
        StructureFileError: `path` does not exist, a folder holds no supported file, or (with
            errors="raise") a file is refused.
    """
    path = Path(path)
    if not path.exists():
        raise StructureFileError(f"{path}: file or folder not found")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and _format_of(p))
        if not files:
            raise StructureFileError(f"{path}: no structure files ({_SUPPORTED}) in this folder")
    else:
        files = [path]
    records: list[MaterialRecord] = []
    used: set[str] = set()
    for file in files:
        try:
            record = read_structure_file(file, limits)
        except StructureFileError as exc:
            if errors == "raise":
                raise
            warnings.warn(f"skipped: {exc}", stacklevel=2)
            continue
        base, k = record.id, 1
        while record.id in used:
            k += 1
            record.id = f"{base}-{k}"
        used.add(record.id)
        records.append(record)
    return records
