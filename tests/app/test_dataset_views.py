"""Headless checks of the dashboard on the shipped dataset."""

from __future__ import annotations

import panel as pn

from app.main import build_app
from app.store import AppState
from app.views.dos import DOSView, LabelCard


def test_app_builds_on_the_default_dataset():
    template = build_app(AppState())
    text = template.main[0].object
    assert "18,286 materials" in text


def test_label_card_shows_source_and_theory():
    state = AppState()
    card = state.label_card("mp-830")  # zinc-blende GaN
    gap = card.set_index("quantity").loc["band gap"]
    assert gap["unit"] == "eV" and "PBE" in gap["theory"] and "Materials Project" in gap["source"]
    assert gap["value"] == 1.57


def test_selection_drives_dos_overlay():
    state = AppState()
    t = state.table
    ids = t.loc[t["has_dos"], "id"].head(3).tolist()
    view = DOSView(state=state)
    state.selected_ids = ids
    pane = view._plot(state.selected_ids)
    assert isinstance(pane, pn.pane.HoloViews)
    assert len(pane.object) == 3
    assert isinstance(LabelCard(state=state)._card(ids), pn.Column)
