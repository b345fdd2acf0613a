"""Materials Project source: transforms on real MP DOS objects, fetch layer on a stand-in client, offline."""

from __future__ import annotations

import importlib.util
import json
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mlcm_core.data.conventions import DOS_ENERGIES
from mlcm_core.data.sources.materials_project import MPAccessError, fetch_materials, record_from_mp

VASP_SI = Path(__file__).parents[2] / "files" / "vasp-si"


def _crystal_toolkit_example(name: str) -> dict:
    """An MP object shipped in crystal-toolkit's apps/examples, located without importing the (slow) package."""
    spec = importlib.util.find_spec("crystal_toolkit")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("crystal-toolkit is not installed: it ships the MP Si/GaN DOS and band structures used here")
    return json.loads((Path(spec.submodule_search_locations[0]) / "apps" / "examples" / name).read_text())


def _mp_dos(name: str):
    from pymatgen.electronic_structure.dos import CompleteDos

    return CompleteDos.from_dict(_crystal_toolkit_example(name))


@pytest.fixture(scope="module")
def si_dos():
    return _mp_dos("Si_dos.json")


@pytest.fixture(scope="module")
def gan_dos():
    return _mp_dos("GaN_dos.json")


@pytest.fixture(scope="module")
def si_chgcar():
    from pymatgen.io.vasp import Chgcar

    return Chgcar.from_file(str(VASP_SI / "CHGCAR.gz"))


def _window_integral(dos: np.ndarray, lo: float, hi: float) -> float:
    mask = (DOS_ENERGIES >= lo) & (DOS_ENERGIES <= hi)
    return float(np.trapezoid(dos[mask], DOS_ENERGIES[mask]))


def test_record_from_dict_maps_labels(si_dos):
    summary = {
        "material_id": "mp-149",
        "formula_pretty": "Si",
        "band_gap": 0.6105,
        "formation_energy_per_atom": 0.0,
        "energy_above_hull": 0.0,
        "bulk_modulus": {"voigt": 88.7, "reuss": 88.7, "vrh": 88.7},
        "shear_modulus": {"voigt": 63.5, "reuss": 60.4, "vrh": 61.9},
    }
    record = record_from_mp(summary, si_dos.structure, si_dos, None)
    assert record.id == "mp-149"
    assert record.source == "materials-project-api"
    assert record.formula == "Si"
    assert record.labels == {
        "band_gap_mpapi_pbe": 0.6105,
        "formation_energy_per_atom_mpapi_pbe": 0.0,
        "e_above_hull_mpapi_pbe": 0.0,
        "k_vrh_mpapi_pbe": 88.7,
        "g_vrh_mpapi_pbe": 61.9,
    }
    assert "CC-BY 4.0" in record.provenance
    assert record.density is None


def test_legacy_and_missing_fields():
    from pymatgen.core import Lattice, Structure

    si = Structure(Lattice.cubic(5.43), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])
    legacy = {"material_id": "mp-149", "k_vrh": 88.0, "e_above_hull": 0.01, "structure": si.as_dict()}
    record = record_from_mp(legacy, None, None, None)
    assert record.labels == {"k_vrh_mpapi_pbe": 88.0, "e_above_hull_mpapi_pbe": 0.01}
    assert len(record.structure) == 2 and record.dos is None
    with pytest.raises(ValueError, match="no material_id"):
        record_from_mp({"band_gap": 1.0}, si, None, None)
    with pytest.raises(ValueError, match="no structure"):
        record_from_mp({"material_id": "mp-149"}, None, None, None)


def test_emmet_summary_doc_keeps_the_legacy_id(si_dos):
    from emmet.core.summary import SummaryDoc

    doc = SummaryDoc(material_id="mp-149", structure=si_dos.structure, band_gap=0.61, bulk_modulus={"vrh": 88.7})
    record = record_from_mp(doc, None, si_dos, None)
    assert record.id == "mp-149"  # not the AlphaID model_dump gives
    assert record.labels == {"band_gap_mpapi_pbe": 0.61, "k_vrh_mpapi_pbe": 88.7}


def _mp_band_gap(name: str) -> float:
    """The eigenvalue gap of MP's band structure of the same material (crystal-toolkit's <name>_bs.json)."""
    return float(_crystal_toolkit_example(name)["band_gap"]["energy"])


def test_si_dos_gap_and_zero_at_vbm(si_dos):
    """This old, sparse MP DOS (zeros inside the bands) reads a gap well above the 0.61 eV eigenvalue gap."""
    dos = record_from_mp({"material_id": "mp-149"}, si_dos.structure, si_dos, None).dos
    assert dos.reference == "vbm"
    assert "gap from the DOS" in dos.convention
    assert dos.band_gap == pytest.approx(1.474, abs=1e-3)  # conventions.dos_gap_and_vbm at tol 1e-3
    assert dos.band_gap >= _mp_band_gap("Si_bs.json") == pytest.approx(0.612, abs=1e-3)
    assert dos.spin is None and "non-spin-polarized" in dos.convention
    assert np.abs(dos.total[(DOS_ENERGIES > 0.06) & (DOS_ENERGIES < dos.band_gap - 0.06)]).max() < 1e-3
    assert dos.total[np.argmin(np.abs(DOS_ENERGIES))] > 0.1  # the zero sits on the last occupied DOS point


def test_gan_upper_valence_band_holds_six_electrons_per_formula_unit(gan_dos):
    """GaN's N-2p upper valence band lies within 10 eV of the VBM; Ga 3d and N 2s lie below."""
    dos = record_from_mp({"material_id": "mp-804"}, gan_dos.structure, gan_dos, None).dos
    assert gan_dos.structure.composition.reduced_formula == "GaN"
    n_formula_units = gan_dos.structure.composition.get_reduced_composition_and_factor()[1]
    assert _window_integral(dos.total, -10.0, 0.0) == pytest.approx(6 * n_formula_units, rel=0.03)
    # a DOS threshold (1e-3 states/eV) sits inside the bands: the gap reads up to ~3 MP grid steps wide
    eigen_gap = _mp_band_gap("GaN_bs.json")
    assert eigen_gap == pytest.approx(1.738, abs=1e-3)
    assert eigen_gap <= dos.band_gap <= eigen_gap + 0.2


def test_chgcar_gives_density_and_its_cell(si_chgcar):
    shifted = si_chgcar.structure.copy()
    shifted.scale_lattice(shifted.volume * 1.02)  # e.g. MP's r2SCAN-relaxed summary structure
    record = record_from_mp({"material_id": "mp-149"}, shifted, None, si_chgcar)
    assert record.structure.volume == pytest.approx(si_chgcar.structure.volume)
    assert record.density.integral == pytest.approx(32.0, rel=0.01)
    assert record.density.units == "e/Å^3"


def test_chgcar_of_another_material_is_refused(si_chgcar, gan_dos):
    with pytest.raises(ValueError, match="CHGCAR is for Si8"):
        record_from_mp({"material_id": "mp-804"}, gan_dos.structure, None, si_chgcar)


class _FakeRester:
    """Stands in for mp_api's MPRester: the same calls, answered from objects in memory."""

    def __init__(self, summaries, thermo, dos, chgcars, fail=None):
        self.calls = []
        self._dos, self._chgcars, self._fail = dos, chgcars, fail
        self.materials = SimpleNamespace(
            summary=SimpleNamespace(search=lambda **kw: self._search("summary", summaries, kw)),
            thermo=SimpleNamespace(search=lambda **kw: self._search("thermo", thermo, kw)),
        )

    def _search(self, name, docs, kwargs):
        self.calls.append((name, kwargs))
        if self._fail is not None:
            raise self._fail
        return [d for d in docs if d["material_id"] in kwargs["material_ids"]]

    def get_dos_by_material_id(self, material_id):
        return self._lookup(self._dos, material_id, "density of states")

    def get_charge_density_from_material_id(self, material_id):
        return self._lookup(self._chgcars, material_id, "charge density")

    @staticmethod
    def _lookup(table, material_id, what):
        from mp_api.client.core.client import MPRestError

        if material_id not in table:
            raise MPRestError(f"No {what} data found for {material_id}")
        return table[material_id]


@pytest.fixture()
def fake_client(si_dos, gan_dos, si_chgcar):
    summaries = [
        {
            "material_id": "mp-804",
            "structure": gan_dos.structure,
            "formula_pretty": "GaN",
            "band_gap": 1.73,
            "formation_energy_per_atom": -0.55,
            "energy_above_hull": 0.0,
        },
        {
            "material_id": "mp-149",
            "structure": si_chgcar.structure,
            "formula_pretty": "Si",
            "band_gap": 0.61,
            "formation_energy_per_atom": 0.02,
            "energy_above_hull": 0.0,
            "bulk_modulus": {"vrh": 88.7},
        },
    ]
    thermo = [{"material_id": "mp-804", "formation_energy_per_atom": -0.62, "energy_above_hull": 0.0}]
    return _FakeRester(summaries, thermo, {"mp-149": si_dos, "mp-804": gan_dos}, {"mp-149": si_chgcar})


def test_fetch_with_a_client(fake_client):
    records = fetch_materials(["mp-149", "mp-804"], client=fake_client)
    assert [r.id for r in records] == ["mp-149", "mp-804"]
    si, gan = records
    assert si.density is not None and si.density.integral == pytest.approx(32.0, rel=0.01)
    assert gan.density is None  # MP has none: an absent modality, not an error
    assert si.dos is not None and gan.dos is not None
    # energies come from the GGA/GGA+U thermo docs only, never the summary's mixed values
    assert gan.labels["formation_energy_per_atom_mpapi_pbe"] == -0.62
    assert "formation_energy_per_atom_mpapi_pbe" not in si.labels
    assert si.labels == {"band_gap_mpapi_pbe": 0.61, "k_vrh_mpapi_pbe": 88.7}
    thermo_call = dict(fake_client.calls)["thermo"]
    assert thermo_call["thermo_types"] == ["GGA_GGA+U"]


def test_fetch_without_dos_or_density(fake_client):
    (record,) = fetch_materials(["mp-149"], client=fake_client, with_dos=False, with_density=False)
    assert record.dos is None and record.density is None


def test_unknown_id_is_reported(fake_client):
    with pytest.raises(MPAccessError, match=r"no summary for \['mp-0'\]"):
        fetch_materials(["mp-149", "mp-0"], client=fake_client)


def test_server_error_on_a_dos_is_not_taken_for_missing_data(fake_client):
    from mp_api.client.core.client import MPRestError

    def rate_limited(material_id):
        raise MPRestError("REST query returned with error status code 429")

    fake_client.get_dos_by_material_id = rate_limited
    with pytest.raises(MPAccessError, match=r"DOS of mp-149 failed: .*429"):
        fetch_materials(["mp-149"], client=fake_client)


def test_client_failure_becomes_access_error():
    import requests

    client = _FakeRester([], [], {}, {}, fail=requests.ConnectionError("connection reset"))
    with pytest.raises(MPAccessError, match="query failed: connection reset"):
        fetch_materials(["mp-149"], client=client)


def test_missing_key_says_what_to_set(monkeypatch):
    monkeypatch.delenv("MP_API_KEY", raising=False)
    with pytest.raises(MPAccessError, match="set MP_API_KEY"):
        fetch_materials(["mp-149"])


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_refused_connection_fails_fast():
    start = time.monotonic()
    with pytest.raises(MPAccessError, match="cannot reach the Materials Project"):
        fetch_materials(["mp-149"], api_key="x" * 32, endpoint=f"http://127.0.0.1:{_closed_port()}/", timeout=2.0)
    assert time.monotonic() - start < 2.0


def test_silent_server_times_out_instead_of_hanging():
    """A listener that never answers, like a firewall that swallows packets."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(MPAccessError, match="cannot reach the Materials Project"):
            fetch_materials(["mp-149"], api_key="x" * 32, endpoint=f"http://127.0.0.1:{port}/", timeout=0.5)
        assert time.monotonic() - start < 3.0
