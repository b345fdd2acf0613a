"""AppState: selection, retrieval, uploads and export go through the public Explorer API, bad input is a message."""

from __future__ import annotations

import numpy as np
import pytest

from app.inputs import UserError, parse_dos_csv
from mlcm_core.data.conventions import DOS_ENERGIES
from mlcm_core.explore import DrawnDOSError, read_export


def test_select_polygon_is_explorer_select(state):
    poly = [(0, 0), (6, 0), (6, 6), (0, 6)]
    ids = state.select_polygon(poly)
    assert ids == state.explorer.select(np.asarray(poly, float))
    assert state.selection_origin == "lasso" and state.polygon == [list(map(float, p)) for p in poly]
    with pytest.raises(UserError):
        state.select_polygon([(0, 0), (1, 1)])


def test_filters_follow_the_settings(state):
    assert state.filters() is None
    state.param.update(range_column="band_gap_mp_pbe", range_min=1.0, range_max=3.0, include_unknown=False,
                       elements_include="o", elements_exclude="Pb", sources=["matminer-0.3.9"])
    f = state.filters().to_dict()
    assert f["ranges"] == [{"column": "band_gap_mp_pbe", "min": 1.0, "max": 3.0, "include_unknown": False}]
    assert f["elements_include"] == ["O"] and f["elements_exclude"] == ["Pb"] and f["sources"] == ["matminer-0.3.9"]
    res = state.run_query("test", material_id="mp-830")
    assert len(res) and res["band_gap_mp_pbe"].between(1.0, 3.0).all()
    assert all("O" in e.split("-") and "Pb" not in e.split("-") for e in res["elements"])
    state.elements_include = "Xx"
    with pytest.raises(UserError, match="unknown element"):
        state.filters()


def test_drawn_target_rules_come_from_the_core(state):
    with pytest.raises(DrawnDOSError, match="only 1 point"):
        state.set_target("drawn", [1.0], [2.0])
    t = state.set_target("drawn", [-5, 0, 5], [1, 3, 1])
    assert len(t["dos"]) == len(DOS_ENERGIES)
    res = state.query_target()
    assert len(res) == state.k and state.candidates is res
    # a real DOS on the grid is used as is
    dos = state.dataset.dos(["mp-2"])[0]
    t = state.set_target("DOS of mp-2", DOS_ENERGIES, dos)
    assert np.allclose(t["dos"], dos)


def test_parse_dos_csv():
    x, y = parse_dos_csv(b"# energy dos\nE,DOS\n-1,0.5\n0,1\n1;2\n")
    assert x.tolist() == [-1, 0, 1] and y.tolist() == [0.5, 1, 2]
    for bad, match in ((b"", "empty"), (b"-1,2\nfoo,bar\n", "line 2"), (b"1,2\n", "at least 2"), (b"\xff\xfe\x00", "text")):
        with pytest.raises(UserError, match=match):
            parse_dos_csv(bad)


def test_place_upload_and_bad_uploads(state):
    from pymatgen.io.cif import CifWriter

    cif = str(CifWriter(state.dataset.structure("mp-830"))).encode()
    placed = state.place_upload(cif, "GaN.cif")
    assert placed["formula"] == "GaN" and np.isfinite([placed["x"], placed["y"]]).all()
    assert state.candidates is not None and "uploaded structure GaN.cif" in state.candidates_origin
    for data in (b"", b"garbage\n", b"x" * 2_000_001):
        with pytest.raises(UserError):
            state.place_upload(data, "bad.cif")


def test_export_candidates_and_selection(state):
    state.run_query("test", material_id="mp-830")
    path = state.export("candidates", "json")
    table, header = read_export(path)
    assert table["id"].tolist() == state.candidates["id"].tolist() and header["query"]["k"] == state.k
    path.unlink()
    state.select_polygon([(0, 0), (6, 0), (6, 6), (0, 6)])
    path = state.export("selection", "json")
    table, header = read_export(path)
    assert sorted(table["id"]) == sorted(state.selected_ids) and header["query"]["kind"] == "map selection"
    path.unlink()
    state.select_ids([], "")
    with pytest.raises(UserError, match="nothing selected"):
        state.export("selection", "csv")


def test_nearest(state):
    f = state.frame
    x, y = f["x"].iloc[10], f["y"].iloc[10]
    assert state.nearest(x, y) == f["id"].iloc[10] or np.hypot(*(f.loc[f["id"] == state.nearest(x, y), ["x", "y"]].to_numpy()[0] - [x, y])) < 1e-9
    assert state.nearest(1e6, 1e6, max_dist=1.0) is None


def test_a_repeated_query_comes_from_the_process_cache(state, monkeypatch):
    """The same DOS target with the same settings is embedded once per process (app.state.AppState.run_query); in the
    same session it is not even re-sent: the shown result stays, no view is redrawn."""
    from app.state import AppState

    mid = state.table.loc[state.table["has_dos"], "id"].iloc[0]
    dos = state.dataset.dos([mid])[0]
    first = state.run_query("test", dos=dos)
    calls, redraws = [], []
    monkeypatch.setattr(type(state.explorer), "query", lambda *a, **k: calls.append(1))
    state.param.watch(lambda e: redraws.append(e.name), "candidates")
    assert state.run_query("test", dos=dos) is first and redraws == [] and calls == []
    other = AppState(explore_path=state.explore_path)  # another session: from the process cache, its own copy
    again = other.run_query("test", dos=dos)
    assert calls == [] and again["id"].tolist() == first["id"].tolist() and again is not first
    assert state.run_query("another origin", dos=dos) is not first and redraws == ["candidates"]
    state.k = state.k + 1  # other settings: computed again
    with pytest.raises(AttributeError):  # the patched query returns None
        state.run_query("test", dos=dos)
    assert calls == [1]


def test_toasts_never_pile_up_and_errors_close(state, monkeypatch):
    """At most one toast at a time (a new message replaces the stale one) and every toast closes by itself:
    error toasts used to stay until closed one by one and piled up over the target-DOS plot."""
    import panel as pn
    from panel.io.notifications import NotificationArea

    from app.state import TOAST_MS

    area = NotificationArea()
    monkeypatch.setattr(type(pn.state), "notifications", property(lambda self: area))
    for k in range(5):
        state.notify(f"search failed: {k}", "error")
    assert [n.message for n in area.notifications] == ["search failed: 4"]
    assert area.notifications[0].duration == TOAST_MS["error"] > 0 and area._clear == 4
    state.notify("selected C1 (77 materials)", "info")  # the old error toast is stale now: gone, no new toast
    assert area.notifications == [] and area._clear == 5 and state.message_level == "info"


def test_exports_are_plain_named_and_hold_no_server_path(state, explore_path):
    """CSV: a plain table for pandas.read_csv, its query in a sidecar; names say what and when; no absolute
    server path in any exported file (the selection's query used to carry the explore folder)."""
    import json
    import re
    import zipfile

    import pandas as pd

    from app.loaders import ROOT

    state.run_query("material mp-830", material_id="mp-830")
    csv = state.export("candidates", "csv")
    assert re.fullmatch(r"mlcm-candidates-material-mp-830-search-25-\d{8}-\d{6}\.csv", csv.name)
    table = pd.read_csv(csv)
    assert table.shape[0] == 25 and table["id"].tolist() == state.candidates["id"].tolist()
    sidecar = csv.with_name(csv.name.removesuffix(".csv") + ".query.json")
    assert json.loads(sidecar.read_text())["query"]["targets"][0]["id"] == "mp-830"
    state.select_polygon([(0, 0), (6, 0), (6, 6), (0, 6)])
    n = len(state.selected_ids)
    written = [csv, sidecar]
    for fmt in ("csv", "json", "cif_zip"):
        path = state.export("selection", fmt)
        written.append(path)
        assert path.name.startswith(f"mlcm-selection-lasso-{n}-")
        if fmt == "csv":
            assert sorted(pd.read_csv(path)["id"]) == sorted(state.selected_ids)
            written.append(path.with_name(path.name.removesuffix(".csv") + ".query.json"))
        if fmt == "cif_zip":
            with zipfile.ZipFile(path) as zf:
                assert len(pd.read_csv(zf.open("candidates.csv"))) == n
                header = json.loads(zf.read("query.json"))
            assert header["query"]["embeddings_sha256"] == state.explorer.manifest["files"]["embeddings.npz"]
    for path in written:
        data = path.read_bytes()
        if path.name.endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                data = b"".join(zf.read(m) for m in zf.namelist())
        assert str(ROOT).encode() not in data and str(explore_path).encode() not in data, path.name
        path.unlink()


def test_shown_material_is_the_focus_else_the_first_selected_with_a_dos(state):
    t = state.table
    no_dos = t.loc[~t["has_dos"], "id"].iloc[:2].tolist()
    with_dos = t.loc[t["has_dos"], "id"].iloc[:2].tolist()
    assert state.shown_material([*no_dos, *with_dos]) == with_dos[0]
    assert state.shown_material(no_dos) == no_dos[0] and state.shown_material([]) == ""
    assert state.shown_material(with_dos, focus=no_dos[1]) == no_dos[1]


def test_a_bad_dos_on_the_grid_gets_the_cores_message_in_the_app_and_the_explorer(state):
    """One validation path for targets (mlcm_core.explore.target_dos): the app's target plot and
    Explorer.query refuse a negative curve on the DOS grid with the same words."""
    bad = -np.ones_like(DOS_ENERGIES)
    with pytest.raises(DrawnDOSError, match="dos must be >= 0 and not zero everywhere"):
        state.set_target("uploaded", DOS_ENERGIES, bad)
    with pytest.raises(DrawnDOSError, match="dos must be >= 0 and not zero everywhere"):
        state.explorer.query(dos=bad, k=3)
    assert state.target is None


def test_map_coverage_names_come_from_the_modality_registry(state):
    """The coverage colouring names each material's modalities by the registry's labels, for every row."""
    from app.loaders import coverage_names
    from mlcm_core.modalities import specs

    t = state.table
    names = coverage_names(t)
    flags = [s.store_flag for s in specs()]
    n_all = int(t[flags].fillna(False).astype(bool).all(axis=1).sum())
    assert names.count("all 3") == n_all > 0
    assert names.count("none") == int((~t[flags].fillna(False).astype(bool)).all(axis=1).sum())
    have = [tuple(r) for r in t[flags].fillna(False).astype(bool).to_numpy()]
    assert {names[k] for k, r in enumerate(have) if r == (True, False, False)} == {"crystal structure"}
    assert {names[k] for k, r in enumerate(have) if r == (False, True, True)} == {"DOS + charge density"}
    assert set(state.frame["coverage"].astype(str)) == set(names)
