"""Several dashboard processes sharing one read-only precomputed/ (issue #17, item 4; docs/scale.md).

Two `mlcm app` processes on two ports serve one copy of precomputed/ (made read-only; a copy, since background
DFT jobs may append to the real store while the test runs). Each is asked for a session through Bokeh's own
client (the websocket a browser would open): both documents hold the same map data and the same texts, the
materials count is the explorer's, and not a byte of the shared folder changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from tests._app_server import serving

ROOT = Path(__file__).resolve().parents[1]
PRECOMPUTED = ROOT / "precomputed"


def _tree_digest(root: Path) -> dict[str, str]:
    """SHA-256 of every file under root, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _read_only_copy(dest: Path) -> Path:
    """Copy the app's data (dataset, explore, heads) and remove every write bit (root bypasses them; the
    digest comparison at the end is the real check). Retried once: a DFT job appending to the store during the
    copy can make one inconsistent copy, which the app's checksums would refuse."""
    from mlcm_core.cli import check_precomputed

    for attempt in range(2):
        if dest.exists():
            shutil.rmtree(dest)
        for name in ("dataset", "explore", "heads"):
            if (PRECOMPUTED / name).exists():
                shutil.copytree(PRECOMPUTED / name, dest / name)
        problem = check_precomputed(dest / "dataset", dest / "explore")
        if problem is None:
            break
        assert attempt == 0, f"the copy of precomputed/ does not open: {problem}"
    for p in [dest, *dest.rglob("*")]:
        p.chmod(stat.S_IMODE(p.stat().st_mode) & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return dest


def _session_digest(url: str) -> dict[str, list]:
    """Open a session on the server (as a browser would) and summarise its document: the data of every
    ColumnDataSource and every text, sorted (model ids are per process, contents are not).

    In a thread of its own: Bokeh's client runs an event loop, and in a full test run Playwright's (the
    session-scoped browser of tests/browser) is already running in this thread."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(_session_digest_here, url).result(timeout=600)


def _session_digest_here(url: str) -> dict[str, list]:
    import numpy as np
    import panel.models  # noqa: F401 - registers Panel's Bokeh models, so the document can be decoded
    from bokeh.client import pull_session
    from bokeh.models import ColumnDataSource

    with pull_session(url=url) as session:
        models = list(session.document.models)
    sources, texts = [], []
    for m in models:
        if isinstance(m, ColumnDataSource):
            data = {k: np.asarray(v).tolist() for k, v in m.data.items()}
            sources.append(json.dumps(data, sort_keys=True, default=str))
        text = getattr(m, "text", None)
        if isinstance(text, str) and text:
            texts.append(text)
    return {"sources": sorted(sources), "texts": sorted(texts)}


def test_two_app_processes_serve_the_same_read_only_data(tmp_path):
    if not (PRECOMPUTED / "explore" / "manifest.json").exists():
        pytest.fail(f"no explorer data at {PRECOMPUTED / 'explore'}: run `mlcm project`")
    shared = _read_only_copy(tmp_path / "precomputed")
    before = _tree_digest(shared)
    env = {**os.environ, "MLCM_DATASET": str(shared / "dataset"), "MLCM_EXPLORE": str(shared / "explore")}
    try:
        with contextlib.ExitStack() as servers:
            urls = [servers.enter_context(serving(env, tmp_path / f"app-{k}.log", timeout=240)) for k in range(2)]
            first, second = (_session_digest(url) for url in urls)
        assert first == second
        manifest = json.loads((shared / "explore" / "manifest.json").read_text())
        count = f"{manifest['counts']['materials']:,} materials"
        assert any(count in t for t in first["texts"]), f"no {count!r} in the page texts"
        assert any('"id"' in s and len(s) > 10_000 for s in first["sources"])  # the map's points came through
    finally:
        for p in [shared, *shared.rglob("*")]:  # writable again, so tmp_path can be cleaned up
            p.chmod(stat.S_IMODE(p.stat().st_mode) | stat.S_IWUSR)
    assert _tree_digest(shared) == before  # neither process wrote into the shared folder
