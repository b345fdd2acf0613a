"""Property predictions with uncertainty: ensembles of fine-tuned crystal encoders + heads.

Why an ensemble: a scientist screening candidates needs to know when a prediction is a guess. K independently
seeded fine-tunings (``mlcm finetune`` with ``ensemble: K``) disagree most where the training data say least;
their spread (std over members) is the uncertainty shown beside every prediction. Whether that spread means
anything is measured, not assumed: ``build_heads`` records on the held-out test split the MAE, the MAE of
always predicting the training mean, the share of test errors within 1σ and 2σ, and the rank correlation
between |error| and σ. A few fine-tunings of one pre-trained encoder agree with each other far more than with
the truth (raw spread: ~20 % of test errors within 1σ), so the reported σ is the raw spread times one factor
per target fitted on the validation split (the 68.27 % quantile of |error| / spread there: "σ scaling"); the
test split then shows how well that calibration transfers. Both raw and calibrated coverage are recorded.

Layout of a heads folder (``precomputed/heads``), written atomically (temp folder + rename):

    manifest.json                 targets, units, level of theory, metrics, SHA-256 of every file
    <target>/model-<k>/           checkpoint.json + model.safetensors of member k (never a pickle)
    <target>/forest.npz           the classical half, where added: random-forest trees as arrays + imputation
                                  medians (``explore/forest.py``, read without pickle)
    predictions.npz               ids + per-target mean/std for every structure of the store it was built on
                                  (the shipped, hybrid values); with a forest also <target>__gnn_mean/_std and
                                  <target>__forest_mean/_std, each half alone

The hybrid (``explore/classical.py``, ``mlcm heads add-classical``): per target, w · GNN ensemble + (1 − w) ·
random forest on Magpie + structure descriptors, w chosen on validation MAE, σ from the mixture of the two
spreads scaled on validation. The manifest's ``metrics`` are the shipped (hybrid) numbers, with the GNN-only
and forest-only ones under ``metrics.gnn`` and ``metrics.forest``; heads without a forest are GNN-only.

Values are in the target's transformed unit (``log10(GPa)`` for the moduli ``log10_k_vrh``, ``log10_g_vrh``); ``natural``
converts them back (GPa) with the 1σ interval mapped through the inverse transform.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mlcm_core.io import ChecksumError, atomic_write, file_digests, sha256_file, staged_dir, verify_files

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from mlcm_core.data.store import DatasetStore
    from mlcm_core.explore.classical import ClassicalConfig

__all__ = ["HEADS_DIR", "HEAD_TARGETS", "HeadsError", "PropertyPredictor", "build_heads", "natural_units",
           "sigma_scale", "verify_heads"]

HEADS_DIR = "heads"
HEAD_TARGETS: tuple[str, ...] = ("band_gap", "formation_energy_per_atom", "log10_k_vrh", "log10_g_vrh")
MANIFEST_FORMAT = "mlcm-property-heads"
MANIFEST_VERSION = 1
PREDICTIONS_FILE = "predictions.npz"
THEORY = ("MLCM prediction: crystal encoder fine-tuned on Materials Project PBE(+U) labels, {k}-member ensemble; "
          "σ = ensemble spread × {scale:.2g} (fitted on validation)")
HYBRID_THEORY = ("MLCM prediction: {w:.2f} × crystal encoder fine-tuned on Materials Project PBE(+U) labels "
                 "({k}-member ensemble) + {wf:.2f} × random forest on Magpie + structure descriptors ({n} trees); "
                 "σ = spread of the mixture × {scale:.2g} (fitted on validation)")


class HeadsError(RuntimeError):
    """A heads folder is missing, corrupt or inconsistent."""


class HeadsChecksumError(HeadsError, ChecksumError):
    """A file of the heads manifest is missing or differs from its SHA-256."""


@dataclass(frozen=True)
class _Target:
    name: str
    column: str
    transform: str
    unit: str
    metrics: dict[str, Any]
    sigma_scale: float = 1.0  # of the shipped σ (the blend's where there is a forest)
    classical: dict[str, Any] | None = None  # the manifest's "classical" entry: forest file, weight_gnn, ...

    @property
    def gnn_sigma_scale(self) -> float:
        return float(self.classical["gnn_sigma_scale"]) if self.classical else self.sigma_scale


def natural_units(transform: str, unit: str, mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                                           np.ndarray, str]:
    """(value, low, high, unit) in the quantity's own unit: 10**x for log10 targets, 1σ interval mapped through."""
    mean, std = np.asarray(mean, float), np.asarray(std, float)
    if transform == "log10":
        base = unit.removeprefix("log10").strip().strip("()").strip()  # "log10(GPa)" -> "GPa"
        return 10.0 ** mean, 10.0 ** (mean - std), 10.0 ** (mean + std), base
    return mean, mean - std, mean + std, unit


def calibration(y_true: np.ndarray, y_pred: np.ndarray, y_std: np.ndarray) -> dict[str, float]:
    """How far the ensemble spread can be trusted, on held-out rows."""
    from scipy.stats import spearmanr

    err = np.abs(np.asarray(y_pred, float) - np.asarray(y_true, float))
    std = np.asarray(y_std, float)
    if len(err) == 0:
        nan = float("nan")
        return {"within_1sigma": nan, "within_2sigma": nan, "spearman_abs_error_vs_sigma": nan, "mean_sigma": nan,
                "gaussian_within_1sigma": 0.6827, "gaussian_within_2sigma": 0.9545}
    rho = float(spearmanr(err, std).statistic) if len(err) > 2 and np.ptp(std) > 0 else float("nan")
    return {"within_1sigma": float(np.mean(err <= std)), "within_2sigma": float(np.mean(err <= 2 * std)),
            "spearman_abs_error_vs_sigma": rho, "mean_sigma": float(np.mean(std)),
            "gaussian_within_1sigma": 0.6827, "gaussian_within_2sigma": 0.9545}


def verify_heads(directory: str | Path) -> dict[str, Any]:
    """The heads manifest, after checking every file it lists against its SHA-256 (HeadsError names the file)."""
    directory = Path(directory)
    mpath = directory / "manifest.json"
    if not mpath.exists():
        raise HeadsError(f"no property heads at {directory} (build them with `mlcm heads build`)")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HeadsError(f"{mpath} is unreadable: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise HeadsError(f"{mpath} is not a property-heads manifest")
    if manifest.get("version") != MANIFEST_VERSION:
        raise HeadsError(f"{mpath}: version {manifest.get('version')!r}, this code reads {MANIFEST_VERSION}")
    verify_files(directory, manifest.get("files", {}), listed_in="the heads manifest", error=HeadsChecksumError)
    return manifest


class PropertyPredictor:
    """The shipped property heads; ``predict`` gives mean ± std per target for any structure.

    Why the ensemble members load lazily: ``lookup`` (the stored predictions of gallery materials, what the
    map and the cards show) needs only the manifest and predictions.npz; the members (torch and
    torch-geometric, ~6 s to import on a cold machine) are loaded on the first ``predict`` of a new structure.
    """

    def __init__(self, directory: Path, manifest: dict[str, Any], targets: list[_Target],
                 members: dict[str, list[Any]] | None, graph_config: Any, gallery: dict[str, np.ndarray] | None) -> None:
        self.directory = directory
        self.manifest = manifest
        self.targets = targets
        self._members = members
        self._graph_config = graph_config
        self._lock = threading.Lock()
        self._gallery = gallery
        self._gallery_pos = ({i: k for k, i in enumerate(gallery["ids"].tolist())} if gallery is not None else {})
        self._forests: dict[str, tuple[Any, np.ndarray]] | None = None

    # ---- loading -----------------------------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | Path, *, verify: bool = True) -> PropertyPredictor:
        """Open a heads folder; every file's SHA-256 is checked against the manifest first (the ensemble
        members themselves are read on first use: ``members``)."""
        directory = Path(directory)
        manifest = verify_heads(directory) if verify else json.loads((directory / "manifest.json").read_text())
        files = manifest.get("files", {})
        targets = []
        for spec in manifest["targets"]:
            if not spec.get("members"):
                raise HeadsError(f"{directory / 'manifest.json'}: target {spec['name']} lists no members")
            targets.append(_Target(spec["name"], spec["column"], spec["transform"], spec["unit"],
                                   spec.get("metrics", {}), float(spec.get("sigma_scale", 1.0)),
                                   spec.get("classical")))
        gallery = None
        if PREDICTIONS_FILE in files:
            try:
                with np.load(directory / PREDICTIONS_FILE, allow_pickle=False) as z:
                    gallery = {k: z[k] for k in z.files}
            except Exception as e:  # zipfile/numpy raise many kinds
                raise HeadsError(f"{directory / PREDICTIONS_FILE} is unreadable ({type(e).__name__}: {e})") from e
        return cls(directory, manifest, targets, None, None, gallery)

    @property
    def members(self) -> dict[str, list[Any]]:
        """{target: its ensemble of PropertyRegressor models}, loaded on first use (their files were verified
        with the manifest when the folder was opened)."""
        with self._lock:
            if self._members is None:
                self._members, self._graph_config = self._load_members()
            return self._members

    @property
    def graph_config(self) -> Any:
        """The crystal-graph featurization the heads were trained with (loads the members)."""
        self.members  # noqa: B018 - loads them
        return self._graph_config

    @property
    def forests(self) -> dict[str, tuple[Any, np.ndarray]]:
        """{target: (TreeForest, imputation medians)} for the targets with a classical half, loaded on first use."""
        from mlcm_core.explore.forest import load_forest

        with self._lock:
            if self._forests is None:
                forests = {}
                for t in self.targets:
                    if t.classical:
                        try:
                            forest, extra = load_forest(self.directory / t.classical["forest"])
                        except (OSError, ValueError, KeyError) as e:
                            raise HeadsError(f"{self.directory / t.classical['forest']}: {e}") from e
                        forests[t.name] = (forest, extra["fill"])
                self._forests = forests
            return self._forests

    def _load_members(self) -> tuple[dict[str, list[Any]], Any]:
        from mlcm_core.featurize.crystal_graph import CrystalGraphConfig
        from mlcm_core.models.crystal import CrystalEncoderConfig
        from mlcm_core.models.checkpoint import load_state_dict_checked, load_weights, read_checkpoint_info
        from mlcm_core.train.finetune import PropertyRegressor

        members, graph_config = {}, None
        specs = {spec["name"]: spec for spec in self.manifest["targets"]}
        for t in self.targets:
            models = []
            for rel in specs[t.name]["members"]:
                info = read_checkpoint_info(self.directory / rel)
                extra = info.extra
                model = PropertyRegressor(CrystalEncoderConfig(**_tuples(info.model_config)),
                                          int(extra["head_hidden"]), int(extra["head_layers"]),
                                          float(extra["head_dropout"]))
                load_state_dict_checked(model, load_weights(info.path), source=str(info.path))
                model.eval()
                model.y_mean, model.y_std = float(extra["y_mean"]), float(extra["y_std"])
                gcfg = CrystalGraphConfig(**extra["graph_config"])
                if graph_config is None:
                    graph_config = gcfg
                elif gcfg != graph_config:
                    raise HeadsError(f"{info.path}: graph featurization differs from the other heads")
                models.append(model)
            members[t.name] = models
        return members, graph_config

    # ---- prediction --------------------------------------------------------------------------------
    @property
    def target_names(self) -> list[str]:
        return [t.name for t in self.targets]

    def predict_graphs(self, graphs: Sequence[Any], batch_size: int = 128,
                       calibrated: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{target: (mean, σ)} of the GNN ensemble alone, in the target's (transformed) unit, one value per graph.

        σ is the ensemble's std times its validation-fitted scale (``calibrated=False``: raw). A graph has no
        composition or symmetry for the forest: hybrid predictions come from ``predict``.
        """
        import torch

        from mlcm_core.featurize.crystal_graph import collate_graphs

        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        with torch.no_grad():
            for t in self.targets:
                runs = []
                for model in self.members[t.name]:
                    parts = [model(collate_graphs(graphs[s:s + batch_size])).float().numpy()
                             for s in range(0, len(graphs), batch_size)]
                    z = np.concatenate(parts) if parts else np.zeros(0, np.float32)
                    runs.append(z * model.y_std + model.y_mean)
                stack = np.stack(runs)  # (K, n)
                out[t.name] = (stack.mean(0), stack.std(0) * (t.gnn_sigma_scale if calibrated else 1.0))
        return out

    def predict(self, structures: Structure | Sequence[Structure]) -> pd.DataFrame:
        """One row per (structure, target): mean, std (transformed unit), value/low/high in natural units.

        Where the target has a forest: w · GNN + (1 − w) · forest, σ of the mixture × sigma_scale
        (``classical.blend``); else the GNN ensemble's mean and scaled spread.
        """
        from pymatgen.core import Structure

        from mlcm_core.featurize.crystal_graph import structure_to_graph

        items = [structures] if isinstance(structures, Structure) else list(structures)
        graphs = [structure_to_graph(s, self.graph_config) for s in items]
        raw = self.predict_graphs(graphs, calibrated=False)
        if any(t.classical for t in self.targets):
            from mlcm_core.explore.classical import blend, impute
            from mlcm_core.featurize.descriptors import descriptors

            x = descriptors(items)
        out = {}
        for t in self.targets:
            mean, std = raw[t.name]
            if t.classical:
                forest, fill = self.forests[t.name]
                f_mean, f_std = forest.predict_with_spread(impute(x, fill))
                mean, std = blend(mean, std, f_mean, f_std, float(t.classical["weight_gnn"]))
            out[t.name] = (mean, std * t.sigma_scale)
        return self._frame(list(range(len(items))), out, "structure")

    def lookup(self, material_ids: Sequence[str]) -> pd.DataFrame:
        """Stored predictions for gallery materials (computed when the heads were built); unknown ids are left out."""
        if self._gallery is None:
            return self._frame([], {t.name: (np.zeros(0), np.zeros(0)) for t in self.targets}, "id")
        rows = [(i, self._gallery_pos[i]) for i in material_ids if i in self._gallery_pos]
        keys = [i for i, _ in rows]
        pos = np.array([k for _, k in rows], dtype=np.int64)
        raw = {t.name: (self._gallery[f"{t.name}__mean"][pos].astype(np.float64),
                        self._gallery[f"{t.name}__std"][pos].astype(np.float64)) for t in self.targets}
        return self._frame(keys, raw, "id")

    def _theory(self, t: _Target) -> str:
        k = self._n_members(t.name)
        if not t.classical:
            return THEORY.format(k=k, scale=t.sigma_scale)
        w = float(t.classical["weight_gnn"])
        return HYBRID_THEORY.format(w=w, wf=1.0 - w, k=k, n=t.classical.get("n_trees", "?"), scale=t.sigma_scale)

    def _n_members(self, target: str) -> int:
        return next(len(spec["members"]) for spec in self.manifest["targets"] if spec["name"] == target)

    def _frame(self, keys: list[Any], raw: Mapping[str, tuple[np.ndarray, np.ndarray]], key_name: str) -> pd.DataFrame:
        frames = []
        for t in self.targets:
            mean, std = raw[t.name]
            value, low, high, unit = natural_units(t.transform, t.unit, mean, std)
            quantity = t.name.replace("log10_", "")
            frames.append(pd.DataFrame({
                key_name: keys, "target": t.name, "quantity": quantity, "label_column": t.column, "mean": mean, "std": std,
                "transformed_unit": t.unit, "value": value, "low_1sigma": low, "high_1sigma": high, "unit": unit,
                "test_mae": t.metrics.get("test_mae", np.nan),
                "theory": self._theory(t)}))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _tuples(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


# ---- building --------------------------------------------------------------------------------------


def build_heads(store: DatasetStore | str | Path, runs: Mapping[str, str | Path], out_dir: str | Path, *,
                cache_dir: str | Path | None = None, batch_size: int = 128, progress: bool = True,
                classical: ClassicalConfig | None = None, descriptor_cache: str | Path | None = None) -> Path:
    """Collect fine-tuning runs (``mlcm finetune`` output folders, one per target) into ``out_dir``.

    Copies every ensemble member, measures the calibration of the spread on the run's test predictions and
    predicts every structure of ``store`` (so the app looks gallery materials up instead of running 12 models).
    With ``classical``, then adds the forest half of the hybrid (``classical.add_classical``; descriptors cached
    in ``descriptor_cache``).
    """
    from mlcm_core.data.store import DatasetStore
    from mlcm_core.featurize.dataset import MultimodalDataset

    store = DatasetStore.open(store, verify=False) if not hasattr(store, "table") else store
    out_dir = Path(out_dir)
    with staged_dir(out_dir) as tmp:
        specs = []
        for name, run in runs.items():
            run = Path(run)
            result = json.loads((run / "result.json").read_text())
            members = sorted(p for p in run.glob("model-*") if (p / "checkpoint.json").exists())
            if not members:
                raise HeadsError(f"{run} holds no model-<k> checkpoints")
            rels = []
            for p in members:
                dest = tmp / name / p.name
                dest.mkdir(parents=True)
                for f in ("checkpoint.json", "model.safetensors"):
                    shutil.copy2(p / f, dest / f)
                rels.append(f"{name}/{p.name}")
            pred = pd.read_csv(run / "predictions.csv")
            metrics = {k: result[k] for k in ("n_train", "n_val", "n_test", "val_mae", "test_mae",
                                              "test_mae_mean_baseline", "best_epochs")}
            metrics.update(calibration(pred["y_true"], pred["y_pred"], pred["y_std"]))
            specs.append({"name": result["target"], "column": result["column"], "transform": result["transform"],
                          "unit": result["unit"], "members": rels, "metrics": metrics,
                          "finetune_config": json.loads(json.dumps(_read_yaml(run / "config.yaml"), default=str))})
        files = file_digests(tmp, [f"{rel}/{f}" for s in specs for rel in s["members"]
                                   for f in ("checkpoint.json", "model.safetensors")])
        manifest: dict[str, Any] = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "targets": specs,
                                    "files": files}
        (tmp / "manifest.json").write_text(json.dumps(manifest))  # so that load() can read the members
        predictor = PropertyPredictor.load(tmp, verify=False)
        _fit_sigma_scales(store, predictor, specs, runs, cache_dir, progress)
        (tmp / "manifest.json").write_text(json.dumps(manifest))
        predictor = PropertyPredictor.load(tmp, verify=False)

        t = store.table
        ids = t.loc[t["has_structure"].fillna(False).astype(bool), "id"].astype(str).tolist()
        ds = MultimodalDataset(store, ids, predictor.graph_config, cache_dir, modalities=("crystal",), labels=[],
                               progress=progress)
        keep = [k for k in range(len(ids)) if ds.has["crystal"][k]]
        raw = predictor.predict_graphs([ds[k].graph for k in keep], batch_size=batch_size)
        arrays: dict[str, np.ndarray] = {"ids": np.array([ids[k] for k in keep], dtype=str)}
        for name, (mean, std) in raw.items():
            arrays[f"{name}__mean"], arrays[f"{name}__std"] = mean.astype(np.float32), std.astype(np.float32)
        atomic_write(tmp / PREDICTIONS_FILE, lambda f: np.savez_compressed(f, **arrays))
        files[PREDICTIONS_FILE] = sha256_file(tmp / PREDICTIONS_FILE)
        manifest.update({
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "store": {"shards": [s["name"] for s in store.manifest["shards"]], "predicted": len(keep)},
            "uncertainty": ("σ = std over the ensemble members (separately seeded fine-tunings) × the target's "
                            "sigma_scale, fitted on the validation split"),
            "files": files})
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if classical is not None:
        from mlcm_core.explore.classical import add_classical

        add_classical(out_dir, store, config=classical, cache_dir=descriptor_cache, progress=progress)
    return out_dir


def sigma_scale(err: np.ndarray, sigma: np.ndarray) -> float:
    """The factor that makes ``sigma`` cover 68.27 % of ``|err|`` (a Gaussian's 1σ), fitted on validation rows."""
    return float(np.quantile(np.abs(err) / np.maximum(sigma, 1e-12), 0.6827))


def _fit_sigma_scales(store: DatasetStore, predictor: PropertyPredictor, specs: list[dict[str, Any]],
                      runs: Mapping[str, str | Path], cache_dir: str | Path | None, progress: bool) -> None:
    """Per target: σ scale fitted on the validation split, and the test coverage it then gives (in place)."""
    from mlcm_core.featurize.dataset import MultimodalDataset
    from mlcm_core.train.finetune import resolve_target

    t = store.table
    for spec, (name, run) in zip(specs, runs.items()):
        target = resolve_target(spec["name"])
        val = t[(t["split"] == "val") & t["has_structure"].fillna(False).astype(bool)]
        y, keep = target.apply(pd.to_numeric(val[target.column], errors="coerce").to_numpy(np.float64))
        ids = val["id"].astype(str).to_numpy()[keep].tolist()
        y = y[keep]
        scale = 1.0
        if len(ids) >= 10:
            ds = MultimodalDataset(store, ids, predictor.graph_config, cache_dir, modalities=("crystal",), labels=[],
                                   progress=progress)
            ok = [k for k in range(len(ids)) if ds.has["crystal"][k]]
            mean, std = predictor.predict_graphs([ds[k].graph for k in ok], calibrated=False)[spec["name"]]
            scale = sigma_scale(mean - y[ok], std)
        spec["sigma_scale"] = scale
        pred = pd.read_csv(Path(run) / "predictions.csv")
        cal = calibration(pred["y_true"], pred["y_pred"], pred["y_std"] * scale)
        spec["metrics"].update({"sigma_scale_fitted_on": f"{len(ids)} validation rows",
                                "within_1sigma_calibrated": cal["within_1sigma"],
                                "within_2sigma_calibrated": cal["within_2sigma"],
                                "mean_sigma_calibrated": cal["mean_sigma"]})


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text()) if path.exists() else {}
