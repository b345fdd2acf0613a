"""TensorCLIP against a loop-over-rows reference that builds T[i, j, k] entry by entry, and effective_rank.

Why: the loss is computed from three N×N slices with algebraic shortcuts (‖c_i ⊙ d_j‖ from a Gram product);
the reference evaluates the defining formula for each (i, j, k) separately, so a wrong slice, transpose or
normalisation shows up as a value or gradient mismatch.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlcm_core.losses import LOSSES, MODALITIES, effective_rank, tensor_clip, tensor_clip_loss, triple_similarity

torch.set_num_threads(1)
DT = torch.float64
SETTINGS = settings(max_examples=30, deadline=None)


# ---------------------------------------------------------------- the brute-force reference
def ref_t(c, d, rho, s, i, j, k):
    """T[i, j, k] = s · <c_i ⊙ d_j, ρ_k> / (‖c_i ⊙ d_j‖ ‖ρ_k‖), one entry."""
    p = c[i] * d[j]
    return s * (p * rho[k]).sum() / (torch.sqrt((p * p).sum()) * torch.sqrt((rho[k] * rho[k]).sum()))


def ref_tensor_clip(z, masks, logit_scale):
    c, d, rho = (z[m] for m in MODALITIES)
    rows = [n for n in range(c.shape[0]) if all(bool(masks[m][n]) for m in MODALITIES)]
    if len(rows) < 2:
        return sum(v[:0].sum() for v in z.values()) + 0 * logit_scale
    s = torch.exp(logit_scale)
    over_k, over_j, over_i = [], [], []
    for i in rows:
        pos = rows.index(i)
        lk = torch.stack([ref_t(c, d, rho, s, i, i, k) for k in rows])  # slice T[i, i, :]
        lj = torch.stack([ref_t(c, d, rho, s, i, j, i) for j in rows])  # slice T[i, :, i]
        li = torch.stack([ref_t(c, d, rho, s, a, i, i) for a in rows])  # slice T[:, i, i]
        over_k.append(torch.logsumexp(lk, 0) - lk[pos])
        over_j.append(torch.logsumexp(lj, 0) - lj[pos])
        over_i.append(torch.logsumexp(li, 0) - li[pos])
    return (torch.stack(over_k).mean() + torch.stack(over_j).mean() + torch.stack(over_i).mean()) / 3


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
def batches(draw, min_b: int = 1, max_b: int = 6):
    b = draw(st.integers(min_b, max_b))
    d = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    masks = {n: torch.tensor(draw(st.lists(PRESENT, min_size=b, max_size=b))) for n in MODALITIES}
    ls = torch.tensor(draw(st.floats(-1.0, 4.0)), dtype=DT, requires_grad=True)
    return make_z(seed, b, d), masks, ls


# ---------------------------------------------------------------- value and gradient vs the reference
@SETTINGS
@given(batches())
def test_matches_reference_value_and_grad(batch):
    z, masks, ls = batch
    inputs = [*z.values(), ls]
    got = tensor_clip(z, masks, ls)
    want = ref_tensor_clip(z, masks, ls)
    torch.testing.assert_close(got, want)
    for g, w in zip(grads(got, inputs), grads(want, inputs)):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("seed", range(5))
def test_seeded_masked_batches_match_reference(seed):
    z, masks = make_z(seed, 8, 4), seeded_masks(seed, 8)
    ls = torch.tensor(1.0 + 0.5 * seed, dtype=DT, requires_grad=True)
    inputs = [*z.values(), ls]
    got, want = tensor_clip(z, masks, ls), ref_tensor_clip(z, masks, ls)
    torch.testing.assert_close(got, want)
    for g, w in zip(grads(got, inputs), grads(want, inputs)):
        torch.testing.assert_close(g, w)


def test_cube_entries_and_slices():
    z = make_z(0, 5, 4)
    c, d, rho = (z[m].detach() for m in MODALITIES)
    ls = torch.tensor(0.7, dtype=DT)
    cube = triple_similarity(c, d, rho, ls)  # (N, N, N)
    s = ls.exp()
    for i, j, k in [(0, 0, 0), (1, 2, 3), (4, 0, 2), (3, 3, 1)]:
        torch.testing.assert_close(cube[i, j, k], ref_t(c, d, rho, s, i, j, k))
    idx = torch.arange(5)
    ce = torch.nn.functional.cross_entropy
    from_cube = (ce(cube[idx, idx, :], idx) + ce(cube[idx, :, idx], idx) + ce(cube[:, idx, idx].T, idx)) / 3
    torch.testing.assert_close(tensor_clip_loss(c, d, rho, ls), from_cube)


# ---------------------------------------------------------------- normalisation
def test_normalisation_makes_usable_logits():
    g = torch.Generator().manual_seed(1)
    dim = 128
    c, d, rho = (torch.nn.functional.normalize(torch.randn(32, dim, generator=g, dtype=DT), dim=-1)
                 for _ in range(3))
    raw = torch.einsum("id,jd,kd->ijk", c, d, rho)
    assert raw.abs().max() < 3 / math.sqrt(dim)  # the raw triple product is tiny
    same = torch.full((dim,), 1 / math.sqrt(dim), dtype=DT)
    assert (same * same * same).sum().item() == pytest.approx(1 / math.sqrt(dim))  # even for identical vectors
    cube = triple_similarity(c, d, rho, 0.0)  # s = 1: plain cosines
    assert cube.abs().max() <= 1 + 1e-12
    # the maximum 1 is reached when ρ ∝ c ⊙ d, whatever the scale of each embedding
    aligned = triple_similarity(3 * c, 0.2 * d, 5 * c * d, 0.0)
    torch.testing.assert_close(torch.diagonal(torch.diagonal(aligned)), torch.ones(32, dtype=DT))


def test_aligned_triples_have_low_loss():
    g = torch.Generator().manual_seed(2)
    c, d = torch.randn(16, 32, generator=g, dtype=DT), torch.randn(16, 32, generator=g, dtype=DT)
    ls = torch.tensor(math.log(100.0), dtype=DT)
    aligned = tensor_clip_loss(c, d, c * d, ls)
    shuffled = tensor_clip_loss(c, d, (c * d)[torch.randperm(16, generator=g)], ls)
    assert aligned.item() < 0.05 < 1.0 < shuffled.item()


# ---------------------------------------------------------------- small batches and masks
def test_batch_of_one_and_two():
    z = make_z(3, 2, 4)
    ls = torch.tensor(1.0, dtype=DT, requires_grad=True)
    c, d, rho = (z[m] for m in MODALITIES)
    assert tensor_clip_loss(c[:1], d[:1], rho[:1], ls).item() == 0.0
    ones = {m: torch.ones(2, dtype=torch.bool) for m in MODALITIES}
    two = tensor_clip(z, ones, ls)
    torch.testing.assert_close(two, ref_tensor_clip(z, ones, ls))
    # a row missing any one modality is excluded: only one complete row left -> graph-connected zero
    partial = {**ones, "density": torch.tensor([True, False])}
    zero = tensor_clip(z, partial, ls)
    assert zero.item() == 0.0
    assert all(torch.all(g == 0) for g in grads(zero, [*z.values(), ls]))


@SETTINGS
@given(batches(min_b=2), st.randoms(use_true_random=False))
def test_permutation_invariance(batch, rnd):
    z, masks, ls = batch
    perm = list(range(z["crystal"].shape[0]))
    rnd.shuffle(perm)
    p = torch.tensor(perm)
    torch.testing.assert_close(tensor_clip({k: v[p] for k, v in z.items()}, {k: v[p] for k, v in masks.items()}, ls),
                               tensor_clip(z, masks, ls))


@SETTINGS
@given(batches(min_b=2), st.integers(0, 2**31 - 1))
def test_masked_rows_do_not_matter(batch, seed):
    z, masks, ls = batch
    g = torch.Generator().manual_seed(seed)
    base = tensor_clip(z, masks, ls)
    z2 = {}
    for k, v in z.items():
        w = v.detach().clone()
        miss = ~masks[k]
        w[miss] = 50 * torch.randn(int(miss.sum()), w.shape[1], generator=g, dtype=DT)
        if miss.any():
            w[miss.nonzero()[0, 0]] = math.nan
        z2[k] = w.requires_grad_(True)
    changed = tensor_clip(z2, masks, ls)
    torch.testing.assert_close(changed, base)
    for k, gk in zip(z2, grads(changed, list(z2.values()))):
        assert torch.all(gk[~masks[k]] == 0) and torch.isfinite(gk).all()


def test_gradients_reach_every_modality():
    z = make_z(4, 7, 6)
    masks = {m: torch.ones(7, dtype=torch.bool) for m in MODALITIES}
    masks["dos"][2] = False
    ls = torch.tensor(2.0, dtype=DT, requires_grad=True)
    loss = LOSSES["tensor_clip"](z, masks, ls)
    gs = grads(loss, [*z.values(), ls])
    complete = masks["crystal"] & masks["dos"] & masks["density"]
    for m, gk in zip(MODALITIES, gs):
        assert gk[complete].abs().sum(dim=1).gt(0).all(), m
        assert torch.all(gk[~complete] == 0), m  # crystal/density of the row without DOS: excluded
    assert gs[-1].abs() > 0


def test_needs_three_modalities():
    z = make_z(5, 3, 2)
    masks = {m: torch.ones(3, dtype=torch.bool) for m in MODALITIES}
    with pytest.raises(ValueError, match="three"):
        tensor_clip(z, masks, None, modalities=("crystal", "dos"))


# ---------------------------------------------------------------- effective rank
def test_effective_rank_random_vs_collapsed():
    g = torch.Generator().manual_seed(6)
    rand = torch.randn(1024, 128, generator=g, dtype=DT)
    r_rand = effective_rank(rand).item()
    assert 110 < r_rand <= 128
    collapsed = torch.randn(1, 128, generator=g, dtype=DT).expand(1024, 128) * torch.rand(1024, 1, generator=g,
                                                                                         dtype=DT)
    assert effective_rank(collapsed).item() == pytest.approx(1.0, abs=1e-6)
    low = torch.randn(1024, 5, generator=g, dtype=DT) @ torch.randn(5, 128, generator=g, dtype=DT)
    assert 1.0 < effective_rank(low).item() <= 5 + 1e-6
    # near-collapse (one dominant direction plus noise) is close to 1, far below random
    noisy = collapsed + 1e-3 * rand
    assert effective_rank(noisy).item() < 0.2 * r_rand


def test_effective_rank_exact_cases():
    eye = torch.eye(8, dtype=DT)
    assert effective_rank(eye).item() == pytest.approx(8.0)
    assert effective_rank(7.3 * eye[:, :3]).item() == pytest.approx(3.0)  # scale-invariant, k equal σ -> k
    assert effective_rank(torch.zeros(4, 3)).item() == 0.0
    same_rows = torch.ones(5, 3)
    assert effective_rank(same_rows).item() == pytest.approx(1.0)
    assert effective_rank(same_rows, center=True).item() == 0.0
    mask = torch.tensor([True, True, True, False, False, False, False, False])
    assert effective_rank(eye, mask).item() == pytest.approx(3.0)
