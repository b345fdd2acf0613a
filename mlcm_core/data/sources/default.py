"""The bundled default dataset: real MP, CDVAE and MultiMat data from ../shared/data/sources.

Each source becomes one shard of the store; the builder runs once (`mlcm data build-default`) and the
app then reads only `precomputed/`.
"""

from __future__ import annotations

import ast
import gzip
import io
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from mlcm_core.data.conventions import dos_gap_and_vbm, standardize_dos
from mlcm_core.data.record import DensityData, DOSData, MaterialRecord

__all__ = ["build_default", "cdvae_records", "matminer_records", "multimat_records"]

MATMINER_FILES = {
    # file -> {csv column: label column}
    "flla_2015": {"formation_energy_per_atom": "formation_energy_per_atom_mp_pbe", "e_above_hull": "e_above_hull_mp_pbe"},
    "elastic_tensor": {"K_VRH": "k_vrh_mp_pbe", "G_VRH": "g_vrh_mp_pbe"},
    "dielectric_constant": {"band_gap": "band_gap_mp_pbe", "n": "refractive_index_mp_pbe", "poly_total": "dielectric_total_mp_pbe"},
    "piezoelectric_tensor": {"eij_max": "piezo_eij_max_mp_pbe"},
}
CDVAE_FILES = {
    "perov_5": ("perov5", {"heat_ref": "heat_of_formation_castelli_rpbe", "dir_gap": "gap_direct_castelli_gllbsc",
                           "ind_gap": "gap_indirect_castelli_gllbsc"}),
    "carbon_24": ("carbon24", {"energy_per_atom": "total_energy_per_atom_carbon24_pbe"}),
}


def _read_csv_with_ref(path: Path) -> tuple[pd.DataFrame, str]:
    """matminer CSVs open with a '# ref:' line naming the paper."""
    with gzip.open(path, "rt") as f:
        text = f.read()
    first, _, rest = text.partition("\n")
    ref = first.removeprefix("# ref:").strip() if first.startswith("#") else ""
    return pd.read_csv(io.StringIO(rest if ref else text)), ref


def _parse_structure(text: str):
    """A pymatgen Structure dict as Python literal text, or CIF text (elastic_tensor, CDVAE)."""
    from pymatgen.core import Structure

    text = text.strip()
    if text.startswith("{"):
        return Structure.from_dict(ast.literal_eval(text))
    with warnings.catch_warnings():  # "fractional coordinates rounded to ideal values": expected, harmless
        warnings.simplefilter("ignore", UserWarning)
        return Structure.from_str(text, fmt="cif")


def matminer_records(folder: Path) -> tuple[list[MaterialRecord], dict[str, str]]:
    """The four matminer 0.3.9 CSVs merged on material_id (6,317 MP structures), refs by file."""
    structures: dict[str, str] = {}
    labels: dict[str, dict[str, float]] = {}
    origin: dict[str, list[str]] = {}
    refs = {}
    for name, columns in MATMINER_FILES.items():
        df, refs[name] = _read_csv_with_ref(folder / f"{name}.csv.gz")
        for row in df.itertuples(index=False):
            mid = row.material_id
            structures.setdefault(mid, row.structure)
            origin.setdefault(mid, []).append(name)
            lab = labels.setdefault(mid, {})
            for col, label in columns.items():
                value = getattr(row, col)
                if pd.notna(value):
                    lab[label] = float(value)
    records = [
        MaterialRecord(id=mid, source="matminer-0.3.9", structure=_parse_structure(structures[mid]),
                       labels=labels[mid], provenance="matminer 0.3.9: " + ", ".join(origin[mid]))
        for mid in sorted(structures, key=lambda m: (len(m), m))
    ]
    return records, refs


def cdvae_records(folder: Path, dataset: str) -> list[MaterialRecord]:
    """CDVAE val+test splits of perov_5 or carbon_24, ids namespaced as perov5:<id> / carbon24:<id>."""
    prefix, columns = CDVAE_FILES[dataset]
    records = []
    for split in ("val", "test"):
        df = pd.read_csv(folder / f"{dataset}_{split}.csv.gz")
        for row in df.itertuples(index=False):
            labels = {label: float(getattr(row, col)) for col, label in columns.items() if pd.notna(getattr(row, col))}
            records.append(MaterialRecord(
                id=f"{prefix}:{row.material_id}", source=f"cdvae-{dataset}",
                structure=_parse_structure(row.cif), labels=labels,
                provenance=f"CDVAE {dataset}_{split}.csv",
            ))
    return records


def multimat_records(path: Path) -> tuple[list[MaterialRecord], dict[str, str]]:
    """MP DOS and charge densities packaged by MultiMat, for MP ids without an offline structure.

    The DOS (spin up only, E - E_F) is moved onto the project grid with its zero at the VBM read off the
    DOS when gapped. The density stays in VASP's rho*V_cell convention: V is unknown without the
    structure, so it cannot be converted to e/Å³; its mean over the grid is the electron count.
    Entries whose DOS is malformed (non-increasing energies) keep their density; the DOS is dropped
    and named in the returned {id: reason}.
    """
    with np.load(path) as npz:
        data = {k: npz[k] for k in npz.files}  # NpzFile re-reads an array on every item access
    records, dropped = [], {}
    for k, mid in enumerate(data["material_id"]):
        dos = density = None
        energies, values = data["dos"][k].astype(np.float64)
        if data["has_dos"][k] and not np.all(np.diff(energies) > 0):
            dropped[str(mid)] = "DOS energies not strictly increasing in the source; DOS dropped"
        elif data["has_dos"][k]:
            gap, vbm = dos_gap_and_vbm(energies, values, efermi=0.0)
            dos = DOSData(
                total=standardize_dos(energies, values, reference_energy=vbm),
                reference="vbm" if gap > 0 else "efermi", band_gap=gap,
                theory="PBE(+U), VASP (Materials Project)",
                broadening="none added (MP's VASP DOS as resampled by MultiMat)",
                convention="spin-up channel only, states/eV per cell; gap and VBM read off the DOS",
            )
        if data["has_charge_density"][k]:
            grid = data["charge_density"][k]
            density = DensityData(
                grid=grid, units="rho*V_cell (VASP CHGCAR convention, e); V unknown, not e/Å^3",
                theory="PBE(+U), VASP (Materials Project)",
                convention="MP CHGCAR total density resampled to 32^3 by MultiMat; has negative resampling artefacts",
                integral=float(grid.mean()),
            )
        if dos is None and density is None:
            continue
        records.append(MaterialRecord(id=str(mid), source="multimat-mp", dos=dos, density=density,
                                      provenance="MultiMat example data (clott3/MultiMat), Materials Project"))
    return records, dropped


def build_default(sources: Path, out: Path, progress: bool = True) -> dict:
    """Build the default store from ../shared/data/sources into `out`; returns `info()`."""
    from mlcm_core.data.store import DatasetStore

    store = DatasetStore.create(out, description="MLCM default dataset (see precomputed/README.md)")
    records, refs = matminer_records(sources / "matminer-0.3.9")
    store.append(records, "matminer-0.3.9", {"source": "matminer 0.3.9 sdist CSVs", "licence": "BSD (matminer) + CC-BY 4.0 (MP)",
                                             **{f"ref_{k}": v for k, v in refs.items()}}, progress=progress)
    cdvae_ref = {"licence": "MIT (CDVAE); data from the cited papers", "ref": "Xie et al., CDVAE, ICLR 2022"}
    store.append(cdvae_records(sources / "cdvae", "perov_5"), "cdvae-perov_5",
                 {**cdvae_ref, "data": "Castelli et al., Energy Environ. Sci. 5, 9034 (2012)"}, progress=progress)
    store.append(cdvae_records(sources / "cdvae", "carbon_24"), "cdvae-carbon_24",
                 {**cdvae_ref, "data": "Pickard, AIRSS data for carbon at 10 GPa (2020)"}, progress=progress)
    multimat, dropped = multimat_records(sources / "multimat-mp-partial" / "multimat_mp_partial.npz")
    store.append(multimat, "multimat-mp-partial",
                 {"source": "MultiMat example data (clott3/MultiMat)", "licence": "MIT + CC-BY 4.0 (MP)",
                  "ref": "Moro et al., Multimodal Learning for Materials (MultiMat), 2023",
                  "dropped": "; ".join(f"{k}: {v}" for k, v in dropped.items())}, progress=progress)
    return store.info()
