"""The `mlcm` command line on the shipped dataset and on a scratch store."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mlcm_core.cli import main
from tests.conftest import DEFAULT_STORE, ROOT


def test_info_json_reports_the_default_counts(capsys):
    assert main(["data", "info", str(DEFAULT_STORE), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info) >= {"materials", "modalities", "all_three", "labels"}
    assert set(info["modalities"]) == {"structure", "dos", "charge_density"}
    assert info["materials"] == 18286
    assert info["modalities"]["structure"] == 17951
    assert info["labels"]["formation_energy_per_atom_mp_pbe"] == 3938
    assert info["labels"]["k_vrh_mp_pbe"] == 1181


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "mlcm_core.cli", "data", "info", str(DEFAULT_STORE)],
                         capture_output=True, text=True, check=True).stdout
    assert "materials: 18286" in out and "all three" in out


def test_missing_store_is_a_clear_error(tmp_path, capsys):
    assert main(["data", "info", str(tmp_path / "nothing")]) == 2
    assert "no dataset store" in capsys.readouterr().err


def test_build_default_refuses_to_overwrite(capsys):
    assert main(["data", "build-default", "--out", str(DEFAULT_STORE)]) == 2
    assert "already holds a dataset" in capsys.readouterr().err


def test_ingest_vasp_and_structures_add_shards(tmp_path, capsys):
    import shutil

    from mlcm_core import load_dataset

    store = tmp_path / "ds"
    shutil.copytree(DEFAULT_STORE, store)
    assert main(["data", "ingest-vasp", str(ROOT / "tests/files/vasp-si"), "--store", str(store)]) == 0
    assert main(["data", "ingest-structures", str(ROOT / "tests/files/structures"), "--store", str(store)]) == 0
    ds = load_dataset(store)
    t = ds.table.set_index("id")
    si = t.loc["vasp:vasp-si"]
    assert si["has_dos"] and si["has_charge_density"] and abs(si["dos_band_gap"] - 0.5796) < 1e-4
    # both Si entries are diamond silicon: de-duplicated into one group with the same split
    assert t.loc["file:Si", "dedup_group"] == si["dedup_group"]
    assert t.loc["file:Si", "split"] == si["split"]
    assert ds.info()["materials"] == 18286 + 3


def test_ingest_mp_without_key_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("MP_API_KEY", raising=False)
    assert main(["data", "ingest-mp", "mp-149", "--store", str(tmp_path / "ds")]) == 2
    assert "MP_API_KEY" in capsys.readouterr().err


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_mlcm_app_stops_with_its_server(sig, tmp_path):
    """A signal to `mlcm app` stops the server: no `panel serve` is left answering on the port."""
    import os
    import signal
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "app.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlcm_core.cli", "app", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while not _port_open(port):
            assert proc.poll() is None, f"mlcm app exited early:\n{log.read_text()[-3000:]}"
            assert time.time() < deadline, "mlcm app did not listen within 180 s"
            time.sleep(0.5)
        proc.send_signal(getattr(signal, sig))  # to the process we started, not to its group
        proc.wait(timeout=15)
        deadline = time.time() + 5
        while _port_open(port) and time.time() < deadline:
            time.sleep(0.2)
        assert not _port_open(port), f"port {port} still answers after {sig} to mlcm app"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group, if the test failed
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def test_mlcm_app_prepare_caches_the_map_clusters(tmp_path, monkeypatch, capsys):
    """`mlcm app --prepare` (run by scripts/setup.sh) leaves the shipped map's cluster labels in the cache the
    app's first page reads, and serves nothing."""
    monkeypatch.setenv("MLCM_CACHE_DIR", str(tmp_path))
    assert main(["app", "--prepare"]) == 0
    cached = list((tmp_path / "clusters").glob("*.npy"))
    assert len(cached) == 1
    from mlcm_core.explore import Explorer

    ex = Explorer.load(ROOT / "precomputed" / "explore", store=ROOT / "precomputed" / "dataset")
    clusters = ex.map_clusters(cache_dir=tmp_path / "clusters")
    assert f"prepared: {len(clusters)} map clusters cached" in capsys.readouterr().out and len(clusters) >= 5
    assert len(list((tmp_path / "clusters").glob("*.npy"))) == 1  # the same key: read, not recomputed


def test_heads_build_from_scratch_passes_no_checkpoint(monkeypatch, tmp_path, capsys):
    """`--pretrained none` (configs/heads_scratch.yaml's recipe) fine-tunes without a pre-trained encoder."""
    import mlcm_core.explore.predict as predict
    import mlcm_core.train.finetune as ft

    calls: list[tuple[str, object, float]] = []
    monkeypatch.setattr(ft, "finetune", lambda store, cfg, target, pretrained: calls.append((target, pretrained,
                                                                                           cfg.lr)))

    def fake_build(store, runs, out, **kwargs):
        out.mkdir(parents=True)
        (out / "manifest.json").write_text(json.dumps({"targets": []}))
        return out

    monkeypatch.setattr(predict, "build_heads", fake_build)
    assert main(["heads", "build", "--pretrained", "none", "--config", str(ROOT / "configs/heads_scratch.yaml"),
                 "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "heads"), "--targets", "band_gap"]) == 0
    assert calls == [("band_gap", None, 2e-3)]
