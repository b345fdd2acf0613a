"""Shared fixtures: real data, small, built once per run."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_SOURCES = ROOT.parent / "shared" / "data" / "sources"
DEFAULT_STORE = ROOT / "precomputed" / "dataset"
# the smallest model of every encoder kind: training, checkpoint and explorer tests run it in seconds
TINY_MODEL = {
    "embed_dim": 16,
    "crystal": {"hidden": 16, "num_layers": 1, "potential_bins": 8},
    "dos": {"d_model": 16, "n_layers": 1, "n_heads": 2, "ff_mult": 2, "n_frequencies": 4},
    "density": {"layers": [1, 1, 1, 1], "cardinality": 2, "base_width": 16, "base_planes": 4, "stem_channels": 4,
                "expansion": 2, "stem_kernel": 3},
}


def _can_install_system_packages() -> bool:
    """What scripts/setup.sh checks before it apt-installs GPAW and Chromium: root, or password-less sudo."""
    if not shutil.which("apt-get"):
        return False
    if os.geteuid() == 0:
        return True
    return bool(shutil.which("sudo")) and subprocess.run(["sudo", "-n", "true"], capture_output=True, check=False).returncode == 0


def skip_unless_ci(reason: str) -> NoReturn:
    """Skip a test whose system dependency (GPAW, Chromium) is missing on a developer's machine. Under CI
    (CI=true) on a machine where scripts/setup.sh could apt-install it, a missing one is a failure, not a
    silent skip."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes") and _can_install_system_packages():
        pytest.fail(f"CI ran scripts/setup.sh with apt available, yet: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_sources() -> Path:
    if not SHARED_SOURCES.exists():
        pytest.skip(f"real source data not present at {SHARED_SOURCES}")
    return SHARED_SOURCES


@pytest.fixture(scope="session")
def default_store():
    from mlcm_core import load_dataset

    if not (DEFAULT_STORE / "manifest.json").exists():
        pytest.fail(f"the default dataset is missing at {DEFAULT_STORE}: run `mlcm data build-default`")
    return load_dataset(DEFAULT_STORE)


@pytest.fixture(scope="session")
def real_records(default_store):
    """A handful of real materials from the shipped store: MP structures with labels, MultiMat DOS+density."""
    from mlcm_core.data.record import DensityData, DOSData, MaterialRecord

    t = default_store.table
    mp = t[(t["source"] == "matminer-0.3.9") & t["band_gap_mp_pbe"].notna()].head(4)
    mm = t[(t["source"] == "multimat-mp") & t["has_dos"] & t["has_charge_density"]].head(3)
    records = [MaterialRecord(id=r.id, source=r.source, structure=default_store.structure(r.id),
                              labels={"band_gap_mp_pbe": r.band_gap_mp_pbe}) for r in mp.itertuples()]
    dos = default_store.dos(mm["id"].tolist())
    dens = default_store.density(mm["id"].tolist())
    for k, r in enumerate(mm.itertuples()):
        records.append(MaterialRecord(
            id=r.id, source=r.source,
            dos=DOSData(total=dos[k], reference=r.dos_reference, theory=r.dos_theory, broadening=r.dos_broadening),
            density=DensityData(grid=dens[k], units=r.density_units, theory=r.density_theory,
                                convention=r.density_convention)))
    return records
