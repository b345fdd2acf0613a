"""Structure viewer: crystal-toolkit's StructureGraph scene, drawn as a few merged plotly traces.

crystal_toolkit (imported lazily, ~10 s the first time; the server warm-up does it) builds the scene: atoms
including their periodic images on the cell faces, bonds from a neighbour strategy, and the unit cell. Its
primitives (one sphere/cylinder per atom/bond) are merged here into one trace per element, one per bond
colour and one for the cell, so a 100-atom cell is ~5 traces, not hundreds.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import panel as pn
import param

from app import crystal3d
from app.panes import LiveHTML, LiveMarkdown
from app.state import AppState, guarded

MAX_BONDED_SITES = 120  # larger cells are drawn without bonds (the neighbour search grows quickly)


def structure_scene_traces(structure: Any, bonds: bool = True) -> list[dict[str, Any]]:
    """Merged plotly traces (dicts) of the crystal-toolkit scene of ``structure``."""
    import crystal_toolkit  # noqa: F401  (adds StructureGraph.get_scene)
    from pymatgen.analysis.graphs import StructureGraph
    from pymatgen.analysis.local_env import MinimumDistanceNN

    strategy = MinimumDistanceNN(tol=0.15, cutoff=6.0)
    if bonds and len(structure) <= MAX_BONDED_SITES:
        make = getattr(StructureGraph, "from_local_env_strategy", None) or StructureGraph.with_local_env_strategy
        graph = make(structure, strategy)
    else:
        make = getattr(StructureGraph, "from_empty_graph", None) or StructureGraph.with_empty_graph
        graph = make(structure)
    # atoms of the cell + their images on faces/edges/corners; not every bonded neighbour outside the cell
    scene = graph.get_scene(draw_image_atoms=True, bonded_sites_outside_unit_cell=False,
                            explicitly_calculate_polyhedra_hull=False)

    spheres: dict[str, list] = defaultdict(list)   # element -> positions
    colors: dict[str, str] = {}
    radii: dict[str, float] = {}
    bond_pairs: dict[str, list] = defaultdict(list)  # colour -> [(a, b)]
    cell_lines: list = []

    def walk(node: Any, where: str) -> None:
        for item in getattr(node, "contents", []):
            if hasattr(item, "contents"):
                walk(item, item.name if where == "" else where)
                continue
            kind = type(item).__name__
            if kind == "Spheres" and where == "atoms":
                element = (item.tooltip or "X").split()[0]
                spheres[element].extend(list(p) for p in item.positions)
                colors[element] = item.color or crystal3d.element_color(element)
                radii[element] = float(item.radius or 0.5)
            elif kind == "Cylinders" and where == "bonds":
                bond_pairs[item.color or "#888888"].extend((np.asarray(a), np.asarray(b)) for a, b in item.positionPairs)
            elif kind == "Lines" and where == "unit_cell":
                pos = [np.asarray(p) for p in item.positions]
                cell_lines.extend(zip(pos[0::2], pos[1::2]))

    walk(scene, "")
    traces: list[dict[str, Any]] = []
    if cell_lines:
        traces.append(crystal3d.segments_trace(cell_lines, "#444444", "cell", width=3))
    for color, pairs in bond_pairs.items():
        traces.append(crystal3d.segments_trace(pairs, color, "bonds", width=6))
    positions, symbols = [], []
    for el, pos in spheres.items():
        positions += pos
        symbols += [el] * len(pos)
    if positions:
        traces += crystal3d.atoms_traces(np.asarray(positions), symbols, colors, radii)
    return traces


class StructureView(pn.viewable.Viewer):
    """The focused material's crystal structure (bonds by minimum-distance neighbours)."""

    state = param.ClassSelector(class_=AppState)
    show_bonds = param.Boolean(default=True)

    def __init__(self, **params):
        super().__init__(**params)
        self.figure: dict | None = None  # the last plotly figure dict drawn
        self._pane = LiveHTML("", height=430, sizing_mode="stretch_width", css_classes=["mlcm-structure"])
        self._note = LiveMarkdown("**Structure**: click a material with a structure.", css_classes=["mlcm-structure-note"])
        self.state.param.watch(self._update, ["focus_id", "placed"])
        self.param.watch(self._update, "show_bonds")

    def figure_for(self, material_id: str) -> dict[str, Any]:
        structure = self.state.dataset.structure(material_id)
        traces = structure_scene_traces(structure, self.show_bonds)
        formula = structure.composition.reduced_formula
        return crystal3d.figure(traces, f"{material_id} {formula} — {len(structure)} sites, "
                                        f"{structure.get_space_group_info()[0]}")

    @guarded("structure view")
    def _update(self, *_):
        mid = self.state.focus_id
        if not mid:
            return
        if not self.state.has(mid, "has_structure"):
            self._pane.object = ""
            self._note.object = f"**Structure**: {mid} has no structure in the dataset (DOS/density only)."
            return
        self.figure = self.figure_for(mid)
        self._pane.object = crystal3d.figure_html(self.figure)
        self._note.object = f"**Structure** of {mid} (crystal-toolkit scene; drag to rotate)"

    def __panel__(self):
        return pn.Column(self._note, pn.widgets.Checkbox.from_param(self.param.show_bonds, label="bonds"),
                         self._pane, sizing_mode="stretch_width")
