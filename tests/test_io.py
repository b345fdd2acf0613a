"""mlcm_core.io: a folder built with staged_dir appears whole or not at all."""

from __future__ import annotations

import pytest

from mlcm_core.io import atomic_write_text, staged_dir


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
