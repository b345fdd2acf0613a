"""mlcm_core.io: a folder built with staged_dir appears whole or not at all; atomic writes leave no temporary;
verify_file names a missing or modified file with ChecksumError; cached_json reuses by key."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from mlcm_core.io import (
    ChecksumError,
    atomic_write,
    atomic_write_bytes,
    atomic_write_path,
    atomic_write_text,
    cached_json,
    file_digests,
    sha256_file,
    staged_dir,
    verify_file,
    verify_files,
)


def test_staged_dir_replaces_only_on_success(tmp_path):
    final = tmp_path / "bundle"
    with staged_dir(final) as tmp:
        (tmp / "a.txt").write_text("first")
        assert not final.exists()  # nothing visible while it is being built
    assert (final / "a.txt").read_text() == "first"

    with pytest.raises(RuntimeError, match="half way"), staged_dir(final) as tmp:
        (tmp / "a.txt").write_text("second")
        raise RuntimeError("half way")
    assert (final / "a.txt").read_text() == "first"  # the old folder is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no temporary folder left behind

    with staged_dir(final) as tmp:
        atomic_write_text(tmp / "b.txt", "third")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_cached_json_reuses_a_result_only_under_the_same_key(tmp_path):
    calls = []

    def compute(value):
        calls.append(value)
        return {"value": value}

    path = tmp_path / "sub" / "cache.json"
    assert cached_json(path, {"a": (1, 2)}, lambda: compute(1)) == {"value": 1}
    assert cached_json(path, {"a": [1, 2]}, lambda: compute(2)) == {"value": 1}  # same key after JSON: reused
    assert calls == [1]
    assert cached_json(path, {"a": [1, 3]}, lambda: compute(3)) == {"value": 3}  # another key: recomputed
    assert calls == [1, 3] and json.loads(path.read_text()) == {"key": {"a": [1, 3]}, "result": {"value": 3}}
    assert [p.name for p in path.parent.iterdir()] == ["cache.json"]  # no temporary left behind


def test_atomic_writes_leave_only_the_final_file(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "sub" / "b.txt", "text")
    atomic_write(tmp_path / "c.npz", lambda f: np.savez(f, x=np.arange(3)))
    atomic_write_path(tmp_path / "d.npz", lambda p: np.savez(p, x=np.arange(4)))  # savez keeps a .npz name as is
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01" and (tmp_path / "sub" / "b.txt").read_text() == "text"
    with np.load(tmp_path / "c.npz") as c, np.load(tmp_path / "d.npz") as d:
        assert c["x"].tolist() == [0, 1, 2] and d["x"].tolist() == [0, 1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "c.npz", "d.npz", "sub"]

    atomic_write_text(tmp_path / "e.txt", "old")
    for writer in (lambda: atomic_write(tmp_path / "e.txt", lambda f: (f.write(b"half"), 1 / 0)),
                   lambda: atomic_write_path(tmp_path / "e.txt", lambda p: (p.write_text("half"), 1 / 0))):
        with pytest.raises(ZeroDivisionError):
            writer()
        assert (tmp_path / "e.txt").read_text() == "old"  # a failed write leaves the old file and no temporary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "c.npz", "d.npz", "e.txt", "sub"]


def test_verify_names_the_missing_or_modified_file(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a.bin").write_bytes(b"abc")
    (tmp_path / "b.txt").write_text("b")
    files = file_digests(tmp_path, ["x/a.bin", "b.txt"])
    assert files["x/a.bin"] == hashlib.sha256(b"abc").hexdigest() == sha256_file(tmp_path / "x" / "a.bin")
    verify_files(tmp_path, files)
    assert verify_file(tmp_path / "b.txt", None) == tmp_path / "b.txt"  # no recorded digest: must exist only

    (tmp_path / "x" / "a.bin").write_bytes(b"abd")
    with pytest.raises(ChecksumError, match=f"checksum mismatch for {tmp_path / 'x' / 'a.bin'}: the file is corrupt"):
        verify_files(tmp_path, files)
    (tmp_path / "b.txt").unlink()
    with pytest.raises(ChecksumError, match=f"missing file {tmp_path / 'b.txt'} listed in the manifest"):
        verify_files(tmp_path, {"b.txt": files["b.txt"]})
    with pytest.raises(ChecksumError, match=r"missing file .*b\.txt$"):
        verify_file(tmp_path / "b.txt", None)

    class StoreLikeError(ChecksumError):
        pass

    with pytest.raises(StoreLikeError, match="listed in checkpoint.json"):  # the caller's subclass, its wording
        verify_file(tmp_path / "b.txt", "0" * 64, listed_in="checkpoint.json", error=StoreLikeError)


def test_staged_dir_keeps_the_old_folder_if_the_swap_fails(tmp_path, monkeypatch):
    import mlcm_core.io as mio

    final = tmp_path / "bundle"
    with staged_dir(final) as tmp:
        (tmp / "a.txt").write_text("first")
    real_replace, calls = mio.os.replace, []

    def flaky_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the old folder is aside; putting the new one in place fails
            raise OSError("disk gone")
        real_replace(src, dst)

    monkeypatch.setattr(mio.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="disk gone"), staged_dir(final) as tmp:
        (tmp / "a.txt").write_text("second")
    monkeypatch.undo()
    assert (final / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
