"""De-duplication groups for the one project split.

Near-duplicate structures (pymatgen StructureMatcher, default tolerances, primitive cells, scaled
volumes) share a group, and a group's split is a hash of its id (store.split_of_group): so duplicates
never straddle train/validation/test, and the split of a material never changes as the corpus grows.

Structures are only compared within the same reduced formula and space group (symprec 0.1). Two
structures that StructureMatcher would match but spglib gives different space groups at that
tolerance are therefore missed; that trade keeps the 4,062 carbon allotropes (one formula) from needing
8M pairwise comparisons.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pymatgen.core import Structure

__all__ = ["assign_dedup_groups"]

BucketKey = tuple[str, int]  # (reduced formula, space group number at symprec 0.1)


def assign_dedup_groups(
    structures: dict[str, tuple[BucketKey, Structure]],
    existing: dict[str, tuple[str, BucketKey, Structure]] | None = None,
    progress: bool = False,
) -> dict[str, str]:
    """Map each new id to a group id: an existing group it matches, else the id that opened its cluster.

    Args:
        structures: new materials, id -> (bucket key, Structure).
        existing: materials already stored, id -> (group id, bucket key, Structure), compared first.
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from tqdm.auto import tqdm

    # StructureMatcher reduces both cells to primitive on every fit; doing it once per structure and
    # matching the primitives with primitive_cell=False is equivalent and ~10x faster on big buckets.
    matcher = StructureMatcher(primitive_cell=False)  # ltol 0.2, stol 0.3, angle_tol 5, scale
    buckets: dict[BucketKey, list[_Candidate]] = defaultdict(list)
    for mid, (group, key, s) in (existing or {}).items():
        buckets[key].append(_Candidate(group, s))
    groups: dict[str, str] = {}
    for mid in tqdm(sorted(structures), desc="de-duplicating", disable=not progress, unit="mat"):
        key, s = structures[mid]
        members = buckets[key]
        new = _Candidate(mid, s)
        for other in members:  # one representative per group: matching is (nearly) transitive here
            if other.is_representative and new.could_match(other) and matcher.fit(new.primitive, other.primitive):
                new.group, new.is_representative = other.group, False
                break
        members.append(new)
        groups[mid] = new.group
    return groups


class _Candidate:
    """A structure with its primitive cell computed once, on first need."""

    def __init__(self, group: str, structure: Structure):
        self.group = group
        self.structure = structure
        self.is_representative = True
        self._primitive: Structure | None = None

    @property
    def primitive(self) -> Structure:
        if self._primitive is None:
            self._primitive = self.structure.get_reduced_structure().get_primitive_structure()
        return self._primitive

    def could_match(self, other: _Candidate) -> bool:
        """Cheap necessary condition: same number of primitive sites, volume per atom within 30%."""
        if len(self.primitive) != len(other.primitive):
            return False
        v1 = self.primitive.volume / len(self.primitive)
        v2 = other.primitive.volume / len(other.primitive)
        return abs(v1 - v2) / max(v1, v2) < 0.3
