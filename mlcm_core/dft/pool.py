"""Which structures the DFT campaign computes next: a diverse order, not the cheapest first.

Cheapest-first filled the corpus with small cubic cells (399 of the first 605 MP materials were cubic, 5 were
orthorhombic, 1 monoclinic), far from what users query. ``diverse_order`` is a documented, deterministic greedy
order over five strata at once:

* every element (``el:<symbol>``), the crystal system (``cs:``), the size (``sites:`` 1-2, 3-4, 5-8, 9-14,
  15-20), the electronic class from MP's PBE gap (``gap:`` metal < 0.05 eV, semiconductor < 3 eV, insulator,
  unknown) and magnetism as the protocol treats it (``mag:`` spin-polarised or not);
* a candidate's **novelty** is the sum over its strata of 1 / (1 + how many computed materials share it)
  (the corpus so far, then each pick as it is made), its elements averaged into one stratum (so a
  quaternary does not outweigh its crystal system four times), so a rare element or an unseen crystal
  system counts most, and a stratum stops counting once it is common;
* each step picks the highest novelty / estimated_seconds ** ``cost_exponent`` (default 0.5: a 4x dearer
  structure needs twice the novelty), ties broken by cost then id; candidates above ``max_seconds`` wait.

``coverage`` counts a set of materials by element and crystal system for the docs' table and plot.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["SITE_BINS", "campaign_order", "coverage", "diverse_order", "material_features"]

SITE_BINS = ((1, 2), (3, 4), (5, 8), (9, 14), (15, 20))
GAP_CLASSES = ((0.05, "metal"), (3.0, "semiconductor"), (math.inf, "insulator"))


def _site_bin(n: int) -> str:
    for lo, hi in SITE_BINS:
        if lo <= n <= hi:
            return f"sites:{lo}-{hi}"
    return "sites:>20"


def _gap_class(gap: float | None) -> str:
    if gap is None or not math.isfinite(gap):
        return "gap:unknown"
    return "gap:" + next(name for limit, name in GAP_CLASSES if gap < limit)


def material_features(elements: Iterable[str], crystal_system: str | None, nsites: int, gap_ev: float | None,
                      spin_polarized: bool) -> list[str]:
    """The strata a material belongs to (see the module docstring)."""
    return [*(f"el:{e}" for e in sorted(set(elements))), f"cs:{crystal_system or 'unknown'}", _site_bin(int(nsites)),
            _gap_class(gap_ev), f"mag:{'spin' if spin_polarized else 'none'}"]


def diverse_order(candidates: Sequence[tuple[str, float, list[str]]], computed: Iterable[list[str]] = (),
                  cost_exponent: float = 0.5, max_seconds: float | None = None) -> list[str]:
    """Ids of ``candidates`` ((id, estimated seconds, features)) in the diverse order.

    ``computed``: the features of materials already in the corpus (they lower their strata's novelty).
    Candidates over ``max_seconds`` are appended at the end, cheapest first.
    """
    eligible = [c for c in candidates if max_seconds is None or c[1] <= max_seconds]
    later = sorted((c for c in candidates if max_seconds is not None and c[1] > max_seconds), key=lambda c: (c[1], c[0]))
    if not eligible:
        return [c[0] for c in later]
    names = sorted({f for c in eligible for f in c[2]})
    column = {f: j for j, f in enumerate(names)}
    x = np.zeros((len(eligible), len(names)), np.float32)  # (candidates, features) weights
    for i, (_, _, feats) in enumerate(eligible):
        n_el = sum(f.startswith("el:") for f in feats)
        x[i, [column[f] for f in feats]] = [1.0 / n_el if f.startswith("el:") else 1.0 for f in feats]
    counts = np.zeros(len(names))
    for feats in computed:
        for f in feats:
            if f in column:
                counts[column[f]] += 1
    cost = np.array([max(c[1], 1.0) for c in eligible]) ** cost_exponent
    tie = np.lexsort((np.array([c[0] for c in eligible]), np.array([c[1] for c in eligible])))
    rank_of = np.empty(len(eligible), int)
    rank_of[tie] = np.arange(len(eligible))
    left = np.ones(len(eligible), bool)
    order: list[str] = []
    for _ in range(len(eligible)):
        score = (x @ (1.0 / (1.0 + counts))) / cost
        score[~left] = -np.inf
        best = np.flatnonzero(score == score.max())
        pick = int(best[np.argmin(rank_of[best])])
        left[pick] = False
        counts += x[pick] > 0
        order.append(eligible[pick][0])
    return order + [c[0] for c in later]


def coverage(rows: Sequence[dict[str, Any]]) -> dict[str, Counter]:
    """Counts by element and by crystal system of materials given as {'elements': [...], 'crystal_system': ...}."""
    elements: Counter = Counter()
    systems: Counter = Counter()
    for r in rows:
        elements.update(set(r["elements"]))
        systems[r.get("crystal_system") or "unknown"] += 1
    return {"elements": elements, "crystal_systems": systems}


COMPUTED_SOURCES = ("gpaw-engine", "dft-seed")  # dos_source of materials our engine has computed


def _row_features(row: Any, spin: bool) -> list[str]:
    elements = row.elements if isinstance(row.elements, (list, tuple, np.ndarray)) else []
    gap = getattr(row, "band_gap_mp_pbe", None)
    return material_features(elements, row.crystal_system, int(row.nsites), None if gap is None else float(gap), spin)


def campaign_order(store: Any, structures: dict[str, Any], max_sites: int = 20, max_seconds: float | None = 3600.0,
                   cost_exponent: float = 0.5, protocol: Any = None) -> list[tuple[str, Any]]:
    """The eligible ``structures`` (engine.order_pool: sites, setups) as (id, CostEstimate) in the diverse order,
    novelty counted against the materials of ``store`` the engine has already computed."""
    from mlcm_core.dft.engine import order_pool
    from mlcm_core.dft.protocol import PROTOCOL

    protocol = protocol or PROTOCOL
    pool = dict(order_pool(structures, max_sites=max_sites, protocol=protocol))
    t = store.table.set_index("id")
    done = t[t["dos_source"].isin(COMPUTED_SOURCES) & t["has_structure"].astype(bool)]
    computed = [_row_features(r, protocol.spin_polarized(list(r.elements))) for r in done.itertuples()]
    rows = {r.Index: r for r in t.loc[list(pool)].itertuples()}
    candidates = [(mid, cost.seconds, _row_features(rows[mid], cost.spin)) for mid, cost in pool.items()]
    return [(mid, pool[mid]) for mid in diverse_order(candidates, computed, cost_exponent, max_seconds)]
