"""Target DOS (draw / material / CSV), filters, candidates table + downloads, uploads, selection, materials."""

from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest

from app.views.candidates import CandidatesView
from app.views.filters import FiltersView
from app.views.materials import PAGE_SIZE, MaterialsTable
from app.views.selection import SelectionSummary
from app.views.target import MAX_OVERLAID, TargetDOSView
from app.views.upload import UploadView
from mlcm_core.explore import read_export


def test_a_drawn_stroke_returns_candidates(state):
    view = TargetDOSView(state=state)
    view._on_draw(data={"xs": [[-6, -3, 0, 2, 6]], "ys": [[1, 2, 5, 2, 1]]})
    assert state.target["label"] == "drawn" and state.candidates is not None and len(state.candidates) == state.k
    assert state.message_level == "success"
    curves = view.candidate_curves(state.candidates, state.target)
    assert len(curves) == min(MAX_OVERLAID, int(state.candidates["has_dos"].sum()))
    slots = view._candidate_slots(candidates=state.candidates, target=state.target)
    assert len(slots) == MAX_OVERLAID  # fixed slots, empty ones included
    assert sum(len(c) > 0 for c in slots.values()) == len(curves)
    assert len(view._layers_now()) == MAX_OVERLAID + 2  # + the target and the DFT result
    assert "Target (black dashed): **drawn**" in view._status_text()


def test_a_rendered_target_view_sends_each_curve_once(state):
    """A draw (target + the search it starts) sends each changed curve once; the same search again sends none
    (app.panes.push_layers keys, TargetDOSView.use_curve holding the redraw)."""
    from bokeh.document import Document

    view = TargetDOSView(state=state)
    doc = Document()
    doc.add_root(view._plot.get_root(doc))
    sent = []
    doc.callbacks.on_change(lambda e: sent.append(getattr(e, "model", None)))
    view._on_draw(data={"xs": [[-6, -3, 0, 2, 6]], "ys": [[1, 2, 5, 2, 1]]})
    n_curves = len(view.candidate_curves(state.candidates, state.target))
    sources = [m for m in sent if type(m).__name__ == "ColumnDataSource"]
    assert n_curves > 0 and len(sources) == len({m.id for m in sources}) == n_curves + 1  # candidates + target
    sent.clear()
    view.search()  # the same search again: nothing to redraw
    assert not [m for m in sent if type(m).__name__ == "ColumnDataSource"]


def test_a_one_point_drawing_is_a_message_not_a_crash(state):
    view = TargetDOSView(state=state)
    view._on_draw(data={"xs": [[1.0]], "ys": [[2.0]]})
    assert state.message_level == "error" and "only 1 point" in state.message
    assert state.candidates is None
    view._on_draw(data={"xs": [[1, 0, 2]], "ys": [[1, 1, 1]]})  # back and forth
    assert state.message_level == "error" and "goes back" in state.message


def test_search_on_draw_can_be_off(state):
    view = TargetDOSView(state=state, search_on_draw=False)
    view._on_draw(data={"xs": [[-6, 0, 6]], "ys": [[1, 3, 1]]})
    assert state.target is not None and state.candidates is None
    view.search()
    assert state.candidates is not None
    view.clear()
    assert state.target is None and view.clear_count == 1


def test_target_from_a_material_and_from_a_csv(state):
    view = TargetDOSView(state=state, material_id="mp-2")
    view.use_material()
    assert state.target["label"] == "DOS of mp-2" and state.candidates is not None
    view.material_id = "perov5:1"  # no DOS
    view.use_material()
    assert state.message_level == "error" and "no DOS" in state.message
    csv = b"energy,dos\n-8,0.1\n-2,1.5\n0,0.2\n3,2.0\n8,0.3\n"
    view._csv.filename = "t.csv"
    view._on_csv(types.SimpleNamespace(new=csv))
    assert state.target["label"] == "CSV t.csv" and state.message_level == "success"
    view._on_csv(types.SimpleNamespace(new=b"nonsense"))
    assert state.message_level == "error"


def test_filters_view_widgets_drive_the_state(state):
    FiltersView(state=state).__panel__()
    state.param.update(range_column="band_gap_mp_pbe", range_min=0.5, include_unknown=True)
    f = state.filters().to_dict()
    assert f["ranges"][0]["include_unknown"] is True and f["ranges"][0]["max"] is None


def test_candidates_table_and_downloads(state):
    view = CandidatesView(state=state)
    assert len(view._table.value) == 0 and "none yet" in view._title_text()
    state.run_query("material mp-830", material_id="mp-830")
    assert view._table.value["id"].tolist() == state.candidates["id"].tolist()
    assert view._table.value["rank"].is_monotonic_increasing
    view._on_select(types.SimpleNamespace(new=[2]))
    assert state.focus_id == state.candidates["id"].iloc[2]
    for fmt in ("csv", "json", "cif_zip"):
        path = view._make_callback(fmt)()
        table, header = read_export(path)
        assert table["id"].astype(str).tolist() == state.candidates["id"].tolist()
        assert header["query"]["targets"][0]["id"] == "mp-830"


def test_download_without_candidates_is_a_message(state):
    view = CandidatesView(state=state)
    assert view._make_callback("csv")() is None
    assert state.message_level == "error" and "no candidates" in state.message


def test_upload_view(state):
    from pymatgen.io.cif import CifWriter

    view = UploadView(state=state)
    cif = str(CifWriter(state.dataset.structure("mp-830"))).encode()
    view._input.filename = "GaN.cif"
    view._on_upload(types.SimpleNamespace(new=cif))
    assert state.placed["formula"] == "GaN" and "Placed **GaN.cif**" in view._text()
    view._on_upload(types.SimpleNamespace(new=b"data_x\n_cell_length_a 1\n"))
    assert state.message_level == "error" and "structure upload failed" in state.message


def test_selection_summary(state):
    view = SelectionSummary(state=state)
    assert "none yet" in view.texts([])[0]
    ids = state.frame["id"].iloc[:300].tolist()
    s = view.summary(ids)
    assert s["n"] == 300 and sum(s["source"].values()) == 300
    head, hist = view.texts(ids)
    assert "Selection: 300 materials" in head
    assert hist.count("<svg") == len(s["properties"]) > 0 and "selected" in hist
    state.select_ids(ids, "test")  # the panes follow the selection in place
    assert "Selection: 300 materials" in view._head.object and view._hist.object == hist


def test_materials_table_follows_the_selection(state):
    view = MaterialsTable(state=state)
    assert len(view.ids) == len(state.table)
    ids = state.frame["id"].iloc[5:12].tolist()
    state.select_ids(ids, "test")
    assert view.ids == ids and "selection: 7" in view._title.object
    view._on_select(types.SimpleNamespace(new=[3]))
    assert state.focus_id == ids[3]
    state.select_ids([], "")
    assert len(view.ids) == len(state.table) and PAGE_SIZE == view._table.page_size


def test_browse_table_keeps_selection_order(state):
    ids = state.frame["id"].iloc[[9, 3, 7]].tolist()
    assert state.browse_table(ids)["id"].tolist() == ids
    assert isinstance(state.browse_table(), pd.DataFrame)
    assert np.all(state.browse_table(ids).columns[:3] == ["id", "formula", "source"])


@pytest.mark.parametrize("level", ["info", "error"])
def test_notify_without_a_document(state, level):
    state.notify("hello", level)
    assert state.message == "hello" and state.message_level == level
