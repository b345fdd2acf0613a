"""Candidate filters: property ranges (with an explicit choice for unknown values), elements, sources.

Why "include unknown" is a choice the user makes: most labels are missing for most materials (elastic
moduli exist for ~1k of ~18k). Silently dropping unknowns hides candidates that were simply never
computed; silently keeping them makes a range filter look ineffective. So every range says what to do
with a missing value (default: drop), and so does the element filter for materials without a known
composition (e.g. DOS/density-only entries).

Filters are plain data (``to_dict`` / ``from_dict``) so that an export can record exactly which were
applied.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["Filters", "RangeFilter", "element_matrix"]

_MAX_Z = 119


@dataclass(frozen=True)
class RangeFilter:
    """``min <= table[column] <= max`` (either bound may be None); NaN rows kept iff ``include_unknown``."""

    column: str
    min: float | None = None
    max: float | None = None
    include_unknown: bool = False

    def __post_init__(self) -> None:
        for name in ("min", "max"):
            v = getattr(self, name)
            if v is not None and not np.isfinite(float(v)):
                raise ValueError(f"{self.column}: {name} must be a finite number or None, got {v!r}")
        if self.min is not None and self.max is not None and float(self.min) > float(self.max):
            raise ValueError(f"{self.column}: min {self.min} > max {self.max}")


def _symbols(elements: Iterable[str]) -> tuple[str, ...]:
    from pymatgen.core.periodic_table import Element

    out = []
    for e in elements:
        e = str(e).strip()
        if not Element.is_valid_symbol(e):
            raise ValueError(f"unknown element symbol {e!r}")
        out.append(e)
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class Filters:
    """What a candidate must satisfy.

    Attributes:
        ranges: inclusive property ranges (label or other numeric table columns).
        elements_include: the composition must contain ALL of these.
        elements_exclude: the composition must contain NONE of these.
        include_unknown_elements: keep materials whose composition is unknown when an element filter is set.
        sources: keep only these ``source`` values (None = all).
    """

    ranges: tuple[RangeFilter, ...] = ()
    elements_include: tuple[str, ...] = ()
    elements_exclude: tuple[str, ...] = ()
    include_unknown_elements: bool = False
    sources: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ranges", tuple(self.ranges))
        object.__setattr__(self, "elements_include", _symbols(self.elements_include))
        object.__setattr__(self, "elements_exclude", _symbols(self.elements_exclude))
        if self.sources is not None:
            object.__setattr__(self, "sources", tuple(str(s) for s in self.sources))
        both = set(self.elements_include) & set(self.elements_exclude)
        if both:
            raise ValueError(f"elements both included and excluded: {sorted(both)}")

    @classmethod
    def build(cls, ranges: Mapping[str, Sequence[float | None]] | None = None, *,
              include_unknown: bool | Mapping[str, bool] = False, elements_include: Iterable[str] = (),
              elements_exclude: Iterable[str] = (), sources: Iterable[str] | None = None) -> Filters:
        """Convenience: ``ranges={"band_gap_mp_pbe": (1, 3)}``; ``include_unknown`` for all, or per column
        (the key "elements" sets ``include_unknown_elements``)."""
        def unknown(col: str) -> bool:
            if isinstance(include_unknown, Mapping):
                return bool(include_unknown.get(col, False))
            return bool(include_unknown)

        rs = []
        for col, bounds in (ranges or {}).items():
            if len(bounds) != 2:
                raise ValueError(f"{col}: a range is (min, max), got {bounds!r}")
            lo, hi = bounds
            rs.append(RangeFilter(col, None if lo is None else float(lo), None if hi is None else float(hi), unknown(col)))
        return cls(ranges=tuple(rs), elements_include=tuple(elements_include), elements_exclude=tuple(elements_exclude),
                   include_unknown_elements=unknown("elements"),
                   sources=None if sources is None else tuple(sources))

    @property
    def is_empty(self) -> bool:
        return not self.ranges and not self.elements_include and not self.elements_exclude and self.sources is None

    # ---- evaluation ----------------------------------------------------------------------------
    def mask(self, table: pd.DataFrame, elements: np.ndarray | None = None) -> np.ndarray:
        """(len(table),) bool: rows passing every filter.

        Args:
            table: materials with the filtered columns, ``source`` and ``elements`` (arrays of symbols).
            elements: optional precomputed ``element_matrix(table)`` (saves time on large tables).
        """
        keep = np.ones(len(table), dtype=bool)
        for r in self.ranges:
            if r.column not in table.columns:
                raise KeyError(f"unknown filter column {r.column!r}; numeric columns: {numeric_columns(table)}")
            try:
                v = pd.to_numeric(table[r.column], errors="raise").to_numpy(dtype=np.float64, na_value=np.nan)
            except (TypeError, ValueError) as e:
                raise TypeError(f"column {r.column!r} is not numeric") from e
            known = np.isfinite(v)
            ok = known.copy()
            if r.min is not None:
                ok &= v >= r.min
            if r.max is not None:
                ok &= v <= r.max
            keep &= ok | (~known & r.include_unknown)
        if self.sources is not None:
            keep &= table["source"].isin(self.sources).to_numpy()
        if self.elements_include or self.elements_exclude:
            mat = element_matrix(table) if elements is None else elements
            known = mat.any(axis=1)
            ok = np.ones(len(table), dtype=bool)
            z_in = _zs(self.elements_include)
            z_out = _zs(self.elements_exclude)
            if len(z_in):
                ok &= mat[:, z_in].all(axis=1)
            if len(z_out):
                ok &= ~mat[:, z_out].any(axis=1)
            keep &= np.where(known, ok, self.include_unknown_elements)
        return keep

    # ---- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "ranges": [{"column": r.column, "min": r.min, "max": r.max, "include_unknown": r.include_unknown}
                       for r in self.ranges],
            "elements_include": list(self.elements_include),
            "elements_exclude": list(self.elements_exclude),
            "include_unknown_elements": self.include_unknown_elements,
            "sources": None if self.sources is None else list(self.sources),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Filters:
        unknown = set(data) - {"ranges", "elements_include", "elements_exclude", "include_unknown_elements", "sources"}
        if unknown:
            raise ValueError(f"unknown filter fields {sorted(unknown)}")
        return cls(ranges=tuple(RangeFilter(**r) for r in data.get("ranges", [])),
                   elements_include=tuple(data.get("elements_include", ())),
                   elements_exclude=tuple(data.get("elements_exclude", ())),
                   include_unknown_elements=bool(data.get("include_unknown_elements", False)),
                   sources=None if data.get("sources") is None else tuple(data["sources"]))


def _zs(symbols: Sequence[str]) -> np.ndarray:
    from pymatgen.core.periodic_table import Element

    return np.array([Element(s).Z for s in symbols], dtype=np.int64)


def element_matrix(table: pd.DataFrame) -> np.ndarray:
    """(n, 119) bool: which elements (by Z) each material contains; all False where unknown.

    Uses the ``elements`` column (symbol arrays) and falls back to parsing ``formula``.
    """
    from pymatgen.core import Composition
    from pymatgen.core.periodic_table import Element

    z_of = {Element.from_Z(z).symbol: z for z in range(1, _MAX_Z)}
    out = np.zeros((len(table), _MAX_Z), dtype=bool)
    els = table["elements"] if "elements" in table else pd.Series([None] * len(table))
    formulas = table["formula"] if "formula" in table else pd.Series([None] * len(table))
    cache: dict[str, list[int]] = {}
    for k, (e, f) in enumerate(zip(els, formulas)):
        if e is not None and not (isinstance(e, float) and np.isnan(e)) and len(e):
            out[k, [z_of[s] for s in e if s in z_of]] = True
        elif isinstance(f, str) and f:
            if f not in cache:
                try:
                    cache[f] = [el.Z for el in Composition(f).elements]
                except Exception:  # noqa: BLE001  (an unparsable formula is an unknown composition)
                    cache[f] = []
            out[k, cache[f]] = True
    return out


def numeric_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c]) and table[c].dtype != bool]
