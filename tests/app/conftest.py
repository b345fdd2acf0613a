"""Headless view tests: one AppState over the shipped dataset and the explorer build (shared per session).

The explorer data is MLCM_EXPLORE when set, else precomputed/explore, else the development build
var/explore_dev/explore; without any, the tests that need it are skipped with the command to build it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CANDIDATES = [ROOT / "precomputed" / "explore", ROOT / "var" / "explore_dev" / "explore"]


def _explore_path() -> Path | None:
    if os.environ.get("MLCM_EXPLORE"):
        return Path(os.environ["MLCM_EXPLORE"])
    return next((p for p in CANDIDATES if (p / "manifest.json").exists()), None)


@pytest.fixture(scope="session")
def explore_path() -> Path:
    p = _explore_path()
    if p is None:
        pytest.skip("no explorer data: mlcm project --store precomputed/dataset --out precomputed")
    return p


@pytest.fixture
def state(explore_path):
    from app.state import AppState

    return AppState(explore_path=str(explore_path))


@pytest.fixture(scope="session")
def material_with_all_three(explore_path) -> str:
    from app.state import AppState

    t = AppState(explore_path=str(explore_path)).table
    m = t[t["has_structure"] & t["has_dos"] & t["has_charge_density"]]
    return str(m["id"].iloc[0])
