#!/usr/bin/python3
"""GPAW worker: one material, SCF then a non-self-consistent DOS run, written as one .npz.

The stored charge density is the VASP-CHGCAR-like valence density (``valence_density``); with the job key
``"stages": "scf"`` only the SCF and the densities are computed (the density backfill of earlier results).

Runs under Debian's /usr/bin/python3 (GPAW 22.8, ASE 3.22), never under the project interpreter, so it
imports only the standard library, numpy, ase and gpaw (the last two inside `run`, so the project can
import the pure helpers below for tests). Usage: `/usr/bin/python3 worker.py JOB.json` or `... -` (stdin).

Job keys: id, cell [3x3 Å], symbols, frac, protocol (DFTProtocol.to_dict()), setups ({el: ':d,U'}),
magmoms (list or null), out (npz path), log (GPAW text log path or null), parent_pid (optional: the
worker exits when that process is gone).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import sys
import tempfile
import time
from typing import Any

import numpy as np

HARTREE_EV = 27.211386024367243
BOHR_A = 0.52917721067


# -- pure helpers (no GPAW) ----------------------------------------------------------------------
def mp_kpts(cell: np.ndarray, density: float, kmax: int | None = None) -> list[int]:
    """Same rule as protocol.mp_kpts (ASE kptdensity2monkhorstpack, even=False), capped at kmax."""
    recip = np.linalg.inv(np.asarray(cell, dtype=float)).T
    sizes = [max(1, math.ceil(2 * math.pi * float(np.linalg.norm(b)) * density)) for b in recip]
    return [min(k, kmax) for k in sizes] if kmax else sizes


def fourier_resample(grid: np.ndarray, n: int) -> np.ndarray:
    """Periodic Fourier resampling of a 3-D grid to n³, identical to scipy.signal.resample per axis.

    Keeps the mean (hence the integral) exactly; the project's conventions.resample_density does the same.
    """
    out = np.asarray(grid, dtype=float)
    for axis in range(3):
        nx = out.shape[axis]
        if nx == n:
            continue
        spec = np.fft.rfft(out, axis=axis)
        m = min(n, nx)
        spec = np.take(spec, np.arange(m // 2 + 1), axis=axis)
        if m % 2 == 0:
            idx = [slice(None)] * 3
            idx[axis] = m // 2
            spec[tuple(idx)] *= 2.0 if n < nx else 0.5
        out = np.fft.irfft(spec * (n / nx), n=n, axis=axis)
    return out


def fermi_level(eps_skn: np.ndarray, w_k: np.ndarray, n_electrons: float, width: float) -> float:
    """Fermi-Dirac chemical potential (eV) by bisection; robust where GPAW's own search can overflow."""
    occ = 2.0 if eps_skn.shape[0] == 1 else 1.0

    def count(mu: float) -> float:
        x = np.clip((eps_skn - mu) / width, -200.0, 200.0)
        return float(occ * np.einsum("k,skn->", w_k, 1.0 / (np.exp(x) + 1.0)))

    lo, hi = float(eps_skn.min()) - 1.0, float(eps_skn.max()) + 1.0
    if count(hi) < n_electrons - 1e-6:
        raise RuntimeError("not enough bands to hold the valence electrons")
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if count(mid) < n_electrons else (lo, mid)
    return 0.5 * (lo + hi)


def band_edges(eps_skn: np.ndarray, efermi: float) -> tuple[float, float, float]:
    """(gap, VBM, CBM) from eigenvalues: metal (gap 0) if any band has states on both sides of E_F.

    The band-index test avoids reading a spurious gap between k-points of a coarse mesh in a metal.
    """
    crossing = (eps_skn.min(axis=1) < efermi) & (eps_skn.max(axis=1) > efermi)
    below, above = eps_skn[eps_skn <= efermi], eps_skn[eps_skn > efermi]
    vbm = float(below.max()) if below.size else efermi
    cbm = float(above.min()) if above.size else efermi
    if crossing.any() or not below.size or not above.size:
        return 0.0, vbm, cbm
    return max(cbm - vbm, 0.0), vbm, cbm


def gaussian_dos(eps_skn: np.ndarray, w_k: np.ndarray, energies: np.ndarray, sigma: float) -> np.ndarray:
    """(nspins, npts) DOS in states/eV per cell; a non-spin run counts each band twice."""
    occ = 2.0 if eps_skn.shape[0] == 1 else 1.0
    out = np.zeros((eps_skn.shape[0], len(energies)))
    norm = occ / (sigma * math.sqrt(2 * math.pi))
    for s in range(eps_skn.shape[0]):
        for k, w in enumerate(w_k):
            x = (energies[:, None] - eps_skn[s, k][None, :]) / sigma
            out[s] += w * norm * np.exp(-0.5 * x * x).sum(axis=1)
    return out


def eigensolver_arg(spec: str | None) -> Any:
    """GPAW ``eigensolver`` argument from the protocol's string: None (GPAW's default), a name ('dav',
    'rmm-diis', 'cg') or 'name:key=value,...' with numeric values, e.g. 'dav:niter=1' -> {'name': 'dav', 'niter': 1}.
    """
    if not spec:
        return None
    name, _, rest = spec.partition(":")
    out: dict[str, Any] = {"name": name}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        out[key.strip()] = float(value) if any(c in value for c in ".eE") else int(value)
    return out


# -- linear tetrahedron DOS (Bloechl, Jepsen, Andersen 1994, without the correction) ------------------
_PATHS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def tetrahedra(size: Any, rcell: np.ndarray) -> np.ndarray:
    """(6 * prod(size), 4) flat C-order indices of the k-grid points at the corners of each tetrahedron.

    Every sub-cell of the periodic grid is cut into the 6 tetrahedra around its shortest main diagonal
    (``rcell``: reciprocal vectors as rows, any units); the corners of tetrahedron (a, b, c) walk
    0 -> e_a -> e_a + e_b -> diagonal.
    """
    size = np.asarray(size, dtype=int)
    sub = np.asarray(rcell, dtype=float) / size[:, None]
    best, start, signs = None, None, None
    for corner in ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)):
        c = np.array(corner)
        s = 1 - 2 * c
        length = float(np.linalg.norm(s @ sub))
        if best is None or length < best - 1e-12:
            best, start, signs = length, c, s
    eye = np.eye(3, dtype=int)
    offsets = []
    for a, b, _ in _PATHS:
        path = [np.zeros(3, int), eye[a], eye[a] + eye[b], np.ones(3, int)]
        offsets.append([start + signs * v for v in path])
    off = np.array(offsets)  # (6, 4, 3)
    ijk = np.stack(np.unravel_index(np.arange(int(size.prod())), tuple(size)), axis=1)  # (nk, 3)
    corners = (ijk[:, None, None, :] + off[None]) % size  # (nk, 6, 4, 3)
    return np.ravel_multi_index(tuple(np.moveaxis(corners, -1, 0)), tuple(size)).reshape(-1, 4)


def _count_in_tetrahedra(e: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Fraction of each tetrahedron's volume with linear energy below x; e: (n, 4) sorted, distinct corners."""
    e1, e2, e3, e4 = (np.ascontiguousarray(e[:, i]) for i in range(4))
    d1, d2, d4 = x - e1, x - e2, e4 - x
    e21, e31, e41, e32, e42, e43 = e2 - e1, e3 - e1, e4 - e1, e3 - e2, e4 - e2, e4 - e3
    with np.errstate(all="ignore"):
        r1 = d1**3 / (e21 * e31 * e41)
        r2 = (e21**2 + 3 * e21 * d2 + 3 * d2**2 - (e31 + e42) / (e32 * e42) * d2**3) / (e31 * e41)
        r3 = 1.0 - d4**3 / (e41 * e42 * e43)
    out = np.where(x < e2, r1, np.where(x < e3, r2, r3))
    out[x <= e1] = 0.0
    out[x >= e4] = 1.0
    return out


def _corner_energies(eps_kn: np.ndarray, tetra_ibz: np.ndarray) -> np.ndarray:
    """(ntetra * nbands, 4) sorted corner energies, made strictly increasing by 1e-9 eV (degenerate corners)."""
    c = np.sort(eps_kn[tetra_ibz].transpose(0, 2, 1).reshape(-1, 4), axis=1)
    return c + np.array([0.0, 1e-9, 2e-9, 3e-9])


def tetrahedron_count(eps_skn: np.ndarray, tetra_ibz: np.ndarray, energy: float) -> float:
    """Electrons per cell below ``energy`` (linear tetrahedra on the full grid; tetra_ibz: IBZ index per corner)."""
    return _tetra_counter(eps_skn, tetra_ibz)(energy)


def _tetra_counter(eps_skn: np.ndarray, tetra_ibz: np.ndarray) -> Any:
    occ = 2.0 if eps_skn.shape[0] == 1 else 1.0
    corners = np.concatenate([_corner_energies(eps_skn[s], tetra_ibz) for s in range(eps_skn.shape[0])])
    e4_sorted, e1_sorted = np.sort(corners[:, 3]), np.sort(corners[:, 0])
    scale = occ / len(tetra_ibz)

    def count(energy: float) -> float:
        below = int(np.searchsorted(e4_sorted, energy, side="right"))
        if int(np.searchsorted(e1_sorted, energy, side="left")) == below:  # no tetrahedron straddles
            return scale * below
        part = corners[(corners[:, 0] < energy) & (corners[:, 3] > energy)]
        return scale * (below + float(_count_in_tetrahedra(part, np.full(len(part), energy)).sum()))

    return count


def tetrahedron_fermi_level(eps_skn: np.ndarray, tetra_ibz: np.ndarray, n_electrons: float) -> float:
    """Zero-temperature Fermi level (eV) of the tetrahedron-interpolated bands, by bisection.

    In a gap every energy there counts the electrons; the middle of the gap is returned.
    """
    count = _tetra_counter(eps_skn, tetra_ibz)
    lo, hi = float(eps_skn.min()) - 1.0, float(eps_skn.max()) + 1.0
    if count(hi) < n_electrons - 1e-6:
        raise RuntimeError("not enough bands to hold the valence electrons")
    a, b = lo, hi  # lowest energy holding the electrons
    for _ in range(60):
        mid = 0.5 * (a + b)
        a, b = (mid, b) if count(mid) < n_electrons - 1e-9 else (a, mid)
    low = b
    a, b = lo, hi  # highest energy not exceeding them
    for _ in range(60):
        mid = 0.5 * (a + b)
        a, b = (mid, b) if count(mid) <= n_electrons + 1e-9 else (a, mid)
    return 0.5 * (low + a)


def tetrahedron_dos(eps_skn: np.ndarray, tetra_ibz: np.ndarray, energies: np.ndarray, sigma: float,
                    step: float = 0.02) -> np.ndarray:
    """(nspins, npts) DOS in states/eV per cell: linear-tetrahedron DOS convolved with a Gaussian of std ``sigma``.

    The tetrahedron method's integrated DOS N(E) is exact for the linearly interpolated bands; it is taken on
    a ``step`` grid (exact states per bin), each bin's states spread evenly over the bin and broadened with
    the Gaussian (a box convolved with a Gaussian: differences of the normal CDF). Comparable with
    ``gaussian_dos`` on a fine mesh; step 0.02 eV differs from 0.002 eV by < 1e-4 of the peak DOS.
    """
    occ = 2.0 if eps_skn.shape[0] == 1 else 1.0
    lo, hi = float(energies.min()) - 8 * sigma, float(energies.max()) + 8 * sigma
    grid = lo + step * np.arange(int(math.ceil((hi - lo) / step)) + 1)
    try:
        from scipy.special import erf  # GPAW's own dependency
    except ImportError:  # pragma: no cover
        erf = np.vectorize(math.erf, otypes=[float])
    cdf = 0.5 * (1.0 + erf((energies[:, None] - grid[None, :]) / (sigma * math.sqrt(2.0))))  # (npts, ngrid)
    box = (cdf[:, :-1] - cdf[:, 1:]) / step  # a unit mass spread over bin j, broadened, at each energy
    out = np.zeros((eps_skn.shape[0], len(energies)))
    for s in range(eps_skn.shape[0]):
        c = _corner_energies(eps_skn[s], tetra_ibz)
        c = c[(c[:, 3] > lo) & (c[:, 0] < hi)]
        n_grid = np.searchsorted(np.sort(c[:, 3]), grid, side="right").astype(float)  # wholly below
        i1 = np.searchsorted(grid, c[:, 0], side="right")
        i4 = np.searchsorted(grid, c[:, 3], side="left")
        inside = i4 > i1
        c, i1, i4 = c[inside], i1[inside], i4[inside]
        counts = i4 - i1
        chunk = max(1, int(1e6 // max(1.0, float(counts.mean()) if len(counts) else 1.0)))
        for a in range(0, len(c), chunk):
            cc, ii, nn = c[a:a + chunk], i1[a:a + chunk], counts[a:a + chunk]
            rows = np.repeat(np.arange(len(cc)), nn)
            cols = np.repeat(ii - np.cumsum(nn) + nn, nn) + np.arange(int(nn.sum()))
            n_grid += np.bincount(cols, weights=_count_in_tetrahedra(cc[rows], grid[cols]), minlength=len(grid))
        out[s] = occ * box @ (np.diff(n_grid) / len(tetra_ibz))
    return out


def k_grid_map(bzk_kc: np.ndarray, bz2ibz: np.ndarray, size: Any) -> np.ndarray:
    """IBZ index of every point of the full Γ-centred grid, in C order (from GPAW's BZ points and map)."""
    size = np.asarray(size, dtype=int)
    idx = np.rint(np.asarray(bzk_kc) * size).astype(int) % size
    flat = np.ravel_multi_index(tuple(idx.T), tuple(size))
    out = np.full(int(size.prod()), -1, dtype=int)
    out[flat] = np.asarray(bz2ibz, dtype=int)
    if (out < 0).any():
        raise RuntimeError("the DOS run's k-points are not the full Γ-centred grid")
    return out


def estimate_nbands(eps_skn: np.ndarray, efermi: float, n_valence: float, volume_a3: float,
                    margin_ev: float) -> int:
    """Bands per spin needed to reach E_F + margin at every k-point (free-electron count + 20 % + 4).

    Bands wholly 25 eV below E_F (semicore) are counted as such and kept out of the free-electron gas
    (20 eV put Ca 3p there and came out one band short; 25 eV was never short on 166 cells, docs/dft.md).
    """
    deep = int(np.sum(eps_skn[0].max(axis=0) < efermi - 25.0))
    n_rest = max(n_valence - 2 * deep, 1.0)
    vol = volume_a3 / BOHR_A**3
    ef0 = 0.5 * (3 * math.pi**2 * n_rest / vol) ** (2 / 3)  # Ha
    k = math.sqrt(2 * (ef0 + margin_ev / HARTREE_EV))
    states = vol * k**3 / (6 * math.pi**2)
    return deep + math.ceil(1.2 * states) + 4


def more_bands(eps_skn: np.ndarray, target_ev: float, nbands: int) -> int:
    """Next band count when the top band falls short of target: E^(3/2) scaling from the band bottom."""
    bottom = float(eps_skn[:, :, 0].min())
    top = float(eps_skn[:, :, -1].min())
    ratio = ((target_ev - bottom) / max(top - bottom, 1e-3)) ** 1.5
    return math.ceil(nbands * max(ratio, 1.0) * 1.15) + 4


def setup_valence(symbol: str, setup_dir: str) -> float:
    """Valence electrons of the default PBE setup, read from its XML header (no GPAW import needed)."""
    with gzip.open(os.path.join(setup_dir, f"{symbol}.PBE.gz"), "rt") as fh:
        match = re.search(r'<atom [^>]*valence="([0-9.]+)"', fh.read(2000))
    if not match:
        raise ValueError(f"no valence in the {symbol} setup header")
    return float(match.group(1))


def write_npz_atomic(path: str, arrays: dict[str, Any]) -> None:
    """Compressed npz via temp file + os.replace, so a reader never sees a half-written result."""
    # Not mlcm_core.io.atomic_write: this runs as a script under /usr/bin/python3, where mlcm_core is not importable.
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# -- the GPAW run --------------------------------------------------------------------------------
DENSITY_CONVENTION = "valence_plus_compensation"  # npz key "density_convention"; absent = smooth pseudo density


def valence_density(calc: Any) -> np.ndarray:
    """Valence density (e/Å³) that looks like a VASP CHGCAR, on GPAW's fine grid (PW mode).

    A CHGCAR holds VASP's augmented pseudo density: the smooth valence density plus compensation charges,
    peaked at the atoms. GPAW's equivalent: its valence pseudo density without the smooth pseudo-core
    (``nt_sG`` summed over spins minus ``nspins * nct_G``, interpolated to the fine grid) plus the
    electronic compensation charges (``ghat`` with the multipole moments of the PAW corrections, each atom's
    ``Delta0`` — its nucleus and core part — taken out of the L = 0 moment). It integrates to the setups'
    valence electron count; on 6 MP materials it correlates with MP's CHGCAR at r 0.93 raw, 0.975 after
    the encoder's asinh normalisation (the smooth pseudo density: 0.81 / 0.93), see docs/dft.md.
    """
    den = calc.density
    nt_G = den.nt_sG[: den.nspins].sum(axis=0) - den.nspins * den.nct_G
    nt_g = np.array(den.pd2.interpolate(nt_G, den.pd3)[0], dtype=float)  # copy: interpolate reuses a buffer
    q_aL = den.Q.calculate(den.D_asp)
    for a in q_aL.keys():
        q_aL[a][0] -= den.setups[a].Delta0
    comp_q = den.pd3.zeros()
    den.ghat.add(comp_q, q_aL)
    return (nt_g + np.asarray(den.pd3.ifft(comp_q), dtype=float)) / BOHR_A**3


def _eigenvalues(calc: Any, nbands: int) -> tuple[np.ndarray, np.ndarray]:
    nk = len(calc.get_ibz_k_points())
    eps = np.array([[calc.get_eigenvalues(kpt=k, spin=s)[:nbands] for k in range(nk)]
                    for s in range(calc.get_number_of_spins())])
    return eps, np.asarray(calc.get_k_point_weights(), dtype=float)


def run(job: dict[str, Any]) -> dict[str, Any]:
    """SCF, densities, non-SCF DOS with a band-coverage check (stages "scf": no DOS); returns the npz arrays."""
    from ase import Atoms
    from gpaw import GPAW, PW
    from gpaw import __version__ as gpaw_version

    p = job["protocol"]
    t0, c0 = time.time(), time.process_time()
    atoms = Atoms(job["symbols"], scaled_positions=job["frac"], cell=job["cell"], pbc=True)
    spin = job.get("magmoms") is not None
    if spin:
        atoms.set_initial_magnetic_moments(job["magmoms"])
    log = job.get("log") or None
    kscf = mp_kpts(atoms.cell[:], p["kpt_density_scf"])
    kdos = mp_kpts(atoms.cell[:], p["kpt_density_dos"], p["kpt_max_dos"])
    symmetry = {"tolerance": p["symmetry_tolerance"]}
    # GPAW caps its default band count at the setups' bound partial waves: Ca and Ba get 5 bands for 10
    # electrons, no empty band, E_F = inf and a failed run (the seed's failures); Se, I, Sb, Sn, Cs keep
    # too few to be sure occupations are not truncated. Use GPAW's formula uncapped, and add bands until
    # the SCF's highest band stays scf_band_margin_ev above E_F at every k-point.
    n_guess = sum(setup_valence(s, p["setup_dir"]) for s in job["symbols"])
    nbands_scf = math.ceil(0.6 * (n_guess + abs(sum(job.get("magmoms") or [0.0])))) + 4
    for attempt in range(4):  # symmetry fallback + band-count retries
        calc = GPAW(mode=PW(p["ecut_ev"]), xc=p["xc"], kpts={"size": kscf, "gamma": True}, nbands=nbands_scf,
                    occupations={"name": p["occupations"], "width": p["smearing_ev"]},
                    setups=job.get("setups") or "paw", spinpol=spin, maxiter=p["scf_maxiter"], symmetry=symmetry,
                    convergence={"energy": p["scf_energy_tol_ev"], "density": p["scf_density_tol"]},
                    txt=(log + (f".scf{attempt}" if attempt else "")) if log else None)
        atoms.calc = calc
        try:
            energy = float(atoms.get_potential_energy())
        except OverflowError:
            # GPAW 22.8's Fermi-level guess divides by the smallest k-point weight, which its symmetry
            # reduction sets to 0 for a few cells (CsBr mp-571222, Li2CuGe mp-35841): redo without symmetry.
            if symmetry == "off":
                raise
            symmetry = "off"
            continue
        eps_scf, w_scf = _eigenvalues(calc, calc.get_number_of_bands())
        scf_margin = float(eps_scf[:, :, -1].min() - calc.get_fermi_level())
        if scf_margin >= p["scf_band_margin_ev"]:
            break
        nbands_scf = math.ceil(1.5 * nbands_scf) + 4
    assert scf_margin >= p["scf_band_margin_ev"], f"SCF highest band only {scf_margin:+.2f} eV above E_F"
    t_scf, c_scf = time.time() - t0, time.process_time() - c0
    n_valence = float(calc.get_number_of_electrons())
    magmom = float(calc.get_magnetic_moment()) if spin else 0.0
    nt = np.asarray(calc.get_pseudo_density(), dtype=float)  # e/Å³, spins summed, smooth (no PAW compensation)
    volume = float(atoms.get_volume())
    pseudo_integral = float(nt.mean() * volume)
    pseudo_density = fourier_resample(nt, int(p["density_grid"]))
    rho = valence_density(calc)
    density = fourier_resample(rho, int(p["density_grid"]))
    densities = {
        "charge_density": density.astype(np.float32), "density_convention": DENSITY_CONVENTION,
        "density_integral": float(rho.mean() * volume), "density_fine_shape": np.array(rho.shape),
        "pseudo_density": pseudo_density.astype(np.float32), "pseudo_integral": pseudo_integral,
    }
    if job.get("stages", "scf+dos") == "scf":
        return {**densities, "total_energy": energy, "fermi_level_scf": float(calc.get_fermi_level()),
                "magmom": magmom, "spin_polarized": spin, "n_valence": n_valence, "kpts_scf": np.array(kscf),
                "nk_scf_ibz": len(calc.get_ibz_k_points()), "nbands_scf": nbands_scf,
                "symmetry_scf": json.dumps(symmetry), "seconds_scf": t_scf, "seconds": time.time() - t0,
                "protocol": json.dumps(p), "setups": json.dumps(job.get("setups") or {}),
                "symbols": np.array(job["symbols"]), "gpaw_version": gpaw_version, "stages": "scf"}

    nconv0 = estimate_nbands(eps_scf, float(calc.get_fermi_level()), n_valence, volume, p["band_margin_ev"])
    energies_rel = np.linspace(p["dos_emin_ev"], p["dos_emax_ev"], int(p["dos_npoints"]))
    step = _dos_step(calc, p, kdos, symmetry, n_valence, nconv0, log)
    eps, w_k, efermi, gap, vbm, cbm, ref, top = (step[k] for k in ("eps", "w_k", "efermi", "gap", "vbm", "cbm",
                                                                     "ref", "top"))
    gapped, nconv, buffer, retries, t_dos, dcalc = (step[k] for k in ("gapped", "nconv", "buffer", "retries",
                                                                       "seconds", "calc"))
    assert top >= p["band_margin_ev"], f"highest band reaches only E_ref{top:+.2f} eV with {nconv} bands"
    dos_s = step["dos_s"]
    try:
        efermi_gpaw = float(dcalc.get_fermi_level())
    except Exception:  # noqa: BLE001 - GPAW's search can fail where the bisection does not
        efermi_gpaw = float("nan")
    out: dict[str, Any] = {
        "energy_grid": energies_rel, "dos": dos_s.sum(axis=0).astype(np.float32), **densities,
        "total_energy": energy, "fermi_level": efermi, "fermi_level_gpaw": efermi_gpaw,
        "fermi_level_scf": float(calc.get_fermi_level()), "reference_energy": ref,
        "reference": "vbm" if gapped else "efermi", "band_gap": gap if gapped else 0.0, "band_gap_raw": gap,
        "vbm": vbm, "cbm": cbm, "magmom": magmom, "spin_polarized": spin, "n_valence": n_valence,
        "kpts_scf": np.array(kscf), "kpts_dos": np.array(kdos),
        "nk_scf_ibz": len(calc.get_ibz_k_points()), "nk_dos_ibz": len(w_k),
        "nbands_scf": nbands_scf, "scf_band_margin": scf_margin, "symmetry_scf": json.dumps(symmetry),
        "nbands": nconv, "nbands_needed": int(np.sum(eps.min(axis=(0, 1)) < ref + p["band_margin_ev"])) + 1,
        "nbands_total": nconv + buffer, "band_top_min": top, "band_retries": retries,
        "seconds_scf": t_scf, "seconds_dos": t_dos, "seconds": time.time() - t0,
        "cpu_seconds_scf": c_scf, "cpu_seconds_dos": step["cpu_seconds"],
        "protocol": json.dumps(p), "setups": json.dumps(job.get("setups") or {}),
        "symbols": np.array(job["symbols"]), "gpaw_version": gpaw_version,
        "eps_scf": eps_scf, "w_scf": w_scf,  # SCF eigenvalues (eV), for band-count diagnostics
    }
    if spin:
        out["dos_spin"] = dos_s.astype(np.float32)
        out["magmoms_initial"] = np.array(job["magmoms"], dtype=float)
    # cheaper DOS settings measured against this run's own DOS (benchmarks/dos_step_cost.py): same SCF
    if job.get("dos_variants"):  # the eigenvalues and full-grid map, for analysis without another run
        out.update(_mesh_arrays("dos", step, kdos))
    for i, changes in enumerate(job.get("dos_variants") or []):
        pv = {**p, **changes}
        kv = mp_kpts(atoms.cell[:], pv["kpt_density_dos"], pv["kpt_max_dos"])
        out[f"variant{i}_changes"] = json.dumps(changes)
        try:
            v = _dos_step(calc, pv, kv, symmetry, n_valence, nconv0, log, tag=f"v{i}")
        except Exception as exc:  # noqa: BLE001 - a failed variant is a measured outcome, not a failed material
            out[f"variant{i}_error"] = f"{type(exc).__name__}: {exc}"
            continue
        out[f"variant{i}_dos"] = v["dos_s"].sum(axis=0).astype(np.float32)
        out[f"variant{i}_reference_energy"] = v["ref"]
        out[f"variant{i}_gapped"] = v["gapped"]
        out[f"variant{i}_seconds"] = v["seconds"]
        out[f"variant{i}_cpu_seconds"] = v["cpu_seconds"]
        out[f"variant{i}_band_top_min"] = v["top"]
        out[f"variant{i}_nk_ibz"] = len(v["w_k"])
        out.update(_mesh_arrays(f"variant{i}", v, kv))
    return out


def _mesh_arrays(prefix: str, step: dict[str, Any], size: list[int]) -> dict[str, Any]:
    kd = step["calc"].wfs.kd
    return {f"{prefix}_eps": step["eps"], f"{prefix}_w_k": step["w_k"], f"{prefix}_kpts": np.array(size),
            f"{prefix}_grid_ibz": k_grid_map(kd.bzk_kc, kd.bz2ibz_k, size), f"{prefix}_efermi": step["efermi"]}


def _dos_step(calc: Any, p: dict[str, Any], kdos: list[int], symmetry: Any, n_valence: float, nconv: int,
              log: str | None, tag: str = "") -> dict[str, Any]:
    """The fixed-density DOS run on ``kdos``, with more bands until the highest reaches E_ref + band margin."""
    t1, c1 = time.time(), time.process_time()
    retries = 0
    tetra = p.get("dos_method", "gaussian") == "tetrahedron"
    while True:
        buffer = max(4, math.ceil(p.get("dos_band_buffer", 0.1) * nconv))
        solver = {"eigensolver": eigensolver_arg(p["dos_eigensolver"])} if p.get("dos_eigensolver") else {}
        dcalc = calc.fixed_density(nbands=nconv + buffer, kpts={"size": kdos, "gamma": True},
                                   symmetry=symmetry if p["dos_symmetry"] == "irreducible" else "off",
                                   convergence={"bands": nconv, "eigenstates": p["dos_eigenstates_tol"]},
                                   maxiter=p["dos_maxiter"], **solver,
                                   txt=(log + f".dos{tag}{retries}") if log else None)
        eps, w_k = _eigenvalues(dcalc, nconv)
        if tetra:
            kd = dcalc.wfs.kd
            rcell = np.linalg.inv(calc.atoms.cell[:]).T
            tetra_ibz = k_grid_map(kd.bzk_kc, kd.bz2ibz_k, kdos)[tetrahedra(kdos, rcell)]
            efermi = tetrahedron_fermi_level(eps, tetra_ibz, n_valence)
        else:
            efermi = fermi_level(eps, w_k, n_valence, p["smearing_ev"])
        gap, vbm, cbm = band_edges(eps, efermi)
        gapped = gap > p["gap_threshold_ev"]
        ref = vbm if gapped else efermi
        top = float(eps[:, :, -1].min() - ref)
        if top >= p["band_margin_ev"] or retries >= p["band_retries"]:
            break
        nconv = more_bands(eps, ref + p["band_margin_ev"] + 0.5, nconv)
        retries += 1
    # the DOS curve (timed with the step): Gaussian sums on the mesh, or linear tetrahedra + the same Gaussian
    energies = np.linspace(p["dos_emin_ev"], p["dos_emax_ev"], int(p["dos_npoints"])) + ref
    dos_s = (tetrahedron_dos(eps, tetra_ibz, energies, p["dos_sigma_ev"]) if tetra
             else gaussian_dos(eps, w_k, energies, p["dos_sigma_ev"]))
    return {"dos_s": dos_s, "eps": eps, "w_k": w_k, "efermi": efermi, "gap": gap, "vbm": vbm, "cbm": cbm,
            "ref": ref, "top": top, "gapped": gapped, "nconv": nconv, "buffer": buffer, "retries": retries,
            "seconds": time.time() - t1,
            "cpu_seconds": time.process_time() - c1, "calc": dcalc}


def watch_parent(parent_pid: int | None, interval: float = 1.0) -> None:
    """Exit as soon as the process that started this worker is gone.

    That process enforces the per-material timeout and cancellation; after a kill -9 of `mlcm dft run`
    the worker (in its own session) would otherwise run on as an orphan with no timeout at all.
    """
    import threading

    if not parent_pid:
        return

    def loop() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(3)
            time.sleep(interval)

    threading.Thread(target=loop, name="parent-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    if argv[1] == "-":
        job = json.load(sys.stdin)
    else:
        with open(argv[1]) as fh:
            job = json.load(fh)
    watch_parent(job.get("parent_pid"))
    write_npz_atomic(job["out"], run(job))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
