"""Crystal graph featurizer: lattice sums against brute force and known constants, graph symmetries."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from mlcm_core.featurize.crystal_graph import (
    CrystalGraphConfig,
    collate_graphs,
    periodic_potentials,
    structure_to_graph,
)

NACL_MADELUNG = 1.747564594633  # rock salt, per ion, referred to the nearest-neighbour distance
CSCL_MADELUNG = 1.762674773070  # CsCl, per ion, referred to the nearest-neighbour distance
COULOMB_EV_A = 14.399645351950548  # e²/(4πε0) in eV·Å


def rocksalt(a: float = 5.64) -> Structure:
    return Structure(Lattice.cubic(a), ["Na"] * 4 + ["Cl"] * 4,
                     [[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0],
                      [.5, 0, 0], [0, .5, 0], [0, 0, .5], [.5, .5, .5]])


def triclinic() -> Structure:
    lattice = Lattice.from_parameters(4.1, 4.6, 5.3, 78.0, 96.0, 107.0)
    return Structure(lattice, ["Mg", "O", "Si", "O"],
                     [[0.02, 0.11, 0.07], [0.41, 0.37, 0.22], [0.73, 0.66, 0.58], [0.15, 0.82, 0.61]])


def brute_force(lattice: np.ndarray, v: np.ndarray, n: int, alpha: float) -> tuple[float, float]:
    """Direct London (with the ∫ r^-6 tail beyond the largest complete sphere) and Pauli sums."""
    rng = np.arange(-n, n + 1)
    ints = np.stack(np.meshgrid(rng, rng, rng, indexing="ij"), -1).reshape(-1, 3)
    d = np.linalg.norm(ints @ lattice + v, axis=1)
    volume = abs(np.linalg.det(lattice))
    spacing = volume / np.linalg.norm(np.cross(lattice[[1, 2, 0]], lattice[[2, 0, 1]]), axis=1)
    radius = n * spacing.min() - np.linalg.norm(v)  # every point inside this sphere is in the box
    d = d[(d > 1e-12) & (d <= radius)]
    london = (d**-6).sum() + 4 * math.pi / (3 * volume * radius**3)
    return london, np.exp(-alpha * d).sum()


# ---------------------------------------------------------------------------------------------- lattice sums


def test_nacl_madelung_constant_matches_literature_and_evjen_direct_sum():
    a = 5.64
    s = rocksalt(a)
    charges = np.array([1.0] * 4 + [-1.0] * 4)
    i, j = np.meshgrid(range(8), range(8), indexing="ij")
    pot = periodic_potentials(s.lattice.matrix, s.cart_coords[j.ravel()] - s.cart_coords[i.ravel()])[:, 0]
    site_potential = (pot.reshape(8, 8) * charges[None, :]).sum(1)  # φ at each ion from all others
    madelung = -(charges * site_potential).sum() / 8 * (a / 2)
    assert madelung == pytest.approx(NACL_MADELUNG, rel=1e-9)

    # brute force: Evjen's neutral cube of ±1 charges on the simple-cubic sub-lattice of spacing a/2
    k = 24
    r = np.arange(-k, k + 1)
    ii, jj, ll = np.meshgrid(r, r, r, indexing="ij")
    w = np.where(abs(ii) == k, .5, 1) * np.where(abs(jj) == k, .5, 1) * np.where(abs(ll) == k, .5, 1)
    dist = np.sqrt(ii**2 + jj**2 + ll**2)
    nz = dist > 0
    evjen = -(w * (-1.0) ** (ii + jj + ll))[nz] @ (1 / dist[nz])
    assert evjen == pytest.approx(NACL_MADELUNG, rel=1e-6)
    assert madelung == pytest.approx(evjen, rel=1e-6)


def test_primitive_nacl_and_cscl_madelung():
    a = 5.64
    fcc = np.array([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])
    c = periodic_potentials(fcc, np.array([[0, 0, 0], [a / 2, 0, 0]]))[:, 0]
    assert -(c[0] - c[1]) * a / 2 == pytest.approx(NACL_MADELUNG, rel=1e-9)
    c = periodic_potentials(np.eye(3) * a, np.array([[0, 0, 0], [a / 2, a / 2, a / 2]]))[:, 0]
    assert -(c[0] - c[1]) * a * math.sqrt(3) / 2 == pytest.approx(CSCL_MADELUNG, rel=1e-9)


def test_coulomb_energy_matches_pymatgen_ewald_for_neutral_charges():
    from pymatgen.analysis.ewald import EwaldSummation

    s = triclinic()
    charges = np.array([2.0, -2.0, 4.0, -4.0])
    n = len(s)
    i, j = np.meshgrid(range(n), range(n), indexing="ij")
    c = periodic_potentials(s.lattice.matrix, s.cart_coords[j.ravel()] - s.cart_coords[i.ravel()])[:, 0]
    energy = 0.5 * charges @ c.reshape(n, n) @ charges * COULOMB_EV_A
    decorated = s.copy()
    decorated.add_oxidation_state_by_site(charges.tolist())
    assert energy == pytest.approx(EwaldSummation(decorated).total_energy, rel=1e-6)


def test_coulomb_is_independent_of_ewald_splitting_and_zero_mean_over_the_cell():
    s = triclinic()
    lat = s.lattice.matrix
    v = s.cart_coords[1:] - s.cart_coords[0]
    ref = periodic_potentials(lat, v)
    for eta in (0.25, 0.6, 1.2):
        assert np.allclose(periodic_potentials(lat, v, eta=eta), ref, rtol=1e-8, atol=1e-10)
    # analytic continuation = neutralising background: the potential averages to zero over the cell
    g = (np.arange(12) + 0.5) / 12
    frac = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    field = periodic_potentials(lat, frac @ lat)[:, 0]
    assert abs(field.mean()) < 0.02 * np.abs(field).mean()


@pytest.mark.parametrize("alpha", [3.0, 1.2])
def test_london_and_pauli_match_large_direct_sums(alpha):
    s = triclinic()
    lat = s.lattice.matrix
    vs = np.vstack([np.zeros(3), s.cart_coords[1:] - s.cart_coords[0], [[7.3, -2.1, 11.9]]])
    ours = periodic_potentials(lat, vs, pauli_alpha=alpha)
    for v, (_, london, pauli) in zip(vs, ours, strict=True):
        ref_l, ref_p = brute_force(lat, v, 30, alpha)
        assert london == pytest.approx(ref_l, rel=1e-6)
        assert pauli == pytest.approx(ref_p, rel=1e-9, abs=1e-14)


def test_simple_cubic_london_sum_is_the_known_lattice_constant():
    # Σ' |n|^-6 over Z³ = 8.4019239748...
    assert periodic_potentials(np.eye(3), np.zeros((1, 3)))[0, 1] == pytest.approx(8.401923974, rel=1e-9)


def test_supercell_partition_of_pair_sums():
    """Summing over the lattice of a 2x1x1 supercell misses half the translations: the two copies add up."""
    s = triclinic()
    lat = s.lattice.matrix
    sup = lat * np.array([[2.0], [1.0], [1.0]])
    v = s.cart_coords[[1, 2, 3, 0]] - s.cart_coords[0]
    prim = periodic_potentials(lat, v)
    halves = periodic_potentials(sup, v) + periodic_potentials(sup, v + lat[0])
    assert np.allclose(prim, halves, rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------------------------------------- graphs


def node_summaries(data) -> list[tuple]:
    """Per atom: Z, its potentials, and the sorted multiset of (distance, potentials, neighbour Z) of its edges."""
    src, dst = data.edge_index.numpy()
    z = data.x.numpy()
    feats = np.column_stack([data.edge_dist.numpy(), data.edge_potentials.numpy(), z[src]]).astype(np.float64)
    out = []
    for k in range(data.num_nodes):
        rows = np.round(feats[dst == k], 4)
        rows = rows[np.lexsort(rows.T[::-1])]
        out.append((int(z[k]), np.round(data.node_potentials[k].numpy().astype(float), 4), rows))
    return out


def assert_same_atom(a: tuple, b: tuple, rtol: float = 1e-4) -> None:
    assert a[0] == b[0]
    assert np.allclose(a[1], b[1], rtol=rtol, atol=1e-4)
    assert a[2].shape == b[2].shape
    assert np.allclose(a[2], b[2], rtol=rtol, atol=1e-4)


def test_graph_fields_shapes_and_dtypes():
    cfg = CrystalGraphConfig(num_rbf=24)
    g = structure_to_graph(triclinic(), cfg)
    e = g.edge_index.shape[1]
    assert g.x.dtype == torch.long and g.x.tolist() == [12, 8, 14, 8]
    assert g.edge_attr.shape == (e, 24) and g.edge_potentials.shape == (e, 3) and g.edge_dist.shape == (e,)
    assert g.x_props.shape == (4, 6) and g.node_potentials.shape == (4, 3)
    assert torch.isfinite(g.edge_potentials).all() and (g.edge_potentials[:, 1:] > 0).all()
    assert (g.edge_dist <= cfg.cutoff + 1e-6).all()
    # each atom keeps at least its 12 nearest neighbours (more with ties or via symmetrisation)
    assert (torch.bincount(g.edge_index[1], minlength=4) >= 12).all()


def test_edges_are_symmetric():
    for s in (triclinic(), rocksalt()):
        g = structure_to_graph(s)
        src, dst = g.edge_index.numpy()
        rows = np.column_stack([src, dst, g.edge_dist.numpy(), g.edge_potentials.numpy()])
        rev = np.column_stack([dst, src, g.edge_dist.numpy(), g.edge_potentials.numpy()])
        rows = rows[np.lexsort(np.round(rows, 5).T[::-1])]
        rev = rev[np.lexsort(np.round(rev, 5).T[::-1])]
        assert np.allclose(rows, rev, atol=1e-5)


def test_invariant_to_site_permutation():
    s = triclinic().make_supercell([1, 1, 2], in_place=False)
    perm = np.random.default_rng(0).permutation(len(s))
    permuted = Structure.from_sites([s[k] for k in perm])
    a, b = node_summaries(structure_to_graph(s)), node_summaries(structure_to_graph(permuted))
    for k, old in enumerate(perm):
        assert_same_atom(b[k], a[old])


def test_invariant_to_rigid_translation():
    s = triclinic()
    moved = s.copy()
    moved.translate_sites(list(range(len(s))), [1.37, -0.58, 2.91], frac_coords=False, to_unit_cell=True)
    for x, y in zip(node_summaries(structure_to_graph(s)), node_summaries(structure_to_graph(moved)), strict=True):
        assert_same_atom(x, y)


def test_supercell_gives_the_same_per_atom_features():
    """Z, neighbour distances / RBF and the per-atom lattice sums are those of the primitive atom; the per-edge
    pair sums are not (a pair sum runs over the cell's translations: see test_supercell_partition_of_pair_sums)."""
    s = triclinic()
    sup = s.make_supercell([2, 1, 1], in_place=False)
    g, gs = structure_to_graph(s), structure_to_graph(sup)
    # the primitive site each supercell site is a copy of
    prim_frac = s.lattice.get_fractional_coords(sup.cart_coords)
    delta = prim_frac[:, None, :] - s.frac_coords[None, :, :]
    origin = np.argmin(np.abs(delta - np.round(delta)).sum(-1), axis=1)
    assert np.bincount(origin).tolist() == [2] * len(s)
    for k, o in enumerate(origin):
        assert torch.allclose(gs.node_potentials[k], g.node_potentials[o], rtol=1e-5, atol=1e-6)
        d_sup = np.sort(gs.edge_dist[gs.edge_index[1] == k].numpy())
        d_prim = np.sort(g.edge_dist[g.edge_index[1] == o].numpy())
        assert np.allclose(d_sup, d_prim, atol=1e-5)
        rbf_sup = gs.edge_attr[gs.edge_index[1] == k].sum(0)
        rbf_prim = g.edge_attr[g.edge_index[1] == o].sum(0)
        assert torch.allclose(rbf_sup, rbf_prim, atol=1e-4)


def test_node_potentials_are_the_sum_over_all_atoms_of_the_pair_sums():
    s = triclinic()
    g = structure_to_graph(s)
    n = len(s)
    i, j = np.meshgrid(range(n), range(n), indexing="ij")
    pair = periodic_potentials(s.lattice.matrix, s.cart_coords[j.ravel()] - s.cart_coords[i.ravel()])
    assert np.allclose(g.node_potentials.numpy(), pair.reshape(n, n, 3).sum(1), rtol=1e-5)


def test_without_node_potentials_and_with_all_neighbours():
    cfg = CrystalGraphConfig(node_potentials=False, element_properties=False, max_neighbors=None, cutoff=4.0)
    g = structure_to_graph(triclinic(), cfg)
    full = structure_to_graph(triclinic())
    assert "node_potentials" not in g and "x_props" not in g
    assert (g.edge_dist <= 4.0).all()
    # the same pair potentials whichever set of pairs is computed
    key = lambda d: {(int(a), int(b), round(float(r), 4)): p for a, b, r, p in
                     zip(*d.edge_index, d.edge_dist, d.edge_potentials.numpy(), strict=True)}
    kg, kf = key(g), key(full)
    common = set(kg) & set(kf)
    assert common
    assert all(np.allclose(kg[c], kf[c], rtol=1e-5) for c in common)


def test_isolated_atom_gets_neighbours_by_growing_the_cutoff():
    s = Structure(Lattice.cubic(7.0), ["Ar"], [[0, 0, 0]])
    g = structure_to_graph(s)
    assert g.edge_index.shape[1] == 6 and np.allclose(g.edge_dist.numpy(), 7.0)


def test_batching_offsets_edges():
    graphs = [structure_to_graph(triclinic()), structure_to_graph(rocksalt())]
    b = collate_graphs(graphs)
    assert b.num_graphs == 2 and b.x.shape[0] == 12
    assert b.edge_index[:, graphs[0].edge_index.shape[1]:].min() >= 4
    assert b.edge_potentials.shape[0] == sum(g.edge_index.shape[1] for g in graphs)
    assert b.batch.tolist() == [0] * 4 + [1] * 8


def test_real_structures(shared_sources):
    import ast
    import gzip

    import pandas as pd

    with gzip.open(shared_sources / "matminer-0.3.9" / "flla_2015.csv.gz", "rt") as f:
        f.readline()
        df = pd.read_csv(f, nrows=20)
    for text in df["structure"]:
        s = Structure.from_dict(ast.literal_eval(text))
        g = structure_to_graph(s)
        assert g.num_nodes == len(s)
        assert torch.isfinite(g.edge_potentials).all() and torch.isfinite(g.node_potentials).all()
        assert torch.bincount(g.edge_index[1], minlength=len(s)).min() >= 1
