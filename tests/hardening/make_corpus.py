"""Write the malformed-input corpus under tests/hardening/files/ (run: python tests/hardening/make_corpus.py).

Every file is derived deterministically from a valid input: the real Si CIF and GaN POSCAR of tests/files, and
a small synthetic Si2 CHGCAR (4x4x4 grid) and DOSCAR (2 ions, 60 points) written here. ``CASES`` says, for each
file, which parser reads it and which error message it must give; tests/hardening/test_corpus.py checks every
case against the real parsers and ``test_corpus_is_up_to_date`` checks the committed files equal this output.

Layout:
    structures/<name>          read_structure_file (CIF, POSCAR); mlcm data ingest-structures
    dos/<name>.csv             mlcm_core.dft.validate.read_target_dos (mlcm dft validate --target-dos) and,
                               for two-column files, the drawn/uploaded path resample_polyline
    vasp/<case>/{POSCAR,CHGCAR|DOSCAR}   density_from_chgcar / dos_from_doscar, read_vasp_dir, mlcm data ingest-vasp
    valid/                     the baselines the corruptions start from (must parse)
"""

from __future__ import annotations

import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "files"
SOURCES = HERE.parent / "files" / "structures"


@dataclass(frozen=True)
class Case:
    """One malformed input: its path under files/, what reads it, and the message it must produce."""

    path: str
    kind: str  # "structure" | "dos_csv" | "chgcar" | "doscar"
    error: str  # regular expression the error message must match
    polyline_error: str | None = None  # two-column DOS files: resample_polyline's message, or ACCEPTED; None: n/a


ACCEPTED = "accepted"  # resample_polyline takes the curve (a right-to-left drawing is reversed, by design)


CASES: list[Case] = [
    # -- CIF ------------------------------------------------------------------------------------------
    Case("structures/cif_truncated_in_atoms.cif", "structure", r"unreadable or garbled CIF"),
    Case("structures/cif_truncated_before_atoms.cif", "structure", r"no atoms"),
    Case("structures/cif_garbled.cif", "structure", r"unreadable or garbled CIF"),
    Case("structures/cif_binary.cif", "structure", r"binary content"),
    Case("structures/cif_empty.cif", "structure", r"file is empty"),
    Case("structures/cif_no_atoms.cif", "structure", r"no atoms"),
    Case("structures/cif_partial_occupancy.cif", "structure", r"partial occupancies \(e\.g\. Si:0\.5"),
    Case("structures/cif_huge_cell.cif", "structure", r"absurd cell: volume .* above the 1e\+05"),
    Case("structures/cif_degenerate_cell.cif", "structure", r"absurd cell: volume .*degenerate lattice"),
    Case("structures/cif_too_many_sites.cif", "structure", r"absurd cell: 686 sites, above the 500-site limit"),
    Case("structures/cif_symmetry_bomb.cif", "structure", r"symmetry operations give up to 11520 atoms"),
    Case("structures/cif_unknown_element.cif", "structure", r"unknown element symbol\(s\) \['Xx'\]"),
    Case("structures/cif_nan_coordinate.cif", "structure", r"unreadable or garbled CIF"),
    Case("structures/cif_text_cell_length.cif", "structure", r"unreadable or garbled CIF"),
    # -- POSCAR ---------------------------------------------------------------------------------------
    Case("structures/POSCAR_truncated", "structure", r"unreadable or garbled POSCAR"),
    Case("structures/POSCAR_garbled_counts", "structure", r"unreadable or garbled POSCAR"),
    Case("structures/POSCAR_count_mismatch", "structure", r"unreadable or garbled POSCAR"),
    Case("structures/POSCAR_huge_scale", "structure", r"absurd cell: volume .* above"),
    Case("structures/POSCAR_zero_scale", "structure", r"absurd cell: volume 0 .*degenerate"),
    Case("structures/POSCAR_nan", "structure", r"non-finite lattice or coordinates"),
    Case("structures/POSCAR_unknown_element", "structure", r"unknown element symbol\(s\) \['Qq'\]"),
    Case("structures/POSCAR_no_species", "structure", r"names no elements"),
    Case("structures/structure.xyz", "structure", r"unsupported file type"),
    # -- DOS CSV --------------------------------------------------------------------------------------
    Case("dos/nan.csv", "dos_csv", r"NaN or infinite value in row 5", r"y contains NaN"),
    Case("dos/inf.csv", "dos_csv", r"NaN or infinite value in row 3", r"x contains NaN or infinite"),
    Case("dos/negative.csv", "dos_csv", r"negative DOS value -0\.3 at -1 eV", r"must be >= 0"),
    Case("dos/wrong_length.csv", "dos_csv", r"shape \(600,\); expected \(601,\)"),
    Case("dos/non_monotonic.csv", "dos_csv", r"not strictly increasing \(row 4", r"x goes back at point"),
    Case("dos/reversed.csv", "dos_csv", r"not strictly increasing \(row 2", ACCEPTED),
    Case("dos/ragged.csv", "dos_csv", r"not a table of numbers"),
    Case("dos/text.csv", "dos_csv", r"not a table of numbers"),
    Case("dos/empty.csv", "dos_csv", r"no values"),
    Case("dos/single_row.csv", "dos_csv", r"1 rows of 2 columns", r"only 1 point"),
    Case("dos/three_columns.csv", "dos_csv", r"rows of 3 columns"),
    Case("dos/zero.csv", "dos_csv", r"zero everywhere on the scored window", r"zero everywhere"),
    Case("dos/out_of_window.csv", "dos_csv", r"zero everywhere on the scored window", r"does not overlap"),
    # -- CHGCAR ---------------------------------------------------------------------------------------
    Case("vasp/chgcar_truncated/CHGCAR", "chgcar", r"grid 4x4x4 needs 64 values but its first block holds 40"),
    Case("vasp/chgcar_grid_too_large/CHGCAR", "chgcar", r"grid 5x5x5 needs 125 values but its first block holds 64"),
    Case("vasp/chgcar_grid_too_small/CHGCAR", "chgcar", r"grid 3x3x3 needs 27 values but its first block holds more"),
    Case("vasp/chgcar_absurd_grid/CHGCAR", "chgcar", r"grid \[100000, 100000, 100000\] has 1e\+15 points"),
    Case("vasp/chgcar_bad_grid_line/CHGCAR", "chgcar", r"grid line 'four 4 4' is not three positive integers"),
    Case("vasp/chgcar_garbled_values/CHGCAR", "chgcar", r"not a readable CHGCAR|first block holds"),
    Case("vasp/chgcar_nan/CHGCAR", "chgcar", r"density contains NaN or infinite values"),
    Case("vasp/chgcar_header_only/CHGCAR", "chgcar", r"not a CHGCAR \(no structure block followed by a grid\)"),
    # -- DOSCAR ---------------------------------------------------------------------------------------
    Case("vasp/doscar_truncated/DOSCAR", "doscar", r"should hold NEDOS = 60 rows .* found 30 rows"),
    Case("vasp/doscar_non_monotonic/DOSCAR", "doscar", r"energies are not strictly increasing \(line 18"),
    Case("vasp/doscar_nan/DOSCAR", "doscar", r"NaN or infinite value in the DOSCAR \(line 27\)"),
    Case("vasp/doscar_garbled/DOSCAR", "doscar", r"not a readable DOSCAR \(could not convert"),
    Case("vasp/doscar_fractional_nedos/DOSCAR", "doscar", r"NEDOS 30\.5 is not an integer"),
    Case("vasp/doscar_header_only/DOSCAR", "doscar", r"not a readable DOSCAR"),
]

VALID = {"structures": ["valid/Si.cif", "valid/GaN.vasp"], "chgcar": "valid/vasp/CHGCAR",
         "doscar": "valid/vasp/DOSCAR", "dos_csv": "valid/dos.csv"}

# ---------------------------------------------------------------------------------------------------
# baselines

SI2_POSCAR = """Si2 (synthetic test cell)
1.0
   0.000000   2.734000   2.734000
   2.734000   0.000000   2.734000
   2.734000   2.734000   0.000000
Si
2
Direct
  0.000000  0.000000  0.000000
  0.250000  0.250000  0.250000
"""


def _chgcar(grid: str = " 4 4 4", values: list[float] | None = None) -> str:
    """A CHGCAR of the Si2 cell: rho*V on a 4x4x4 grid, 5 values per line, as VASP writes it."""
    if values is None:
        values = [8.0 + math.sin(k) for k in range(64)]  # mean ~8: 8 valence electrons
    tokens = [f"{v:.11E}" if math.isfinite(v) else str(v) for v in values]
    lines = [" ".join(tokens[i : i + 5]) for i in range(0, len(tokens), 5)]
    return SI2_POSCAR + "\n" + grid + "\n" + "\n".join(lines) + "\n"


def _doscar_lines(nedos: int = 60) -> list[str]:
    """A non-spin DOSCAR for 2 ions: E, DOS, integrated DOS; a gap between -0.5 and 0.7 eV, E_F = 0."""
    energies = [-12.0 + 24.0 * k / (nedos - 1) for k in range(nedos)]
    dos = [0.0 if -0.5 < e < 0.7 else 0.6 + 0.4 * math.cos(e) for e in energies]
    integrated, total = [], 0.0
    for k, d in enumerate(dos):
        total += d * (24.0 / (nedos - 1)) if k else 0.0
        integrated.append(total)
    scale = 8.0 / max(i for e, i in zip(energies, integrated) if e <= 0)
    head = ["   2   2   1   0", "  0.1E+02  0.5E-09  0.5E-09  0.5E-09  0.5E-15", "  1.0E-004", "  CAR ",
            " synthetic", f"     12.00000000    -12.00000000   {nedos}      0.00000000      1.00000000"]
    rows = [f"  {e:10.4f}  {d:.4E}  {i * scale:.4E}" for e, d, i in zip(energies, dos, integrated)]
    return head + rows


def _lines(text: str) -> list[str]:
    return text.splitlines()


def build(out: Path = OUT) -> dict[str, bytes]:
    """Every corpus file as {relative path: bytes} (also written under ``out``)."""
    si = (SOURCES / "Si.cif").read_text()
    gan = (SOURCES / "GaN.vasp").read_text()
    atom_loop = si.index("loop_\n _atom_site_type_symbol")
    files: dict[str, bytes] = {}

    def put(rel: str, text: str | bytes) -> None:
        files[rel] = text.encode() if isinstance(text, str) else text

    # baselines
    put("valid/Si.cif", si)
    put("valid/GaN.vasp", gan)
    put("valid/vasp/POSCAR", SI2_POSCAR)
    put("valid/vasp/CHGCAR", _chgcar())
    put("valid/vasp/DOSCAR", "\n".join(_doscar_lines()) + "\n")
    put("valid/dos.csv", "energy_eV,dos\n" + "".join(f"{-8 + 0.5 * k:g},{1 + 0.1 * k:g}\n" for k in range(33)))

    # CIF
    put("structures/cif_truncated_in_atoms.cif", si[: si.rindex("Si  Si1") + 9])
    put("structures/cif_truncated_before_atoms.cif", si[: atom_loop - 40])
    put("structures/cif_garbled.cif", "".join(chr((ord(c) * 7) % 94 + 33) if k % 3 == 0 else c for k, c in enumerate(si)))
    put("structures/cif_binary.cif", si[:200].encode() + b"\x00\x01\xff\xfe" * 16 + si[200:].encode())
    put("structures/cif_empty.cif", "")
    put("structures/cif_no_atoms.cif", si[:atom_loop])
    put("structures/cif_partial_occupancy.cif", si.replace("0.75000000  1\n", "0.75000000  0.5\n"))
    put("structures/cif_huge_cell.cif", si.replace("3.86711466", "38671.1466"))
    put("structures/cif_degenerate_cell.cif", si.replace("3.86711466", "0.10000000"))
    put("structures/cif_too_many_sites.cif", _supercell_cif(si, (7, 7, 7)))
    put("structures/cif_symmetry_bomb.cif", _symmetry_bomb(60))
    put("structures/cif_unknown_element.cif", si.replace("  Si  Si0", "  Xx  Xx0"))
    put("structures/cif_nan_coordinate.cif", si.replace("0.75000000  0.75000000  0.75000000", "nan  0.75000000  0.75000000"))
    put("structures/cif_text_cell_length.cif", si.replace("_cell_length_a   3.86711466", "_cell_length_a   abc"))

    # POSCAR (line 6 species, line 7 counts, lines 9-12 coordinates)
    g = _lines(gan)
    put("structures/POSCAR_truncated", "\n".join(g[:8]) + "\n   0.66667")
    put("structures/POSCAR_garbled_counts", "\n".join(g[:6] + ["two two"] + g[7:]) + "\n")
    put("structures/POSCAR_count_mismatch", "\n".join(g[:6] + ["6 6"] + g[7:]) + "\n")
    put("structures/POSCAR_huge_scale", "\n".join(g[:1] + ["1000.0"] + g[2:]) + "\n")
    put("structures/POSCAR_zero_scale", "\n".join(g[:1] + ["0.0"] + g[2:]) + "\n")
    put("structures/POSCAR_nan", "\n".join(g[:8] + ["nan nan nan Ga"] + g[9:]) + "\n")
    put("structures/POSCAR_unknown_element", "\n".join(g[:5] + ["Qq N"] + g[6:]) + "\n")
    put("structures/POSCAR_no_species", "\n".join(g[:5] + g[6:8] + [" ".join(x.split()[:3]) for x in g[8:12]]) + "\n")
    put("structures/structure.xyz", "2\nSi2\nSi 0 0 0\nSi 1.36 1.36 1.36\n")

    # DOS CSV
    def csv(rows: list[tuple], header: str = "energy_eV,dos\n") -> str:
        return header + "".join(",".join(f"{v:g}" for v in r) + "\n" for r in rows)

    base = [(-4.0 + k, 1.0 + 0.1 * k) for k in range(9)]  # -4..4 eV
    put("dos/nan.csv", csv(base[:4] + [(base[4][0], float("nan"))] + base[5:]))
    put("dos/inf.csv", csv(base[:2] + [(float("inf"), 1.0)] + base[3:]))
    put("dos/negative.csv", csv(base[:3] + [(base[3][0], -0.3)] + base[4:]))
    put("dos/wrong_length.csv", "".join(f"{0.01 * k:g}\n" for k in range(600)))
    put("dos/non_monotonic.csv", csv(base[:3] + [(-3.5, 1.0)] + base[3:]))
    put("dos/reversed.csv", csv(base[::-1]))
    put("dos/ragged.csv", csv(base[:3]) + "-1,1.2,7\n0,1.1\n")
    put("dos/text.csv", "energy,dos\n-1,one\n0,two\n")
    put("dos/empty.csv", "")
    put("dos/single_row.csv", csv(base[:1]))
    put("dos/three_columns.csv", csv([(e, d, d) for e, d in base], header="energy,up,down\n"))
    put("dos/zero.csv", csv([(e, 0.0) for e, _ in base]))
    put("dos/out_of_window.csv", csv([(20.0 + e, d) for e, d in base]))

    # CHGCAR (each beside a valid POSCAR, as read_vasp_dir and ingest-vasp see them)
    vals = [8.0 + math.sin(k) for k in range(64)]
    chg = {
        "chgcar_truncated": _chgcar(values=vals[:40]),
        "chgcar_grid_too_large": _chgcar(" 5 5 5"),
        "chgcar_grid_too_small": _chgcar(" 3 3 3"),
        "chgcar_absurd_grid": _chgcar(" 100000 100000 100000"),
        "chgcar_bad_grid_line": _chgcar(" four 4 4"),
        "chgcar_garbled_values": _chgcar().replace("E+00", "X+00", 3),
        "chgcar_nan": _chgcar(values=vals[:10] + [float("nan")] + vals[11:]),
        "chgcar_header_only": SI2_POSCAR.rstrip("\n"),
    }
    for name, text in chg.items():
        put(f"vasp/{name}/POSCAR", SI2_POSCAR)
        put(f"vasp/{name}/CHGCAR", text)

    # DOSCAR (6 header lines, then NEDOS = 60 rows: file line k + 7 is row k)
    d = _doscar_lines()
    dos = {
        "doscar_truncated": d[:36],
        "doscar_non_monotonic": d[:16] + [d[17], d[16]] + d[18:],
        "doscar_nan": d[:26] + [d[26].replace(d[26].split()[1], "NaN")] + d[27:],
        "doscar_garbled": d[:6] + [r.replace("E", "Q") for r in d[6:10]] + d[10:],
        "doscar_fractional_nedos": d[:5] + [d[5].replace("   60   ", "   30.5   ")] + d[6:],
        "doscar_header_only": d[:5],
    }
    for name, rows in dos.items():
        put(f"vasp/{name}/POSCAR", SI2_POSCAR)
        put(f"vasp/{name}/DOSCAR", "\n".join(rows) + "\n")

    if out is not None:
        shutil.rmtree(out, ignore_errors=True)
        for rel, data in files.items():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(data)
    return files


def _supercell_cif(si_cif: str, scale: tuple[int, int, int]) -> str:
    """The Si cell repeated ``scale`` times, written as a P1 CIF (every site listed)."""
    from pymatgen.core import Structure
    from pymatgen.io.cif import CifWriter

    return str(CifWriter(Structure.from_str(si_cif, fmt="cif") * scale))


def _symmetry_bomb(rows: int) -> str:
    """A 3 kB CIF: ``rows`` Si atoms on general positions of Fm-3m (192 operations each, 11520 atoms for 60)."""
    ops = _fm3m_ops()
    head = ["data_bomb", "_symmetry_space_group_name_H-M   'F m -3 m'", "_symmetry_Int_Tables_number   225",
            "_cell_length_a   40.0", "_cell_length_b   40.0", "_cell_length_c   40.0", "_cell_angle_alpha   90.0",
            "_cell_angle_beta   90.0", "_cell_angle_gamma   90.0", "loop_", " _symmetry_equiv_pos_site_id",
            " _symmetry_equiv_pos_as_xyz"]
    head += [f"  {k + 1}  '{op}'" for k, op in enumerate(ops)]
    head += ["loop_", " _atom_site_type_symbol", " _atom_site_label", " _atom_site_fract_x", " _atom_site_fract_y",
             " _atom_site_fract_z", " _atom_site_occupancy"]
    for k in range(rows):  # deterministic general positions in (0.01, 0.21)
        x, y, z = ((0.01 + ((k * p) % 97) / 485.0) for p in (13, 29, 41))
        head.append(f"  Si  Si{k}  {x:.6f}  {y:.6f}  {z:.6f}  1")
    return "\n".join(head) + "\n"


def _fm3m_ops() -> list[str]:
    from pymatgen.symmetry.groups import SpaceGroup

    return [op.as_xyz_str() for op in SpaceGroup("Fm-3m").symmetry_ops]


if __name__ == "__main__":
    written = build(OUT)
    print(f"wrote {len(written)} files ({len(CASES)} malformed cases) under {OUT}")
    sys.exit(0)
