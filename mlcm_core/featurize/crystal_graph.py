"""Periodic crystal graphs with PotNet's infinite-sum interatomic potential features.

A pymatgen ``Structure`` becomes a ``torch_geometric.data.Data`` graph:

* nodes: one per site; ``x`` = atomic number Z (long, an embedding index), optionally ``x_props`` (a few
  scaled elemental properties) and ``node_potentials`` (the three lattice sums of each atom against every
  atom of the infinite crystal);
* edges: from the periodic neighbour list within ``cutoff`` (the ``max_neighbors`` nearest of each atom,
  ties kept, then symmetrised), ``edge_attr`` = Gaussian radial basis of the distance;
* ``edge_potentials`` (E, 3): for the edge between atoms i and j, the three potentials summed over **all
  lattice translations** between the two atoms (PotNet, Lin et al., "Efficient Approximations of Complete
  Interatomic Potentials for Crystal Property Prediction", ICML 2023, eq. 3 and section 3.2):

      Coulomb  C(v) = Σ'_n 1/|v+n|          (conditionally convergent: analytically continued, see below)
      London   L(v) = Σ'_n 1/|v+n|^6
      Pauli    P(v) = Σ'_n exp(-α |v+n|)

  with v = r_j - r_i, n over the lattice and Σ' leaving out the term with v+n = 0 (i = j, n = 0).

How the sums are computed (``periodic_potentials``): Coulomb and London are Epstein zeta sums
Z(v; p) = Σ'_n |v+n|^{-2p} with p = 1/2 and p = 3, evaluated by Crandall's splitting of the Mellin integral
Γ(p) r^{-2p} = ∫_0^∞ t^{p-1} e^{-r² t} dt at t = η² and Poisson summation of the small-t half (R. E. Crandall,
"Fast evaluation of Epstein zeta functions", 1998; this is the formula PotNet's ``algorithm.zeta`` implements
with incomplete Bessel functions, PotNet eq. 6 / appendix C):

    Z(v; p) = 1/Γ(p) · [ Σ'_n Γ(p, η²|v+n|²) |v+n|^{-2p}
                         + π^{3/2}/V · Σ_{G≠0} (|G|/2)^{2p-3} Γ(3/2-p, |G|²/4η²) cos(G·v)
                         + π^{3/2}/V · η^{2p-3}/(p-3/2)
                         - [v = 0] · η^{2p}/p ]

(V the cell volume, G the reciprocal lattice vectors, 2π included). For p = 1/2 this is exactly the Ewald
pair potential (P. P. Ewald, Ann. Phys. 1921):

    C(v) = Σ'_n erfc(η|v+n|)/|v+n| + 4π/V Σ_{G≠0} e^{-G²/4η²}/G² cos(G·v) - π/(V η²) - [v = 0] 2η/√π,

i.e. the analytic continuation of the divergent sum equals the potential of a unit charge lattice plus a
uniform neutralising background (its average over the cell is zero). For any neutral set of charges q_i the
Coulomb energy ½ Σ_ij q_i q_j C(r_j - r_i) is the usual Ewald energy (the background terms cancel). For
p = 3 the formula is an exact rearrangement of the absolutely convergent sum, with Γ(3, y) = 2e^{-y}(1+y+y²/2)
and Γ(-3/2, x) written in closed form with erfc. The Pauli sum converges exponentially and is summed directly
out to |v+n| = |v|max + R, R chosen so that the tail 4πR²e^{-αR}/(Vα) ≤ eps.

Truncation is set by ``eps``: real space to |v+n| ≤ s/η and reciprocal space to |G| ≤ 2ηs with
s = sqrt(ln(1/eps)), over lattice points enumerated from the interplanar spacings (so skewed or elongated
cells are handled correctly). The translation sets are built once per structure and shared by all pairs
and all three potentials; the sums are vectorised over pairs with BLAS (d² = |v|² + 2v·n + |n|²).

Conventions (versus PotNet's reference code, see docs/crystal_encoder.md): units are Å (C in 1/Å, L in
1/Å⁶, P dimensionless, α in 1/Å); the zero-distance term is left out of P as of C and L (PotNet's ``exp``
keeps it, adding 1 for i = j); PotNet's ``exp`` rescales α by the square root, not the first power, of the
length normalisation, so its effective decay is α / V^{1/6} (Å⁻¹) instead of α.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.special import erfc
from torch_geometric.data import Batch, Data

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pymatgen.core import Structure

__all__ = [
    "ELEMENT_PROPERTY_NAMES",
    "POTENTIAL_NAMES",
    "CrystalGraphConfig",
    "collate_graphs",
    "element_property_table",
    "gaussian_rbf",
    "periodic_potentials",
    "structure_to_graph",
]

POTENTIAL_NAMES = ("coulomb", "london", "pauli")
ELEMENT_PROPERTY_NAMES = ("electronegativity", "atomic_radius", "row", "group", "atomic_mass", "is_missing_X")
_SQRT_PI = math.sqrt(math.pi)


@dataclass(frozen=True)
class CrystalGraphConfig:
    """How a structure becomes a graph.

    Attributes:
        cutoff: neighbour-list radius, Å (also the upper end of the radial basis).
        max_neighbors: keep each atom's k nearest neighbours within the cutoff (ties within ``tie_tol`` kept),
            then add the reverse of every kept edge so the graph stays symmetric; None keeps all.
        min_neighbors: if some atom has fewer neighbours than this, the cutoff grows ×1.5 (at most 4 times).
        num_rbf: number of Gaussian radial basis functions on [0, cutoff].
        pauli_alpha: α of the Pauli term exp(-α r), 1/Å.
        eps: target truncation error of the lattice sums (relative to their natural scale).
        element_properties: also store ``x_props`` (len(ELEMENT_PROPERTY_NAMES) scaled properties per atom).
        node_potentials: also store ``node_potentials`` (N, 3): Σ_j over all atoms of the cell of the pair
            lattice sums = each atom's sum over every other atom of the infinite crystal (cell-independent).
        tie_tol: distance tolerance, Å, for ties at the k-th neighbour.
    """

    cutoff: float = 5.0
    max_neighbors: int | None = 12
    min_neighbors: int = 1
    num_rbf: int = 32
    pauli_alpha: float = 3.0
    eps: float = 1e-10
    element_properties: bool = True
    node_potentials: bool = True
    tie_tol: float = 1e-4


# ----------------------------------------------------------------------------------------------------------
# lattice sums


def _lattice_points(matrix: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Integer combinations n (K,3) and vectors n @ matrix (K,3) with |n @ matrix| <= radius, zero included."""
    volume = abs(np.linalg.det(matrix))
    cross = np.cross(matrix[[1, 2, 0]], matrix[[2, 0, 1]])  # row k ⟂ the plane of the other two rows
    spacing = volume / np.linalg.norm(cross, axis=1)  # interplanar spacing along each axis
    nmax = np.ceil(radius / spacing).astype(int)
    axes = [np.arange(-m, m + 1) for m in nmax]
    ints = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    vecs = ints @ matrix
    keep = np.einsum("ij,ij->i", vecs, vecs) <= radius * radius
    return ints[keep], vecs[keep]


def _gamma_m32(x: np.ndarray) -> np.ndarray:
    """Upper incomplete gamma Γ(-3/2, x), x > 0, from Γ(a+1,x) = aΓ(a,x) + x^a e^{-x} and Γ(1/2,x) = √π erfc(√x)."""
    sx = np.sqrt(x)
    ex = np.exp(-x)
    return (2.0 / 3.0) * ex / (x * sx) - (4.0 / 3.0) * ex / sx + (4.0 / 3.0) * _SQRT_PI * erfc(sx)


def periodic_potentials(
    lattice: np.ndarray,
    vectors: np.ndarray,
    *,
    pauli_alpha: float = 3.0,
    eps: float = 1e-10,
    eta: float | None = None,
) -> np.ndarray:
    """Coulomb, London and Pauli lattice sums for difference vectors v (see the module docstring).

    Args:
        lattice: (3, 3) lattice vectors as rows, Å.
        vectors: (M, 3) Cartesian difference vectors r_j - r_i, Å (any periodic image: they are wrapped).
        pauli_alpha: α of exp(-α r), 1/Å.
        eps: truncation error target.
        eta: Ewald splitting parameter, 1/Å (default 1.25·√π / V^{1/3}); the result does not depend on it.

    Returns:
        (M, 3) float64: [C(v) in 1/Å, L(v) in 1/Å⁶, P(v)], each summed over all lattice translations, without
        the zero-distance term.
    """
    lattice = np.asarray(lattice, dtype=np.float64)
    vectors = np.asarray(vectors, dtype=np.float64).reshape(-1, 3)
    out = np.zeros((len(vectors), 3))
    if len(vectors) == 0:
        return out
    volume = abs(np.linalg.det(lattice))
    if eta is None:
        eta = 1.25 * _SQRT_PI / volume ** (1.0 / 3.0)
    s = math.sqrt(math.log(1.0 / eps))

    frac = vectors @ np.linalg.inv(lattice)
    frac -= np.round(frac)
    v = frac @ lattice
    vmax = float(np.sqrt(np.einsum("ij,ij->i", v, v).max()))
    is_self = np.all(np.abs(frac) < 1e-9, axis=1)

    # real space: one translation set for the Ewald short-range parts and the Pauli direct sum; the Pauli
    # radius R bounds the tail ≈ 4π R² e^{-αR} / (V α) by eps
    r_pauli = math.log(1.0 / eps) / pauli_alpha
    for _ in range(3):
        growth = 4.0 * math.pi * (r_pauli + vmax) ** 2 / (volume * pauli_alpha)
        r_pauli = (math.log(1.0 / eps) + math.log(max(1.0, growth))) / pauli_alpha
    r_real = max(s / eta, r_pauli) + vmax
    _, trans = _lattice_points(lattice, r_real)
    tt = np.einsum("ij,ij->i", trans, trans)

    # reciprocal space: half of the G ≠ 0 set (cos(G·v) is even in G), weights doubled
    recip = 2.0 * np.pi * np.linalg.inv(lattice).T
    ints, gvec = _lattice_points(recip, 2.0 * eta * s)
    first = np.where(ints[:, 0] != 0, ints[:, 0], np.where(ints[:, 1] != 0, ints[:, 1], ints[:, 2]))
    gvec = gvec[first > 0]
    g2 = np.einsum("ij,ij->i", gvec, gvec)
    x = g2 / (4.0 * eta * eta)
    w_coul = 2.0 * (4.0 * np.pi / volume) * np.exp(-x) / g2
    w_lond = 2.0 * (np.pi**1.5 / (2.0 * volume)) * (np.sqrt(g2) / 2.0) ** 3 * _gamma_m32(x)

    chunk = max(1, 2_000_000 // max(len(trans), 1))
    for start in range(0, len(v), chunk):
        vc = v[start : start + chunk]
        d2 = np.einsum("ij,ij->i", vc, vc)[:, None] + 2.0 * (vc @ trans.T) + tt[None, :]
        zero = d2 < 1e-12
        d2 = np.where(zero, 1.0, np.maximum(d2, 0.0))
        d = np.sqrt(d2)
        y = eta * eta * d2
        coul = np.where(zero, 0.0, erfc(eta * d) / d).sum(axis=1)
        lond = np.where(zero, 0.0, np.exp(-y) * (1.0 + y + 0.5 * y * y) / (d2 * d2 * d2)).sum(axis=1)
        paul = np.where(zero, 0.0, np.exp(-pauli_alpha * d)).sum(axis=1)
        if len(gvec):
            phase = np.cos(vc @ gvec.T)
            coul += phase @ w_coul
            lond += phase @ w_lond
        out[start : start + chunk, 0] = coul
        out[start : start + chunk, 1] = lond
        out[start : start + chunk, 2] = paul

    out[:, 0] += -np.pi / (volume * eta * eta) - np.where(is_self, 2.0 * eta / _SQRT_PI, 0.0)
    out[:, 1] += np.pi**1.5 * eta**3 / (3.0 * volume) - np.where(is_self, eta**6 / 6.0, 0.0)
    return out


# ----------------------------------------------------------------------------------------------------------
# atoms


@lru_cache(maxsize=1)
def element_property_table() -> np.ndarray:
    """(119, 6) float32 table indexed by Z of ELEMENT_PROPERTY_NAMES, scaled to about [0, 1]; missing → 0."""
    from pymatgen.core import Element

    table = np.zeros((119, len(ELEMENT_PROPERTY_NAMES)), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for z in range(1, 119):
            el = Element.from_Z(z)
            x = float(el.X)
            radius = el.atomic_radius
            table[z] = [
                x / 4.0 if math.isfinite(x) else 0.0,
                float(radius) / 2.5 if radius is not None else 0.0,
                el.row / 7.0,
                (el.group or 0) / 18.0,
                float(el.atomic_mass) / 250.0,
                0.0 if math.isfinite(x) else 1.0,
            ]
    return table


def _atomic_numbers(structure: Structure) -> np.ndarray:
    """Z of each site; for a disordered site, the species with the largest occupancy."""
    zs = []
    for site in structure:
        comp = site.species
        el = max(comp.items(), key=lambda kv: kv[1])[0] if len(comp) > 1 else next(iter(comp))
        zs.append(el.Z)
    return np.asarray(zs, dtype=np.int64)


def gaussian_rbf(dist: np.ndarray, num: int, vmax: float) -> np.ndarray:
    """Gaussian radial basis exp(-((d - μ_k)/Δ)²), μ_k evenly on [0, vmax], Δ their spacing; (E, num) float32."""
    centers = np.linspace(0.0, vmax, num)
    width = centers[1] - centers[0] if num > 1 else vmax
    return np.exp(-(((dist[:, None] - centers[None, :]) / width) ** 2)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# edges


def _neighbor_edges(structure: Structure, cfg: CrystalGraphConfig):
    """(center i, neighbour j, image n, distance) of the kept, symmetric edge set."""
    n_atoms = len(structure)
    cutoff = cfg.cutoff
    for attempt in range(5):
        centers, points, images, dists = structure.get_neighbor_list(cutoff)
        counts = np.bincount(centers, minlength=n_atoms)
        if counts.min() >= cfg.min_neighbors or attempt == 4:
            break
        cutoff *= 1.5
    if len(centers) == 0:
        raise ValueError(f"no neighbours within {cutoff:.2f} Å for {structure.composition.reduced_formula}")
    images = np.rint(images).astype(np.int64)
    centers = centers.astype(np.int64)
    points = points.astype(np.int64)
    if cfg.max_neighbors is None:
        return centers, points, images, dists

    order = np.lexsort((dists, centers))
    centers, points, images, dists = centers[order], points[order], images[order], dists[order]
    counts = np.bincount(centers, minlength=n_atoms)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    kth = np.full(n_atoms, np.inf)
    has = counts > 0
    kth[has] = dists[starts[has] + np.minimum(cfg.max_neighbors, counts[has]) - 1]
    keep = dists <= kth[centers] + cfg.tie_tol

    # symmetrise: keep (i, j, n) if it or its reverse (j, i, -n) was kept
    span = int(np.abs(images).max()) if len(images) else 0
    base = 2 * span + 1

    def key(a, b, img):
        shifted = img + span
        return ((a * n_atoms + b) * base + shifted[:, 0]) * base * base + shifted[:, 1] * base + shifted[:, 2]

    fwd = key(centers, points, images)
    rev = key(points, centers, -images)
    srt = np.argsort(fwd)
    pos = srt[np.searchsorted(fwd, rev, sorter=srt)]
    keep = keep | keep[pos]
    return centers[keep], points[keep], images[keep], dists[keep]


def structure_to_graph(structure: Structure, config: CrystalGraphConfig | None = None) -> Data:
    """Featurize one structure.

    Returns a ``Data`` with
        x (N,) long: atomic numbers;  x_props (N, 6) float32 (if config.element_properties);
        node_potentials (N, 3) float32 (if config.node_potentials): Σ_j over the cell's atoms of
            [C, L, P](r_j - r_i), i.e. each atom against every other atom of the infinite crystal;
        edge_index (2, E) long: row 0 = neighbour j (source), row 1 = centre i (target), symmetric;
        edge_attr (E, num_rbf) float32: Gaussian RBF of the distance;
        edge_dist (E,) float32, Å;
        edge_potentials (E, 3) float32: [C (1/Å), L (1/Å⁶), P] lattice sums between atoms i and j.
    """
    cfg = config or CrystalGraphConfig()
    n_atoms = len(structure)
    z = _atomic_numbers(structure)
    lattice = structure.lattice.matrix
    cart = structure.cart_coords
    centers, points, _images, dists = _neighbor_edges(structure, cfg)

    # unique unordered pairs (a <= b) whose lattice sums are needed
    if cfg.node_potentials:
        a, b = np.triu_indices(n_atoms)
    else:
        lo, hi = np.minimum(centers, points), np.maximum(centers, points)
        uniq = np.unique(lo * n_atoms + hi)
        a, b = uniq // n_atoms, uniq % n_atoms
    pair_pot = periodic_potentials(lattice, cart[b] - cart[a], pauli_alpha=cfg.pauli_alpha, eps=cfg.eps)
    pair_id = np.full((n_atoms, n_atoms), -1, dtype=np.int64)
    pair_id[a, b] = np.arange(len(a))
    pair_id[b, a] = np.arange(len(a))
    edge_pot = pair_pot[pair_id[centers, points]]

    data = Data(
        x=torch.from_numpy(z),
        edge_index=torch.from_numpy(np.stack([points, centers])),
        edge_attr=torch.from_numpy(gaussian_rbf(dists, cfg.num_rbf, cfg.cutoff)),
        edge_dist=torch.from_numpy(dists.astype(np.float32)),
        edge_potentials=torch.from_numpy(edge_pot.astype(np.float32)),
        num_nodes=n_atoms,
    )
    if cfg.element_properties:
        data.x_props = torch.from_numpy(element_property_table()[z])
    if cfg.node_potentials:
        node = np.zeros((n_atoms, 3))
        np.add.at(node, a, pair_pot)
        off = a != b
        np.add.at(node, b[off], pair_pot[off])
        data.node_potentials = torch.from_numpy(node.astype(np.float32))
    return data


def collate_graphs(graphs: Sequence[Data]) -> Batch:
    """Batch graphs with torch_geometric (edge_index offset per graph, ``batch`` vector added)."""
    return Batch.from_data_list(list(graphs))
