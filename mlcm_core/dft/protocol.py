"""The one GPAW protocol: every number that decides a first-principles result, in one frozen place.

A result is only comparable with another if both came from the same protocol, so the protocol is a
frozen dataclass that is serialised into every output file and can be rebuilt from it. The per-material
choices that follow from it (k-mesh, spin, initial moments, Hubbard U) are methods here so that the
engine, the cost estimate and the docs all use the same rule.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LOW_PROTOCOL", "PROTOCOL", "DFTProtocol", "mp_kpts"]

# Materials Project's MPRelaxSet values (pymatgen VASPIncarBase.yaml / MPRelaxSet.yaml).
MP_MAGMOMS: tuple[tuple[str, float], ...] = (
    ("Ce", 5.0), ("Co", 0.6), ("Cr", 5.0), ("Eu", 10.0), ("Fe", 5.0), ("Mn", 5.0),
    ("Mo", 5.0), ("Ni", 5.0), ("V", 5.0), ("W", 5.0),
)
MP_U_VALUES: tuple[tuple[str, float], ...] = (
    ("Co", 3.32), ("Cr", 3.7), ("Fe", 5.3), ("Mn", 3.9), ("Mo", 4.38), ("Ni", 6.2), ("V", 3.25), ("W", 6.2),
)


def mp_kpts(cell: np.ndarray, density: float, kmax: int | None = None) -> tuple[int, int, int]:
    """Γ-centred Monkhorst-Pack size from a k-point density (points per Å⁻¹).

    Same rule as ASE's kptdensity2monkhorstpack(atoms, density, even=False): n_i = ceil(2π|b_i| density),
    with b_i the reciprocal vectors without 2π; optionally capped at kmax per axis.
    """
    recip = np.linalg.inv(np.asarray(cell, dtype=float)).T
    sizes = [max(1, math.ceil(2 * math.pi * float(np.linalg.norm(b)) * density)) for b in recip]
    if kmax is not None:
        sizes = [min(k, kmax) for k in sizes]
    return sizes[0], sizes[1], sizes[2]


@dataclass(frozen=True)
class DFTProtocol:
    """All parameters of the GPAW SCF + non-self-consistent DOS protocol (defaults = the production one)."""

    xc: str = "PBE"
    ecut_ev: float = 500.0  # plane-wave cutoff
    occupations: str = "fermi-dirac"
    smearing_ev: float = 0.05
    kpt_density_scf: float = 2.5  # per Å⁻¹, Γ-centred MP, odd sizes allowed (ASE even=False)
    kpt_density_dos: float = 4.5
    kpt_max_dos: int = 12  # points per axis at most in the DOS run
    dos_symmetry: str = "irreducible"  # DOS run on the irreducible wedge ("off" = full zone)
    symmetry_tolerance: float = 1e-4  # GPAW's (default 1e-7 misses symmetries of MP's 8-digit cells)
    dos_sigma_ev: float = 0.1  # Gaussian standard deviation of the DOS broadening
    dos_emin_ev: float = -10.0
    dos_emax_ev: float = 10.0
    dos_npoints: int = 601
    band_margin_ev: float = 10.0  # highest converged band must lie >= E_ref + this at every k-point
    band_retries: int = 2  # DOS reruns with more bands when the margin is not met
    gap_threshold_ev: float = 0.05  # VBM is the reference above this gap, else E_F
    scf_energy_tol_ev: float = 5e-4  # per valence electron (GPAW default)
    scf_density_tol: float = 1e-4
    scf_maxiter: int = 300
    scf_band_margin_ev: float = 1.0  # SCF's highest band must stay this far above E_F at every k-point
    dos_maxiter: int = 300
    dos_eigenstates_tol: float = 1e-3  # eV²/electron in the non-SCF run (GPAW default 4e-8). 1e-5 until
    # 2026-12-03; 1e-3 gives the same DOS (area-normalised MAE <= 3e-9 /eV on 15 MP materials) with a 1.33x
    # faster DOS step (benchmarks/dos_step_cost.py, docs/dft.md); results keep the value they ran with
    dos_band_buffer: float = 0.1  # unconverged extra bands in the DOS run, as a fraction of the converged ones
    dos_eigensolver: str | None = None  # None: GPAW's default for PW (Davidson, niter 2); else a GPAW name
    # ('dav', 'rmm-diis', 'cg') or 'name:key=value,...', e.g. 'dav:niter=1' (worker.eigensolver_arg)
    dos_method: str = "gaussian"  # DOS from the DOS-run eigenvalues: "gaussian" (Gaussian sums over the mesh's
    # k-points) or "tetrahedron" (linear tetrahedra on the full mesh, E_F from them, then the same Gaussian)
    magnetic_elements: tuple[str, ...] = ("Cr", "Mn", "Fe", "Co", "Ni")  # spin-polarise cells with these
    initial_magmoms: tuple[tuple[str, float], ...] = MP_MAGMOMS
    default_magmom: float = 0.6  # MP's default initial moment for other atoms of a spin-polarised cell
    hubbard_u: tuple[tuple[str, float], ...] = MP_U_VALUES  # eV on d states (Dudarev), MP values
    hubbard_anions: tuple[str, ...] = ("O", "F")  # U applies when the most electronegative element is one
    density_grid: int = 32
    timeout_s: float = 4 * 3600.0  # per material, SCF + DOS
    setup_dir: str = "/usr/share/gpaw-setups"
    threads: int = 1  # BLAS/OpenMP threads of one worker

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists); stored in every npz so a result names its protocol."""
        return json_safe(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DFTProtocol:
        """Inverse of to_dict; unknown keys are rejected so a renamed field cannot be silently lost."""
        data = {**_ADDED_FIELDS, **data}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown protocol fields {sorted(unknown)}")
        kwargs = {k: (tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v)
                  for k, v in data.items()}
        return cls(**kwargs)

    def replace(self, **changes: Any) -> DFTProtocol:
        return dataclasses.replace(self, **changes)

    # -- per-material choices --------------------------------------------------------------------
    def kpts_scf(self, cell: np.ndarray) -> tuple[int, int, int]:
        return mp_kpts(cell, self.kpt_density_scf)

    def kpts_dos(self, cell: np.ndarray) -> tuple[int, int, int]:
        return mp_kpts(cell, self.kpt_density_dos, self.kpt_max_dos)

    def spin_polarized(self, symbols: Sequence[str]) -> bool:
        """Spin-polarise only cells with a 3d magnetic element (cost: about 2x; others are PBE-non-magnetic)."""
        return any(s in self.magnetic_elements for s in symbols)

    def magmoms(self, symbols: Sequence[str]) -> list[float] | None:
        """MP's initial moments (ferromagnetic start) for a spin-polarised cell, else None."""
        if not self.spin_polarized(symbols):
            return None
        table = dict(self.initial_magmoms)
        return [float(table.get(s, self.default_magmom)) for s in symbols]

    def uses_hubbard(self, symbols: Sequence[str]) -> bool:
        """MP's rule: U on the listed metals when the most electronegative element is O or F."""
        elements = sorted(set(symbols), key=_electronegativity)
        u = dict(self.hubbard_u)
        return elements[-1] in self.hubbard_anions and any(s in u for s in elements)

    def setups(self, symbols: Sequence[str]) -> dict[str, str]:
        """GPAW `setups` argument: {'Co': ':d,3.32', ...} for +U cells, {} otherwise."""
        if not self.uses_hubbard(symbols):
            return {}
        u = dict(self.hubbard_u)
        return {s: f":d,{u[s]}" for s in sorted(set(symbols)) if s in u}

    def theory(self, symbols: Sequence[str] | None = None) -> str:
        """Level-of-theory tag for records, e.g. 'PBE, GPAW 22.8 PW 500 eV' (+U / spin noted)."""
        xc = self.xc
        extra = []
        if symbols is not None and self.uses_hubbard(symbols):
            xc += "+U (MP values)"
        if symbols is not None and self.spin_polarized(symbols):
            extra.append("spin-polarised")
        tag = f"{xc}, GPAW 22.8 PW {self.ecut_ev:g} eV"
        return tag + (f" ({', '.join(extra)})" if extra else "")


# Fields added after results had been stored, with the value those older results ran with: a stored protocol
# without the field reads as what it was, whatever the default is now.
_ADDED_FIELDS: dict[str, Any] = {"dos_method": "gaussian"}


def _electronegativity(symbol: str) -> float:
    """Pauling X from pymatgen; noble gases (no value) sort lowest, so they are never 'the anion'."""
    import warnings

    from pymatgen.core import Element

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = float(Element(symbol).X)
    return x if math.isfinite(x) else -1.0


def json_safe(obj: Any) -> Any:
    """Tuples -> lists recursively, numpy scalars -> Python, so json.dumps works."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


PROTOCOL = DFTProtocol()
# Cheap settings for tests only: same physics switches, coarse basis and meshes.
LOW_PROTOCOL = DFTProtocol(ecut_ev=200.0, kpt_density_scf=1.5, kpt_density_dos=2.5, kpt_max_dos=6,
                           timeout_s=900.0)
