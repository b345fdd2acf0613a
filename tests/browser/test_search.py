"""The search box in a real browser: a formula typed and Enter selects every polymorph (selection summary, table,
card follow); an id focuses that material; a formula nothing has says so. The introduction is open at first."""

from __future__ import annotations

from tests.browser.conftest import deep_text, wait_for_debug, wait_for_text


def _search(page, text: str) -> None:
    box = page.locator(".mlcm-find-box input").first
    box.fill(text)
    box.press("Enter")


def test_a_formula_selects_every_polymorph_and_an_id_focuses_one(page, explorer):
    expected = explorer.find("SiO2").ids
    assert len(expected) > 1
    _search(page, "O2Si")  # any order: pymatgen reads it, the reduced formula SiO2 matches
    state = wait_for_debug(page, lambda d: d["n_selected"] == len(expected))
    assert state["selection_origin"] == "search: formula SiO2" and state["focus"] == ""
    wait_for_text(page, "mlcm-selection-summary", lambda t: f"Selection: {len(expected)} materials" in t)
    wait_for_text(page, "mlcm-find-result", lambda t: f"{len(expected)} materials selected" in t)
    wait_for_text(page, "mlcm-card", lambda t: "SiO2" in t)  # the card describes one of them

    _search(page, "mp-149")
    wait_for_debug(page, lambda d: d["focus"] == "mp-149")
    wait_for_text(page, "mlcm-card", lambda t: "mp-149 Si" in t)

    _search(page, "Fe7Au3")
    wait_for_text(page, "mlcm-message", lambda t: "no material matches 'Fe7Au3'" in t)
    assert wait_for_debug(page, lambda d: True)["focus"] == "mp-149"  # a failed search changes nothing


def test_the_introduction_is_open_on_a_first_visit(page):
    text = " ".join(deep_text(page, "mlcm-intro"))
    assert "What am I looking at?" in text and "UMAP" in text
