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
    from mlcm_core.explore import read_export

    state = _draw_and_wait(page)
    ids = state["candidate_ids"]
    for fmt, cls in (("csv", "mlcm-download-csv"), ("json", "mlcm-download-json"), ("cif.zip", "mlcm-download-cif_zip")):
        with page.expect_download(timeout=120_000) as info:
            page.locator(f".{cls} button, .{cls} a").first.click()
        path = tmp_path / f"candidates.{fmt}"
        info.value.save_as(path)
        table, header = read_export(path)
        assert table["id"].astype(str).tolist() == ids, fmt
        assert header["query"]["k"] == K and header["query"]["targets"][0]["kind"] == "dos"
        if fmt == "cif.zip":
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                doc = json.loads(zf.read("query.json"))
            assert len([n for n in names if n.endswith(".cif")]) + len(doc["without_structure"]) == K


def test_malformed_dos_csv_shows_a_message(page, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("energy,dos\n-1,2\nnot,numbers\n")
    page.locator(".mlcm-dos-csv input[type=file]").set_input_files(str(bad))
    text = wait_for_text(page, "mlcm-message", lambda t: "failed" in t)
    assert "DOS CSV upload failed" in text and "bad.csv line 3" in text
    assert app_debug(page)["n_candidates"] == 0
