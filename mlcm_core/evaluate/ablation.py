"""The pre-training ablation: does each contrastive method help the crystal encoder, and does a 3rd modality?

Why it is built this way:

* **Same budget for every method.** One ``Budget`` fixes the model size, pre-training epochs / batch / LR /
  row cap and fine-tuning epochs / LR / early stopping / row cap; only the loss (and the modalities it needs)
  changes between methods. "scratch" skips pre-training and fine-tunes a randomly initialised encoder of the
  same architecture.
* **Same splits**: the store's one de-duplicated split, used by ``pretrain`` (train rows only) and
  ``finetune`` (fit on train, early-stop on val, report test) as they are; nothing here re-splits.
* **Seeds**: every (method, seed) pre-trains with that seed and fine-tunes with that seed, for each target;
  the table reports mean ± sample std (ddof = 1) over the seeds (std is null with one seed).
* **2- vs 3-modal on the SAME rows.** The comparison pre-trains CLIP on crystal+DOS and all-pairs CLIP on
  crystal+DOS+density on a view of the store restricted to rows having all three modalities, so both see
  exactly the same training materials (checked) and differ only by the density term; both then fine-tune
  on the full store, and retrieval is measured on the view's test rows (the same rows for both).
* **Restartable.** Each run lives in its own directory under ``out_dir`` with a JSON marker of its exact
  configuration: re-running with the same ``out_dir`` resumes interrupted pre-training and reuses finished
  fine-tuning results; a different configuration in an existing directory is an error, never a silent reuse.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlcm_core.evaluate.baseline import DEFAULT_RF_GRID
from mlcm_core.evaluate.inverse_design import DEFAULT_KS, DEFAULT_RANDOM_SEEDS
from mlcm_core.io import atomic_write_text
from mlcm_core.modalities import MODALITIES, specs

if TYPE_CHECKING:
    import pandas as pd

    from mlcm_core.data.store import DatasetStore

__all__ = [
    "BUDGETS",
    "DEFAULT_METHODS",
    "DEFAULT_TARGETS",
    "METHODS",
    "AblationResult",
    "Budget",
    "Method",
    "compare_modalities",
    "default_run_dir",
    "eval_device",
    "restrict_rows",
    "run_ablation",
    "select_method",
]

DEFAULT_TARGETS: tuple[str, ...] = ("band_gap", "formation_energy_per_atom", "log10_k_vrh", "log10_g_vrh")


@dataclass(frozen=True)
class Method:
    """A pre-training method: a registered loss, the modalities it trains, its options (None loss = scratch)."""

    name: str
    loss: str | None
    modalities: tuple[str, ...] = MODALITIES
    loss_options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("scratch", None, ("crystal",), {}, "no pre-training: randomly initialised crystal encoder"),
    Method("clip_crystal_dos", "clip", ("crystal", "dos"), {"a": "crystal", "b": "dos"},
           "CLIP on crystal-DOS pairs (2 modalities)"),
    Method("all_pairs_clip", "all_pairs_clip", MODALITIES, {}, "mean CLIP over the 3 modality pairs"),
    Method("anchored_clip", "anchored_clip", MODALITIES, {"anchor": "crystal"},
           "CLIP crystal-DOS + crystal-density (crystal anchor)"),
    Method("tensor_clip", "tensor_clip", MODALITIES, {}, "TensorCLIP on (crystal, DOS, density) triples"),
    Method("barlow_twins", "barlow_twins_pairwise", MODALITIES, {},
           "pairwise Barlow Twins over the 3 modality pairs"),
    Method("barlow_twins_higher_order", "barlow_twins_higher_order", MODALITIES, {},
           "third-order Barlow Twins on complete triples"),
)}
DEFAULT_METHODS: tuple[str, ...] = ("scratch", "clip_crystal_dos", "all_pairs_clip", "anchored_clip", "tensor_clip",
                                    "barlow_twins", "barlow_twins_higher_order")


@dataclass(frozen=True)
class Budget:
    """Everything that must be equal across methods, plus the evaluation's own sizes.

    ``model``/``model_overrides`` name the MultimodalConfig preset shared by pre-training and fine-tuning;
    ``pretrain_*`` and ``finetune_*`` map onto TrainConfig / FinetuneConfig; ``*_max_rows`` cap rows (seeded
    subsets; the Magpie baseline uses ``finetune_max_rows`` too, so it sees the same training rows);
    ``rank_max_rows`` caps the rows of the effective-rank estimate; ``device`` is "auto", "cpu" or "cuda".
    """

    name: str = "custom"
    model: str = "cpu"
    model_overrides: Mapping[str, Any] = field(default_factory=dict)
    pretrain_epochs: int = 30
    pretrain_batch_size: int = 32
    pretrain_lr: float = 5e-4
    pretrain_warmup_steps: int = 30
    pretrain_max_rows: int | None = None
    min_modalities: int = 2
    finetune_epochs: int = 100
    finetune_batch_size: int = 64
    finetune_lr: float = 1e-3
    finetune_warmup_steps: int = 50
    finetune_patience: int = 20
    finetune_max_rows: int | None = None
    finetune_encoder_lr_mult: float = 0.1
    targets: tuple[str, ...] = DEFAULT_TARGETS
    seeds: tuple[int, ...] = (0, 1, 2)
    rf_n_estimators: int = 500
    rf_grid: tuple[Mapping[str, Any], ...] = DEFAULT_RF_GRID
    inverse_ks: tuple[int, ...] = DEFAULT_KS
    inverse_random_seeds: tuple[int, ...] = DEFAULT_RANDOM_SEEDS
    rank_max_rows: int | None = None
    eval_batch_size: int = 64
    device: str = "auto"
    graph_cache_dir: str | None = None

    def with_overrides(self, overrides: Mapping[str, Any]) -> Budget:
        """A copy with some fields replaced (lists become tuples; unknown names are an error)."""
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown Budget fields {sorted(unknown)}; known: {sorted(known)}")
        values = {k: tuple(v) if isinstance(v, list) and k != "model_overrides" else v for k, v in overrides.items()}
        return replace(self, **values)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


_QUICK_MODEL = {
    "embed_dim": 32,
    "crystal": {"hidden": 16, "num_layers": 1, "potential_bins": 8},
    "dos": {"d_model": 16, "n_layers": 1, "n_heads": 2, "ff_mult": 2, "n_frequencies": 4},
    "density": {"layers": [1, 1, 1, 1], "cardinality": 2, "base_width": 16, "base_planes": 4, "stem_channels": 4,
                "expansion": 2, "stem_kernel": 3},
}

BUDGETS: dict[str, Budget] = {
    # a smoke test of the whole pipeline on the real store (a few minutes on 2 busy cores): NOT results
    "quick": Budget(name="quick", model="cpu", model_overrides=_QUICK_MODEL, pretrain_epochs=1, pretrain_batch_size=32,
                    pretrain_lr=1e-3, pretrain_warmup_steps=1, pretrain_max_rows=64, finetune_epochs=1,
                    finetune_batch_size=32, finetune_warmup_steps=1, finetune_patience=0, finetune_max_rows=64,
                    seeds=(0, 1), rf_n_estimators=50, rf_grid=DEFAULT_RF_GRID[:2], inverse_random_seeds=(0, 1, 2),
                    rank_max_rows=256),
    # the real run on 2 CPU cores in ~2 h: the shipped cpu model, half the pre-training epochs of "full",
    # a short fine-tuning schedule and at most 1,000 training rows per target (formation energy is the only
    # target with more); the Magpie baseline gets the same rows. 3 seeds. The encoder is fine-tuned at the
    # head's learning rate whatever its initialisation, so only the initialisation differs between methods
    # (at 0.1x, 25 epochs leave a pre-trained encoder nearly frozen while scratch trains at full rate).
    "cpu": Budget(name="cpu", pretrain_epochs=15, pretrain_warmup_steps=20, finetune_epochs=25,
                  finetune_warmup_steps=30, finetune_patience=6, finetune_max_rows=1000,
                  finetune_encoder_lr_mult=1.0),
    # the longer schedule (for a GPU or a long CPU run): 30 pre-training epochs, the default FinetuneConfig
    # schedule (100 epochs, patience 20), every row, 3 seeds
    "full": Budget(name="full"),
}


def default_run_dir(budget: Budget) -> Path:
    """Where a budget's runs (and cached evaluations) go unless told otherwise: var/runs/evaluate/<name>."""
    return Path("var") / "runs" / "evaluate" / budget.name


def restrict_rows(store: DatasetStore, ids: Iterable[str]) -> DatasetStore:
    """A read-only view of ``store`` whose table holds only ``ids`` (arrays shared, nothing copied on disk).

    ``pretrain``, ``finetune`` and the datasets only see the view's table, so they select rows from it as if
    the store held nothing else. Do not ``append`` to a view.
    """
    keep = set(map(str, ids))
    table = store.table
    view = copy.copy(store)  # shares manifest and the lazily opened arrays
    view.__dict__["table"] = table[table["id"].astype(str).isin(keep)].reset_index(drop=True)
    view.__dict__.pop("_indexed", None)
    return view


# ----------------------------------------------------------------------------------------------------------
# single runs (restartable)


def _digest(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _check_marker(path: Path, key: Any) -> dict[str, Any] | None:
    """The marker's content if it exists with the same key; an error if it exists with another."""
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if data.get("key") != _plain(key):
        raise FileExistsError(f"{path.parent} holds a run with a different configuration; use another out_dir")
    return data


def _train_config(method: Method, seed: int, budget: Budget, out_dir: Path) -> Any:
    from mlcm_core.train.config import TrainConfig

    return TrainConfig(model=budget.model, model_overrides=dict(budget.model_overrides), loss=method.loss or "clip",
                       loss_options=dict(method.loss_options), epochs=budget.pretrain_epochs,
                       batch_size=budget.pretrain_batch_size, lr=budget.pretrain_lr,
                       warmup_steps=budget.pretrain_warmup_steps, seed=seed, modalities=method.modalities,
                       min_modalities=min(budget.min_modalities, len(method.modalities)),
                       max_rows=budget.pretrain_max_rows, out_dir=str(out_dir), log_every=10,
                       checkpoint_every=10**9, keep_last=1, device=budget.device,
                       graph_cache_dir=budget.graph_cache_dir)


def _pretrain_rows(store: DatasetStore, method: Method, seed: int, budget: Budget) -> dict[str, list[str]]:
    from mlcm_core.train.pretrain import select_rows

    mods = method.modalities
    k = min(budget.min_modalities, len(mods))
    return {s: select_rows(store, s, mods, k, budget.pretrain_max_rows, seed) for s in ("train", "val")}


def _pretrain_run(store: DatasetStore, method: Method, seed: int, budget: Budget, out_dir: Path,
                  progress: bool) -> Path:
    from mlcm_core.train.pretrain import pretrain

    cfg = _train_config(method, seed, budget, out_dir)
    rows = _pretrain_rows(store, method, seed, budget)
    key = {"config": cfg.to_dict(), "train_rows": _digest(rows["train"]), "val_rows": _digest(rows["val"])}
    out_dir.mkdir(parents=True, exist_ok=True)
    marker = out_dir / "evaluate_pretrain.json"
    if _check_marker(marker, key) is None:
        atomic_write_text(marker, json.dumps({"key": _plain(key)}, indent=1))
    return pretrain(store, cfg, resume=True, progress=progress)  # resumes, or returns a finished run's checkpoint


def _finetune_run(store: DatasetStore, target: str, seed: int, budget: Budget, pretrained: Path | None,
                  out_dir: Path, progress: bool) -> dict[str, Any]:
    from mlcm_core.train.config import FinetuneConfig
    from mlcm_core.train.finetune import finetune

    cfg = FinetuneConfig(model=budget.model, model_overrides=dict(budget.model_overrides),
                         epochs=budget.finetune_epochs, batch_size=budget.finetune_batch_size, lr=budget.finetune_lr,
                         warmup_steps=budget.finetune_warmup_steps, patience=budget.finetune_patience, seed=seed,
                         max_rows=budget.finetune_max_rows, encoder_lr_mult=budget.finetune_encoder_lr_mult,
                         out_dir=str(out_dir), device=budget.device,
                         graph_cache_dir=budget.graph_cache_dir)
    key = {"config": cfg.to_dict(), "target": target, "pretrained": str(pretrained) if pretrained else None}
    marker = out_dir / "evaluate_finetune.json"
    done = _check_marker(marker, key)
    if done is not None and "result" in done:
        return done["result"]
    start = time.perf_counter()
    result = finetune(store, cfg, target, pretrained=pretrained, progress=progress).to_dict()
    result["seconds"] = time.perf_counter() - start
    atomic_write_text(marker, json.dumps({"key": _plain(key), "result": _plain(result)}, indent=1))
    return result


def _random_init_model(budget: Budget, seed: int) -> Any:
    """The scratch control for the embedding tables: the 3-modal model of this budget, randomly initialised."""
    import torch

    from mlcm_core.models.multimodal import MultimodalModel

    cfg = _train_config(METHODS["all_pairs_clip"], seed, budget, Path(".")).model_config()
    torch.manual_seed(seed)
    return MultimodalModel(cfg)


def eval_device(device: str) -> str:
    """The device the embedding evaluation runs on for a Budget.device ("auto" = CUDA when available)."""
    import torch

    return "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"


def _evaluate(model: Any, store: DatasetStore, split: str, budget: Budget, seed: int) -> dict[str, Any]:
    from mlcm_core.evaluate.model_eval import evaluate_model

    model.to(eval_device(budget.device))
    return evaluate_model(model, store, split, rank_max_rows=budget.rank_max_rows, inverse_ks=budget.inverse_ks,
                          inverse_random_seeds=budget.inverse_random_seeds, batch_size=budget.eval_batch_size,
                          seed=seed)


def _evaluate_cached(model: Any, store: DatasetStore, split: str, budget: Budget, seed: int, ckpt: Path | None,
                     cache_dir: Path) -> dict[str, Any]:
    """``_evaluate``, reused from ``cache_dir`` when the same weights were evaluated on the same rows before.

    Why: re-running an evaluation (to add the shipped checkpoint, or after a kill) should not embed every
    run again; the key holds the weights' SHA-256 (the seed's random init for scratch) and the split's rows.
    """
    from mlcm_core.io import cached_json, sha256_file

    t = store.table
    weights = sha256_file(Path(ckpt) / "model.safetensors") if ckpt is not None and \
        (Path(ckpt) / "model.safetensors").exists() else f"random-init seed {seed}"
    key = {"weights": weights, "split": split, "rows": _digest(sorted(t.loc[t["split"] == split, "id"])),
           "rank_max_rows": budget.rank_max_rows, "inverse_ks": budget.inverse_ks,
           "inverse_random_seeds": budget.inverse_random_seeds, "seed": seed}
    return cached_json(cache_dir / f"evaluate_embedding_{split}.json", key,
                       lambda: _plain(_evaluate(model, store, split, budget, seed)))


def _one_method_seed(store: DatasetStore, finetune_store: DatasetStore, method: Method, seed: int, budget: Budget,
                     targets: Sequence[str], out_dir: Path, split: str, evaluate: bool, progress: bool,
                     log: Callable[[str], None], reuse: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pre-train (or reuse) one method with one seed, evaluate its embedding, fine-tune every target."""
    from mlcm_core.models.multimodal import MultimodalModel

    run: dict[str, Any] = {"method": method.name, "seed": seed, "pretrain": None, "embedding": None, "finetune": {}}
    ckpt: Path | None = None
    if method.loss is not None:
        rows = _pretrain_rows(store, method, seed, budget)
        if reuse is not None and reuse["pretrain"]["train_rows_digest"] == _digest(rows["train"]) \
                and reuse["pretrain"]["val_rows_digest"] == _digest(rows["val"]):
            ckpt = Path(reuse["pretrain"]["checkpoint"])
            run["pretrain"] = {**reuse["pretrain"], "reused_from_ablation": True}
            log(f"  {method.name} seed {seed}: same pre-training rows as the ablation run, reusing {ckpt}")
        else:
            start = time.perf_counter()
            ckpt = _pretrain_run(store, method, seed, budget, out_dir / "pretrain" / method.name / f"seed{seed}",
                                 progress)
            run["pretrain"] = {"checkpoint": str(ckpt), "loss": method.loss, "modalities": list(method.modalities),
                               "train_rows": len(rows["train"]), "val_rows": len(rows["val"]),
                               "train_rows_digest": _digest(rows["train"]), "val_rows_digest": _digest(rows["val"]),
                               "seconds": time.perf_counter() - start}
            log(f"  {method.name} seed {seed}: pre-trained on {len(rows['train'])} rows "
                f"in {run['pretrain']['seconds']:.0f} s")
        model = MultimodalModel.from_checkpoint(ckpt)
    else:
        model = _random_init_model(budget, seed)
    if evaluate:
        cache = out_dir / "pretrain" / method.name / f"seed{seed}"
        run["embedding"] = _evaluate_cached(model, store, split, budget, seed, ckpt, cache)
        if split != "val":  # the validation retrieval chooses the shipped method (select_method)
            run["embedding_val"] = _evaluate_cached(model, store, "val", budget, seed, ckpt, cache)
    del model
    if reuse is not None and run["pretrain"] is not None and run["pretrain"].get("reused_from_ablation"):
        run["finetune"] = dict(reuse["finetune"])
        return run
    for target in targets:
        ft_dir = out_dir / "finetune" / method.name / f"seed{seed}" / target
        run["finetune"][target] = _finetune_run(finetune_store, target, seed, budget, ckpt, ft_dir, progress)
        r = run["finetune"][target]
        log(f"  {method.name} seed {seed} {target}: test MAE {r['test_mae']:.4g} {r['unit']} "
            f"(n_train {r['n_train']})")
    return run


# ----------------------------------------------------------------------------------------------------------
# aggregation


def _mean_std(values: Sequence[float]) -> dict[str, Any]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    return {"mean": float(v.mean()) if len(v) else float("nan"),
            "std": float(v.std(ddof=1)) if len(v) > 1 else float("nan"), "n": len(v),
            "values": [float(x) for x in v]}


def _summarise(runs: Sequence[dict[str, Any]], methods: Sequence[str], targets: Sequence[str]) -> dict[str, Any]:
    finetune: dict[str, dict[str, Any]] = {}
    embedding: dict[str, dict[str, Any]] = {}
    for m in methods:
        mine = [r for r in runs if r["method"] == m]
        finetune[m] = {}
        for t in targets:
            res = [r["finetune"][t] for r in mine if t in r["finetune"]]
            if not res:
                continue
            finetune[m][t] = {**_mean_std([x["test_mae"] for x in res]),
                              "val_mae": _mean_std([x["val_mae"] for x in res])["mean"],
                              "unit": res[0]["unit"], "n_train": res[0]["n_train"], "n_val": res[0]["n_val"],
                              "n_test": res[0]["n_test"],
                              "mean_baseline": _mean_std([x["test_mae_mean_baseline"] for x in res])["mean"]}
        evals = [r["embedding"] for r in mine if r.get("embedding")]
        if evals:
            embedding[m] = _summarise_embedding(evals)
    return {"finetune": finetune, "embedding": embedding}


def _summarise_embedding(evals: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over seeds of the retrieval rows, effective ranks and inverse-design numbers."""
    retrieval = []
    pairs = [(r["query"], r["gallery"]) for r in evals[0]["retrieval"]]
    for q, g in pairs:
        rows = [r for e in evals for r in e["retrieval"] if (r["query"], r["gallery"]) == (q, g)]
        entry: dict[str, Any] = {"query": q, "gallery": g, "n_gallery": rows[0]["n_gallery"],
                                 "n_queries": rows[0]["n_queries"]}
        for key in rows[0]:
            if key.startswith(("top", "median_rank", "mrr")):
                s = _mean_std([r[key] for r in rows])
                entry[key], entry[f"{key}_std"] = s["mean"], s["std"]
            elif key.startswith("chance_"):
                entry[key] = rows[0][key]
        retrieval.append(entry)
    ranks = {m: {**_mean_std([e["effective_rank"][m]["rank"] for e in evals]),
                 "n": evals[0]["effective_rank"][m]["n"], "max": evals[0]["effective_rank"][m]["max"],
                 "rank_centered": _mean_std([e["effective_rank"][m]["rank_centered"] for e in evals])["mean"]}
             for m in evals[0]["effective_rank"]}
    inverse = None
    inv = [e["inverse_design"] for e in evals if e.get("inverse_design") and e["inverse_design"]["per_k"]]
    if inv:
        inverse = {"n_queries": inv[0]["n_queries"], "n_gallery": inv[0]["n_gallery"], "per_k": []}
        for j, row in enumerate(inv[0]["per_k"]):
            inverse["per_k"].append({"k": row["k"], **{f"{key}": _mean_std([x["per_k"][j][key] for x in inv])["mean"]
                                                       for key in ("model_mean", "random_mean", "oracle_mean",
                                                                   "model_beats_random_fraction")},
                                     "model_mean_std": _mean_std([x["per_k"][j]["model_mean"] for x in inv])["std"]})
    return {"retrieval": retrieval, "effective_rank": ranks, "inverse_design": inverse, "n_seeds": len(evals)}


@dataclass
class AblationResult:
    """What ``run_ablation`` returns (``to_dict`` is JSON-ready).

    Attributes:
        methods, seeds, targets: what was run; budget: the Budget as a dict.
        runs: one entry per (method, seed): pretrain info, embedding evaluation, fine-tuning result per target.
        finetune: method -> target -> {mean, std, n, values, val_mae, unit, n_train, n_val, n_test, mean_baseline}.
        embedding: method -> {retrieval rows, effective_rank, inverse_design} averaged over seeds.
        modality_comparison: the 2- vs 3-modal comparison (see ``compare_modalities``) or None.
    """

    methods: list[str]
    seeds: list[int]
    targets: list[str]
    budget: dict[str, Any]
    out_dir: str
    runs: list[dict[str, Any]]
    finetune: dict[str, dict[str, Any]]
    embedding: dict[str, dict[str, Any]]
    modality_comparison: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def finetune_frame(self) -> pd.DataFrame:
        """Long table: method, target, mean, std, n (test MAE over seeds)."""
        import pandas as pd

        return pd.DataFrame([{"method": m, "target": t, "mean": v["mean"], "std": v["std"], "n": v["n"]}
                             for m, per in self.finetune.items() for t, v in per.items()])


def compare_modalities(store: DatasetStore, seeds: Sequence[int], budget: Budget, out_dir: Path, *,
                       arms: Sequence[str] = ("clip_crystal_dos", "all_pairs_clip"), targets: Sequence[str] = (),
                       split: str = "test", evaluate: bool = True, progress: bool = False,
                       log: Callable[[str], None] = lambda s: None,
                       reuse: Mapping[tuple[str, int], dict[str, Any]] | None = None) -> dict[str, Any]:
    """2- vs 3-modal pre-training on the same rows (those with all three modalities), see the module docstring.

    ``reuse`` maps (method, seed) to an ablation run: when that run pre-trained on exactly the same rows its
    checkpoint and fine-tuning results are reused instead of training again.
    """
    t = store.table
    flags = np.logical_and.reduce([t[s.store_flag].fillna(False).astype(bool).to_numpy() for s in specs(MODALITIES)])
    view = restrict_rows(store, t.loc[flags, "id"])
    runs: list[dict[str, Any]] = []
    same_rows = True
    for seed in seeds:
        digests = set()
        for arm in arms:
            method = METHODS[arm]
            rows = _pretrain_rows(view, method, seed, budget)
            digests.add((_digest(rows["train"]), _digest(rows["val"])))
            runs.append(_one_method_seed(view, store, method, seed, budget, targets, out_dir / "modality_comparison",
                                         split, evaluate, progress, log,
                                         reuse=(reuse or {}).get((arm, seed))))
        same_rows &= len(digests) == 1
    if not same_rows:  # cannot happen with the all-three view and min_modalities <= 2; a guard for edits
        raise RuntimeError("the 2- and 3-modal arms did not pre-train on the same rows")
    summary = _summarise(runs, list(arms), list(targets))
    n_rows = {s: int((flags & (t["split"] == s)).sum()) for s in ("train", "val", "test")}
    return {"arms": list(arms), "rows": "materials having structure, DOS and density (all three)",
            "n_rows": n_rows, "pretrain_rows_identical": same_rows, "runs": runs, **summary}


def run_ablation(store: DatasetStore, methods: Sequence[str] = DEFAULT_METHODS, seeds: Sequence[int] | None = None,
                 budget: Budget | str = "quick", *, out_dir: str | Path | None = None,
                 targets: Sequence[str] | None = None, compare: bool = True, evaluate: bool = True,
                 split: str = "test", progress: bool = False,
                 log: Callable[[str], None] = lambda s: None) -> AblationResult:
    """Pre-train each method, fine-tune the same crystal encoder on each target, over seeds; aggregate.

    Args:
        store: the dataset store (its one split is used throughout).
        methods: names in METHODS (default: scratch, clip_crystal_dos, all_pairs_clip, anchored_clip,
            tensor_clip, barlow_twins, barlow_twins_higher_order).
        seeds: default ``budget.seeds``.
        budget: a Budget or a name in BUDGETS ("quick" = smoke test in minutes, "full" = the real run).
        out_dir: where the runs go (default var/runs/evaluate/<budget name>); reusing it resumes.
        targets: fine-tuning targets (default ``budget.targets``).
        compare: also run the 2- vs 3-modal comparison on the same rows.
        evaluate: evaluate each pre-trained embedding (retrieval, effective rank, inverse design) on ``split``.
    """
    budget = BUDGETS[budget] if isinstance(budget, str) else budget
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise KeyError(f"unknown methods {unknown}; choose from {sorted(METHODS)}")
    seeds = list(budget.seeds if seeds is None else seeds)
    targets = list(budget.targets if targets is None else targets)
    out = Path(out_dir) if out_dir is not None else default_run_dir(budget)
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        for name in methods:
            log(f"[ablation] {name} seed {seed}")
            runs.append(_one_method_seed(store, store, METHODS[name], seed, budget, targets, out, split, evaluate,
                                         progress, log))
    summary = _summarise(runs, list(methods), targets)
    comparison = None
    if compare:
        log("[ablation] 2- vs 3-modal comparison on rows having all three modalities")
        reuse = {(r["method"], r["seed"]): r for r in runs if r["pretrain"] is not None}
        comparison = compare_modalities(store, seeds, budget, out, targets=targets, split=split, evaluate=evaluate,
                                        progress=progress, log=log, reuse=reuse)
    return AblationResult(methods=list(methods), seeds=seeds, targets=targets, budget=budget.to_dict(),
                          out_dir=str(out), runs=runs, modality_comparison=comparison, **summary)


def _val_retrieval_mrr(runs: Sequence[Mapping[str, Any]], method: str) -> float | None:
    """Mean over seeds of the mean reciprocal rank over every ordered modality pair, on the validation split."""
    per_seed = [np.mean([r["mrr"] for r in run["embedding_val"]["retrieval"]]) for run in runs
                if run["method"] == method and (run.get("embedding_val") or {}).get("retrieval")]
    return float(np.mean(per_seed)) if per_seed else None


def select_method(ablation: Mapping[str, Any], *, require: Sequence[str] = MODALITIES,
                  reference: str = "scratch") -> dict[str, Any]:
    """The pre-training method to ship as the app's default, chosen on validation only.

    The shipped checkpoint places every material in the shared space and answers the cross-modal searches
    (property predictions come from separately fine-tuned heads), so the criterion is validation retrieval:
    the mean reciprocal rank over every ordered modality pair, averaged over seeds (higher is better).
    Candidates are the pre-training methods that embed every modality in ``require`` (a crystal+DOS model
    cannot place densities). Reported beside it, also from validation: the fine-tuning score, the mean over
    targets of (val MAE of the method / val MAE of ``reference``), each averaged over seeds (below 1:
    pre-training helped). Test numbers play no part.
    """
    finetune = ablation.get("finetune") or {}
    targets = list(ablation.get("targets") or [])
    ref = finetune.get(reference) or {}
    finetune_scores: dict[str, float] = {}
    for name, per in finetune.items():
        ratios = [per[t]["val_mae"] / ref[t]["val_mae"] for t in targets
                  if t in per and t in ref and per[t].get("val_mae") and ref[t].get("val_mae")]
        if targets and len(ratios) == len(targets):
            finetune_scores[name] = float(np.mean(ratios))
    runs = ablation.get("runs") or []
    methods = list(dict.fromkeys(r["method"] for r in runs))
    retrieval = {m: v for m in methods if (v := _val_retrieval_mrr(runs, m)) is not None}
    candidates = [m for m in retrieval if METHODS[m].loss is not None and set(require) <= set(METHODS[m].modalities)]
    if not candidates:
        raise ValueError(f"no pre-training method with modalities {list(require)} has a validation retrieval "
                         "evaluation")
    best = max(candidates, key=retrieval.__getitem__)
    return {"method": best, "score": retrieval[best], "scores": retrieval, "finetune_scores": finetune_scores,
            "candidates": candidates, "reference": reference,
            "criterion": "validation retrieval: mean reciprocal rank over every ordered modality pair, mean over "
                         "seeds; higher is better",
            "finetune_criterion": f"mean over targets of val MAE / val MAE of {reference} (mean over seeds); "
                                  "lower is better"}
