"""Upload a CIF: Explorer.place puts it on the map and its neighbours become the candidates; bad files give a message."""

from __future__ import annotations

import math

from tests.browser.conftest import ROOT, app_debug, wait_for_debug, wait_for_map, wait_for_text


def _cif_of(material_id: str) -> str:
    from pymatgen.io.cif import CifWriter

    from mlcm_core import load_dataset

    return str(CifWriter(load_dataset(ROOT / "precomputed" / "dataset", verify=False).structure(material_id)))


def test_cif_upload_places_a_point_with_neighbours(page, explorer, tmp_path):
    cif = tmp_path / "GaN.cif"
    cif.write_text(_cif_of("mp-830"))
    page.locator(".mlcm-cif-upload input[type=file]").set_input_files(str(cif))
    state = wait_for_debug(page, lambda d: d.get("placed") is not None and d.get("n_candidates", 0) > 0)
    placed = state["placed"]
    assert placed["formula"] == "GaN"
    x, y = explorer.place(cif)
    frame = wait_for_map(page)
    assert math.hypot(placed["x"] - x, placed["y"] - y) < 0.02 * (frame["x1"] - frame["x0"])
    text = wait_for_text(page, "mlcm-placed", lambda t: "Placed" in t)
    assert "GaN.cif" in text
    wait_for_text(page, "mlcm-candidates-title", lambda t: "uploaded structure GaN.cif" in t)


def test_malformed_cif_shows_a_message_and_the_session_survives(page, tmp_path):
    bad = tmp_path / "broken.cif"
    bad.write_text("data_broken\n_cell_length_a 3.2\nthis is not a crystal\n")
    page.locator(".mlcm-cif-upload input[type=file]").set_input_files(str(bad))
    text = wait_for_text(page, "mlcm-message", lambda t: "failed" in t)
    assert "structure upload failed" in text and "broken.cif" in text
    assert app_debug(page)["placed"] is None
    # the session still works: a good upload afterwards is placed
    good = tmp_path / "Si.cif"
    good.write_text(_cif_of("mp-149") if _has("mp-149") else _cif_of("mp-830"))
    page.locator(".mlcm-cif-upload input[type=file]").set_input_files(str(good))
    wait_for_debug(page, lambda d: d.get("placed") is not None)


def _has(material_id: str) -> bool:
    from mlcm_core import load_dataset

    t = load_dataset(ROOT / "precomputed" / "dataset", verify=False).table
    return bool(((t["id"] == material_id) & t["has_structure"]).any())
