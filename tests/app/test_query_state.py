"""What the candidates were searched with (AppState.query), the stale mark, Clear target and the one Reset."""

from __future__ import annotations

import types

import numpy as np

from app.main import Dashboard
from app.views.query import STALE, QueryStateView, query_html
from app.views.target import TargetDOSView
from app.views.upload import UploadView

BAND_GAP = "Band gap (eV, PBE(+U); Materials Project)"


def _cif(state, material_id: str) -> bytes:
    from pymatgen.io.cif import CifWriter

    return str(CifWriter(state.dataset.structure(material_id))).encode()


def test_a_dos_search_records_what_it_ran_with(state):
    assert state.query is None and not state.query_stale
    state.set_target("drawn", [-5, 0, 5], [1, 3, 1])
    state.query_target()
    q = state.query
    assert q["kind"] == "dos" and q["label"] == "drawn" and len(q["dos"]) == 601
    assert np.allclose(q["dos"], state.target["dos"], atol=1e-4)
    assert (q["gallery_setting"], q["gallery"], q["k"], q["filters"], q["n"]) == ("auto", "dos", 25, "", 25)
    assert not state.query_stale and state.changed_inputs() == []


def test_each_input_of_the_search_marks_it_stale_until_the_next_search(state):
    state.set_target("drawn", [-5, 0, 5], [1, 3, 1])
    state.query_target()
    state.gallery = "crystal"
    assert state.query_stale and state.changed_inputs() == ["gallery"]
    state.gallery = "dos"  # what "auto" chose for a DOS search: the same search
    assert not state.query_stale
    state.k = 10
    assert state.changed_inputs() == ["k"]
    state.k = 25
    state.param.update(range_column="band_gap_mp_pbe", range_min=1.0)
    assert state.query_stale and state.changed_inputs() == ["filters"]
    state.search_again()
    assert not state.query_stale and state.query["filters"] == f"{BAND_GAP} 1…; unknown values dropped"
    assert state.candidates["band_gap_mp_pbe"].ge(1.0).all()
    state.set_target("drawn", [-5, 0, 5], [1, 1, 4])  # another stroke, the same label
    assert state.query_stale and state.changed_inputs() == ["target DOS"]
    state.query_target()
    assert not state.query_stale


def test_an_upload_search_names_its_structure_and_its_filters(state):
    """Filters apply to an upload's search too: the record says which (they are shown above the candidates)."""
    state.set_target("drawn", [-5, 0, 5], [1, 3, 1])
    state.query_target()
    state.elements_include = "N"
    state.place_upload(_cif(state, "mp-830"), "GaN.cif")
    q = state.query
    assert (q["kind"], q["name"], q["formula"], q["gallery"]) == ("structure", "GaN.cif", "GaN", "crystal")
    assert q["filters"] == "contains N; unknown values dropped" and not state.query_stale
    html = query_html(q, False, [])
    assert "uploaded structure <b>GaN.cif</b> (GaN)" in html and "contains N; unknown values dropped" in html
    assert "mlcm-query-thumb" not in html  # no target curve for an upload's search
    state.set_target("drawn", [-5, 0, 5], [2, 3, 1])  # the upload's search does not use the target
    assert not state.query_stale
    state.elements_include = ""
    assert state.changed_inputs() == ["filters"]
    state.search_again()  # the uploaded file again, without the filter
    assert not state.query_stale and state.query["filters"] == "" and state.query["name"] == "GaN.cif"


def test_an_earlier_strokes_candidates_are_not_the_new_targets(state):
    """Two strokes are both labelled "drawn": the first one's candidates must not be drawn over the second."""
    state.set_target("drawn", [-5, 0, 5], [1, 3, 1])
    state.query_target()
    assert state.target_candidates() is state.candidates
    state.set_target("drawn", [-5, 0, 5], [3, 1, 3])
    assert state.candidates is not None and state.target_candidates() is None


def test_clear_target_clears_dos_candidates_but_not_an_uploads(state):
    state.set_target("drawn", [-5, 0, 5], [1, 3, 1])
    state.query_target()
    state.set_target("drawn", [-5, 0, 5], [3, 1, 3])  # not searched: the candidates are an earlier target's
    state.clear_target()
    assert state.target is None and state.candidates is None and state.query is None and not state.query_stale
    state.set_target("drawn", [-5, 0, 5], [1, 3, 1])
    state.place_upload(_cif(state, "mp-830"), "GaN.cif")
    state.clear_target()
    assert state.target is None and state.query["kind"] == "structure" and state.candidates is not None


def test_reset_returns_every_session_parameter_to_its_default(state):
    state.place_upload(_cif(state, "mp-830"), "GaN.cif")
    state.set_target("drawn", [-5, 0, 5], [1, 3, 1])
    state.param.update(k=7, gallery="crystal", range_column="band_gap_mp_pbe", range_min=0.5, include_unknown=True,
                       elements_include="O", elements_exclude="Pb", sources=[state.param.sources.objects[0]])
    state.query_target()
    state.select_polygon([(0, 0), (6, 0), (6, 6), (0, 6)])
    state.find("mp-149")
    state.validation = {"dos": [0.0] * 601}
    state.reset()
    for name in ("selected_ids", "polygon", "sources"):
        assert getattr(state, name) == [], name
    for name in ("candidates", "target", "placed", "validation", "query"):
        assert getattr(state, name) is None, name
    assert (state.focus_id, state.selection_origin, state.search_text, state.candidates_origin) == ("", "", "", "")
    assert (state.k, state.gallery, state.range_column, state.range_min, state.include_unknown) == \
        (25, "auto", "(none)", None, False)
    assert state.elements_include == state.elements_exclude == "" and state.filters() is None
    assert state.resets == 1 and not state.query_stale and "session reset" in state.message
    assert state.zoom_to == state.home_extent()
    assert state.param.selected_ids.default == []  # the defaults themselves are untouched


def test_query_state_view_shows_the_thumbnail_and_the_stale_mark(state):
    view = QueryStateView(state=state)
    assert "nothing yet" in view._text.object and not view._again.visible
    state.set_target("drawn", [-5, 0, 5], [1, 3, 1])
    state.query_target()
    text = view._text.object
    assert "class='mlcm-query-thumb'" in text and "target DOS: <b>drawn</b>" in text
    assert "DOS gallery" in text and "chosen by auto" in text and "Filters:</b> none" in text and STALE not in text
    state.elements_exclude = "Pb"
    assert STALE in view._text.object and "filters changed" in view._text.object and view._again.visible
    view.search_again()
    assert STALE not in view._text.object and "without Pb" in view._text.object and not view._again.visible
    material = {"kind": "material_id", "material_id": "mp-149", "formula": "Si", "gallery": "crystal",
                "gallery_setting": "crystal", "k": 5, "n": 5, "filters": ""}
    assert "similar to <b>mp-149</b> (Si)" in query_html(material, False, [])


def test_the_reset_button_clears_every_view(state):
    """Reset through the dashboard: the map colouring, the stroke, the file inputs and the search box too."""
    dash = Dashboard(state)
    dash.map.param.update(color_by="property", element="Fe", cluster=dash.map.param.cluster.objects[1])
    assert state.selected_ids
    dash.search._box.param.update(value="SiO2", value_input="SiO2")
    dash.search.search()
    dash.target.search_on_draw = False
    dash.target.material_id = "mp-2"
    dash.target._on_draw(data={"xs": [[-6, 0, 6]], "ys": [[1, 3, 1]]})
    dash.upload._input.param.update(value=_cif(state, "mp-830"), filename="GaN.cif")
    assert state.placed and state.candidates is not None
    dash.candidates.export_what = "selection"
    strokes = dash.target.clear_count
    dash.reset.reset()
    assert (dash.map.color_by, dash.map.element, dash.map.cluster) == ("crystal system", "O", None)
    assert dash.map.prop == "band_gap_mp_pbe"
    assert state.selected_ids == [] and state.placed is None and state.candidates is None and state.target is None
    assert dash.search._box.value == "" and dash.search._result.object == ""
    assert dash.target.search_on_draw and dash.target.material_id == "" and dash.target.clear_count > strokes
    assert dash.upload._input.value is None and dash.candidates.export_what == "candidates"
    assert "nothing yet" in dash.candidates._query._text.object
    # the same file uploaded again after a reset is a new upload
    dash.upload._input.param.update(value=_cif(state, "mp-830"), filename="GaN.cif")
    assert state.placed["formula"] == "GaN"


def test_upload_view_clears_on_reset(state):
    view = UploadView(state=state)
    view._input.filename = "GaN.cif"
    view._on_upload(types.SimpleNamespace(new=_cif(state, "mp-830")))
    state.reset()
    assert state.placed is None and "Upload a CIF" in view._text()


def test_target_view_draws_no_candidates_of_an_earlier_stroke(state):
    view = TargetDOSView(state=state)
    view._on_draw(data={"xs": [[-6, 0, 6]], "ys": [[1, 3, 1]]})
    assert view.own_candidates() is state.candidates
    view.search_on_draw = False
    view._on_draw(data={"xs": [[-6, 0, 6]], "ys": [[3, 1, 3]]})
    assert view.own_candidates() is None and view.candidate_curves(view.own_candidates(), state.target) == []
    assert "(an earlier target), not this target" in view._status_text()
    view.clear()
    assert state.candidates is None and state.target is None
