"""VASP outputs (vasprun.xml, DOSCAR, CHGCAR) as MaterialRecords in the project conventions.

The DOS and density converters here are shared with the Materials Project source, which serves the
same pymatgen objects VASP files parse into.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from mlcm_core.data.conventions import (
    GAP_THRESHOLD_EV,
    dos_gap_and_vbm,
    resample_density,
    standardize_dos,
)
from mlcm_core.data.record import DensityData, DOSData, MaterialRecord

if TYPE_CHECKING:
    from pymatgen.core import Structure
    from pymatgen.electronic_structure.dos import Dos
    from pymatgen.io.vasp import Vasprun
    from pymatgen.io.vasp.outputs import VolumetricData

__all__ = [
    "VaspInputError",
    "density_from_chgcar",
    "density_from_volumetric",
    "dos_from_complete_dos",
    "dos_from_doscar",
    "dos_from_vasprun",
    "read_vasp_dir",
]

_DEFAULT_THEORY = "PBE(+U), VASP"
_DEFAULT_BROADENING = "none added (source's DOS as given)"
_CHGCAR_CONVENTION = (
    "valence (pseudo) charge density from VASP CHGCAR 'total'; no core, no all-electron PAW reconstruction; "
    "can be negative at the nuclei, as VASP writes it"
)
_FORTRAN_EXPONENT = re.compile(r"(?<=\d)([+-]\d{3})\b")  # "0.1234-100" -> "0.1234E-100"


class VaspInputError(ValueError):
    """A VASP folder or file that cannot give a consistent record (missing files, mismatched cells)."""


def _find(folder: Path, name: str) -> Path | None:
    """`name` or `name.gz` in `folder`, whichever exists (plain file first)."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _vasp_theory(vasprun: Vasprun) -> str:
    """Functional (+U) and VASP version, e.g. 'PBE, VASP 5.4.4', read from the run itself."""
    run_type = str(vasprun.run_type)  # e.g. "GGA+U", "HSE06", "R2SCAN"
    if run_type.startswith("GGA") and any("PBE" in s for s in vasprun.potcar_symbols):
        run_type = "PBE" + run_type[3:]  # GGA = -- means the POTCAR's functional
    return f"{run_type}, VASP {vasprun.vasp_version}"


def _vasp_broadening(ismear: int, sigma: float) -> str:
    """Describe VASP's ISMEAR/SIGMA, which set how its DOS was broadened."""
    if ismear in (-5, -15):
        return f"none added (VASP tetrahedron method with Bloechl corrections, ISMEAR={ismear})"
    if ismear in (-4, -14):
        return f"none added (VASP tetrahedron method, ISMEAR={ismear})"
    if ismear == 0:
        return f"Gaussian {sigma:g} eV (VASP ISMEAR=0)"
    if ismear == -1:
        return f"Fermi-Dirac {sigma:g} eV (VASP ISMEAR=-1)"
    if ismear > 0:
        return f"Methfessel-Paxton order {ismear}, {sigma:g} eV (VASP ISMEAR={ismear})"
    return f"VASP ISMEAR={ismear}, SIGMA={sigma:g} eV"


def dos_from_complete_dos(
    dos: Dos,
    *,
    theory: str = _DEFAULT_THEORY,
    broadening: str = _DEFAULT_BROADENING,
    eigenvalue_gap: tuple[float, float] | None = None,
) -> DOSData:
    """Put a pymatgen Dos/CompleteDos on DOS_ENERGIES, zero at the VBM when gapped, else at E_F.

    The gap and VBM come from eigenvalues when the caller has them, because a DOS on a coarse energy
    grid (or broadened) blurs the band edges; otherwise they are read off the total DOS.

    Args:
        dos: states/eV per cell; one channel (non-spin-polarized, spin degeneracy included, as VASP
            writes it) or up and down channels.
        theory: level of theory of the calculation.
        broadening: how the source DOS was broadened.
        eigenvalue_gap: (band gap, VBM) in eV, absolute, in the DOS's frame, from eigenvalues.

    Returns:
        DOSData with the total and, when spin-polarized, both spin channels.
    """
    from pymatgen.electronic_structure.core import Spin

    energies = np.asarray(dos.energies, dtype=float)
    up = np.asarray(dos.densities[Spin.up], dtype=float)
    down = dos.densities.get(Spin.down)
    total = up if down is None else up + np.asarray(down, dtype=float)
    if eigenvalue_gap is None:
        gap, vbm = dos_gap_and_vbm(energies, total, dos.efermi)
        gap_origin = "band gap from the DOS"
    else:
        gap, vbm = eigenvalue_gap
        gap_origin = "band gap from eigenvalues"
    gapped = gap > GAP_THRESHOLD_EV
    reference = vbm if gapped else float(dos.efermi)
    spin = None if down is None else standardize_dos(energies, np.stack([up, down]), reference)
    channels = "both spins summed" if down is not None else "non-spin-polarized (spin degeneracy included)"
    return DOSData(
        total=standardize_dos(energies, total, reference),
        reference="vbm" if gapped else "efermi",
        theory=theory,
        broadening=broadening,
        convention=f"total DOS, {channels}, states/eV per cell; {gap_origin}",
        band_gap=float(gap),
        spin=spin,
    )


def _read_vasprun(path: str | Path) -> Vasprun:
    from pymatgen.io.vasp import Vasprun

    return Vasprun(str(path), parse_potcar_file=False, parse_projected_eigen=False)


def _dos_from_parsed_vasprun(vasprun: Vasprun) -> DOSData:
    props = cast("tuple[float, float, float, bool]", vasprun.eigenvalue_band_properties)  # spins combined
    gap, _cbm, vbm, _direct = props
    params = vasprun.parameters
    return dos_from_complete_dos(
        vasprun.complete_dos,
        theory=_vasp_theory(vasprun),
        broadening=_vasp_broadening(int(params.get("ISMEAR", 1)), float(params.get("SIGMA", 0.2))),
        eigenvalue_gap=(float(gap), float(vbm)),
    )


def dos_from_vasprun(path: str | Path) -> DOSData:
    """The total DOS of a vasprun.xml[.gz], zeroed at the VBM from its eigenvalues (gapped) or E_F.

    Args:
        path: vasprun.xml or vasprun.xml.gz.
    """
    return _dos_from_parsed_vasprun(_read_vasprun(path))


def _parse_doscar(path: Path) -> tuple[int, float, np.ndarray]:
    """(number of ions, E_F, total block (NEDOS, columns)) of a DOSCAR."""
    from monty.io import zopen

    try:
        with zopen(str(path), "rt") as handle:
            lines = handle.read().splitlines()
    except (UnicodeDecodeError, EOFError, OSError) as exc:  # binary content, a damaged .gz
        raise VaspInputError(f"{path}: not a readable DOSCAR ({_brief(exc)})") from exc
    try:
        n_ions = int(lines[0].split()[0])
        _emax, _emin, n_points, efermi = (float(x) for x in lines[5].split()[:4])
        if not (n_points == int(n_points) and n_points >= 2):
            raise ValueError(f"NEDOS {n_points:g} is not an integer >= 2")
        rows = [_FORTRAN_EXPONENT.sub(r"E\1", line).split() for line in lines[6 : 6 + int(n_points)]]
        widths = sorted({len(r) for r in rows})
        if len(rows) != int(n_points) or len(widths) != 1:
            raise VaspInputError(f"{path}: the total-DOS block should hold NEDOS = {int(n_points)} rows of 3 or 5 "
                                 f"columns; found {len(rows)} rows of {widths} columns (truncated or garbled file)")
        block = np.array(rows, dtype=float)
    except VaspInputError:
        raise
    except (IndexError, ValueError, OverflowError) as exc:
        raise VaspInputError(f"{path}: not a readable DOSCAR ({exc})") from exc
    if block.ndim != 2 or block.shape[0] != int(n_points) or block.shape[1] not in (3, 5):
        raise VaspInputError(f"{path}: total-DOS block has shape {block.shape}, expected ({int(n_points)}, 3 or 5)")
    bad = np.flatnonzero(~np.all(np.isfinite(block), axis=1))
    if len(bad) or not np.isfinite(efermi):
        raise VaspInputError(f"{path}: NaN or infinite value in the DOSCAR (line {bad[0] + 7 if len(bad) else 6})")
    if not np.all(np.diff(block[:, 0]) > 0):
        k = int(np.flatnonzero(np.diff(block[:, 0]) <= 0)[0])
        raise VaspInputError(f"{path}: DOSCAR energies are not strictly increasing (line {k + 8}: "
                             f"{block[k, 0]:g} -> {block[k + 1, 0]:g} eV)")
    return n_ions, efermi, block


def dos_from_doscar(path: str | Path, structure: Structure | None = None) -> DOSData:
    """The total DOS block of a DOSCAR[.gz]; gap and VBM from the DOS, as a DOSCAR has no eigenvalues.

    A DOSCAR records neither functional nor smearing, so theory and broadening say so. Its integrated
    column is checked: fewer electrons below E_F than atoms means the DOS scale is wrong (warned).

    Args:
        path: DOSCAR or DOSCAR.gz.
        structure: the run's structure; when given, its site count must match the DOSCAR's.
    """
    from pymatgen.electronic_structure.core import Spin
    from pymatgen.electronic_structure.dos import Dos

    path = Path(path)
    n_ions, efermi, block = _parse_doscar(path)
    if structure is not None and len(structure) != n_ions:
        raise VaspInputError(f"{path}: DOSCAR is for {n_ions} ions but the structure has {len(structure)} sites")
    spin_polarized = block.shape[1] == 5
    densities = {Spin.up: block[:, 1]}
    integrated = block[:, 2]
    if spin_polarized:
        densities[Spin.down] = block[:, 2]
        integrated = block[:, 3] + block[:, 4]
    electrons = float(np.interp(efermi, block[:, 0], integrated))
    if electrons < n_ions:
        warnings.warn(
            f"{path}: the DOSCAR's integrated DOS holds only {electrons:.3g} states below E_F for {n_ions} ions; "
            "its DOS scale looks wrong (compare with vasprun.xml)",
            stacklevel=2,
        )
    return dos_from_complete_dos(
        Dos(efermi, block[:, 0], densities),
        theory="VASP (functional not recorded in DOSCAR)",
        broadening="unknown (DOSCAR records no smearing settings)",
    )


def density_from_volumetric(chg: VolumetricData, *, theory: str = _DEFAULT_THEORY) -> DensityData:
    """Convert a parsed CHGCAR (rho * V_cell on its FFT grid) to e/Å³ on the 32³ grid of the crystal's
    canonical cell (``mlcm_core.data.density_frame``; the cell is recorded in ``DensityData.lattice``).

    Args:
        chg: pymatgen Chgcar (from a file or the Materials Project); only 'total' is used.
        theory: level of theory of the run that wrote it.
    """
    from mlcm_core.data.density_frame import canonicalize

    total = np.asarray(chg.data["total"], dtype=float)
    volume = float(chg.structure.volume)
    on_its_cell = DensityData(
        grid=resample_density(total / volume),
        units="e/Å^3",
        theory=theory,
        convention=_CHGCAR_CONVENTION,
        integral=float(total.mean()),  # mean of rho*V over the grid = electrons in the cell
        lattice=np.asarray(chg.structure.lattice.matrix),
    )
    return canonicalize(on_its_cell, chg.structure)  # whatever setting the run used: one frame per crystal


MAX_CHGCAR_POINTS = 512**3  # FFT grid points; a 300-atom cell at high cutoff stays far below


def _check_chgcar_layout(path: Path) -> None:
    """Refuse a CHGCAR whose grid line is absurd or whose first block does not hold exactly that many values.

    pymatgen allocates the declared grid before reading (a hostile header asks for petabytes) and silently
    ignores surplus values (a grid line smaller than the data gives a wrong density without an error).
    """
    from monty.io import zopen

    with zopen(str(path), "rt", errors="replace") as fh:
        fh.readline()  # the title, which may be empty
        for line in fh:  # the rest of the structure, up to its blank line
            if not line.strip():
                break
        else:
            raise VaspInputError(f"{path}: not a CHGCAR (no structure block followed by a grid)")
        grid_line = next((line for line in fh if line.strip()), "")
        try:
            dims = [int(x) for x in grid_line.split()]
        except ValueError:
            dims = []
        if len(dims) != 3 or min(dims) < 1:
            raise VaspInputError(f"{path}: CHGCAR grid line {grid_line.strip()[:60]!r} is not three positive integers")
        n_points = dims[0] * dims[1] * dims[2]
        if n_points > MAX_CHGCAR_POINTS:
            raise VaspInputError(f"{path}: CHGCAR grid {dims} has {n_points:.3g} points, above the "
                                 f"{MAX_CHGCAR_POINTS:.3g} limit")
        count = 0
        for line in fh:
            words = line.split()
            if not words:
                continue
            if words[0] == "augmentation" or (len(words) == 3 and "." not in line):  # next section / spin grid
                break
            count += len(words)
            if count > n_points:
                break
    if count != n_points:
        held = f"more than {n_points}" if count > n_points else str(count)
        raise VaspInputError(f"{path}: CHGCAR grid {dims[0]}x{dims[1]}x{dims[2]} needs {n_points} values but its "
                             f"first block holds {held} (truncated file or wrong grid)")


def _read_chgcar(path: str | Path) -> VolumetricData:
    """Chgcar.from_file behind the layout check; every failure is a VaspInputError naming the file."""
    from pymatgen.io.vasp import Chgcar

    path = Path(path)
    try:
        _check_chgcar_layout(path)
        return Chgcar.from_file(str(path))
    except VaspInputError:
        raise
    except Exception as exc:  # pymatgen raises ValueError, IndexError, MemoryError, ...
        raise VaspInputError(f"{path}: not a readable CHGCAR ({_brief(exc)})") from exc


def _brief(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def density_from_chgcar(path: str | Path, *, theory: str = "VASP (functional not recorded in CHGCAR)") -> DensityData:
    """Read a CHGCAR[.gz] and convert it with density_from_volumetric.

    Args:
        path: CHGCAR or CHGCAR.gz.
        theory: level of theory, when the caller knows it (a CHGCAR does not record it).

    Raises:
        VaspInputError: the file is missing, truncated, garbled, has a wrong or absurd grid, or holds
            non-finite values.
    """
    chg = _read_chgcar(path)
    try:
        return density_from_volumetric(chg, theory=theory)
    except ValueError as exc:  # non-finite values
        raise VaspInputError(f"{path}: {exc}") from exc


def _check_same_cell(structure: Structure, other: Structure, what: str) -> None:
    """Refuse a grid from another cell: its fractional grid would be misplaced in this one."""
    if len(structure) != len(other) or not np.allclose(structure.lattice.matrix, other.lattice.matrix, atol=1e-3):
        raise VaspInputError(
            f"{what} is for a different cell ({other.composition.formula}, {other.lattice.abc}) "
            f"than the structure ({structure.composition.formula}, {structure.lattice.abc})"
        )


def _structure_from_files(folder: Path, chg: VolumetricData | None) -> tuple[Structure, str]:
    """The structure without a vasprun: CONTCAR (final geometry), else POSCAR, else the CHGCAR's own."""
    from pymatgen.io.vasp import Poscar

    for name in ("CONTCAR", "POSCAR"):
        found = _find(folder, name)
        if found is not None and found.stat().st_size > 0:
            try:
                return Poscar.from_file(str(found), check_for_potcar=False).structure, f"{found.name} (structure)"
            except Exception as exc:  # pymatgen raises many types on a damaged POSCAR
                raise VaspInputError(f"{found}: not a readable {name} ({_brief(exc)})") from exc
    if chg is not None:
        return cast("Structure", chg.structure), "CHGCAR (structure)"
    raise VaspInputError(f"{folder}: no structure (need vasprun.xml, CONTCAR, POSCAR or CHGCAR)")


def read_vasp_dir(path: str | Path) -> MaterialRecord:
    """One VASP run folder as a record: vasprun.xml and/or DOSCAR for the DOS, CHGCAR for the density.

    The vasprun is preferred for the DOS (eigenvalue gap, recorded theory and smearing); the DOSCAR
    is used only without one. The structure comes from the vasprun, else CONTCAR/POSCAR, else the CHGCAR.

    Args:
        path: the run folder; files may be gzipped.

    Raises:
        VaspInputError: no DOS or density file, no structure, a CHGCAR for another cell, or a file
            that is truncated, garbled or inconsistent (the message names it).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise VaspInputError(f"{folder}: not a folder")
    vasprun_path, doscar_path, chgcar_path = (_find(folder, n) for n in ("vasprun.xml", "DOSCAR", "CHGCAR"))
    if vasprun_path is None and doscar_path is None and chgcar_path is None:
        raise VaspInputError(f"{folder}: no vasprun.xml, DOSCAR or CHGCAR (optionally .gz)")
    chg = None if chgcar_path is None else _read_chgcar(chgcar_path)

    dos: DOSData | None = None
    if vasprun_path is not None:
        try:
            vasprun = _read_vasprun(vasprun_path)
        except Exception as exc:  # XML, index and value errors from a damaged file
            raise VaspInputError(f"{vasprun_path}: not a readable vasprun.xml ({_brief(exc)})") from exc
        structure, theory = vasprun.final_structure, _vasp_theory(vasprun)
        dos = _dos_from_parsed_vasprun(vasprun)
        used = [f"{vasprun_path.name} (structure, DOS, gap from eigenvalues)"]
    else:
        structure, origin = _structure_from_files(folder, chg)
        theory, used = "VASP (functional not recorded without vasprun.xml)", [origin]
        if doscar_path is not None:
            dos = dos_from_doscar(doscar_path, structure)
            used.append(f"{doscar_path.name} (DOS, gap from the DOS)")
    density = None
    if chg is not None:
        _check_same_cell(structure, cast("Structure", chg.structure), f"{folder}: CHGCAR")
        try:
            density = density_from_volumetric(chg, theory=theory)
        except ValueError as exc:  # non-finite values
            raise VaspInputError(f"{chgcar_path}: {exc}") from exc
        used.append("CHGCAR (density)")
    name = folder.resolve().name
    return MaterialRecord(
        id=f"vasp:{name}",
        source="vasp",
        structure=structure,
        dos=dos,
        density=density,
        provenance=f"VASP outputs in folder {name}: " + "; ".join(used),
        formula=structure.composition.reduced_formula,
    )
