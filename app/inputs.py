"""What a user types or uploads, checked before it reaches the core: element symbols, uploaded file names,
DOS CSV files; and the export CSV's header moved to a side file so the table reads as a plain CSV.

Bad input raises ``UserError``: its message is shown in the page as it is (``app.state.guarded``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

MAX_UPLOAD_BYTES = 1_000_000  # CIF/POSCAR/CSV uploads; real crystal files are a few kB

class UserError(ValueError):
    """Bad input from the user; the message is shown as is."""

def element_symbol(text: str) -> str:
    """``text`` as an element symbol ("fe" -> "Fe"); UserError when it is none."""
    from pymatgen.core.periodic_table import Element

    tok = text.strip()
    tok = tok[:1].upper() + tok[1:].lower()
    if not Element.is_valid_symbol(tok):
        raise UserError(f"unknown element symbol {tok!r}")
    return tok

def element_symbols(text: str) -> list[str]:
    """Element symbols from a list typed with commas, semicolons or spaces ("fe, O" -> ["Fe", "O"])."""
    return [element_symbol(tok) for tok in text.replace(";", ",").replace(" ", ",").split(",") if tok.strip()]

def upload_file_name(filename: str) -> str:
    """A safe temporary file name that keeps what the structure reader needs (suffix or POSCAR stem)."""
    base = Path(filename).name
    if base.upper().startswith(("POSCAR", "CONTCAR")):
        return "POSCAR"
    suffix = Path(base).suffix.lower()
    return "upload" + (suffix if suffix in (".cif", ".vasp", ".poscar") else ".cif")

def formula_of_file(path: Path) -> str:
    try:
        from pymatgen.core import Structure

        return Structure.from_file(path).composition.reduced_formula
    except Exception:  # noqa: BLE001 - only for display
        return "?"

def parse_dos_csv(data: bytes, filename: str = "dos.csv") -> tuple[np.ndarray, np.ndarray]:
    """Two columns (energy in eV, DOS >= 0) from a CSV/whitespace text file; header lines are skipped."""
    if not data:
        raise UserError(f"{filename} is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise UserError(f"{filename} is {len(data) / 1e6:.1f} MB; the limit is {MAX_UPLOAD_BYTES / 1e6:.0f} MB")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{filename} is not a text file") from e
    xs, ys = [], []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p for p in line.replace(";", ",").replace("\t", ",").replace(" ", ",").split(",") if p]
        try:
            vals = [float(p) for p in parts[:2]]
        except ValueError:
            if not xs:  # a header line
                continue
            raise UserError(f"{filename} line {n}: not two numbers: {line[:60]!r}") from None
        if len(vals) < 2:
            raise UserError(f"{filename} line {n}: expected two columns (energy, DOS)")
        xs.append(vals[0])
        ys.append(vals[1])
    if len(xs) < 2:
        raise UserError(f"{filename}: need at least 2 rows of (energy eV, DOS)")
    return np.asarray(xs), np.asarray(ys)

def split_csv_header(path: Path) -> Path:
    """Move the core CSV export's first line (``# mlcm-export v1 {JSON header}``, which ``pandas.read_csv``
    reads as a 1-row table of garbage) into ``<name>.query.json``; returns that file. The table stays as the
    core wrote it, byte for byte."""
    first, _, body = path.read_text(encoding="utf-8").partition("\n")
    header = json.loads(first[first.index("{"):])
    sidecar = path.with_name(path.name.removesuffix(".csv") + ".query.json")
    sidecar.write_text(json.dumps(header, indent=1), encoding="utf-8")
    path.write_text(body, encoding="utf-8")
    return sidecar
