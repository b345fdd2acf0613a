"""The diverse campaign order (mlcm_core/dft/pool.py): rare strata first, cost weighed, deterministic."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from mlcm_core.dft.pool import campaign_order, diverse_order, material_features
from tests.conftest import DEFAULT_STORE


def test_features_name_every_stratum():
    f = material_features(["O", "Fe", "O"], "cubic", 7, 2.1, True)
    assert f == ["el:Fe", "el:O", "cs:cubic", "sites:5-8", "gap:semiconductor", "mag:spin"]
    assert material_features(["Cu"], None, 1, 0.0, False)[1:] == ["cs:unknown", "sites:1-2", "gap:metal", "mag:none"]
    assert material_features(["Na", "Cl"], "cubic", 2, float("nan"), False)[-2] == "gap:unknown"
    assert material_features(["C"], "hexagonal", 4, 5.5, False)[-2] == "gap:insulator"


def test_rare_strata_come_first_and_cost_is_weighed():
    cubic_si = ["el:Si", "cs:cubic", "sites:1-2", "gap:semiconductor", "mag:none"]
    candidates = [
        ("a", 10.0, cubic_si),  # the stratum the corpus already holds many of
        ("b", 10.0, ["el:Si", "cs:monoclinic", "sites:1-2", "gap:semiconductor", "mag:none"]),
        ("c", 10.0, ["el:Ti", "cs:cubic", "sites:1-2", "gap:metal", "mag:none"]),
        ("d", 4000.0, ["el:U", "cs:triclinic", "sites:15-20", "gap:unknown", "mag:spin"]),  # over max_seconds
    ]
    order = diverse_order(candidates, computed=[cubic_si] * 50, max_seconds=3600)
    assert order[-1] == "d" and order[-2] == "a"  # the dear one waits; the common one comes last of the rest
    assert order[0] == "c"  # new element and new gap class beat a new crystal system alone
    # 100x dearer halves nothing below: with cost_exponent 0.5 a 100x cost needs 10x the novelty
    cheap_common = ("x", 1.0, cubic_si)
    dear_rare = ("y", 100.0, ["el:Pu", "cs:triclinic", "sites:9-14", "gap:insulator", "mag:spin"])
    assert diverse_order([cheap_common, dear_rare], computed=[])[0] == "x"  # both novel: novelty 5 vs 5/10
    assert diverse_order([cheap_common, dear_rare], computed=[cubic_si] * 100)[0] == "y"
    assert diverse_order(candidates, computed=[cubic_si] * 50) == diverse_order(list(reversed(candidates)),
                                                                                 computed=[cubic_si] * 50)


@pytest.mark.slow
def test_the_real_pool_in_diverse_order_is_less_cubic_than_cheapest_first():
    """On a slice of the real MP pool: the diverse order's first 100 hold several times more low-symmetry
    cells than the cheapest 100 (the corpus so far: 6 of 605 MP materials orthorhombic or monoclinic)."""
    from mlcm_core.cli import _dft_pool
    from mlcm_core.data.store import DatasetStore
    from mlcm_core.dft.engine import order_pool

    store = DatasetStore.open(DEFAULT_STORE)
    pool = _dft_pool(Path(DEFAULT_STORE), 6, sources="mp")
    pool = dict(sorted(pool.items())[:600])  # a deterministic slice keeps the test short
    diverse = [m for m, _ in campaign_order(store, pool, max_sites=6)][:100]
    cheapest = [m for m, _ in order_pool(pool, max_sites=6)][:100]
    t = store.table.set_index("id")

    def low_symmetry(ids):
        cs = Counter(t.loc[ids, "crystal_system"])
        return cs["orthorhombic"] + cs["monoclinic"] + cs["triclinic"]

    assert low_symmetry(diverse) > 3 * low_symmetry(cheapest)  # measured 29 vs 6
