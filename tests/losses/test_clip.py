"""CLIP losses against a slow loop-over-rows reference, a hand-computed case and open_clip's ClipLoss.

Why: the masking rule (missing rows are neither anchors nor negatives, and get no gradient) is easy to get
subtly wrong with vectorised code, so every property is checked against code that spells it out row by row.
"""

from __future__ import annotations

import importlib.util
import math
from itertools import combinations
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlcm_core.losses import LOSSES, MODALITIES, all_pairs_clip, anchored_clip, clip_loss, get_loss, pair_clip

torch.set_num_threads(1)
DT = torch.float64
SETTINGS = settings(max_examples=40, deadline=None)


# ---------------------------------------------------------------- the brute-force reference
def ref_clip(za: torch.Tensor, zb: torch.Tensor, logit_scale: torch.Tensor, mask: list[bool]) -> torch.Tensor:
    """Symmetric InfoNCE written as loops over the valid rows (no matrix products)."""
    rows = [i for i in range(za.shape[0]) if mask[i]]
    if not rows:
        return za[:0].sum() + zb[:0].sum() + 0 * logit_scale
    s = torch.exp(logit_scale)
    unit_a = {i: za[i] / torch.sqrt((za[i] ** 2).sum()) for i in rows}
    unit_b = {i: zb[i] / torch.sqrt((zb[i] ** 2).sum()) for i in rows}
    a_to_b, b_to_a = [], []
    for i in rows:
        la = torch.stack([s * (unit_a[i] * unit_b[j]).sum() for j in rows])  # anchor a_i, candidates b_j
        lb = torch.stack([s * (unit_b[i] * unit_a[j]).sum() for j in rows])  # anchor b_i, candidates a_j
        pos = rows.index(i)
        a_to_b.append(torch.logsumexp(la, 0) - la[pos])
        b_to_a.append(torch.logsumexp(lb, 0) - lb[pos])
    return 0.5 * (torch.stack(a_to_b).mean() + torch.stack(b_to_a).mean())


def ref_multi(z, masks, logit_scale, pairs):
    terms = []
    for a, b in pairs:
        m = [bool(x and y) for x, y in zip(masks[a].tolist(), masks[b].tolist())]
        if sum(m) >= 2:
            terms.append(ref_clip(z[a], z[b], logit_scale, m))
    return torch.stack(terms).mean() if terms else sum(v[:0].sum() for v in z.values()) + 0 * logit_scale


def grads(value: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(value, inputs, allow_unused=True, materialize_grads=True))


def make_z(seed: int, b: int, d: int, names=MODALITIES) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(b, d, generator=g, dtype=DT).requires_grad_(True) for n in names}


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
def batches(draw, min_b: int = 1, max_b: int = 7):
    b = draw(st.integers(min_b, max_b))
    d = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    masks = {n: torch.tensor(draw(st.lists(PRESENT, min_size=b, max_size=b))) for n in MODALITIES}
    ls = torch.tensor(draw(st.floats(-1.0, 4.0)), dtype=DT, requires_grad=True)
    return make_z(seed, b, d), masks, ls


# ---------------------------------------------------------------- value and gradient vs the reference
@SETTINGS
@given(batches())
def test_clip_loss_matches_reference_value_and_grad(batch):
    z, masks, ls = batch
    za, zb = z["crystal"], z["dos"]
    m = masks["crystal"] & masks["dos"]
    got = clip_loss(za, zb, ls, m)
    want = ref_clip(za, zb, ls, m.tolist())
    torch.testing.assert_close(got, want)
    for g, w in zip(grads(got, [za, zb, ls]), grads(want, [za, zb, ls])):
        torch.testing.assert_close(g, w)


@SETTINGS
@given(batches())
def test_all_pairs_and_anchored_match_reference(batch):
    z, masks, ls = batch
    inputs = [*z.values(), ls]
    for fn, pairs in ((all_pairs_clip, list(combinations(MODALITIES, 2))),
                      (anchored_clip, [("crystal", "dos"), ("crystal", "density")])):
        got = fn(z, masks, ls)
        want = ref_multi(z, masks, ls, pairs)
        torch.testing.assert_close(got, want)
        for g, w in zip(grads(got, inputs), grads(want, inputs)):
            torch.testing.assert_close(g, w)


@pytest.mark.parametrize("seed", range(5))
def test_seeded_masked_batches_match_reference(seed):
    z, masks = make_z(seed, 8, 4), seeded_masks(seed, 8)
    ls = torch.tensor(1.0 + 0.5 * seed, dtype=DT, requires_grad=True)
    inputs = [*z.values(), ls]
    m = masks["crystal"] & masks["dos"]
    cases = [(clip_loss(z["crystal"], z["dos"], ls, m), ref_clip(z["crystal"], z["dos"], ls, m.tolist())),
             (all_pairs_clip(z, masks, ls), ref_multi(z, masks, ls, list(combinations(MODALITIES, 2)))),
             (anchored_clip(z, masks, ls), ref_multi(z, masks, ls, [("crystal", "dos"), ("crystal", "density")]))]
    for got, want in cases:
        torch.testing.assert_close(got, want)
        for g, w in zip(grads(got, inputs), grads(want, inputs)):
            torch.testing.assert_close(g, w)


# ---------------------------------------------------------------- independent references
def test_hand_computed_2x2():
    """a = [(1,0), (0,1)], b = [(1,0), (0.6,0.8)], s = 10: logits = [[10, 6], [0, 8]].

    rows (a->b):    CE([10, 6], 0) = log(1+e^-4),  CE([0, 8], 1) = log(1+e^-8)
    columns (b->a): CE([10, 0], 0) = log(1+e^-10), CE([6, 8], 1) = log(1+e^-2)
    loss = ¼ (0.0181499279 + 0.0003354064 + 0.0000453989 + 0.1269280110) = 0.0363646861
    A third, masked row holds garbage (NaN) and must change nothing.
    """
    za = torch.tensor([[1.0, 0.0], [0.0, 1.0], [math.nan, 5.0]], dtype=DT, requires_grad=True)
    zb = torch.tensor([[2.0, 0.0], [0.6, 0.8], [7.0, math.inf]], dtype=DT, requires_grad=True)  # row 0 rescaled
    ls = torch.tensor(math.log(10.0), dtype=DT, requires_grad=True)
    mask = torch.tensor([True, True, False])
    loss = clip_loss(za, zb, ls, mask)
    expected = 0.25 * sum(math.log1p(math.exp(-t)) for t in (4, 8, 10, 2))
    assert expected == pytest.approx(0.0363646861, abs=1e-9)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    # d loss / d logit_scale = s · d loss / d s; each term is log(1 + e^{-s·g}) with cosine gaps
    # g = (1-0.6, 0.8-0, 1-0, 0.8-0.6) = (0.4, 0.8, 1.0, 0.2), whose s-derivative is -g / (1 + e^{s·g}).
    dls = 10.0 * 0.25 * sum(-g / (1 + math.exp(10 * g)) for g in (0.4, 0.8, 1.0, 0.2))
    loss.backward()
    assert ls.grad.item() == pytest.approx(dls, rel=1e-10)
    assert torch.all(za.grad[2] == 0) and torch.all(zb.grad[2] == 0)


def _open_clip_loss_class():
    """open_clip's ClipLoss, loaded from open_clip/loss.py alone (the package __init__ needs torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("open_clip_torch is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "loss.py"
    mod_spec = importlib.util.spec_from_file_location("_open_clip_loss_only", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod.ClipLoss


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_open_clip(seed):
    ClipLoss = _open_clip_loss_class()
    z = make_z(seed, 9, 16)
    za, zb = z["crystal"], z["dos"]
    mask = torch.tensor([True, False, True, True, False, True, True, True, False])
    ls = torch.tensor(2.3, dtype=DT)
    ours = clip_loss(za, zb, ls, mask)
    theirs = ClipLoss()(torch.nn.functional.normalize(za[mask], dim=-1),
                        torch.nn.functional.normalize(zb[mask], dim=-1), ls.exp())
    torch.testing.assert_close(ours, theirs)
    for g, w in zip(grads(ours, [za, zb]), grads(theirs, [za, zb])):
        torch.testing.assert_close(g, w)


# ---------------------------------------------------------------- small batches
def test_batch_of_one_and_two():
    z = make_z(3, 2, 4)
    ls = torch.tensor(1.0, dtype=DT, requires_grad=True)
    one = clip_loss(z["crystal"][:1], z["dos"][:1], ls)
    assert one.item() == 0.0  # one row: no negatives
    one.backward()
    two = clip_loss(z["crystal"], z["dos"], ls)
    torch.testing.assert_close(two, ref_clip(z["crystal"], z["dos"], ls, [True, True]))
    assert two.item() > 0
    # a batch of two where only one row is valid in a pair: that pair is skipped by the multi-modal losses
    masks = {"crystal": torch.tensor([True, True]), "dos": torch.tensor([True, False]),
             "density": torch.tensor([True, True])}
    got = all_pairs_clip(z, masks, ls)
    torch.testing.assert_close(got, ref_multi(z, masks, ls, [("crystal", "density")]))


def test_nothing_valid_gives_differentiable_zero():
    z = make_z(4, 3, 4)
    masks = {n: torch.tensor([True, False, False]) for n in MODALITIES}
    ls = torch.tensor(1.0, dtype=DT, requires_grad=True)
    for name in ("clip", "all_pairs_clip", "anchored_clip"):
        loss = LOSSES[name](z, masks, ls)
        assert loss.item() == 0.0 and loss.requires_grad
        gs = grads(loss, [*z.values(), ls])
        assert all(torch.all(g == 0) for g in gs)


# ---------------------------------------------------------------- invariances
@SETTINGS
@given(batches(min_b=2), st.randoms(use_true_random=False))
def test_permutation_invariance(batch, rnd):
    z, masks, ls = batch
    b = z["crystal"].shape[0]
    perm = list(range(b))
    rnd.shuffle(perm)
    p = torch.tensor(perm)
    zp = {k: v[p] for k, v in z.items()}
    mp = {k: v[p] for k, v in masks.items()}
    for name in ("clip", "all_pairs_clip", "anchored_clip"):
        torch.testing.assert_close(LOSSES[name](zp, mp, ls), LOSSES[name](z, masks, ls))


@SETTINGS
@given(batches(min_b=2), st.integers(0, 2**31 - 1))
def test_masked_rows_do_not_matter(batch, seed):
    """Changing a masked row's values (even to NaN) leaves the loss unchanged and its gradient exactly 0."""
    z, masks, ls = batch
    g = torch.Generator().manual_seed(seed)
    for name in ("clip", "all_pairs_clip", "anchored_clip"):
        base = LOSSES[name](z, masks, ls)
        z2 = {}
        for k, v in z.items():
            w = v.detach().clone()
            miss = ~masks[k]
            w[miss] = 100 * torch.randn(int(miss.sum()), w.shape[1], generator=g, dtype=DT)
            if miss.any():
                w[miss.nonzero()[0, 0], 0] = math.nan
            z2[k] = w.requires_grad_(True)
        changed = LOSSES[name](z2, masks, ls)
        torch.testing.assert_close(changed, base)
        for k, gk in zip(z2, grads(changed, list(z2.values()))):
            assert torch.all(gk[~masks[k]] == 0), (name, k)
            assert torch.isfinite(gk).all()


def test_gradients_reach_every_modality():
    z = make_z(5, 6, 8)
    masks = {n: torch.ones(6, dtype=torch.bool) for n in MODALITIES}
    masks["dos"][1] = False
    masks["density"][4] = False
    ls = torch.tensor(1.5, dtype=DT, requires_grad=True)
    loss = all_pairs_clip(z, masks, ls)
    gs = grads(loss, [*z.values(), ls])
    for name, gk in zip(MODALITIES, gs):
        assert gk[masks[name]].abs().sum(dim=1).gt(0).all(), name
    assert gs[-1].abs() > 0
    # anchored: dos and density only meet through the crystal, but both still get gradient
    ga = grads(anchored_clip(z, masks, ls), list(z.values()))
    assert all(gk.abs().sum() > 0 for gk in ga)


def test_scale_invariance_of_embeddings_and_default_scale():
    z = make_z(6, 5, 4)
    a, b = z["crystal"], z["dos"]
    torch.testing.assert_close(clip_loss(3 * a, 0.5 * b, None), clip_loss(a, b, math.log(1 / 0.07)))


# ---------------------------------------------------------------- registry and errors
def test_registry_common_signature():
    assert set(LOSSES) == {"clip", "all_pairs_clip", "anchored_clip", "tensor_clip", "barlow_twins_pairwise",
                           "barlow_twins_higher_order"}
    z = make_z(7, 5, 4)
    masks = {n: torch.ones(5, dtype=torch.bool) for n in MODALITIES}
    ls = torch.tensor(1.0, dtype=DT)
    for name, fn in LOSSES.items():
        out = fn(z, masks, ls)
        assert out.shape == () and torch.isfinite(out), name
        assert get_loss(name) is fn
    torch.testing.assert_close(pair_clip(z, masks, ls, a="dos", b="density"),
                               clip_loss(z["dos"], z["density"], ls))
    with pytest.raises(KeyError, match="known"):
        get_loss("nope")


def test_missing_mask_is_an_error_not_all_present():
    z = make_z(8, 4, 3)
    masks = {"crystal": torch.ones(4, dtype=torch.bool), "dos": torch.ones(4, dtype=torch.bool)}
    with pytest.raises(KeyError, match="density"):
        all_pairs_clip(z, masks, None)
    with pytest.raises(TypeError):
        all_pairs_clip(z, {**masks, "density": torch.ones(4)}, None)


def test_unpaired_negatives_hand_computed_and_reduces_to_clip():
    """clip_loss_unpaired_negatives: with every row joint it is clip_loss; an unpaired crystal is an extra
    candidate of the DOS queries only (hand-computed), a row lacking both changes nothing (NaN included)."""
    from mlcm_core.losses import clip_loss_unpaired_negatives

    torch.manual_seed(0)
    za, zb = torch.randn(5, 4, dtype=DT), torch.randn(5, 4, dtype=DT)
    ls = torch.tensor(math.log(10.0), dtype=DT)
    every = torch.ones(5, dtype=torch.bool)
    torch.testing.assert_close(clip_loss_unpaired_negatives(za, zb, ls, every, every), clip_loss(za, zb, ls))

    # rows: 0, 1 joint; 2 has only a (a crystal without DOS); 3 has neither (garbage)
    za = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [math.nan, 1.0]], dtype=DT, requires_grad=True)
    zb = torch.tensor([[1.0, 0.0], [0.6, 0.8], [math.inf, 0.0], [math.nan, 2.0]], dtype=DT, requires_grad=True)
    ma = torch.tensor([True, True, True, False])
    mb = torch.tensor([True, True, False, False])
    loss = clip_loss_unpaired_negatives(za, zb, ls, ma, mb)
    # a -> b (queries a0, a1 among b0, b1): logits [[10, 6], [0, 8]]
    # b -> a (queries b0, b1 among a0, a1, a2): logits [[10, 0, 6], [6, 8, 10]]
    ce = lambda logits, i: math.log(sum(math.exp(x) for x in logits)) - logits[i]  # noqa: E731
    expected = 0.5 * (0.5 * (ce([10, 6], 0) + ce([0, 8], 1)) + 0.5 * (ce([10, 0, 6], 0) + ce([6, 8, 10], 1)))
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    assert torch.all(za.grad[3] == 0) and torch.all(zb.grad[2:] == 0) and torch.any(za.grad[2] != 0)
    # through the registry: the option of all_pairs_clip / anchored_clip
    z, masks = {"crystal": za.detach(), "dos": zb.detach()}, {"crystal": ma, "dos": mb}
    assert all_pairs_clip(z, masks, ls, unpaired_negatives=True).item() == pytest.approx(expected, rel=1e-12)
    assert anchored_clip(z, masks, ls, unpaired_negatives=True).item() == pytest.approx(expected, rel=1e-12)
