"""Materials Project (mp-api) materials as MaterialRecords.

Fetching (`fetch_materials`, network, API key) is kept apart from the pure transform
(`record_from_mp`), so the transform is tested offline on stored MP objects and the fetch layer on a
stand-in client.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from mlcm_core.data.record import MaterialRecord
from mlcm_core.data.sources.vasp import density_from_volumetric, dos_from_complete_dos

if TYPE_CHECKING:
    from pymatgen.core import Structure
    from pymatgen.electronic_structure.dos import CompleteDos
    from pymatgen.io.vasp import Chgcar

__all__ = ["DEFAULT_ENDPOINT", "MPAccessError", "fetch_materials", "record_from_mp"]

DEFAULT_ENDPOINT = "https://api.materialsproject.org/"
_THEORY = "PBE(+U), VASP (Materials Project)"
_SUMMARY_FIELDS = [
    "material_id",
    "structure",
    "formula_pretty",
    "band_gap",
    "formation_energy_per_atom",
    "energy_above_hull",
    "bulk_modulus",
    "shear_modulus",
]
# MP's summary energies mix GGA(+U) and r2SCAN since 2022; the *_mpapi_pbe columns want GGA(+U) only.
_PBE_THERMO_TYPE = "GGA_GGA+U"


class MPAccessError(RuntimeError):
    """The Materials Project could not be asked: no API key, no network, a rejected key or request."""


def _get(doc: Any, *keys: str) -> Any:
    """The first present field among `keys` of an emmet document or a plain dict (None if none)."""
    for key in keys:
        value = doc.get(key) if isinstance(doc, Mapping) else getattr(doc, key, None)
        if value is not None:
            return value
    return None


def _modulus_vrh(doc: Any, new_key: str, old_key: str) -> float | None:
    """VRH modulus from the current {'voigt','reuss','vrh'} dict or the legacy k_vrh/g_vrh field."""
    value = _get(doc, new_key)
    value = value.get("vrh") if isinstance(value, Mapping) else value
    value = _get(doc, old_key) if value is None else value
    return None if value is None else float(value)


def _labels(doc: Any) -> dict[str, float]:
    raw = {
        "band_gap_mpapi_pbe": _get(doc, "band_gap"),
        "formation_energy_per_atom_mpapi_pbe": _get(doc, "formation_energy_per_atom"),
        "e_above_hull_mpapi_pbe": _get(doc, "energy_above_hull", "e_above_hull"),
        "k_vrh_mpapi_pbe": _modulus_vrh(doc, "bulk_modulus", "k_vrh"),
        "g_vrh_mpapi_pbe": _modulus_vrh(doc, "shear_modulus", "g_vrh"),
    }
    return {column: float(value) for column, value in raw.items() if value is not None}


def record_from_mp(
    summary: Any,
    structure: Structure | None,
    dos: CompleteDos | None,
    chgcar: Chgcar | None,
) -> MaterialRecord:
    """Build a record from MP objects already in hand (no network).

    Args:
        summary: an emmet SummaryDoc or a dict with its fields (material_id, band_gap,
            formation_energy_per_atom, energy_above_hull, bulk_modulus/shear_modulus as
            {'vrh': GPa} or legacy k_vrh/g_vrh). Absent fields give absent labels.
        structure: the material's structure; None takes the summary's.
        dos: MP's CompleteDos (states/eV per cell, MP's own grid), or None.
        chgcar: MP's Chgcar (rho * V_cell), or None. With one, the record takes the CHGCAR's
            structure, the cell its grid lives in: MP's summary structure may come from another
            (r2SCAN) relaxation than the GGA static run that wrote the CHGCAR.

    Raises:
        ValueError: no material id, no structure, or a CHGCAR of another composition.
    """
    from pymatgen.core import Structure

    material_id = _get(summary, "material_id")
    if not material_id:
        raise ValueError("summary has no material_id")
    material_id = str(material_id)
    if structure is None:
        structure = _get(summary, "structure")
        if isinstance(structure, Mapping):
            structure = Structure.from_dict(dict(structure))
    if structure is None:
        raise ValueError(f"{material_id}: no structure in the summary and none given")
    parts = ["Materials Project API (CC-BY 4.0; Jain et al., APL Mater. 1, 011002 (2013)): summary"]
    density = None
    if chgcar is not None:
        if chgcar.structure.composition != structure.composition:
            raise ValueError(
                f"{material_id}: CHGCAR is for {chgcar.structure.composition.formula}, "
                f"not {structure.composition.formula}"
            )
        structure = cast("Structure", chgcar.structure)
        density = density_from_volumetric(chgcar, theory=_THEORY)
        parts.append("CHGCAR (density and structure)")
    dos_data = None
    if dos is not None:
        dos_data = dos_from_complete_dos(dos, theory=_THEORY, broadening="none added (MP DOS as served)")
        parts.append("DOS (gap from the DOS)")
    return MaterialRecord(
        id=material_id,
        source="materials-project-api",
        structure=structure,
        labels=_labels(summary),
        dos=dos_data,
        density=density,
        provenance=", ".join(parts),
        formula=_get(summary, "formula_pretty") or structure.composition.reduced_formula,
    )


def _check_reachable(endpoint: str, timeout: float) -> None:
    """Fail within about `timeout` s unless the endpoint answers an HTTP request.

    mp-api's first request (its heartbeat) carries no timeout, so a network that drops or stalls
    packets would otherwise hang. Any HTTP answer counts, even an error status: rejected keys are
    reported by the real query. The probe runs in a daemon thread because DNS ignores timeouts.
    """
    import requests

    outcome: dict[str, object] = {}

    def probe() -> None:
        try:
            requests.get(endpoint.rstrip("/") + "/heartbeat", timeout=timeout)
            outcome["ok"] = True
        except requests.RequestException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if not outcome.get("ok"):
        reason = outcome.get("error") or f"no answer within {timeout:g} s"
        raise MPAccessError(f"cannot reach the Materials Project at {endpoint}: {reason}; check the network or proxy")


def _fetch_optional(label: str, material_id: str, getter: Any) -> Any:
    """None where MP has no such data, so the record lacks that modality; any other failure raises.

    mp-api reports 'no data' as an MPRestError whose message starts with "No " (e.g. "No density of
    states data found for mp-..."); rate limits and server errors are MPRestErrors too, and must not
    silently drop a modality.
    """
    from mp_api.client.core.client import MPRestError

    try:
        return getter(material_id)
    except Exception as exc:
        if isinstance(exc, MPRestError) and str(exc).startswith("No "):
            return None
        raise MPAccessError(f"fetching the {label} of {material_id} failed: {exc}") from exc


def _fetch(client: Any, material_ids: list[str], with_dos: bool, with_density: bool) -> list[MaterialRecord]:
    try:
        docs = client.materials.summary.search(material_ids=material_ids, fields=_SUMMARY_FIELDS)
        thermo = client.materials.thermo.search(
            material_ids=material_ids,
            thermo_types=[_PBE_THERMO_TYPE],
            fields=["material_id", "formation_energy_per_atom", "energy_above_hull"],
        )
    except Exception as exc:  # mp-api raises MPRestError, requests errors, ... : all mean "could not ask"
        raise MPAccessError(f"Materials Project query failed: {exc}") from exc
    by_id = {str(_get(d, "material_id")): d for d in docs}
    pbe_energies = {str(_get(t, "material_id")): t for t in thermo}
    missing = [m for m in material_ids if m not in by_id]
    if missing:
        raise MPAccessError(f"Materials Project returned no summary for {missing}")
    records = []
    for material_id in material_ids:
        doc = by_id[material_id]
        pbe = pbe_energies.get(material_id)
        summary = {field: _get(doc, field) for field in _SUMMARY_FIELDS}
        summary["formation_energy_per_atom"] = _get(pbe, "formation_energy_per_atom") if pbe else None
        summary["energy_above_hull"] = _get(pbe, "energy_above_hull") if pbe else None
        dos = chgcar = None
        if with_dos:
            dos = _fetch_optional("DOS", material_id, client.get_dos_by_material_id)
        if with_density:
            chgcar = _fetch_optional("charge density", material_id, client.get_charge_density_from_material_id)
        records.append(record_from_mp(summary, None, dos, chgcar))
    return records


def fetch_materials(
    material_ids: Sequence[str],
    api_key: str | None = None,
    client: Any = None,
    with_dos: bool = True,
    with_density: bool = True,
    *,
    endpoint: str = DEFAULT_ENDPOINT,
    timeout: float = 10.0,
) -> list[MaterialRecord]:
    """Fetch materials from the Materials Project and convert them with record_from_mp.

    Formation energy and energy above hull are taken from MP's GGA/GGA+U thermo documents, not the
    summary's mixed GGA/r2SCAN values, so the *_mpapi_pbe columns keep one level of theory.

    Args:
        material_ids: e.g. ["mp-149", "mp-804"]; records come back in this order.
        api_key: MP API key; None reads MP_API_KEY. Not needed when `client` is given.
        client: an open mp_api MPRester (or a stand-in with the same methods); None opens one.
        with_dos: also fetch each material's DOS (absent in MP -> record without DOS).
        with_density: also fetch each material's CHGCAR (large downloads; absent -> no density).
        endpoint: MP API address (used only when opening a client).
        timeout: seconds to wait for the first connection before giving up.

    Raises:
        MPAccessError: no key, network unreachable, key or query rejected, an id unknown to MP.
    """
    ids = [str(m) for m in material_ids]
    if client is not None:
        return _fetch(client, ids, with_dos, with_density)
    key = api_key or os.environ.get("MP_API_KEY")
    if not key:
        raise MPAccessError(
            "no Materials Project API key: set MP_API_KEY (get a key at https://next-gen.materialsproject.org/api) "
            "or pass api_key="
        )
    _check_reachable(endpoint, timeout)
    from mp_api.client import MPRester

    try:
        rester = MPRester(api_key=key, endpoint=endpoint, mute_progress_bars=True)
    except Exception as exc:
        raise MPAccessError(f"cannot open a Materials Project session at {endpoint}: {exc}") from exc
    with rester:
        return _fetch(rester, ids, with_dos, with_density)
