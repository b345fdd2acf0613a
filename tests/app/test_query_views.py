"""Target DOS (draw / material / CSV), filters, candidates table + downloads, uploads, selection, materials."""

from __future__ import annotations

import types
from pathlib import Path

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
    view.material_id = "mp-does-not-exist"
    view.use_material()
    assert state.message_level == "error" and "unknown material id 'mp-does-not-exist'" in state.message
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
    for fmt in ("json", "cif_zip"):
        path = view._make_callback(fmt)()
        table, header = read_export(path)
        assert table["id"].astype(str).tolist() == state.candidates["id"].tolist()
        assert header["query"]["targets"][0]["id"] == "mp-830"
        Path(path).unlink()
    path = Path(view._make_callback("csv")())
    assert pd.read_csv(path)["id"].astype(str).tolist() == state.candidates["id"].tolist()
    path.unlink()
    path.with_name(path.name.removesuffix(".csv") + ".query.json").unlink()


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


def test_download_buttons_name_the_file_and_refuse_an_empty_selection_quietly(state):
    """The button delivers the file under its own name (was always mlcm_export.*); an empty selection is a
    message and no download, not a server traceback (FileDownload raised on the callback's None)."""
    view = CandidatesView(state=state, export_what="selection")
    csv_button = view._downloads[0]
    csv_button._clicks += 1  # what a click does
    assert csv_button.data is None and state.message_level == "error" and "nothing selected" in state.message
    state.select_ids(state.clusters["ids"].iloc[1], origin=f"cluster {state.clusters['label'].iloc[1]}")
    csv_button._clicks += 1
    n = len(state.selected_ids)
    assert csv_button.filename.startswith(f"mlcm-selection-cluster-C1-{n}-") and csv_button.filename.endswith(".csv")
    assert csv_button.data.startswith("data:text/plain")
    path = next(Path(state.explorer.export_root, "app", state.session_id).glob(csv_button.filename))
    assert sorted(pd.read_csv(path)["id"]) == sorted(state.selected_ids)
    for p in path.parent.iterdir():
        p.unlink()


def test_filters_in_force_are_named_for_an_upload_search(state):
    """Filters apply to every search, an upload's too; the message and the candidates' title say so (NaCl's
    own stored crystal, mp-22862, has no band gap and was silently missing from its results)."""
    from pymatgen.io.cif import CifWriter

    view = CandidatesView(state=state)
    cif = str(CifWriter(state.dataset.structure("mp-22862"))).encode()
    state.place_upload(cif, "NaCl.cif")
    assert "mp-22862" in state.candidates["id"].tolist() and "no filters" in state.message
    state.param.update(range_column="band_gap_mp_pbe", range_min=1.0)
    state.place_upload(cif, "NaCl.cif")
    assert "mp-22862" not in state.candidates["id"].tolist()
    named = "Band gap (eV, PBE(+U); Materials Project) 1…; unknown values dropped"  # the label, not the column
    assert f"filters: {named}" in state.message
    assert f"**filters: {named}**" in view._title.object


def test_empty_limits_show_as_empty_boxes_not_nan(state):
    """A cleared min/max (None) reaches the browser as no value; Panel's FloatInput sent NaN, shown as "NaN"."""
    from bokeh.document import Document

    col = FiltersView(state=state).__panel__()
    doc = Document()
    col.get_root(doc)
    lo, hi = col[3]
    state.range_min = 0.5
    assert lo._models and [m.value for m, _ in lo._models.values()] == [0.5]
    state.range_min = None
    assert [m.value for m, _ in lo._models.values()] == [None]
    assert [m.value for m, _ in hi._models.values()] == [None]


def _in_a_running_loop(body) -> None:
    """Run ``body`` where an event loop runs: without a server session, a rendered plot's stream callbacks
    (the freehand stroke's, on a change of its source) are scheduled with ``asyncio.create_task``."""
    import asyncio

    import threading

    async def main() -> None:
        body()
        await asyncio.sleep(0.05)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(main())
        return
    # browser tests ran first in this process: Playwright's loop already runs in this thread, so a thread of its own
    errors: list[BaseException] = []
    worker = threading.Thread(target=lambda: _capture(errors, lambda: asyncio.run(main())))
    worker.start()
    worker.join()
    if errors:
        raise errors[0]


def _capture(errors: list, fn) -> None:
    try:
        fn()
    except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
        errors.append(e)


def _render(view: TargetDOSView):
    from bokeh.document import Document

    view._plot.get_root(Document())
    plot = next(iter(view._plot._plots.values()))[0]
    return plot, {sp.current_frame.label: sp.handles["source"] for sp in plot.subplots.values()
                  if sp.current_frame is not None and "source" in sp.handles}


def test_a_target_from_elsewhere_removes_the_stroke_and_clear_removes_its_candidates(state):
    _in_a_running_loop(lambda: _target_from_elsewhere(state))


def _target_from_elsewhere(state):
    view = TargetDOSView(state=state)
    plot, _ = _render(view)
    stroke = view._draw.element  # the layer the browser's freehand tool writes into
    stroke_source = next(sp.handles["source"] for sp in plot.subplots.values()
                         if sp.current_frame is not None and isinstance(sp.current_frame, type(stroke)))
    stroke_source.data = {"xs": [[-6.0, 0.0, 6.0]], "ys": [[1.0, 3.0, 1.0]]}  # a stroke drawn in the page
    view._on_draw(data={"xs": [[-6.0, 0.0, 6.0]], "ys": [[1.0, 3.0, 1.0]]})
    assert state.target["label"] == "drawn" and list(stroke_source.data["xs"]) == [[-6.0, 0.0, 6.0]]
    view.material_id = "mp-2"
    view.use_material()  # the stroke is not the target any more
    assert state.target["label"] == "DOS of mp-2" and len(stroke_source.data["xs"]) == 0
    assert state.candidates is not None and state.candidates_origin == "target DOS (DOS of mp-2)"
    view.clear()
    assert state.target is None and state.candidates is None and "target cleared" in state.message


def test_other_searches_are_not_drawn_over_the_target(state):
    """An upload's candidates replace the list but are not overlaid on (and scaled to) the older target."""
    _in_a_running_loop(lambda: _upload_over_a_target(state))


def _upload_over_a_target(state):
    from pymatgen.io.cif import CifWriter

    view = TargetDOSView(state=state)
    _, sources = _render(view)
    view._on_draw(data={"xs": [[-6, -3, 0, 2, 6]], "ys": [[1, 2, 5, 2, 1]]})
    assert len(sources["cand0"].data["E"]) > 0
    state.place_upload(str(CifWriter(state.dataset.structure("mp-830"))).encode(), "GaN.cif")
    assert state.candidates is not None and state.candidates["has_dos"].any()
    assert all(len(sources[f"cand{k}"].data["E"]) == 0 for k in range(MAX_OVERLAID))
    assert len(sources["target"].data["E"]) > 0  # the target stays, with a word on whose candidates are listed
    assert "not this target" in view._status_text()
    view.clear()  # the upload's candidates are not the target's: they stay
    assert state.candidates is not None and "uploaded structure GaN.cif" in state.candidates_origin


def test_the_target_axis_grows_to_show_a_large_target(state):
    _in_a_running_loop(lambda: _large_target(state))


def _large_target(state):
    view = TargetDOSView(state=state, search_on_draw=False)
    plot, _ = _render(view)
    y_range = plot.handles["y_range"]
    assert y_range.end == 10.0
    view.material_id = "mp-2229"  # DOS up to 44 states/eV
    view.use_material()
    top = float(np.max(state.target["dos"]))
    assert top > 40 and y_range.start == 0 and y_range.end >= top
    view.clear()
    assert y_range.end == 10.0


def test_enter_in_the_material_box_uses_its_dos(state):
    view = TargetDOSView(state=state)
    box = next(w for w in view.controls() if "mlcm-material-id" in (w.css_classes or []))
    box._process_event(types.SimpleNamespace(event_name="enter-pressed", value_input="mp-2"))
    assert state.target["label"] == "DOS of mp-2" and state.candidates is not None


def test_a_click_on_the_target_axes_is_a_message(state):
    view = TargetDOSView(state=state)
    view._tap.event(x=0.5, y=2.0)
    assert state.message_level == "warning" and "drag the mouse" in state.message and state.target is None


def test_a_dos_search_answers_with_materials_whose_dos_matches(state):
    """Default gallery "auto": a DOS target ranks materials by their stored DOS, and the table shows each
    candidate's DOS MAE to the target; the crystal gallery (as before) returns materials without a DOS too."""
    from app.views.candidates import CandidatesView

    gapped = state.table[state.table["has_dos"] & (state.table["dos_band_gap"] > 1.5)]
    mid = str(gapped["id"].iloc[0])
    assert state.gallery == "auto"
    view = TargetDOSView(state=state, material_id=mid)
    view.use_material()
    res = state.candidates
    assert res["has_dos"].all() and res["dos_mae_to_target"].notna().all()
    assert res.iloc[0]["id"] == mid and res.iloc[0]["dos_mae_to_target"] == 0.0  # its own stored DOS first
    gaps = state.table.set_index("id").loc[res["id"], "dos_band_gap"]
    assert (gaps > 0).mean() >= 0.8  # a gapped target finds gapped materials
    assert "dos_mae_to_target" in CandidatesView(state=state).shown(res).columns
    state.gallery = "crystal"
    view.use_material()
    assert not state.candidates["has_dos"].all()
