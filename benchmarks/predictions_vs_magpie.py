"""Shipped predictions vs Magpie + random forest, on every training row (no cap).

    python benchmarks/predictions_vs_magpie.py [--heads precomputed/heads] [--seeds 0 1 2] [--n-jobs 2]

Per target (the rows of ``finetune.split_rows``: train / val / test of the store's one split; the GNN heads were
fitted on the same training rows):

* train-mean MAE: always predicting the training mean (the floor to beat);
* Magpie + RF: ``evaluate.baseline.magpie_rf_baseline`` (132 Magpie features of the store formula, 300 trees,
  its 4-point grid chosen on validation MAE, all training rows), once per seed;
* classical RF: the hybrid's forest (``explore.classical``: Magpie + structure descriptors, the heads' forest
  options and leaf-size grid chosen on validation), once per seed;
* GNN heads: the shipped fine-tuned ensemble alone (its stored gallery predictions; fixed, no seed);
* hybrid: w · GNN + (1 − w) · that seed's classical RF, w chosen on validation MAE.

Test MAE as mean ± sample std over the seeds (the forests' ``random_state``); the seed-0 hybrid is the shipped
one when the heads were built with seed 0. Prints a markdown table and one JSON object; intermediate results are
cached under var/cache/benchmarks (keyed by store shards, seeds and options). The machine is shared: the load
average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlcm_core.data.store import DatasetStore  # noqa: E402
from mlcm_core.evaluate.baseline import magpie_rf_baseline  # noqa: E402
from mlcm_core.explore.classical import (  # noqa: E402
    ClassicalConfig,
    choose_weight,
    fit_forest,
    impute,
    store_descriptors,
    training_medians,
)
from mlcm_core.explore.predict import verify_heads  # noqa: E402
from mlcm_core.io import cached_json  # noqa: E402
from mlcm_core.train.finetune import resolve_target, split_rows  # noqa: E402

TARGETS = ("band_gap", "formation_energy_per_atom", "log10_k_vrh", "log10_g_vrh")


def _mean_std(values: list[float]) -> dict[str, float | list[float]]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"),
            "values": [float(v) for v in values]}


def _classical(store: DatasetStore, heads: Path, target: str, seed: int, config: ClassicalConfig,
               cache_dir: Path) -> dict[str, float]:
    """Test MAE of the classical RF and of the hybrid for one seed (weight re-chosen on validation)."""
    with np.load(heads / "predictions.npz", allow_pickle=False) as z:
        ids = z["ids"].astype(str).tolist()
        key = f"{target}__gnn_mean" if f"{target}__gnn_mean" in z.files else f"{target}__mean"
        gnn_all = z[key].astype(np.float64)
    pos = {m: k for k, m in enumerate(ids)}
    spec = resolve_target(target)
    data = {}
    for split in ("train", "val", "test"):
        split_ids, y = split_rows(store, spec, split)
        keep = [k for k, m in enumerate(split_ids) if m in pos]
        idx = [pos[split_ids[k]] for k in keep]
        data[split] = (store_descriptors(store, [ids[k] for k in idx], cache_dir), gnn_all[idx], y[keep])
    fill = training_medians(data["train"][0])
    x = {s: impute(data[s][0], fill) for s in data}
    forest, _, info = fit_forest(x["train"], data["train"][2], x["val"], data["val"][2], replace(config, seed=seed))
    f = {s: forest.predict(x[s]) for s in ("val", "test")}
    w, _ = choose_weight(data["val"][1], f["val"], data["val"][2], config.weight_grid)
    y_te = data["test"][2]
    return {"rf_test_mae": float(np.mean(np.abs(f["test"] - y_te))),
            "hybrid_test_mae": float(np.mean(np.abs(w * data["test"][1] + (1 - w) * f["test"] - y_te))),
            "gnn_test_mae": float(np.mean(np.abs(data["test"][1] - y_te))), "weight_gnn": w,
            "chosen": info["chosen"], "n": [len(data[s][2]) for s in ("train", "val", "test")],
            "train_mean_mae": float(np.mean(np.abs(data["train"][2].mean() - y_te)))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=ROOT / "precomputed" / "dataset")
    ap.add_argument("--heads", type=Path, default=ROOT / "precomputed" / "heads")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--targets", nargs="+", default=list(TARGETS))
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=ROOT / "var" / "cache" / "benchmarks" / "predictions_vs_magpie")
    ap.add_argument("--magpie-only", action="store_true", help="compute (and cache) the Magpie + RF part only")
    ap.add_argument("--descriptor-cache", type=Path, default=ROOT / "var" / "cache" / "descriptors")
    args = ap.parse_args(argv)

    store = DatasetStore.open(args.store, verify=False)
    manifest = verify_heads(args.heads)
    specs = {s["name"]: s for s in manifest["targets"]}
    shards = [s["name"] for s in store.manifest["shards"]]
    rows, out = [], {}
    for target in args.targets:
        opts = (specs[target].get("classical") or {}).get("forest_options", {})
        config = ClassicalConfig(n_estimators=int(opts.get("n_estimators", ClassicalConfig.n_estimators)),
                                 max_features=float(opts.get("max_features", ClassicalConfig.max_features)),
                                 n_jobs=args.n_jobs)
        per_seed = []
        for seed in args.seeds:
            magpie = cached_json(args.cache / f"magpie-{target}-{seed}.json",
                                 {"shards": shards, "target": repr(resolve_target(target)), "seed": seed,
                                  "n_estimators": 300},
                                 lambda s=seed: magpie_rf_baseline(store, [target], seed=s, n_estimators=300,
                                                                   n_jobs=args.n_jobs)[target])
            if args.magpie_only:
                print(f"{target} seed {seed}: magpie {magpie['test_mae']:.4g}", flush=True)
                continue
            classical = cached_json(args.cache / f"classical-{target}-{seed}.json",
                                    {"shards": shards, "target": repr(resolve_target(target)), "seed": seed,
                                     "config": repr(config),
                                     "gnn": manifest["files"].get(f"{target}/model-0/model.safetensors")},
                                    lambda s=seed: _classical(store, args.heads, target, s, config,
                                                              args.descriptor_cache))
            per_seed.append((magpie, classical))
            print(f"{target} seed {seed}: magpie {magpie['test_mae']:.4g}, rf {classical['rf_test_mae']:.4g}, "
                  f"hybrid {classical['hybrid_test_mae']:.4g} (w_gnn {classical['weight_gnn']})", flush=True)
        if args.magpie_only:
            continue
        first = per_seed[0][1]
        res = {"n_train_val_test": first["n"], "train_mean_mae": first["train_mean_mae"],
               "magpie_rf": _mean_std([m["test_mae"] for m, _ in per_seed]),
               "magpie_rf_chosen": [m["chosen"] for m, _ in per_seed],
               "classical_rf": _mean_std([c["rf_test_mae"] for _, c in per_seed]),
               "classical_rf_chosen": [c["chosen"] for _, c in per_seed],
               "gnn_heads": first["gnn_test_mae"],
               "hybrid": _mean_std([c["hybrid_test_mae"] for _, c in per_seed]),
               "weight_gnn": [c["weight_gnn"] for _, c in per_seed], "unit": specs[target]["unit"]}
        out[target] = res
        fmt = (lambda d: f"{d['mean']:.4g} ± {d['std']:.2g}")
        rows.append(f"| {target} ({res['unit']}) | {'/'.join(map(str, res['n_train_val_test']))} | "
                    f"{res['train_mean_mae']:.4g} | {fmt(res['magpie_rf'])} | {fmt(res['classical_rf'])} | "
                    f"{res['gnn_heads']:.4g} | {fmt(res['hybrid'])} | {', '.join(f'{w:.2f}' for w in res['weight_gnn'])} |")
    print("| target | N train/val/test | train mean | Magpie + RF | classical RF | GNN heads | hybrid | w_gnn per seed |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(json.dumps({"seeds": args.seeds, "load_average": os.getloadavg(), "results": out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
