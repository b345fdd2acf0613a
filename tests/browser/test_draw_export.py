"""Draw a target DOS with the mouse -> top-k candidates (map + table) -> downloads with the right rows."""

from __future__ import annotations

import json
import math
import zipfile

from tests.browser.conftest import app_debug, data_to_px, drag, plot_frame, table_ids, wait_for_debug, wait_for_text

K = 25  # AppState.k default


def _draw_stroke(page) -> None:
    frame = plot_frame(page, "Target DOS")
    xs = [-8 + 16 * i / 40 for i in range(41)]
    pts = [data_to_px(frame, x, 1.0 + 4.0 * math.exp(-((x + 2) ** 2) / 4) + 2.5 * math.exp(-((x - 3) ** 2))) for x in xs]
    drag(page, pts, steps=3)


def _draw_and_wait(page) -> dict:
    _draw_stroke(page)
    return wait_for_debug(page, lambda d: d.get("n_candidates", 0) > 0)


def test_a_drawn_stroke_returns_candidates(page):
    state = _draw_and_wait(page)
    assert state["n_candidates"] == K
    title = wait_for_text(page, "mlcm-candidates-title", lambda t: f"Candidates: {K}" in t)
    assert "target DOS (drawn)" in title
    shown = table_ids(page, "mlcm-candidates")
    assert shown and shown == state["candidate_ids"][: len(shown)]  # ranked order, first page
    wait_for_text(page, "mlcm-target-status", lambda t: "Target (black dashed): drawn" in t)


def test_export_downloads_the_candidates(page, tmp_path):
    """Each download is named for what it holds; the CSV is a plain table; no file holds a server path."""
    import re

    import pandas as pd

    from mlcm_core.explore import read_export
    from tests.browser.conftest import ROOT

    state = _draw_and_wait(page)
    text = wait_for_text(page, "mlcm-message", lambda t: "candidates for target DOS (drawn)" in t)
    assert "a click draws one point" not in text  # a stroke is not taken for a click
    ids = state["candidate_ids"]
    for fmt, cls in (("csv", "mlcm-download-csv"), ("json", "mlcm-download-json"), ("cif.zip", "mlcm-download-cif_zip")):
        with page.expect_download(timeout=120_000) as info:
            page.locator(f".{cls} button, .{cls} a").first.click()
        name = info.value.suggested_filename
        assert re.fullmatch(rf"mlcm-candidates-dos-search-{K}-\d{{8}}-\d{{6}}\.{re.escape(fmt)}", name), name
        path = tmp_path / name
        info.value.save_as(path)
        if fmt == "csv":
            table = pd.read_csv(path)
            assert table.shape[0] == K and table["id"].astype(str).tolist() == ids
            assert str(ROOT) not in path.read_text()
            continue
        table, header = read_export(path)
        assert table["id"].astype(str).tolist() == ids, fmt
        assert header["query"]["k"] == K and header["query"]["targets"][0]["kind"] == "dos"
        if fmt == "cif.zip":
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                doc = json.loads(zf.read("query.json"))
                assert pd.read_csv(zf.open("candidates.csv"))["id"].astype(str).tolist() == ids
                assert not any(str(ROOT).encode() in zf.read(n) for n in names)
            assert len([n for n in names if n.endswith(".cif")]) + len(doc["without_structure"]) == K
        else:
            assert str(ROOT) not in path.read_text()


def test_malformed_dos_csv_shows_a_message(page, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("energy,dos\n-1,2\nnot,numbers\n")
    page.locator(".mlcm-dos-csv input[type=file]").set_input_files(str(bad))
    text = wait_for_text(page, "mlcm-message", lambda t: "failed" in t)
    assert "DOS CSV upload failed" in text and "bad.csv line 3" in text
    assert app_debug(page)["n_candidates"] == 0


def test_a_click_on_the_target_plot_is_a_message(page):
    """The freehand tool drops a click (one point) without a word; the app says how to draw."""
    frame = plot_frame(page, "Target DOS")
    page.mouse.click(*data_to_px(frame, 0.0, 3.0))
    wait_for_text(page, "mlcm-message", lambda t: "a click draws one point" in t)
    assert app_debug(page)["n_candidates"] == 0
