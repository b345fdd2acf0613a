"""Hand-made descriptors for classical models: Magpie composition statistics + cheap structure features.

Why: a random forest on these is the standard non-deep baseline for crystal properties (Ward et al. 2016),
and it is also half of the shipped property predictions (``explore/classical.py``), so the same features
must come out for a training row of the store and for a structure a user uploads. Everything here is
computed from a pymatgen ``Structure`` (or a formula), never from store columns.

Features, in this order (``descriptor_names``):

* the 132 Magpie ElementProperty statistics of the reduced formula (matminer preset "magpie"); NaN where a
  property is undefined (e.g. noble gases), to be imputed by the model's training medians;
* ``STRUCTURE_FEATURES``: number of sites in the cell, volume per atom (Å³), mass density (g/cm³), space-group
  number (spglib, symprec 0.1 Å; NaN where spglib fails) and packing fraction (Σ 4/3 π r³ over the sites with
  pymatgen's atomic radius, over the cell volume; a dimensionless number, > 1 where radii overlap).

These five were chosen on validation MAE (random forest, 100 trees, 2 seeds; test rows unused) among them and
nearest-neighbour distances, distance / (r_i + r_j), mean coordination and the number of elements: the
neighbour-based extras helped the moduli by ≤ 0.003 log10 GPa and cost as much on the band gap, so they are
left out. Cost: ~3 ms per structure (spglib), ~5 ms per new formula (memoised).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pymatgen.core import Structure

__all__ = ["DESCRIPTORS_VERSION", "MAGPIE_N_FEATURES", "STRUCTURE_FEATURES", "SYMPREC", "descriptor_names",
           "descriptors", "magpie_features", "structure_features"]

DESCRIPTORS_VERSION = 1  # bump when a feature changes: cached matrices and fitted forests then mismatch
MAGPIE_N_FEATURES = 132
STRUCTURE_FEATURES: tuple[str, ...] = ("nsites", "volume_per_atom", "density", "spacegroup_number",
                                       "packing_fraction")
SYMPREC = 0.1  # Å, spglib's tolerance for the space group

_MAGPIE_CACHE: dict[str, np.ndarray] = {}
_FEATURIZER: list[Any] = []
_RADII: dict[str, float] = {}


def _featurizer() -> Any:
    if not _FEATURIZER:
        from matminer.featurizers.composition import ElementProperty

        _FEATURIZER.append(ElementProperty.from_preset("magpie"))
    return _FEATURIZER[0]


def magpie_features(formulas: Sequence[str]) -> np.ndarray:
    """(n, 132) Magpie features of each formula (NaN row where a formula cannot be parsed); memoised."""
    from pymatgen.core import Composition

    ep = _featurizer()
    out = np.full((len(formulas), MAGPIE_N_FEATURES), np.nan)
    for k, formula in enumerate(formulas):
        if not isinstance(formula, str):
            continue
        if formula not in _MAGPIE_CACHE:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    _MAGPIE_CACHE[formula] = np.asarray(ep.featurize(Composition(formula)), dtype=np.float64)
            except Exception:  # noqa: BLE001  (an unparsable formula is a missing feature row, imputed later)
                _MAGPIE_CACHE[formula] = np.full(MAGPIE_N_FEATURES, np.nan)
        out[k] = _MAGPIE_CACHE[formula]
    return out


def _radius(symbol: str) -> float:
    """Atomic radius (Å): pymatgen's empirical one, else its calculated one, else 1.5 Å."""
    if symbol not in _RADII:
        from pymatgen.core import Element

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            e = Element(symbol)
            r = e.atomic_radius or e.atomic_radius_calculated
        _RADII[symbol] = float(r) if r else 1.5
    return _RADII[symbol]


def _spacegroup_number(structure: Structure) -> float:
    import spglib

    cell = (structure.lattice.matrix, structure.frac_coords, [site.specie.Z for site in structure])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = spglib.get_symmetry_dataset(cell, symprec=SYMPREC)
    except Exception:  # noqa: BLE001  (spglib raises its own error types across versions)
        return float("nan")
    return float(data.number) if data is not None else float("nan")


def structure_features(structures: Sequence[Structure]) -> np.ndarray:
    """(n, len(STRUCTURE_FEATURES)) cheap structure features (see the module docstring); units Å³, g/cm³."""
    out = np.full((len(structures), len(STRUCTURE_FEATURES)), np.nan)
    for k, s in enumerate(structures):
        n, volume = len(s), float(s.volume)
        spheres = sum(4.0 / 3.0 * np.pi * _radius(site.specie.symbol) ** 3 for site in s)
        out[k] = (n, volume / n, float(s.density), _spacegroup_number(s), spheres / volume)
    return out


def descriptor_names() -> list[str]:
    """Column names of ``descriptors``: the Magpie labels, then STRUCTURE_FEATURES."""
    return [f"magpie {label}" for label in _featurizer().feature_labels()] + list(STRUCTURE_FEATURES)


def descriptors(structures: Sequence[Structure]) -> np.ndarray:
    """(n, 132 + 5) Magpie features of each structure's reduced formula, then its structure features."""
    formulas = [s.composition.reduced_formula for s in structures]
    return np.hstack([magpie_features(formulas), structure_features(structures)])
