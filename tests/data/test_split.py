"""De-duplication: near-duplicates share a group and therefore a split."""

from __future__ import annotations

from pymatgen.core import Lattice, Structure

from mlcm_core.data.split import assign_dedup_groups
from mlcm_core.data.store import split_of_group


def _si(a: float = 5.43) -> Structure:
    return Structure(Lattice.cubic(a), ["Si"] * 8, [
        [0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
        [0.25, 0.25, 0.25], [0.75, 0.75, 0.25], [0.75, 0.25, 0.75], [0.25, 0.75, 0.75]])


def test_supercell_strain_and_primitive_are_one_group():
    conv = _si()
    prim = conv.get_primitive_structure()
    strained = _si(5.50)
    sc = prim.copy()
    sc.make_supercell([2, 1, 1])
    key = ("Si", 227)
    groups = assign_dedup_groups({"a": (key, conv), "b": (key, prim), "c": (key, strained), "d": (key, sc)})
    assert set(groups.values()) == {"a"}


def test_different_polymorphs_are_different_groups():
    conv = _si()
    bcc = Structure(Lattice.cubic(3.0), ["Si", "Si"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    groups = assign_dedup_groups({"a": (("Si", 227), conv), "b": (("Si", 227), bcc)})
    assert groups == {"a": "a", "b": "b"}


def test_matches_existing_group_first():
    conv = _si()
    groups = assign_dedup_groups({"new": (("Si", 227), conv.get_primitive_structure())},
                                 existing={"old": ("grp-7", ("Si", 227), conv)})
    assert groups == {"new": "grp-7"}


def test_split_is_deterministic_and_seeded():
    assert split_of_group("mp-149", 42) == split_of_group("mp-149", 42)
    splits = [split_of_group(f"g{i}", 42) for i in range(5000)]
    assert 0.77 < splits.count("train") / 5000 < 0.83
    assert [split_of_group(f"g{i}", 1) for i in range(50)] != splits[:50]
