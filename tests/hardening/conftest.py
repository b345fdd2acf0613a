"""Fixtures for the hardening tests: a tiny store, a tiny checkpoint, a tiny explorer folder, snapshots.

Everything is built in temporary directories from structures written here (no network, no shipped data
needed), once per session, in a few seconds:

* the store holds 16 simple crystals (elements and binaries); their DOS and charge densities are SYNTHETIC
  TEST FIXTURES (Gaussian peaks placed by atomic number, periodic Gaussian atoms), labelled as such in every
  theory/provenance field: they are not physics, they only give the pipeline well-formed arrays;
* the checkpoint is a randomly initialised tiny MultimodalModel (and one with optimizer/RNG state);
* the explorer folder is assembled by hand in build_precomputed's layout (random unit vectors instead of
  real embeddings, a fixed 2-D map): the tests here load and refuse files, they never rank.

Tests that damage something first copy it (``copy_tree``) so the session fixtures stay intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from mlcm_core.data.conventions import DENSITY_GRID, DOS_ENERGIES
from tests.conftest import TINY_MODEL

FIXTURE_TAG = "SYNTHETIC TEST FIXTURE (not physics)"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)


# ---- helpers -------------------------------------------------------------------------------------


def tree_digest(root: Path) -> dict[str, str]:
    """{relative path: sha256 (files) or 'dir'} of everything under ``root``: equal before/after = untouched."""
    root = Path(root)
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def simple_structures() -> dict:
    """16 small ordered crystals, all distinct (so each is its own de-duplication group)."""
    from pymatgen.core import Lattice, Structure

    def fcc(el: str, a: float):
        return Structure(Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]]), [el], [[0, 0, 0]])

    def bcc(el: str, a: float):
        return Structure(Lattice([[-a / 2, a / 2, a / 2], [a / 2, -a / 2, a / 2], [a / 2, a / 2, -a / 2]]), [el], [[0, 0, 0]])

    def diamond(el: str, a: float):
        return Structure(Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]]), [el, el],
                         [[0, 0, 0], [0.25, 0.25, 0.25]])

    def rocksalt(a_el: str, b_el: str, a: float):
        return Structure(Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]]), [a_el, b_el],
                         [[0, 0, 0], [0.5, 0.5, 0.5]])

    def cscl(a_el: str, b_el: str, a: float):
        return Structure(Lattice.cubic(a), [a_el, b_el], [[0, 0, 0], [0.5, 0.5, 0.5]])

    return {
        "mp-test-al": fcc("Al", 4.04), "mp-test-cu": fcc("Cu", 3.61), "mp-test-ag": fcc("Ag", 4.09),
        "mp-test-li": bcc("Li", 3.44), "mp-test-na": bcc("Na", 4.23), "mp-test-w": bcc("W", 3.16),
        "mp-test-si": diamond("Si", 5.47), "mp-test-c": diamond("C", 3.57), "mp-test-ge": diamond("Ge", 5.66),
        "mp-test-nacl": rocksalt("Na", "Cl", 5.64), "mp-test-mgo": rocksalt("Mg", "O", 4.21),
        "mp-test-lif": rocksalt("Li", "F", 4.03), "mp-test-kcl": rocksalt("K", "Cl", 6.29),
        "mp-test-cscl": cscl("Cs", "Cl", 4.12), "mp-test-nial": cscl("Ni", "Al", 2.88), "mp-test-cuzn": cscl("Cu", "Zn", 2.95),
    }


def synthetic_dos(structure) -> np.ndarray:
    """Test fixture: one Gaussian per site at an energy set by Z (not a physical DOS)."""
    dos = np.full(DOS_ENERGIES.shape, 0.05)
    for site in structure:
        centre = -9.0 + (0.73 * site.specie.Z) % 18.0
        dos += np.exp(-0.5 * ((DOS_ENERGIES - centre) / 0.4) ** 2)
    return dos.astype(np.float32)


def synthetic_density(structure) -> np.ndarray:
    """Test fixture: periodic Gaussian 'atoms' of weight Z on the fractional 32^3 grid (not a real density)."""
    g = (np.arange(DENSITY_GRID) + 0.5) / DENSITY_GRID
    grid = np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)
    rho = np.full(len(grid), 1e-3)
    for site in structure:
        d = grid - site.frac_coords
        d -= np.round(d)
        cart = d @ structure.lattice.matrix
        rho += site.specie.Z * np.exp(-np.einsum("ij,ij->i", cart, cart) / (2 * 0.6**2))
    return rho.reshape((DENSITY_GRID,) * 3).astype(np.float32)


def tiny_records():
    from mlcm_core.data.record import DensityData, DOSData, MaterialRecord

    records = []
    for k, (mid, s) in enumerate(simple_structures().items()):
        records.append(MaterialRecord(
            id=mid, source="test-fixture", structure=s, provenance=FIXTURE_TAG,
            dos=DOSData(total=synthetic_dos(s), reference="efermi", theory=FIXTURE_TAG, broadening=FIXTURE_TAG,
                        convention=FIXTURE_TAG),
            density=DensityData(grid=synthetic_density(s), units="arbitrary", theory=FIXTURE_TAG,
                                convention=FIXTURE_TAG) if k % 4 != 3 else None))
    return records


# ---- session fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    """A 16-material store (structure + synthetic DOS for all, synthetic density for 12)."""
    from mlcm_core.data.store import DatasetStore

    store = DatasetStore.create(tmp_path_factory.mktemp("hardening-store") / "store", description=FIXTURE_TAG)
    store.append(tiny_records(), "fixture", {"source": FIXTURE_TAG})
    return store


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random-init model saved with save_checkpoint (weights only) -> its directory."""
    import torch

    from mlcm_core.models.multimodal import MultimodalConfig, MultimodalModel

    torch.manual_seed(0)
    model = MultimodalModel(MultimodalConfig.cpu().with_overrides(TINY_MODEL))
    return model.save_checkpoint(tmp_path_factory.mktemp("hardening-ckpt") / "ckpt")


@pytest.fixture(scope="session")
def training_checkpoint(tmp_path_factory):
    """A checkpoint with training_state.pt (AdamW state, RNG state) beside the weights."""
    import torch

    from mlcm_core.models.multimodal import MultimodalConfig, MultimodalModel
    from mlcm_core.models.checkpoint import get_rng_state, save_checkpoint

    torch.manual_seed(0)
    model = MultimodalModel(MultimodalConfig.cpu().with_overrides(TINY_MODEL))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return save_checkpoint(tmp_path_factory.mktemp("hardening-train") / "step-00000007", model, step=7, epoch=1,
                           optimizer=opt, rng={"rank0": get_rng_state()})


def build_explore_dir(store, checkpoint: Path, out: Path) -> Path:
    """build_precomputed's layout without embedding or UMAP: random unit vectors and a fixed map."""
    from mlcm_core.explore.build import EXPLORE_DIR, MANIFEST_FORMAT, _copy_checkpoint
    from mlcm_core.explore.embed import EmbeddingTable
    from mlcm_core.io import sha256_file
    from mlcm_core.explore.projection import UMAPProjection

    ex = out / EXPLORE_DIR
    ex.mkdir(parents=True)
    _copy_checkpoint(checkpoint, ex / "model")
    weights_sha = sha256_file(ex / "model" / "model.safetensors")
    ids = np.array(store.table["id"].astype(str).tolist())
    rng = np.random.default_rng(0)
    vec = rng.normal(size=(len(ids), 16)).astype(np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    xy = rng.normal(size=(len(ids), 2)).astype(np.float32)
    table = EmbeddingTable(ids=ids, rows={"crystal": np.arange(len(ids))}, vectors={"crystal": vec},
                           meta={"checkpoint_sha256": weights_sha, "note": FIXTURE_TAG})
    table.save(ex)
    UMAPProjection(train_vectors=vec, embedding=xy, params={"n_neighbors": 5, "note": FIXTURE_TAG}).save(ex)
    np.savez(ex / "map.npz", ids=ids, xy=xy, placed_by=np.array(["umap"] * len(ids)))
    files = {n: sha256_file(ex / n) for n in ("embeddings.npz", "projection.npz", "map.npz",
                                              "model/model.safetensors", "model/checkpoint.json")}
    manifest = {"format": MANIFEST_FORMAT, "version": 1, "note": FIXTURE_TAG,
                "store": {"path": os.path.relpath(Path(store.root).resolve(), ex.resolve()),
                          "shards": [s["name"] for s in store.manifest["shards"]]},
                "checkpoint": {"sha256": weights_sha, "step": 0}, "files": files}
    (ex / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


@pytest.fixture(scope="session")
def explore_dir(tiny_store, tiny_checkpoint, tmp_path_factory):
    """A precomputed folder (``<dir>/explore``) over the tiny store."""
    return build_explore_dir(tiny_store, tiny_checkpoint, tmp_path_factory.mktemp("hardening-pre"))


def rewrite_manifest_digest(manifest_path: Path, name: str, file_path: Path) -> None:
    """Make an explorer/checkpoint manifest vouch for ``file_path`` (what an attacker who owns the folder does)."""
    doc = json.loads(manifest_path.read_text())
    doc["files"][name] = hashlib.sha256(file_path.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(doc))
