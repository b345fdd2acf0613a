"""The evaluation behind ``mlcm evaluate`` (options parsed in mlcm_core/cli.py): run it, then write results.json
and the markdown report (``mlcm_core.evaluate.report``); the exact command is recorded in the report.

Defaults: ``--budget quick`` writes to var/eval/quick/ (a smoke test must never overwrite the real report);
``--budget cpu`` or ``full`` writes docs/results.json and docs/results.md. Runs go to ``--run-dir`` (default
var/runs/evaluate/<budget>); re-running with the same run directory resumes and reuses finished runs.
"""

from __future__ import annotations

import datetime as _dt
import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlcm_core.data.store import DatasetStore
    from mlcm_core.evaluate.ablation import Budget

__all__ = ["run_evaluation"]


def _git() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=False).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=10, check=False).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": dirty}


def _data_counts(store: DatasetStore) -> dict[str, dict[str, int]]:
    t = store.table
    s, d, c = (t[col].fillna(False).astype(bool) for col in ("has_structure", "has_dos", "has_charge_density"))
    out = {}
    for split in ("train", "val", "test"):
        m = t["split"] == split
        out[split] = {"materials": int(m.sum()), "structure": int((m & s).sum()), "dos": int((m & d).sum()),
                      "density": int((m & c).sum()), "structure_and_dos": int((m & s & d).sum()),
                      "all_three": int((m & s & d & c).sum())}
    return out


def _ship_best(ablation: Mapping[str, Any] | None, dest: Path, seed: int, log: Callable[[str], None]
               ) -> dict[str, Any]:
    """Copy the pre-trained weights of the method chosen on validation (first seed) to ``dest``."""
    from mlcm_core.evaluate.ablation import select_method
    from mlcm_core.models.checkpoint import export_checkpoint, read_checkpoint_info

    if not ablation:
        raise ValueError("--ship needs the ablation (do not pass --methods none)")
    choice = select_method(ablation)
    run = next((r for r in ablation["runs"] if r["method"] == choice["method"] and r["seed"] == seed), None)
    if run is None or not run.get("pretrain"):
        raise ValueError(f"no pre-training run of {choice['method']} with seed {seed}")
    source = Path(run["pretrain"]["checkpoint"])
    run_root = source.parents[1] if source.parent.name == "checkpoints" else source
    extra = {name: run_root / src for name, src in (("train_config.yaml", "config.yaml"),
                                                    ("pretrain_log.csv", "log.csv")) if (run_root / src).exists()}
    export_checkpoint(source, dest, extra_files=extra,
                      note={"method": choice["method"], "seed": seed, "selection": choice["criterion"]})
    log(f"[evaluate] shipped {choice['method']} seed {seed} ({source}) to {dest}")
    return {**choice, "seed": seed, "source": str(source), "dest": str(dest), "run_eval": run["embedding"],
            "weights_sha256": read_checkpoint_info(dest).files["model.safetensors"]}


def _compare_retrieval(run_eval: Mapping[str, Any] | None, shipped_eval: Mapping[str, Any]) -> dict[str, Any]:
    """Largest difference between the run's retrieval numbers and the shipped copy's (0 when reproduced)."""
    if not run_eval:
        return {"reproduces_run": None, "max_abs_diff": None}
    mine = {(r["query"], r["gallery"]): r for r in run_eval["retrieval"]}
    diffs = [abs(float(r[k]) - float(mine[(r["query"], r["gallery"])][k]))
             for r in shipped_eval["retrieval"] for k in r
             if k.startswith(("top", "median_rank")) and (r["query"], r["gallery"]) in mine]
    worst = max(diffs) if diffs else None
    return {"reproduces_run": worst is not None and worst < 1e-9, "max_abs_diff": worst}


def run_evaluation(store: DatasetStore, *, budget: Budget, checkpoint: Path | None = None,
                   methods: Sequence[str] = (), seeds: Sequence[int] | None = None,
                   targets: Sequence[str] | None = None, split: str = "test", baseline: bool = True,
                   comparison: bool = True, run_dir: Path | None = None, command: str = "",
                   store_path: Path | None = None, ship: Path | None = None, log: Any = None) -> dict[str, Any]:
    """Everything the report shows, as one JSON-ready dict (see ``report.render_markdown``).

    With ``ship``, the method chosen on validation (``select_method``) has its first seed's pre-trained weights
    copied to ``ship`` (the app's default checkpoint), which is then the evaluated checkpoint: its retrieval
    numbers must equal those of the run it was copied from (recorded as ``shipped.reproduces_run``).
    """
    from mlcm_core.evaluate.ablation import default_run_dir, eval_device, run_ablation
    from mlcm_core.evaluate.baseline import magpie_rf_over_seeds
    from mlcm_core.evaluate.model_eval import evaluate_model
    from mlcm_core.evaluate.report import jsonable
    from mlcm_core.io import cached_json, sha256_file

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    start = time.perf_counter()
    seeds = list(budget.seeds if seeds is None else seeds)
    targets = list(budget.targets if targets is None else targets)
    manifest = (Path(store.root) / "manifest.json")
    results: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "command": command,
        "git": _git(), "budget": budget.to_dict(), "seeds": seeds, "targets": targets, "split": split,
        "store": {"path": str(store_path or store.root), "shards": len(store.manifest["shards"]),
                  "manifest_sha256": sha256_file(manifest) if manifest.exists() else None,
                  "info": store.info()},
        "data_counts": _data_counts(store), "checkpoint": None, "baseline": None, "ablation": None,
    }
    if baseline:
        log("[evaluate] Magpie + random forest baseline")
        key = {"targets": targets, "seeds": seeds, "n_estimators": budget.rf_n_estimators, "grid": budget.rf_grid,
               "max_train_rows": budget.finetune_max_rows, "store_manifest": results["store"]["manifest_sha256"]}
        run_root = run_dir if run_dir is not None else default_run_dir(budget)
        results["baseline"] = cached_json(run_root / "baseline.json", jsonable(key), lambda: jsonable(
            magpie_rf_over_seeds(store, targets, seeds, n_estimators=budget.rf_n_estimators, grid=budget.rf_grid,
                                 max_train_rows=budget.finetune_max_rows)))
    if methods:
        results["ablation"] = run_ablation(store, list(methods), seeds, budget, out_dir=run_dir, targets=targets,
                                           compare=comparison, split=split, log=log).to_dict()
    if ship is not None:
        results["shipped"] = _ship_best(results["ablation"], ship, seeds[0], log)
        checkpoint = ship
    if checkpoint is not None:
        from mlcm_core.models.multimodal import MultimodalModel
        from mlcm_core.models.checkpoint import read_checkpoint_info

        log(f"[evaluate] checkpoint {checkpoint}")
        info = read_checkpoint_info(checkpoint)
        model = MultimodalModel.from_checkpoint(checkpoint, map_location=eval_device(budget.device))
        results["checkpoint"] = {
            "path": str(checkpoint), "resolved": str(info.path), "step": info.step, "epoch": info.epoch,
            "modalities": list(model.config.modalities),
            "eval": evaluate_model(model, store, split, rank_max_rows=budget.rank_max_rows,
                                   inverse_ks=budget.inverse_ks, inverse_random_seeds=budget.inverse_random_seeds,
                                   batch_size=budget.eval_batch_size)}
    if results.get("shipped") and results["checkpoint"]:
        results["shipped"].update(_compare_retrieval(results["shipped"].pop("run_eval"), results["checkpoint"]["eval"]))
    results["seconds"] = time.perf_counter() - start
    return results
