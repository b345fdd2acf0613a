"""The dashboard in a real browser: it loads the shipped dataset and selection drives the linked views."""

from __future__ import annotations


def test_app_loads_with_the_default_dataset(page):
    page.get_by_text("18,286 materials").wait_for(timeout=60_000)
    assert page.locator(".tabulator-row").count() > 0


def test_selecting_a_row_shows_its_label_card(page):
    page.locator(".tabulator-header-filter input").nth(0).fill("mp-830")
    page.keyboard.press("Enter")
    row = page.locator(".tabulator-row", has_text="mp-830").first
    row.wait_for(timeout=30_000)
    row.locator("input[type=checkbox]").first.click()  # the selection column
    page.get_by_text("1.57").first.wait_for(timeout=30_000)  # MP PBE gap of zinc-blende GaN in the card
