"""Structure (crystal-toolkit scene -> merged plotly traces) and charge density (marching cubes, lattice mapping)."""

from __future__ import annotations

import html
import json

import numpy as np
import pandas as pd
import pytest

from app import crystal3d
from app.views.density import DensityView, isosurface
from app.views.structure import StructureView, structure_scene_traces


def test_structure_scene_is_a_few_merged_traces(state):
    s = state.dataset.structure("mp-830")
    traces = structure_scene_traces(s)
    atoms = [t for t in traces if t["mode"] == "markers"]
    assert sorted(t["name"].split()[0] for t in atoms) == ["Ga", "N"]  # one trace per element
    assert len(traces) <= len(atoms) + 3  # + cell + bonds (one per colour)
    assert sum(len(t["x"]) for t in atoms) >= len(s)  # periodic images on the faces included


def test_a_large_cell_stays_a_few_traces(state):
    t = state.table
    big = t.loc[t["has_structure"] & (pd.to_numeric(t["nsites"], errors="coerce") >= 20), "id"].iloc[0]
    s = state.dataset.structure(big)
    traces = structure_scene_traces(s)
    n_el = len({site.specie.symbol for site in s})
    assert len(traces) <= n_el + 2 + n_el  # atoms per element, cell, bonds per element colour


def test_structure_view_follows_the_focus(state):
    view = StructureView(state=state)
    state.focus_id = "mp-830"
    assert view.figure is not None and "mp-830 GaN" in view.figure["layout"]["title"]["text"]
    assert "<iframe" in view._pane.object and "plotly" in html.unescape(view._pane.object)
    no_structure = state.table.loc[~state.table["has_structure"], "id"].iloc[0]
    state.focus_id = no_structure
    assert "has no structure" in view._note.object and view._pane.object == ""


def test_isosurface_maps_fractional_vertices_through_the_lattice():
    n = 32
    g = np.arange(n) / n
    fa, fb, fc = np.meshgrid(g, g, g, indexing="ij")
    rho = np.exp(-((fa - 0.5) ** 2 + (fb - 0.5) ** 2 + (fc - 0.5) ** 2) / 0.01)  # a blob at the cell centre
    lattice = np.array([[4.0, 0.0, 0.0], [2.0, 3.5, 0.0], [1.0, 1.0, 5.0]])  # triclinic
    verts, faces = isosurface(rho, 0.5, lattice)
    assert len(faces) > 100
    frac = verts @ np.linalg.inv(lattice)
    assert np.allclose(frac.mean(0), 0.5, atol=0.01)  # the blob's centre: grid index 16 of 32 = fraction 0.5
    assert np.allclose(verts.mean(0), 0.5 * lattice.sum(0), atol=0.05)  # = 0.5 (a + b + c), not the box centre
    with pytest.raises(ValueError, match="outside"):
        isosurface(rho, 5.0, lattice)


def test_isosurface_closes_across_the_periodic_boundary():
    n = 32
    g = np.arange(n) / n
    fa, fb, fc = np.meshgrid(g, g, g, indexing="ij")
    d2 = np.minimum(fa, 1 - fa) ** 2 + (fb - 0.5) ** 2 + (fc - 0.5) ** 2  # a blob on the a = 0 face
    verts, _ = isosurface(np.exp(-d2 / 0.01), 0.5, np.eye(3))
    assert verts[:, 0].min() < 0.2 and verts[:, 0].max() > 0.8  # both sides of the face, nothing lost


def test_density_view_and_isovalue(state, material_with_all_three):
    view = DensityView(state=state)
    state.focus_id = material_with_all_three
    fig = view.figure
    kinds = [t["type"] for t in fig["data"]]
    assert kinds.count("mesh3d") == 1 and "scatter3d" in kinds
    n1 = len(fig["data"][1]["i"])
    view.iso_fraction = 0.6
    assert len(view.figure["data"][1]["i"]) != n1
    payload = html.unescape(view._pane.object)
    assert json.loads(payload.split("const f=")[1].split(";Plotly")[0])["data"][1]["type"] == "mesh3d"


def test_density_without_structure_uses_the_unit_cube(state):
    t = state.table
    ids = t.loc[t["has_charge_density"] & ~t["has_structure"], "id"]
    if ids.empty:
        pytest.skip("every density has a structure")
    view = DensityView(state=state)
    state.focus_id = ids.iloc[0]
    assert "fractional unit cube" in view.figure["layout"]["title"]["text"]


def test_cell_trace_is_one_trace_with_12_edges():
    t = crystal3d.cell_trace(np.eye(3))
    assert t["x"].count(None) == 12
