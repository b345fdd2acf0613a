"""Charge-density isosurface of the focused material (marching cubes on the 32³ fractional grid).

The stored density lives on a 32×32×32 grid over the cell's FRACTIONAL coordinates (conventions.DENSITY_GRID).
The grid is padded periodically by one point (so the surface closes across the cell faces), marching cubes
runs in index space, and the vertices are mapped index/32 → fractional → Cartesian through the lattice
matrix (rows = lattice vectors), so non-orthogonal cells come out right. Materials without a structure (some
MultiMat densities) are drawn in the unit cube of fractional coordinates, and the title says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import panel as pn
import param

from app import crystal3d
from app.panes import LiveHTML, LiveMarkdown
from app.state import AppState, guarded
from mlcm_core.data.conventions import DENSITY_GRID
from mlcm_core.data.density_frame import structure_on_canonical_cell


def isosurface(rho: np.ndarray, level: float, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (V, 3) Cartesian Å, faces (F, 3)) of the ``level`` isosurface of a periodic fractional grid."""
    from skimage.measure import marching_cubes

    n = np.asarray(rho.shape)
    padded = np.pad(rho, [(0, 1)] * 3, mode="wrap")  # periodic: the surface closes across the cell faces
    lo, hi = float(padded.min()), float(padded.max())
    if not lo < level < hi:
        raise ValueError(f"isovalue {level:g} is outside the density range {lo:.4g}..{hi:.4g}")
    verts, faces, _, _ = marching_cubes(padded, level=level)
    frac = verts / n  # index -> fractional (index n is fractional 1: the periodic copy)
    return frac @ np.asarray(matrix, float), faces


class DensityView(pn.viewable.Viewer):
    """Mesh3d isosurface + atoms + cell edges, with an isovalue slider (fraction of the density range)."""

    state = param.ClassSelector(class_=AppState)
    iso_fraction = param.Number(default=0.25, bounds=(0.02, 0.98), step=0.01,
                                doc="isovalue as a fraction between the grid's minimum and maximum")

    def __init__(self, **params):
        super().__init__(**params)
        self.figure: dict | None = None  # the last plotly figure dict drawn
        self._pane = LiveHTML("", height=430, sizing_mode="stretch_width", css_classes=["mlcm-density"])
        self._note = LiveMarkdown("**Charge density**: click a material with a charge density "
                                      f"({int(self.state.table['has_charge_density'].sum())} have one).",
                                      css_classes=["mlcm-density-note"])
        self._slider = pn.widgets.FloatSlider.from_param(self.param.iso_fraction, label="isovalue (fraction of range)")
        self._cache: dict[str, Any] = {}
        self.state.param.watch(self._update, "focus_id")
        self.param.watch(self._update, "iso_fraction")

    def data_for(self, material_id: str) -> dict[str, Any]:
        if self._cache.get("id") != material_id:
            rho = self.state.dataset.density([material_id])[0]
            t = self.state.indexed
            structure = self.state.dataset.structure(material_id) if bool(t.at[material_id, "has_structure"]) else None
            if structure is not None and isinstance(t.at[material_id, "density_lattice"], str):
                structure = structure_on_canonical_cell(structure)  # the cell the grid lives on
            self._cache = {"id": material_id, "rho": rho, "structure": structure,
                           "units": t.at[material_id, "density_units"]}
        return self._cache

    def figure_for(self, material_id: str, fraction: float) -> dict[str, Any]:
        d = self.data_for(material_id)
        rho, structure = d["rho"], d["structure"]
        assert rho.shape == (DENSITY_GRID,) * 3
        matrix = structure.lattice.matrix if structure is not None else np.eye(3)
        lo, hi = float(rho.min()), float(rho.max())
        level = lo + fraction * (hi - lo)
        verts, faces = isosurface(rho, level, matrix)
        verts = verts.round(3)
        traces = [crystal3d.cell_trace(matrix),
                  {"type": "mesh3d", "x": verts[:, 0].tolist(), "y": verts[:, 1].tolist(), "z": verts[:, 2].tolist(),
                       "i": faces[:, 0].tolist(), "j": faces[:, 1].tolist(), "k": faces[:, 2].tolist(),
                       "color": "#3b82f6", "opacity": 0.45, "name": f"ρ = {level:.4g}", "hoverinfo": "skip",
                       "flatshading": False, "lighting": {"ambient": 0.6, "diffuse": 0.6}}]
        where = "cell"
        if structure is not None:
            pos, syms = crystal3d.atoms_in_cell(structure)
            traces += crystal3d.atoms_traces(pos, syms, scale=12)
        else:
            where = "fractional unit cube (no structure: lattice unknown)"
        title = f"{material_id}: isosurface ρ = {level:.4g} {d['units']} ({len(faces):,} triangles; {where})"
        return crystal3d.figure(traces, title)

    @guarded("density view")
    def _update(self, *_):
        mid = self.state.focus_id
        if not mid:
            return
        if not self.state.has(mid, "has_charge_density"):
            self._pane.object = ""
            self._note.object = f"**Charge density**: {mid} has no charge density in the dataset."
            return
        self.figure = self.figure_for(mid, self.iso_fraction)
        self._pane.object = crystal3d.figure_html(self.figure)
        self._note.object = f"**Charge density** of {mid} (marching cubes on the 32³ fractional grid)"

    def __panel__(self):
        return pn.Column(self._note, self._slider, self._pane, sizing_mode="stretch_width")
