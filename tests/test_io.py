"""mlcm_core.io: a folder built with staged_dir appears whole or not at all; cached_json reuses by key."""

from __future__ import annotations

import json

import pytest

from mlcm_core.io import atomic_write_text, cached_json, staged_dir


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
