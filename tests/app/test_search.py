"""Search by material id, formula or chemical system (core lookup + the app's search box), the onboarding panel
and property names with units and level of theory instead of raw column names."""

from __future__ import annotations

import pytest

from mlcm_core.data.conventions import LABELS, label_title


# ---- core: Explorer.find / lookup.find_materials on the shipped data ---------------------------------
def test_a_material_id_finds_that_material(state):
    m = state.explorer.find("mp-149")
    assert (m.kind, m.key, m.ids) == ("id", "mp-149", ["mp-149"])
    assert state.indexed.at["mp-149", "formula"] == "Si"
    assert state.explorer.find(" MP-149 ").ids == ["mp-149"]  # spaces and case do not matter for ids


def test_a_formula_finds_every_polymorph_in_any_order(state):
    t = state.explorer.table
    expected = t.loc[t["formula"] == "SiO2", "id"].tolist()
    assert len(expected) > 1  # quartz, cristobalite, ... (36 in the shipped data)
    for text in ("SiO2", "O2Si", "Si O2", "(SiO2)2", "Si2O4"):
        m = state.explorer.find(text)
        assert (m.kind, m.key) == ("formula", "SiO2") and m.ids == expected, text


def test_a_chemical_system_finds_materials_of_exactly_those_elements(state):
    t = state.explorer.table
    expected = [i for i, e in zip(t["id"], t["elements"]) if e is not None and set(map(str, e)) == {"Li", "Fe", "O"}]
    assert expected
    for text in ("Li-Fe-O", "O-Li-Fe", "li-fe-o", "Fe - Li - O"):
        m = state.explorer.find(text)
        assert (m.kind, m.key) == ("chemical system", "Fe-Li-O") and m.ids == expected, text
    # exactly the set: Si-O is SiO2's system, not Si's
    assert "mp-149" not in state.explorer.find("Si-O").ids


@pytest.mark.parametrize(("text", "error", "says"), [
    ("Fe7Au3", "MaterialNotFound", "no material matches 'Fe7Au3' (reduced formula Fe7Au3)"),
    ("mp-999999999", "MaterialNotFound", "no material has the id 'mp-999999999'"),
    ("Xx2", "MaterialQueryError", "no material matches 'Xx2': 'Xx' is not an element symbol"),
    ("Li-Xx-O", "MaterialQueryError", "'Xx' is not an element symbol"),
    ("sio2", "MaterialQueryError", "element symbols are case sensitive"),
    ("", "MaterialQueryError", "type a material id"),
])
def test_no_match_and_unreadable_queries_say_why(state, text, error, says):
    from mlcm_core.explore import lookup

    with pytest.raises(getattr(lookup, error)) as e:
        state.explorer.find(text)
    assert says in str(e.value)
    assert isinstance(e.value, ValueError)


def test_find_materials_works_on_a_plain_store_table(state):
    from mlcm_core.explore import find_materials

    assert find_materials(state.table, "mp-149").ids == ["mp-149"]
    assert len(find_materials(state.table, "SiO2").ids) == len(state.explorer.find("SiO2").ids)


# ---- app: the search box drives AppState -----------------------------------------------------------
def test_enter_in_the_search_box_selects_every_match(state):
    from app.views.search import SearchView

    view = SearchView(state=state)
    state.focus_id = "mp-830"  # an earlier click: the card must describe the search's result, not it
    view._box.value_input = "O2Si"
    view._box.param.trigger("enter_pressed")
    ids = state.explorer.find("SiO2").ids
    assert state.selected_ids == ids and len(ids) > 1
    assert state.selection_origin == "search: formula SiO2" and state.focus_id == "" and state.polygon == []
    assert state.message_level == "success" and f"selected {len(ids)} materials with formula SiO2" in state.message
    assert f"**{len(ids)} materials selected**" in view._result.object
    x0, x1, y0, y1 = state.zoom_to  # the map is asked to show all of them
    f = state.frame[state.frame["id"].isin(ids)]
    assert x0 < f["x"].min() <= f["x"].max() < x1 and y0 < f["y"].min() <= f["y"].max() < y1


def test_one_match_is_focused_and_the_views_follow(state):
    from app.views.card import PropertyCard
    from app.views.search import SearchView

    view, card = SearchView(state=state), PropertyCard(state=state)
    view._box.value_input = "mp-149"
    assert view.search() == ["mp-149"]
    assert state.focus_id == "mp-149" and state.selected_ids == []
    assert "mp-149 Si" in card._pane.object and "found mp-149 Si" in state.message
    assert len(state.zoom_to) == 4


def test_a_failed_search_changes_nothing_and_says_why(state):
    from app.views.search import SearchView

    view = SearchView(state=state)
    state.select_ids(["mp-149"], origin="lasso")
    for text, level in (("Xx2", "error"), ("Fe7Au3", "warning")):
        view._box.value_input = text
        assert view.search() == []
        assert state.message_level == level and f"no material matches {text!r}" in state.message
        assert state.message in view._result.object
        assert state.selected_ids == ["mp-149"] and state.selection_origin == "lasso"


def test_the_dashboard_has_the_search_box_and_the_introduction(state):
    from app.main import Dashboard

    d = Dashboard(state)
    tpl = d.template()
    assert tpl is not None
    d.search._box.value_input = "Li-Fe-O"
    d.search._box.param.trigger("enter_pressed")
    assert state.selection_origin == "search: chemical system Fe-Li-O"
    assert d.materials._title.object.startswith(f"**Materials in the selection: {len(state.selected_ids)}")


# ---- onboarding ----------------------------------------------------------------------------------------
def test_the_introduction_is_open_on_a_first_visit_and_closable(state):
    from app.views.intro import COOKIE, IntroView, intro_collapsed

    view = IntroView(state=state, cookies={})
    assert view.card.collapsed is False and view.card.title == "What am I looking at?"
    text = view.card.objects[0].object
    for words in ("128-dimensional embedding", "UMAP", "Colours", "lasso", "target DOS", "candidate table",
                  "PBE", "Predicted properties"):
        assert words in text, words
    view.close()
    assert view.card.collapsed is True
    assert intro_collapsed({COOKIE: "closed"}) and not intro_collapsed({COOKIE: "open"}) and not intro_collapsed(None)
    assert IntroView(state=state, cookies={COOKIE: "closed"}).card.collapsed is True


# ---- labels: units and level of theory, not column names ------------------------------------------------
def test_label_titles_come_from_the_label_registry():
    assert label_title("band_gap_mp_pbe") == "Band gap (eV, PBE(+U); Materials Project)"
    assert label_title("band_gap_mp_pbe") != label_title("band_gap_mpapi_pbe")  # same quantity, other snapshot
    assert "GLLB-SC" in label_title("gap_direct_castelli_gllbsc") and "(eV" in label_title("gap_direct_castelli_gllbsc")
    assert len({label_title(c) for c in LABELS}) == len(LABELS)  # every column names itself uniquely
    assert label_title("not_a_label") == "not_a_label"


def test_widgets_tables_and_histograms_show_labels_not_columns(state):
    from app.views.candidates import CandidatesView
    from app.views.materials import MaterialsTable
    from app.views.selection import SelectionSummary

    import panel as pn

    select = pn.widgets.Select.from_param(state.param.range_column)
    assert "Band gap (eV, PBE(+U); Materials Project)" in select.options
    select.value = select.options["Band gap (eV, PBE(+U); Materials Project)"]
    assert state.range_column == "band_gap_mp_pbe"  # the value stays the column
    assert MaterialsTable(state=state)._table.titles["band_gap_mp_pbe"] == label_title("band_gap_mp_pbe")
    assert CandidatesView(state=state)._table.titles["k_vrh_mp_pbe"] == label_title("k_vrh_mp_pbe")
    view = SelectionSummary(state=state)
    state.select_ids(state.explorer.find("SiO2").ids, origin="search")
    hist = view._hist.object
    assert "Band gap (eV, PBE(+U))" in hist and "band_gap_mp_pbe" not in hist
