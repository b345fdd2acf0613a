"""The one DOS grid, the one density grid, units and level-of-theory tags shared by every source.

Every source converts into these conventions before anything is stored, so a model or a plot never
has to ask where a curve came from to interpret it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DENSITY_GRID",
    "DOS_ENERGIES",
    "DOS_E_MAX",
    "DOS_E_MIN",
    "DOS_N_POINTS",
    "GAP_THRESHOLD_EV",
    "LABELS",
    "LabelSpec",
    "label_source",
    "label_title",
    "QuantizedDensity",
    "dequantize_density",
    "dos_gap_and_vbm",
    "gaussian_broaden",
    "quantize_density",
    "resample_density",
    "standardize_dos",
]

DOS_E_MIN = -10.0  # eV, relative to the VBM (gapped) or E_F (metals)
DOS_E_MAX = 10.0
DOS_N_POINTS = 601
DOS_ENERGIES = np.linspace(DOS_E_MIN, DOS_E_MAX, DOS_N_POINTS)  # eV, step 1/30 eV
DENSITY_GRID = 32  # points per lattice vector, fractional coordinates, index order (a, b, c)
GAP_THRESHOLD_EV = 0.05  # a gap below this is treated as metallic (zero at E_F)


@dataclass(frozen=True)
class LabelSpec:
    """What a label column is: quantity, unit, level of theory and where it comes from."""

    quantity: str
    unit: str
    theory: str
    source: str


# Column name -> meaning. A column never mixes levels of theory or sources.
LABELS: dict[str, LabelSpec] = {
    "band_gap_mp_pbe": LabelSpec("band gap", "eV", "PBE(+U), VASP", "Materials Project via matminer dielectric_constant (Petousis 2017)"),
    "formation_energy_per_atom_mp_pbe": LabelSpec("formation energy per atom", "eV/atom", "PBE(+U), VASP, MP corrections", "Materials Project via matminer flla_2015 (Faber 2015)"),
    "e_above_hull_mp_pbe": LabelSpec("energy above hull", "eV/atom", "PBE(+U), VASP, MP corrections", "Materials Project via matminer flla_2015 (Faber 2015)"),
    "k_vrh_mp_pbe": LabelSpec("bulk modulus (Voigt-Reuss-Hill)", "GPa", "PBE, VASP", "Materials Project via matminer elastic_tensor (de Jong 2015)"),
    "g_vrh_mp_pbe": LabelSpec("shear modulus (Voigt-Reuss-Hill)", "GPa", "PBE, VASP", "Materials Project via matminer elastic_tensor (de Jong 2015)"),
    "refractive_index_mp_pbe": LabelSpec("refractive index (polycrystalline)", "1", "PBE DFPT, VASP", "Materials Project via matminer dielectric_constant (Petousis 2017)"),
    "dielectric_total_mp_pbe": LabelSpec("dielectric constant (polycrystalline, total)", "1", "PBE DFPT, VASP", "Materials Project via matminer dielectric_constant (Petousis 2017)"),
    "piezo_eij_max_mp_pbe": LabelSpec("max piezoelectric modulus |e_ij|", "C/m^2", "PBE DFPT, VASP", "Materials Project via matminer piezoelectric_tensor (de Jong 2015)"),
    "heat_of_formation_castelli_rpbe": LabelSpec("heat of formation", "eV/cell (5 atoms)", "RPBE, GPAW", "Castelli 2012 cubic perovskites via CDVAE perov_5"),
    "gap_direct_castelli_gllbsc": LabelSpec("direct band gap", "eV", "GLLB-SC, GPAW", "Castelli 2012 cubic perovskites via CDVAE perov_5"),
    "gap_indirect_castelli_gllbsc": LabelSpec("indirect band gap", "eV", "GLLB-SC, GPAW", "Castelli 2012 cubic perovskites via CDVAE perov_5"),
    "total_energy_per_atom_carbon24_pbe": LabelSpec("total energy per atom (not a formation energy)", "eV/atom", "PBE, CASTEP AIRSS at 10 GPa", "Pickard 2020 carbon structures via CDVAE carbon_24"),
    # Live Materials Project API values (today's database, GGA/GGA+U thermo documents): a later
    # snapshot than matminer's, so kept in columns of their own.
    "band_gap_mpapi_pbe": LabelSpec("band gap", "eV", "PBE(+U), VASP", "Materials Project API (mp-api)"),
    "formation_energy_per_atom_mpapi_pbe": LabelSpec("formation energy per atom", "eV/atom", "PBE(+U), VASP, MP2020 corrections", "Materials Project API (mp-api), GGA/GGA+U thermo"),
    "e_above_hull_mpapi_pbe": LabelSpec("energy above hull", "eV/atom", "PBE(+U), VASP, MP2020 corrections", "Materials Project API (mp-api), GGA/GGA+U thermo"),
    "k_vrh_mpapi_pbe": LabelSpec("bulk modulus (Voigt-Reuss-Hill)", "GPa", "PBE, VASP", "Materials Project API (mp-api)"),
    "g_vrh_mpapi_pbe": LabelSpec("shear modulus (Voigt-Reuss-Hill)", "GPa", "PBE, VASP", "Materials Project API (mp-api)"),
    "band_gap_gpaw_pbe": LabelSpec("band gap (from the DOS run eigenvalues)", "eV", "PBE(+U on d states of Co/Cr/Fe/Mn/Mo/Ni/V/W oxides and fluorides), GPAW PW 500 eV", "MLCM first-principles engine / dft-seed"),
    "total_energy_gpaw_pbe": LabelSpec("total energy per cell", "eV", "PBE(+U as for the gap), GPAW PW 500 eV", "MLCM first-principles engine / dft-seed"),
    "magmom_gpaw_pbe": LabelSpec("total magnetic moment per cell", "mu_B", "PBE(+U as for the gap), spin-polarized from MP initial moments, GPAW PW 500 eV", "MLCM first-principles engine"),
}


def _short_theory(theory: str) -> str:
    """The functional of a LABELS theory, without code and details: "PBE(+U), VASP" -> "PBE(+U)"."""
    head = theory.split(",")[0].strip()
    return re.sub(r"\(\+U[^)]*\)", "(+U)", head)


def _short_source(source: str) -> str:
    """Who computed a label, without the route it came by: "Materials Project via matminer ... (Petousis 2017)"
    -> "Materials Project"."""
    for sep in (" via ", " (", ",", " / "):
        source = source.split(sep)[0]
    return source.strip()


def label_source(column: str) -> str:
    """Who computed a label column, in short ("Materials Project", "Castelli 2012 cubic perovskites"); '' for a
    column LABELS does not know."""
    spec = LABELS.get(column)
    return _short_source(spec.source) if spec is not None else ""


def label_title(column: str, source: bool = True) -> str:
    """What a person reads for a label column: quantity, unit, level of theory (and who computed it), from
    LABELS, e.g. ``band_gap_mp_pbe`` -> "Band gap (eV, PBE(+U); Materials Project)". A column LABELS does not
    know is returned as is. ``source`` names who computed it: columns of the same quantity and functional
    (the Materials Project's matminer snapshot and its live API) differ only there."""
    spec = LABELS.get(column)
    if spec is None:
        return column
    quantity = spec.quantity[:1].upper() + spec.quantity[1:]
    parts = [u for u in (spec.unit if spec.unit != "1" else "",) if u]  # "1": dimensionless, no unit to show
    parts.append(_short_theory(spec.theory) + (f"; {_short_source(spec.source)}" if source else ""))
    return f"{quantity} ({', '.join(parts)})"


def gaussian_broaden(energies: np.ndarray, dos: np.ndarray, sigma: float) -> np.ndarray:
    """Convolve a DOS sampled on a uniform grid with a normalised Gaussian of width sigma (eV)."""
    if sigma <= 0:
        return dos
    step = float(energies[1] - energies[0])
    half = int(np.ceil(4 * sigma / step))
    x = np.arange(-half, half + 1) * step
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    return np.convolve(dos, kernel, mode="same")


def dos_gap_and_vbm(
    energies: np.ndarray, dos: np.ndarray, efermi: float, tol: float = 1e-3
) -> tuple[float, float]:
    """Band gap and VBM (eV, absolute) read off a total DOS around E_F, as pymatgen's Dos.get_gap.

    Used only when a source gives no eigenvalues; the gap is the span of near-zero DOS containing E_F.
    """
    energies = np.asarray(energies, dtype=float)
    dos = np.asarray(dos, dtype=float)
    occupied = dos > tol
    below = np.where(occupied & (energies <= efermi))[0]
    above = np.where(occupied & (energies > efermi))[0]
    if len(below) == 0 or len(above) == 0:
        return 0.0, float(efermi)
    vbm = float(energies[below[-1]])
    cbm = float(energies[above[0]])
    gap = max(cbm - vbm, 0.0)
    if gap < GAP_THRESHOLD_EV:
        return 0.0, float(efermi)
    return gap, vbm


def standardize_dos(
    energies: np.ndarray,
    densities: np.ndarray,
    reference_energy: float,
) -> np.ndarray:
    """Resample DOS channels onto DOS_ENERGIES with the zero at `reference_energy`.

    Args:
        energies: (n,) absolute energies in eV, increasing.
        densities: (n,) or (c, n) states/eV per cell.
        reference_energy: VBM when gapped, else E_F (eV, same frame as `energies`).

    Returns:
        (601,) or (c, 601) float32; zero outside the source's energy window.
    """
    energies = np.asarray(energies, dtype=float)
    if energies.ndim != 1 or len(energies) < 2:
        raise ValueError("DOS energies must be a 1-D array with at least two points")
    if not np.all(np.diff(energies) > 0):
        raise ValueError("DOS energies must be strictly increasing")
    arr = np.asarray(densities, dtype=float)
    if arr.shape[-1] != len(energies):
        raise ValueError(f"DOS has {arr.shape[-1]} points but {len(energies)} energies")
    if not np.all(np.isfinite(arr)):
        raise ValueError("DOS contains NaN or infinite values")
    shifted = energies - reference_energy
    channels = np.atleast_2d(arr)
    out = np.stack([np.interp(DOS_ENERGIES, shifted, ch, left=0.0, right=0.0) for ch in channels])
    out = np.clip(out, 0.0, None)
    if np.any(out > np.finfo(np.float32).max):
        raise ValueError(f"DOS values up to {out.max():.3g} overflow float32")
    out = out.astype(np.float32)
    return out[0] if arr.ndim == 1 else out


def resample_density(grid: np.ndarray, n: int = DENSITY_GRID) -> np.ndarray:
    """Fourier-resample a periodic 3-D grid on fractional coordinates to n³ (keeps the mean exactly)."""
    grid = np.asarray(grid, dtype=float)
    if grid.ndim != 3:
        raise ValueError(f"density grid must be 3-D, got shape {grid.shape}")
    if grid.shape == (n, n, n):
        return grid.astype(np.float32)
    from scipy.signal import resample

    out = grid
    for axis in range(3):
        out = resample(out, n, axis=axis)
    return out.astype(np.float32)


@dataclass(frozen=True)
class QuantizedDensity:
    """8-bit asinh-quantized density: rho = softness * sinh(t_min + q/255 * (t_max - t_min))."""

    q: np.ndarray  # (32, 32, 32) uint8
    softness: float
    t_min: float
    t_max: float


def quantize_density(rho: np.ndarray, relative_softness: float = 0.01) -> QuantizedDensity:
    """Compress a density to 8 bits of asinh(rho/s) with a per-material scale.

    asinh is log-like for large rho (resolves the tails around atoms and in bonds) and linear near zero,
    so the negative resampling artefacts of some sources survive. s = relative_softness * max|rho|.
    """
    rho = np.asarray(rho, dtype=np.float64)
    if not np.all(np.isfinite(rho)):
        raise ValueError("density contains NaN or infinite values")
    peak = float(np.max(np.abs(rho)))
    softness = relative_softness * peak if peak > 0 else 1.0
    t = np.arcsinh(rho / softness)
    t_min, t_max = float(t.min()), float(t.max())
    span = t_max - t_min if t_max > t_min else 1.0
    q = np.round((t - t_min) / span * 255.0).astype(np.uint8)
    return QuantizedDensity(q=q, softness=softness, t_min=t_min, t_max=t_max)


def dequantize_density(q: np.ndarray, softness: float, t_min: float, t_max: float) -> np.ndarray:
    """Inverse of quantize_density (float32); q may carry leading batch axes only if scalars broadcast."""
    t = t_min + np.asarray(q, dtype=np.float32) / np.float32(255.0) * np.float32(t_max - t_min)
    return (softness * np.sinh(t)).astype(np.float32)
