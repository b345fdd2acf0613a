"""Find materials by what a person types: a material id, a formula or a chemical system.

One function (``find_materials``) behind the dashboard's search box and ``Explorer.find``, so a notebook and
the app read a query the same way:

* a material id of the table (``mp-149``, ``perov5:12``; exact, else ignoring case);
* a chemical system, element symbols joined by ``-`` (``Li-Fe-O``; any order, any case): the materials whose
  elements are exactly that set;
* a formula in any form pymatgen's ``Composition`` reads (``SiO2``, ``O2Si``, ``Si O2``, ``(SiO2)2``): the
  materials with that reduced formula (every polymorph).

A query that matches nothing raises ``MaterialNotFound``; one that cannot be read (an element that does not
exist, a formula pymatgen refuses) raises ``MaterialQueryError``; both messages say which and why.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = ["MaterialMatch", "MaterialNotFound", "MaterialQueryError", "find_materials", "reduced_formula"]

MAX_QUERY_CHARS = 200
# what an id looks like (a lower-case source prefix, then - or :, ending in a digit): "mp-149", "perov5:12",
# "carbon24:C-53848-9695-1"; a chemical system starts with an upper-case symbol ("Li-Fe-O")
_ID_LIKE = re.compile(r"^[a-z][a-z0-9_]*[-:]\S*\d$")
KINDS = ("id", "formula", "chemical system")


class MaterialQueryError(ValueError):
    """A search text that is not a material id, a formula or a chemical system; the message says why."""


class MaterialNotFound(MaterialQueryError):
    """A well-formed search that no material matches."""


@dataclass(frozen=True)
class MaterialMatch:
    """The materials a search found.

    Attributes:
        query: the text searched (stripped).
        kind: "id", "formula" or "chemical system".
        key: the query as matched: the id, the reduced formula ("SiO2") or the sorted system ("Fe-Li-O").
        ids: the matching ids, in table order (an id search: that one id).
    """

    query: str
    kind: str
    key: str
    ids: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """In words, e.g. "formula SiO2: 36 materials", "id mp-149"."""
        if self.kind == "id":
            return f"id {self.key}"
        n = len(self.ids)
        return f"{self.kind} {self.key}: {n:,} material{'s' if n != 1 else ''}"


def reduced_formula(text: str) -> str:
    """The reduced formula of ``text`` read by pymatgen (``O2Si`` -> ``SiO2``); MaterialQueryError if it
    cannot be read or names something that is not an element."""
    from pymatgen.core import Composition

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            comp = Composition(text)
            if not comp.valid:  # pymatgen reads "Xx2" as a dummy species
                bad = sorted(str(getattr(e, "symbol", e)) for e in comp if not _is_element(e))
                raise MaterialQueryError(f"no material matches {text!r}: {', '.join(map(repr, bad))} "
                                         f"{'is not an element symbol' if len(bad) == 1 else 'are not element symbols'}")
            if comp.num_atoms <= 0:
                raise MaterialQueryError(f"{text!r} has no atoms")
            return comp.reduced_formula
    except MaterialQueryError:
        raise
    except Exception as e:  # noqa: BLE001 - pymatgen raises ValueError, KeyError, ... for unreadable text
        raise MaterialQueryError(
            f"{text!r} is not a material id (e.g. mp-149), a formula (e.g. SiO2; element symbols are case "
            f"sensitive) or a chemical system (e.g. Li-Fe-O): {e}") from None


def _is_element(species) -> bool:
    from pymatgen.core.periodic_table import Element

    return Element.is_valid_symbol(str(getattr(species, "symbol", species)))


def _chemical_system(text: str) -> list[str]:
    """The sorted element symbols of "Li-Fe-O" (any case, spaces around '-' allowed)."""
    from pymatgen.core.periodic_table import Element

    out = set()
    for part in text.split("-"):
        tok = part.strip()
        if not tok:
            raise MaterialQueryError(f"{text!r}: an empty element in the chemical system (write e.g. Li-Fe-O)")
        sym = tok[:1].upper() + tok[1:].lower()
        if not Element.is_valid_symbol(sym):
            raise MaterialQueryError(f"no material matches {text!r}: {tok!r} is not an element symbol "
                                     "(a chemical system is element symbols joined by '-', e.g. Li-Fe-O)")
        out.add(sym)
    return sorted(out)


def find_materials(table: pd.DataFrame, text: str, formula_key: pd.Series | None = None) -> MaterialMatch:
    """The materials of ``table`` (columns id, formula, elements) that ``text`` names (see the module docstring).

    Args:
        table: one row per material (``Explorer.table``, a store table).
        text: a material id, a formula or a chemical system.
        formula_key: the reduced formula of each row, aligned with ``table`` (default: its ``formula`` column,
            which the store writes as the structure's reduced formula).

    Raises:
        MaterialNotFound: nothing matches (the message names the id, reduced formula or system searched).
        MaterialQueryError: the text is none of the three (the message says why).
    """
    q = str(text or "").strip()
    if not q:
        raise MaterialQueryError("type a material id (e.g. mp-149), a formula (e.g. SiO2) or a chemical system "
                                 "(e.g. Li-Fe-O)")
    if len(q) > MAX_QUERY_CHARS:
        raise MaterialQueryError(f"the search is {len(q)} characters long; the limit is {MAX_QUERY_CHARS}")
    ids = table["id"].astype(str)
    hit = np.flatnonzero(ids.to_numpy() == q)
    if not len(hit):
        hit = np.flatnonzero(ids.str.lower().to_numpy() == q.lower())
    if len(hit):
        mid = str(ids.iloc[hit[0]])
        return MaterialMatch(query=q, kind="id", key=mid, ids=[mid])
    if _ID_LIKE.match(q):
        raise MaterialNotFound(f"no material has the id {q!r} (ids look like mp-149, perov5:12)")
    if "-" in q:
        elements = _chemical_system(q)
        key = "-".join(elements)
        want = frozenset(elements)
        sets = [frozenset(map(str, e)) if isinstance(e, (list, tuple, np.ndarray)) else None
                for e in table["elements"]]
        found = [i for i, s in zip(ids, sets) if s == want]
        if not found:
            raise MaterialNotFound(f"no material matches {q!r} (no material is made of exactly {key})")
        return MaterialMatch(query=q, kind="chemical system", key=key, ids=found)
    key = reduced_formula(q)
    formulas = (formula_key if formula_key is not None else table["formula"]).astype(object)
    found = ids[(formulas == key).to_numpy()].tolist()
    if not found:
        raise MaterialNotFound(f"no material matches {q!r} (reduced formula {key})")
    return MaterialMatch(query=q, kind="formula", key=key, ids=found)
