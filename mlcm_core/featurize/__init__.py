"""Featurizers: crystal structures → graphs (``crystal_graph``)."""

from mlcm_core.featurize.crystal_graph import (
    POTENTIAL_NAMES,
    CrystalGraphConfig,
    collate_graphs,
    periodic_potentials,
    structure_to_graph,
)

__all__ = ["POTENTIAL_NAMES", "CrystalGraphConfig", "collate_graphs", "periodic_potentials", "structure_to_graph"]
