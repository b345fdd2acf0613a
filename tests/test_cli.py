"""The `mlcm` command line on the shipped dataset and on a scratch store."""

from __future__ import annotations

import json
import subprocess
import sys

from mlcm_core.cli import main
from tests.conftest import DEFAULT_STORE


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
