"""PotNet-style crystal encoder: shapes, invariances, sizes, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from mlcm_core.featurize.crystal_graph import collate_graphs, structure_to_graph
from mlcm_core.models.crystal import PRESETS, CrystalEncoder, CrystalEncoderConfig

PAPER_PARAMS = 1_769_856  # documented in docs/crystal_encoder.md; published PotNet: 1,751,809
CPU_PARAMS = 126_144


def structures() -> list[Structure]:
    tric = Structure(Lattice.from_parameters(4.1, 4.6, 5.3, 78.0, 96.0, 107.0), ["Mg", "O", "Si", "O"],
                     [[0.02, 0.11, 0.07], [0.41, 0.37, 0.22], [0.73, 0.66, 0.58], [0.15, 0.82, 0.61]])
    nacl = Structure(Lattice.cubic(5.64), ["Na"] * 4 + ["Cl"] * 4,
                     [[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0],
                      [.5, 0, 0], [0, .5, 0], [0, 0, .5], [.5, .5, .5]])
    hex_ = Structure(Lattice.hexagonal(3.2, 5.2), ["Zn", "Zn", "O", "O"],
                     [[1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, .5], [1 / 3, 2 / 3, .38], [2 / 3, 1 / 3, .88]])
    return [tric, nacl, hex_]


@pytest.fixture(scope="module")
def graphs():
    return [structure_to_graph(s) for s in structures()]


def embed(model, structs) -> torch.Tensor:
    with torch.no_grad():
        return model(collate_graphs([structure_to_graph(s) for s in structs]))


@pytest.mark.parametrize("preset", PRESETS)
def test_output_shape(preset, graphs):
    torch.manual_seed(0)
    model = CrystalEncoder(CrystalEncoderConfig.preset(preset)).eval()
    with torch.no_grad():
        out = model(collate_graphs(graphs))
        single = model(graphs[1])
    assert out.shape == (3, 128) and torch.isfinite(out).all()
    assert single.shape == (1, 128)
    assert torch.allclose(single[0], out[1], atol=1e-5)  # batching does not mix graphs (eval mode)


def test_parameter_counts():
    paper = CrystalEncoder(CrystalEncoderConfig.paper()).num_parameters()
    cpu = CrystalEncoder(CrystalEncoderConfig.cpu()).num_parameters()
    assert abs(paper - 1.7e6) <= 0.15 * 1.7e6
    assert paper == PAPER_PARAMS
    assert cpu == CPU_PARAMS and 100_000 <= cpu <= 200_000


@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_invariant_to_site_order_and_translation(pooling):
    torch.manual_seed(1)
    model = CrystalEncoder(CrystalEncoderConfig.cpu(pooling=pooling)).eval()
    base = structures()
    rng = np.random.default_rng(0)
    permuted = [Structure.from_sites([s[k] for k in rng.permutation(len(s))]) for s in base]
    moved = []
    for s in base:
        m = s.copy()
        m.translate_sites(list(range(len(m))), rng.normal(size=3) * 3, frac_coords=False, to_unit_cell=True)
        moved.append(m)
    ref = embed(model, base)
    assert torch.allclose(embed(model, permuted), ref, atol=1e-4, rtol=1e-4)
    assert torch.allclose(embed(model, moved), ref, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(ref[0], ref[1], atol=1e-3)  # different crystals, different embeddings


def test_gradients_flow(graphs):
    torch.manual_seed(2)
    model = CrystalEncoder(CrystalEncoderConfig.cpu()).train()
    out = model(collate_graphs(graphs))
    (out**2).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_one_training_step_reduces_a_loss(graphs):
    torch.manual_seed(3)
    model = CrystalEncoder(CrystalEncoderConfig.cpu()).train()
    batch = collate_graphs(graphs)
    target = torch.randn(3, 128)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss = ((model(batch) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_config_is_frozen_and_validated():
    cfg = CrystalEncoderConfig.cpu()
    with pytest.raises(AttributeError):
        cfg.hidden = 3  # type: ignore[misc]
    with pytest.raises(ValueError):
        CrystalEncoderConfig(pooling="max")
    with pytest.raises(KeyError):
        CrystalEncoderConfig.preset("huge")
    assert CrystalEncoderConfig.preset("cpu", num_layers=2).num_layers == 2
    assert CrystalEncoderConfig.cpu().to_dict()["hidden"] == 64


def test_without_optional_node_inputs():
    from mlcm_core.featurize.crystal_graph import CrystalGraphConfig

    gcfg = CrystalGraphConfig(element_properties=False, node_potentials=False)
    batch = collate_graphs([structure_to_graph(s, gcfg) for s in structures()])
    model = CrystalEncoder(CrystalEncoderConfig.cpu(use_element_properties=False, use_node_potentials=False)).eval()
    with torch.no_grad():
        assert model(batch).shape == (3, 128)
