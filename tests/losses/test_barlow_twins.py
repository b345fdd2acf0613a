"""Multimodal Barlow Twins (pairwise and third-order) against loop-over-rows references.

Why: both forms normalise features over the *valid* rows only and the third-order form computes its
off-diagonal sum through Gram matrices instead of the D³ tensor; the references compute every statistic and
every C entry with explicit loops, so a masking, normalisation or algebra slip shows up in value or gradient.
"""

from __future__ import annotations

import math
from itertools import combinations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlcm_core.losses import LOSSES, MODALITIES, barlow_twins_higher_order, barlow_twins_pairwise
from mlcm_core.losses.barlow_twins import (
    BN_EPS,
    barlow_twins_pair_loss,
    higher_order_loss,
    third_moment_normalise,
)

torch.set_num_threads(1)
DT = torch.float64
SETTINGS = settings(max_examples=30, deadline=None)


# ---------------------------------------------------------------- brute-force references
def ref_bn(x: torch.Tensor, rows: list[int]) -> list[list[torch.Tensor]]:
    """Batch norm written out: out[r][i] for the r-th valid row and feature i."""
    n, d = len(rows), x.shape[1]
    cols = []
    for i in range(d):
        mean = sum(x[r, i] for r in rows) / n
        var = sum((x[r, i] - mean) ** 2 for r in rows) / n
        cols.append([(x[r, i] - mean) / torch.sqrt(var + BN_EPS) for r in rows])
    return [[cols[i][r] for i in range(d)] for r in range(n)]


def ref_m3(x: torch.Tensor, rows: list[int]) -> list[list[torch.Tensor]]:
    a = ref_bn(x, rows)
    n, d = len(rows), x.shape[1]
    m3 = [sum(abs(a[r][i]) ** 3 for r in range(n)) / n for i in range(d)]
    return [[a[r][i] / m3[i] ** (1 / 3) for i in range(d)] for r in range(n)]


def ref_pair(x, y, rows, lam):
    n, d = len(rows), x.shape[1]
    a, b = ref_bn(x, rows), ref_bn(y, rows)
    loss = 0
    for i in range(d):
        for j in range(d):
            cij = sum(a[r][i] * b[r][j] for r in range(n)) / n
            loss = loss + ((1 - cij) ** 2 if i == j else lam * cij**2)
    return loss


def ref_higher(x, y, w, rows, lam):
    n, d = len(rows), x.shape[1]
    a, b, c = ref_m3(x, rows), ref_m3(y, rows), ref_m3(w, rows)
    loss = 0
    for i in range(d):
        for j in range(d):
            for k in range(d):
                cijk = sum(a[r][i] * b[r][j] * c[r][k] for r in range(n)) / n
                loss = loss + ((1 - cijk) ** 2 if i == j == k else lam * cijk**2)
    return loss


def valid_rows(masks, names, b):
    return [r for r in range(b) if all(bool(masks[m][r]) for m in names)]


def ref_pairwise_loss(z, masks, lam=None):
    b, d = z["crystal"].shape
    lam = 1 / d if lam is None else lam
    terms = []
    for p, q in combinations(MODALITIES, 2):
        rows = valid_rows(masks, (p, q), b)
        if len(rows) >= 2:
            terms.append(ref_pair(z[p], z[q], rows, lam))
    return torch.stack(terms).mean() if terms else sum(v[:0].sum() for v in z.values())


def ref_higher_loss(z, masks, lam=None):
    b, d = z["crystal"].shape
    lam = 1 / d**2 if lam is None else lam
    rows = valid_rows(masks, MODALITIES, b)
    if len(rows) < 2:
        return sum(v[:0].sum() for v in z.values())
    return ref_higher(*(z[m] for m in MODALITIES), rows, lam)


def grads(value, inputs):
    return list(torch.autograd.grad(value, inputs, allow_unused=True, materialize_grads=True))


def make_z(seed: int, b: int, d: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(b, d, generator=g, dtype=DT).requires_grad_(True) for n in MODALITIES}


def seeded_masks(seed: int, b: int) -> dict[str, torch.Tensor]:
    """Each modality missing in ~1/4 of the rows, with at least one missing row and two complete rows."""
    g = torch.Generator().manual_seed(10_000 + seed)
    while True:
        masks = {n: torch.rand(b, generator=g) > 0.25 for n in MODALITIES}
        complete = masks["crystal"] & masks["dos"] & masks["density"]
        if int(complete.sum()) >= 2 and not bool(complete.all()):
            return masks


# a row has each modality with probability ~3/4 (shrinking towards present), so complete rows are common
PRESENT = st.sampled_from([True, True, True, False])


@st.composite
def batches(draw, min_b: int = 1, max_b: int = 6, max_d: int = 4):
    b = draw(st.integers(min_b, max_b))
    d = draw(st.integers(1, max_d))
    seed = draw(st.integers(0, 2**31 - 1))
    masks = {n: torch.tensor(draw(st.lists(PRESENT, min_size=b, max_size=b))) for n in MODALITIES}
    return make_z(seed, b, d), masks


LAMS = st.one_of(st.none(), st.floats(0.0, 1.0))


# ---------------------------------------------------------------- value and gradient vs the references
@SETTINGS
@given(batches(), LAMS)
def test_pairwise_matches_reference(batch, lam):
    z, masks = batch
    got = barlow_twins_pairwise(z, masks, None, lambda_offdiag=lam)
    want = ref_pairwise_loss(z, masks, lam)
    torch.testing.assert_close(got, want)
    for g, w in zip(grads(got, list(z.values())), grads(want, list(z.values()))):
        torch.testing.assert_close(g, w)


@SETTINGS
@given(batches(max_d=3), LAMS)
def test_higher_order_matches_reference(batch, lam):
    z, masks = batch
    got = barlow_twins_higher_order(z, masks, None, lambda_offdiag=lam)
    want = ref_higher_loss(z, masks, lam)
    torch.testing.assert_close(got, want)
    for g, w in zip(grads(got, list(z.values())), grads(want, list(z.values()))):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("seed", range(5))
def test_seeded_masked_batches_match_reference(seed):
    z, masks = make_z(seed, 8, 3), seeded_masks(seed, 8)
    ins = list(z.values())
    for got, want in ((barlow_twins_pairwise(z, masks, None), ref_pairwise_loss(z, masks)),
                      (barlow_twins_higher_order(z, masks, None), ref_higher_loss(z, masks))):
        torch.testing.assert_close(got, want)
        for g, w in zip(grads(got, ins), grads(want, ins)):
            torch.testing.assert_close(g, w)


def test_gram_trick_equals_materialised_tensor():
    """Σ_ijk C_ijk² via three N×N Grams equals the sum over the materialised (D, D, D) tensor."""
    z = make_z(0, 10, 16)
    a, b, c = (third_moment_normalise(z[m]) for m in MODALITIES)
    cube = torch.einsum("ni,nj,nk->ijk", a, b, c) / 10  # (D, D, D)
    diag = cube.diagonal(dim1=0, dim2=1).diagonal()  # (D,): C_iii
    off = cube.pow(2).sum() - diag.pow(2).sum()
    lam = 0.37
    want = (1 - diag).pow(2).sum() + lam * off
    got = higher_order_loss(z["crystal"], z["dos"], z["density"], lam)
    torch.testing.assert_close(got, want)
    ins = list(z.values())
    for g, w in zip(grads(got, ins), grads(want, ins)):
        torch.testing.assert_close(g, w)
    assert cube.abs().max() <= 1 + 1e-12  # Hölder: third-moment-normalised C is bounded by 1


def test_default_lambdas():
    z = make_z(1, 9, 8)
    ones = {m: torch.ones(9, dtype=torch.bool) for m in MODALITIES}
    torch.testing.assert_close(barlow_twins_pairwise(z, ones, None),
                               barlow_twins_pairwise(z, ones, None, lambda_offdiag=1 / 8))
    torch.testing.assert_close(barlow_twins_higher_order(z, ones, None),
                               barlow_twins_higher_order(z, ones, None, lambda_offdiag=1 / 64))


# ---------------------------------------------------------------- what the targets mean
def test_pairwise_identical_inputs_reach_the_diagonal_target():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 6, generator=g, dtype=DT)
    on_diag_only = barlow_twins_pair_loss(x, 2 * x + 1, lambda_offdiag=0.0)  # BN removes scale and shift
    assert on_diag_only.item() < 1e-8
    assert barlow_twins_pair_loss(x, torch.randn(64, 6, generator=g, dtype=DT), 0.0).item() > 1.0


def _walsh(n_bits: int) -> torch.Tensor:
    """Rows n, columns p: (-1)^{popcount(n & p)}: balanced ±1 columns, closed under products."""
    n = 2**n_bits
    idx = torch.arange(n)
    bits = torch.tensor([[bin(int(r) & int(p)).count("1") % 2 for p in idx] for r in idx])
    return (1 - 2 * bits).to(DT)  # (n, n)


def test_higher_order_target_one_is_attained_by_sign_product_alignment():
    """|ã| = |b̃| = |c̃| with sign(ã b̃ c̃) = +1 gives C_iii = 1: the diagonal term vanishes."""
    h = _walsh(3)  # (8, 8); columns 1..7 have mean 0
    pairs = [(1, 2), (1, 4), (2, 4), (3, 4), (5, 6)]
    a = torch.stack([h[:, p] for p, _ in pairs], 1)  # (8, 5)
    b = torch.stack([h[:, q] for _, q in pairs], 1)  # (8, 5)
    c = a * b  # (8, 5): also Walsh columns, balanced
    loss_diag = higher_order_loss(a, b, c, lambda_offdiag=0.0)
    assert loss_diag.item() < 1e-12


def test_higher_order_identical_symmetric_inputs_are_not_aligned():
    """For identical inputs C_iii is the normalised skewness E[x³]/E|x|³: 0 for symmetric features."""
    g = torch.Generator().manual_seed(3)
    half = torch.randn(32, 5, generator=g, dtype=DT)
    x = torch.cat([half, -half])  # (64, 5): exactly symmetric around 0
    assert higher_order_loss(x, x, x, lambda_offdiag=0.0).item() == pytest.approx(5.0)  # Σ_i (1 - 0)²


# ---------------------------------------------------------------- small batches, masks, invariances
@pytest.mark.parametrize("name", ["barlow_twins_pairwise", "barlow_twins_higher_order"])
def test_batch_of_one_and_two(name):
    z = make_z(4, 2, 3)
    ones = {m: torch.ones(2, dtype=torch.bool) for m in MODALITIES}
    ref = ref_pairwise_loss if name == "barlow_twins_pairwise" else ref_higher_loss
    torch.testing.assert_close(LOSSES[name](z, ones, None), ref(z, ones))
    one = {m: torch.tensor([True, False]) for m in MODALITIES}  # one valid row: skipped, graph-connected 0
    zero = LOSSES[name](z, one, None)
    assert zero.item() == 0.0 and zero.requires_grad
    assert all(torch.all(g == 0) for g in grads(zero, list(z.values())))


@pytest.mark.parametrize("name", ["barlow_twins_pairwise", "barlow_twins_higher_order"])
@SETTINGS
@given(batch=batches(min_b=2, max_d=5), rnd=st.randoms(use_true_random=False))
def test_permutation_invariance(name, batch, rnd):
    z, masks = batch
    perm = list(range(z["crystal"].shape[0]))
    rnd.shuffle(perm)
    p = torch.tensor(perm)
    torch.testing.assert_close(LOSSES[name]({k: v[p] for k, v in z.items()}, {k: v[p] for k, v in masks.items()},
                                            None),
                               LOSSES[name](z, masks, None))


@pytest.mark.parametrize("name", ["barlow_twins_pairwise", "barlow_twins_higher_order"])
@SETTINGS
@given(batch=batches(min_b=2, max_d=5), seed=st.integers(0, 2**31 - 1))
def test_masked_rows_do_not_matter(name, batch, seed):
    """Masked rows stay out of the batch statistics: new values (even NaN) change nothing, gradient 0."""
    z, masks = batch
    g = torch.Generator().manual_seed(seed)
    base = LOSSES[name](z, masks, None)
    z2 = {}
    for k, v in z.items():
        w = v.detach().clone()
        miss = ~masks[k]
        w[miss] = 30 * torch.randn(int(miss.sum()), w.shape[1], generator=g, dtype=DT) + 7
        if miss.any():
            w[miss.nonzero()[0, 0]] = math.nan
        z2[k] = w.requires_grad_(True)
    changed = LOSSES[name](z2, masks, None)
    torch.testing.assert_close(changed, base)
    for k, gk in zip(z2, grads(changed, list(z2.values()))):
        assert torch.all(gk[~masks[k]] == 0) and torch.isfinite(gk).all()


@pytest.mark.parametrize("name", ["barlow_twins_pairwise", "barlow_twins_higher_order"])
def test_gradients_reach_every_modality(name):
    z = make_z(5, 12, 8)
    masks = {m: torch.ones(12, dtype=torch.bool) for m in MODALITIES}
    masks["crystal"][3] = False
    masks["density"][7] = False
    gs = grads(LOSSES[name](z, masks, torch.tensor(1.0)), list(z.values()))
    for m, gk in zip(MODALITIES, gs):
        assert gk.abs().sum() > 0, m
        assert torch.all(gk[~masks[m]] == 0), m


def test_large_dimension_runs_without_d_cubed_memory():
    """D = 128 (2M-entry C) on a realistic batch: computed from N×N Grams, finite, with gradient."""
    g = torch.Generator().manual_seed(6)
    z = {m: torch.randn(256, 128, generator=g).requires_grad_(True) for m in MODALITIES}
    masks = {m: torch.rand(256, generator=g) > 0.1 for m in MODALITIES}
    loss = barlow_twins_higher_order(z, masks, None)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(v.grad).all() for v in z.values())
