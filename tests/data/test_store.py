"""The dataset store: round trips, append-only shards, merging, checksums, atomicity."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mlcm_core.data.record import DOSData, MaterialRecord
from mlcm_core.data.store import ChecksumError, DatasetStore, StoreError, sha256_file


@pytest.fixture
def store(tmp_path, real_records):
    s = DatasetStore.create(tmp_path / "ds")
    s.append(real_records, "base", {"source": "test"})
    return s


def test_round_trip_values(store, real_records, default_store):
    t = store.table.set_index("id")
    assert len(t) == len(real_records)
    for rec in real_records:
        if rec.structure is not None:
            back = store.structure(rec.id)
            assert back.composition == rec.structure.composition
            assert np.allclose(back.lattice.matrix, rec.structure.lattice.matrix)
            assert t.loc[rec.id, "band_gap_mp_pbe"] == pytest.approx(rec.labels["band_gap_mp_pbe"])
        if rec.dos is not None:
            np.testing.assert_allclose(store.dos(rec.id)[0], rec.dos.total, rtol=2e-3, atol=1e-3)  # float16
        if rec.density is not None:
            back = store.density(rec.id)[0]
            err = np.abs(back - rec.density.grid).mean() / np.abs(rec.density.grid).mean()
            assert err < 0.01  # 8-bit asinh quantization


def test_modality_masks_and_info(store):
    info = store.info()
    assert info["materials"] == 7
    assert info["modalities"] == {"structure": 4, "dos": 3, "charge_density": 3}
    assert info["all_three"] == 0
    assert info["labels"]["band_gap_mp_pbe"] == 4


def test_append_only_and_merge(store, real_records):
    first = {p: sha256_file(p) for p in (store.root / "shards" / "base").iterdir()}
    mp = next(r for r in real_records if r.structure is not None)
    dos = np.exp(-0.5 * ((np.linspace(-10, 10, 601) + 2.0) / 0.3) ** 2).astype(np.float32)
    update = MaterialRecord(id=mp.id, source="gpaw", structure=mp.structure,
                            labels={"band_gap_gpaw_pbe": 1.23},
                            dos=DOSData(total=dos, reference="vbm", theory="PBE, GPAW", broadening="Gaussian 0.1 eV"))
    store.append([update], "gpaw-1", {"source": "test"})
    assert {p: sha256_file(p) for p in (store.root / "shards" / "base").iterdir()} == first
    reopened = DatasetStore.open(store.root)
    t = reopened.table.set_index("id")
    assert len(t) == len(real_records)  # merged, not duplicated
    row = t.loc[mp.id]
    assert bool(row["has_dos"]) and bool(row["has_structure"])
    assert row["source"] == "matminer-0.3.9" and row["dos_source"] == "gpaw"
    assert row["band_gap_gpaw_pbe"] == pytest.approx(1.23)
    assert row["band_gap_mp_pbe"] == pytest.approx(mp.labels["band_gap_mp_pbe"])
    np.testing.assert_allclose(reopened.dos(mp.id)[0], dos, atol=1e-3)
    with pytest.raises(StoreError, match="append-only"):
        reopened.append([update], "gpaw-1", {})


def test_flipped_byte_is_detected_and_named(store):
    arrays = next((store.root / "shards" / "base").glob("arrays*"))
    data = bytearray(arrays.read_bytes())
    data[len(data) // 2] ^= 0xFF
    arrays.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=arrays.name):
        DatasetStore.open(store.root)


def test_failed_append_leaves_store_unchanged(store, real_records, monkeypatch):
    import mlcm_core.data.store as store_mod

    before = (store.root / "manifest.json").read_text()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(store_mod, "_write_arrays", boom)
    with pytest.raises(OSError):
        store.append(real_records[-1:], "broken", {})
    assert (store.root / "manifest.json").read_text() == before
    assert sorted(p.name for p in (store.root / "shards").iterdir()) == ["base"]
    DatasetStore.open(store.root)  # still verifies


def test_manifest_lists_every_file_with_checksum(store):
    manifest = json.loads((store.root / "manifest.json").read_text())
    listed = {f for s in manifest["shards"] for f in s["files"]}
    on_disk = {str(p.relative_to(store.root)) for p in (store.root / "shards").rglob("*") if p.is_file()}
    assert listed == on_disk
    assert manifest["counts"]["materials"] == 7


def test_missing_store_and_bad_manifest(tmp_path, store):
    with pytest.raises(StoreError, match="no dataset store"):
        DatasetStore.open(tmp_path / "nowhere")
    bad = tmp_path / "bad"
    shutil.copytree(store.root, bad)
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        DatasetStore.open(bad)


def test_unknown_ids_raise(store):
    with pytest.raises(KeyError, match="unknown material"):
        store.dos(["nope"])
    mp_id = store.table.loc[store.table["has_structure"], "id"].iloc[0]
    with pytest.raises(KeyError, match="without this modality"):
        store.dos(mp_id)


def test_store_as_of_an_earlier_shard_is_what_it_was(default_store):
    """Append-only: the first N shards are the store as it was then (a report's inputs), read-only."""
    from mlcm_core.data.store import DatasetStore, StoreError

    n = len(default_store.manifest["shards"])
    earlier = DatasetStore.open(default_store.root, verify=False, shards=n - 1)
    last = default_store.manifest["shards"][-1]["name"]
    shard_cols = [c for c in earlier.table.columns if c.endswith("shard")]
    assert shard_cols and not any((earlier.table[c] == last).any() for c in shard_cols)
    assert any((default_store.table[c] == last).any() for c in shard_cols)
    assert len(earlier.table) <= len(default_store.table)
    with pytest.raises(StoreError, match="read-only"):
        earlier.append([], "x", {})
    with pytest.raises(StoreError, match="cannot open the first"):
        DatasetStore.open(default_store.root, verify=False, shards=n + 1)
