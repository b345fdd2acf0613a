"""The `mlcm` command line: the only place that reads argv."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
from pathlib import Path

__all__ = ["app_command", "main"]

DEFAULT_STORE = Path("precomputed") / "dataset"
DEFAULT_SOURCES = Path("..") / "shared" / "data" / "sources"
DESCRIPTOR_CACHE = Path("var") / "cache" / "descriptors"  # featurize.descriptors of store structures, by structure hash


def _shard_name(kind: str) -> str:
    return f"{kind}-{_dt.datetime.now(_dt.UTC).strftime('%Y%m%dT%H%M%S')}"


def _open_or_create(path: Path):
    from mlcm_core.data.store import DatasetStore

    if (path / "manifest.json").exists():
        return DatasetStore.open(path)
    return DatasetStore.create(path)


def _append(store_path: Path, records: list, kind: str, provenance: dict[str, str]) -> int:
    store = _open_or_create(store_path)
    name = store.append(records, _shard_name(kind), provenance, progress=True)
    print(f"added {len(records)} materials to {store_path} as shard {name}")
    return 0


def cmd_build_default(args: argparse.Namespace) -> int:
    from mlcm_core.data.sources.default import build_default

    if (args.out / "manifest.json").exists():
        print(f"error: {args.out} already holds a dataset; remove it first to rebuild", file=sys.stderr)
        return 2
    info = build_default(args.sources, args.out, progress=True)
    print(json.dumps(info, indent=1))
    return 0


def cmd_ingest_vasp(args: argparse.Namespace) -> int:
    from mlcm_core.data.sources.vasp import read_vasp_dir

    records = [read_vasp_dir(d) for d in args.dirs]
    return _append(args.store, records, "vasp", {"source": "local VASP outputs", "paths": ", ".join(map(str, args.dirs))})


def cmd_ingest_structures(args: argparse.Namespace) -> int:
    from mlcm_core.data.sources.structure_files import read_structure_files

    records = read_structure_files(args.path)
    return _append(args.store, records, "structures", {"source": "structure files", "path": str(args.path)})


def cmd_ingest_mp(args: argparse.Namespace) -> int:
    from mlcm_core.data.sources.materials_project import MPAccessError, fetch_materials

    try:
        records = fetch_materials(args.ids, api_key=args.api_key or os.environ.get("MP_API_KEY"),
                                  with_dos=not args.no_dos, with_density=not args.no_density)
    except MPAccessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return _append(args.store, records, "mp-api", {"source": "Materials Project API (mp-api)", "ids": ", ".join(args.ids),
                                                   "licence": "CC-BY 4.0"})


def cmd_info(args: argparse.Namespace) -> int:
    from mlcm_core.data.store import DatasetStore

    info = DatasetStore.open(args.path, verify=not args.no_verify).info()
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"materials: {info['materials']}  (shards: {info['shards']})")
    for k, v in info["modalities"].items():
        print(f"  {k:15s} {v}")
    print(f"  all three       {info['all_three']}")
    print("labels:")
    for k, v in info["labels"].items():
        print(f"  {k:40s} {v}")
    print("sources: " + ", ".join(f"{k} {v}" for k, v in info["sources"].items()))
    print("splits:  " + ", ".join(f"{k} {v}" for k, v in info["splits"].items()))
    return 0


DFT_FAILED = Path("precomputed") / "dft_failed.json"  # committed: failures are not retried by later sessions


# which structures of the store the DFT pool draws from: MP (with MP labels) first; CDVAE's perov_5 cells
# (5 sites, Castelli's GPAW labels) extend it past the ~2,700 MP structures with <= 10 sites
DFT_POOL_SOURCES = {"mp": ("matminer-0.3.9",), "perov5": ("cdvae-perov_5",), "all": ("matminer-0.3.9", "cdvae-perov_5")}


def _dft_pool(store_path: Path, max_sites: int, include_done: bool = False, sources: str | None = "mp") -> dict:
    """Structures of the store not yet computed with GPAW (nor recorded as failed); ``sources`` None = any."""
    from mlcm_core.data.store import DatasetStore
    from mlcm_core.dft.pool import COMPUTED_SOURCES

    store = DatasetStore.open(store_path)
    t = store.table
    chosen = t["source"].isin(DFT_POOL_SOURCES[sources]) if sources is not None else True
    mp = t[chosen & t["has_structure"].astype(bool) & (t["nsites"] <= max_sites)]
    failed = set(json.loads(DFT_FAILED.read_text())) if DFT_FAILED.exists() else set()
    if not include_done:
        done = mp["dos_source"].isin(COMPUTED_SOURCES) & mp["has_charge_density"].astype(bool)
        mp = mp[~done & ~mp["id"].isin(failed)]
    return {mid: store.structure(mid) for mid in mp["id"]}


def _density_backfill_pool(store_path: Path) -> dict:
    """GPAW materials of the store whose density is still the smooth pseudo density (before the VASP-like one)."""
    from mlcm_core.data.store import DatasetStore
    from mlcm_core.dft.engine import DENSITY_CONVENTIONS
    from mlcm_core.dft.pool import COMPUTED_SOURCES

    store = DatasetStore.open(store_path)
    t = store.table
    old = (t["has_charge_density"].astype(bool) & t["has_structure"].astype(bool)
           & t["density_source"].isin(COMPUTED_SOURCES)
           & (t["density_convention"] == DENSITY_CONVENTIONS["smooth_pseudo"]))
    return {mid: store.structure(mid) for mid in t.loc[old, "id"]}


def cmd_dft_backfill_density(args: argparse.Namespace) -> int:
    """SCF-only runs that give the stored GPAW materials the VASP-like density (docs/dft.md, Density)."""
    from mlcm_core.dft.engine import gpaw_available, order_pool, run_many

    problem = gpaw_available()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    candidates = _density_backfill_pool(args.store)
    chosen = order_pool(candidates, max_sites=10**6)[: args.limit]
    print(f"{len(candidates)} GPAW materials hold the smooth pseudo density; computing {len(chosen)}, cheapest first",
          flush=True)
    summary = run_many({mid: candidates[mid] for mid, _ in chosen}, args.out, workers=args.workers,
                       timeout=args.timeout, stages="scf", scheduler=args.scheduler)
    print(f"done {len(summary.done)}, failed {len(summary.failed)}, skipped {len(summary.skipped)}, "
          f"cancelled {len(summary.cancelled)}")
    return 0


def _ordered_pool(args: argparse.Namespace) -> tuple[dict, list]:
    """(candidate structures, [(id, CostEstimate)] in the campaign's order: diverse or cheapest first)."""
    from mlcm_core.dft.engine import order_pool

    candidates = _dft_pool(args.store, args.max_sites, sources=args.sources)
    if args.order == "cost":
        return candidates, order_pool(candidates, max_sites=args.max_sites)
    from mlcm_core.data.store import DatasetStore
    from mlcm_core.dft.pool import campaign_order

    return candidates, campaign_order(DatasetStore.open(args.store), candidates, max_sites=args.max_sites,
                                      max_seconds=args.max_estimate)


def cmd_dft_pool(args: argparse.Namespace) -> int:
    from collections import Counter

    from mlcm_core.data.store import DatasetStore

    _, pool = _ordered_pool(args)
    hours = sum(c.seconds for _, c in pool) / 3600
    print(f"{len(pool)} eligible structures ({args.sources}) to compute (<= {args.max_sites} sites, PBE setups for "
          f"every element), {args.order} order; estimated {hours:.1f} core-hours")
    head = [mid for mid, _ in pool[: args.coverage]]
    if head:
        t = DatasetStore.open(args.store).table.set_index("id").loc[head]
        elements = {e for els in t["elements"] for e in els}
        print(f"the next {len(head)}: {len(elements)} elements, crystal systems "
              f"{dict(Counter(t['crystal_system']).most_common())}, estimated "
              f"{sum(c.seconds for _, c in pool[: len(head)]) / 3600:.1f} core-hours")
    for mid, cost in pool[: args.show]:
        print(f"  {mid:12s} {cost}")
    return 0


def cmd_dft_run(args: argparse.Namespace) -> int:
    from mlcm_core.dft.engine import gpaw_available, run_many

    problem = gpaw_available()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    candidates, ordered = _ordered_pool(args)
    structures = {mid: candidates[mid] for mid, _ in ordered[: args.limit]}
    summary = run_many(structures, args.out, workers=args.workers, timeout=args.timeout, scheduler=args.scheduler,
                       keep_order=True)
    print(f"done {len(summary.done)}, failed {len(summary.failed)}, skipped {len(summary.skipped)}, "
          f"cancelled {len(summary.cancelled)}")
    return 0


def cmd_dft_ingest(args: argparse.Namespace) -> int:
    """Merge finished GPAW results into the store as one new shard; record failures."""
    import numpy as np

    from mlcm_core.dft.engine import record_from_npz

    pool = _dft_pool(args.store, max_sites=10**6, sources=None)  # whatever was computed, from any source
    backfill = _density_backfill_pool(args.store)  # density-only results replace an older density
    records = []
    for p in sorted(args.results.glob("*.npz")):
        if p.name.startswith(".") or (p.stem not in pool and p.stem not in backfill):
            continue  # a temporary file of a killed worker, or a result already ingested
        with np.load(p, allow_pickle=False) as z:
            density_only = "dos" not in z.files
        structures = backfill if density_only else pool
        if p.stem in structures:
            records.append(record_from_npz(p, p.stem, structures[p.stem]))
    failed = set(json.loads(DFT_FAILED.read_text())) if DFT_FAILED.exists() else set()
    new_failed = {p.name.split(".")[0] for p in args.results.glob("*.failed")} - failed
    if new_failed:
        from mlcm_core.io import atomic_write_text

        atomic_write_text(DFT_FAILED, json.dumps(sorted(failed | new_failed), indent=0))
        print(f"recorded {len(new_failed)} failures in {DFT_FAILED}")
    if not records:
        print("no new results to ingest")
        return 0
    return _append(args.store, records, "gpaw", {"source": "MLCM GPAW engine (mlcm_core/dft)", "protocol": "docs/dft.md"})


def cmd_dft_ingest_seed(args: argparse.Namespace) -> int:
    from mlcm_core.dft.seed import load_seed

    records = load_seed(args.seed_dir)
    return _append(args.store, records, "dft-seed", {"source": "GPAW seed results (../shared/data/dft-seed)",
                                                     "protocol": "see ../shared/data/dft-seed/README.md"})


def cmd_dft_validate(args: argparse.Namespace) -> int:
    from mlcm_core.data.store import DatasetStore
    from mlcm_core.dft.validate import read_target_dos, validate

    target = read_target_dos(args.target_dos)  # 601 values or (energy, dos) columns; checked before any work
    store = DatasetStore.open(args.store)
    structure = store.structure(args.material)
    result = validate(structure, target, material_id=args.material, timeout=args.timeout)
    print(json.dumps({"material": args.material, "dos_mae": result.mae, "seconds": result.seconds,
                      "estimated_seconds": result.estimate.seconds}))
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from mlcm_core.train.config import FinetuneConfig
    from mlcm_core.train.finetune import finetune

    config = FinetuneConfig.from_yaml(args.config) if args.config else FinetuneConfig()
    if args.out is not None:
        config = replace(config, out_dir=str(args.out))
    result = finetune(args.store, config, args.target, pretrained=args.pretrained)
    print(json.dumps(result.to_dict(), default=str, indent=1))
    return 0


def cmd_embed(args: argparse.Namespace, reuse_map: bool = True) -> int:
    from mlcm_core.explore.build import build_precomputed

    kwargs = {} if reuse_map else {"n_neighbors": args.n_neighbors, "min_dist": args.min_dist, "seed": args.seed}
    path = build_precomputed(args.store, args.checkpoint, args.out, reuse_map=reuse_map, scheduler=args.scheduler,
                             dask_workers=args.workers, chunk=args.chunk, **kwargs)
    manifest = json.loads((path / "manifest.json").read_text())
    print(json.dumps({"counts": manifest["counts"], "placement": manifest["placement"]}))
    print(f"wrote {path}")
    return 0


def cmd_project(args: argparse.Namespace) -> int:
    return cmd_embed(args, reuse_map=False)


def cmd_heads_build(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from mlcm_core.explore.classical import ClassicalConfig
    from mlcm_core.explore.predict import HEAD_TARGETS, build_heads
    from mlcm_core.train.config import FinetuneConfig
    from mlcm_core.train.finetune import finetune

    config = FinetuneConfig.from_yaml(args.config)
    pretrained = None if str(args.pretrained).lower() == "none" else args.pretrained
    runs = {}
    for target in args.targets or HEAD_TARGETS:
        run = args.runs / target
        if not (run / "result.json").exists():  # resumable: finished targets (and members) are reused
            finetune(args.store, replace(config, out_dir=str(run)), target, pretrained=pretrained)
        runs[target] = run
    out = build_heads(args.store, runs, args.out, classical=None if args.no_classical else ClassicalConfig(),
                      descriptor_cache=DESCRIPTOR_CACHE)
    manifest = json.loads((out / "manifest.json").read_text())
    print(json.dumps({t["name"]: t["metrics"] for t in manifest["targets"]}, indent=1))
    print(f"wrote {out}")
    return 0


def cmd_heads_add_classical(args: argparse.Namespace) -> int:
    from mlcm_core.explore.classical import ClassicalConfig, add_classical

    config = ClassicalConfig(n_estimators=args.trees, seed=args.seed, n_jobs=args.jobs)
    results = add_classical(args.heads, args.store, config=config, targets=args.targets, cache_dir=args.cache)
    print(json.dumps({name: {k: m[k] for k in ("weight_gnn", "val_mae", "test_mae")}
                      | {"gnn_test_mae": m["gnn"].get("test_mae"), "forest_test_mae": m["forest"]["test_mae"]}
                      for name, m in results.items()}, indent=1))
    print(f"wrote {args.heads}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from mlcm_core.data.sources.structure_files import read_structure_file
    from mlcm_core.explore.predict import PropertyPredictor

    predictor = PropertyPredictor.load(args.heads)
    frames = []
    for path in args.files:
        frame = predictor.predict(read_structure_file(path).structure)
        frame.insert(0, "file", str(path))
        frames.append(frame.drop(columns="structure"))
    import pandas as pd

    table = pd.concat(frames, ignore_index=True)
    if args.json:
        print(table.to_json(orient="records", indent=1))
    else:
        for row in table.itertuples():
            print(f"{row.file}  {row.quantity:<26} {row.value:10.4g} {row.unit:<8} "
                  f"(1σ {row.low_1sigma:.4g} … {row.high_1sigma:.4g}; test MAE {row.test_mae:.3g} {row.transformed_unit})")
    return 0


def app_command(address: str = "127.0.0.1", port: int = 5006, allow_websocket_origin: str | None = None,
                show: bool = False, num_threads: int | None = None) -> list[str]:
    """The `panel serve` command line that `mlcm app` runs (a pure function, so it can be tested).

    Binds ``address`` (127.0.0.1 by default: only this machine can connect) and always passes
    ``--allow-websocket-origin``, so Bokeh's origin check stays on: pages served from other origins
    cannot open a session. ``num_threads`` runs the sessions' callbacks in a pool of that many threads
    (Panel's ``--num-threads``), so one slow search does not hold up every other session's interaction.
    """
    app = Path(__file__).resolve().parents[1] / "app" / "main.py"
    origin = allow_websocket_origin or f"{'localhost' if address == '127.0.0.1' else address}:{port}"
    cmd = [sys.executable, "-m", "panel", "serve", str(app), "--address", address, "--port", str(port),
           "--allow-websocket-origin", origin]
    if address == "127.0.0.1":
        cmd += ["--allow-websocket-origin", f"127.0.0.1:{port}"]
    if num_threads is not None:
        cmd += ["--num-threads", str(int(num_threads))]
    if show:
        cmd.append("--show")
    return cmd


def check_precomputed(dataset: str | Path | None = None, explore: str | Path | None = None) -> str | None:
    """None if the app's data (MLCM_DATASET / MLCM_EXPLORE, default precomputed/) opens with every checksum
    right, else the reason, naming the file: the app is not started on corrupt data."""
    import os

    from mlcm_core.data.store import StoreError
    from mlcm_core.explore import Explorer, ExplorerError

    root = Path(__file__).resolve().parents[1] / "precomputed"
    dataset = dataset or os.environ.get("MLCM_DATASET") or root / "dataset"
    explore = explore or os.environ.get("MLCM_EXPLORE") or root / "explore"
    try:
        Explorer.load(explore, store=dataset)
    except (ExplorerError, StoreError, OSError, ValueError, KeyError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def _prepare_app() -> int:
    """Fill the on-disk caches the app's first page would otherwise compute (the map's clusters), so that a
    fresh install's first start does not pay for them (scripts/setup.sh runs this)."""
    import os
    import time

    from mlcm_core.explore import Explorer

    root = Path(__file__).resolve().parents[1] / "precomputed"
    t0 = time.perf_counter()
    ex = Explorer.load(os.environ.get("MLCM_EXPLORE") or root / "explore",
                       store=os.environ.get("MLCM_DATASET") or root / "dataset")
    n = len(ex.map_clusters())
    print(f"prepared: {n} map clusters cached ({time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    """Serve the dashboard on 127.0.0.1 unless --address says otherwise; origin check stays on.

    The server replaces this process (``os.execv``, same pid): SIGTERM/SIGINT sent to ``mlcm app`` reach
    the server itself, and no ``panel serve`` child is left answering on the port when the parent dies.
    """
    import os

    problem = check_precomputed()
    if problem:
        print(f"error: not starting the app: {problem}", file=sys.stderr)
        return 2
    if args.prepare:
        return _prepare_app()
    cmd = app_command(args.address, args.port, args.allow_websocket_origin, args.show, args.num_threads)
    print(" ".join(cmd), flush=True)
    sys.stderr.flush()
    os.execv(cmd[0], cmd)
    return 0  # not reached: execv replaces the process or raises OSError


def _add_pool_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", type=Path, default=DEFAULT_STORE)
    p.add_argument("--max-sites", type=int, default=20)
    p.add_argument("--sources", choices=sorted(DFT_POOL_SOURCES), default="mp",
                   help="mp: MP structures (default); perov5: CDVAE perov_5 cells; all: both")
    p.add_argument("--order", choices=["diverse", "cost"], default="diverse",
                   help="diverse: elements, crystal systems, sizes, gap classes, magnetism first (mlcm_core/dft/pool.py); "
                        "cost: cheapest first")
    p.add_argument("--max-estimate", type=float, default=3600.0,
                   help="diverse order: structures estimated above this many seconds come last")


def _add_evaluate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", type=Path, default=DEFAULT_STORE, help="dataset store directory")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="pre-training run or checkpoint directory to evaluate (retrieval, rank, inverse design)")
    p.add_argument("--methods", default=None,
                   help="comma-separated pre-training methods for the ablation (default: scratch, clip_crystal_dos, "
                        "all_pairs_clip, anchored_clip, tensor_clip, barlow_twins, barlow_twins_higher_order); "
                        "'none' skips the ablation")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: the budget's)")
    p.add_argument("--budget", default="quick",
                   help="quick = smoke test (var/eval/quick); cpu = the 2-core run of docs/results.md; full = longer")
    p.add_argument("--budget-overrides", default=None,
                   help='JSON object of Budget fields to change, e.g. \'{"finetune_epochs": 50}\'')
    p.add_argument("--targets", default=None, help="comma-separated fine-tuning targets (default: the budget's)")
    p.add_argument("--split", default="test", help="split of the retrieval / inverse-design queries")
    p.add_argument("--no-baseline", action="store_true", help="skip Magpie + RF")
    p.add_argument("--no-comparison", action="store_true", help="skip the 2- vs 3-modal comparison")
    p.add_argument("--run-dir", type=Path, default=None, help="where runs go (default var/runs/evaluate/<budget>)")
    p.add_argument("--out-json", type=Path, default=None, help="default docs/results.json (full), var/eval/quick/ (quick)")
    p.add_argument("--out-md", type=Path, default=None, help="default docs/results.md (full), var/eval/quick/ (quick)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-verify", action="store_true", help="skip the store's SHA-256 check")
    p.add_argument("--ship", type=Path, default=None,
                   help="copy the method chosen on validation (first seed) here, e.g. precomputed/checkpoint, "
                        "and evaluate the copy")


def _add_pretrain_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TrainConfig as YAML or JSON (default: TrainConfig())")
    p.add_argument("--store", type=Path, default=DEFAULT_STORE, help="dataset store directory")
    p.add_argument("--out", type=Path, help="run directory (overrides the config's out_dir)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    p.add_argument("--stop-after-steps", type=int, default=None, help=argparse.SUPPRESS)


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Contrastive pre-training; under torchrun (``torchrun ... -m mlcm_core.cli pretrain ...``) every rank runs
    this, and ``pretrain`` detects the distributed environment itself, so one command serves 1 or N processes."""
    import logging
    from dataclasses import replace

    from mlcm_core.train.config import TrainConfig
    from mlcm_core.train.pretrain import pretrain

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}/{world}] %(message)s")
    config = TrainConfig.from_yaml(args.config) if args.config else TrainConfig()
    if args.out is not None:
        config = replace(config, out_dir=str(args.out))
    print(f"[rank {rank}/{world}] start", flush=True)
    path = pretrain(args.store, config, resume=args.resume, stop_after_steps=args.stop_after_steps,
                    progress=rank == 0)
    print(f"[rank {rank}/{world}] done: {path}", flush=True)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Retrieval, inverse design, Magpie + RF and the pre-training ablation; writes results.json + markdown."""
    import shlex

    from mlcm_core import load_dataset
    from mlcm_core.evaluate.ablation import BUDGETS, DEFAULT_METHODS
    from mlcm_core.evaluate.report import write_report
    from mlcm_core.evaluate.run import run_evaluation

    if args.budget not in BUDGETS:
        print(f"error: --budget must be one of {', '.join(BUDGETS)}, not {args.budget!r}", file=sys.stderr)
        return 2
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    budget = BUDGETS[args.budget]
    if args.budget_overrides:
        budget = budget.with_overrides(json.loads(args.budget_overrides))
    if args.methods is None:
        methods = list(DEFAULT_METHODS)
    elif args.methods.strip().lower() in ("", "none"):
        methods = []
    else:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    targets = [t.strip() for t in args.targets.split(",")] if args.targets else None
    default_dir = Path("var") / "eval" / budget.name if budget.name == "quick" else Path("docs")
    out_json = args.out_json or default_dir / "results.json"
    out_md = args.out_md or default_dir / "results.md"
    try:
        store = load_dataset(args.store, verify=not args.no_verify)
        results = run_evaluation(store, budget=budget, checkpoint=args.checkpoint, methods=methods, seeds=args.seeds,
                                 targets=targets, split=args.split, baseline=not args.no_baseline,
                                 comparison=not args.no_comparison, run_dir=args.run_dir,
                                 command="mlcm " + shlex.join(args.argv), store_path=args.store,
                                 ship=args.ship)
    except (KeyError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    paths = write_report(results, out_json, out_md)
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlcm", description="Multimodal Learning for Crystalline Materials")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="build, ingest and inspect datasets").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("build-default", help="build the default dataset from ../shared/data/sources")
    p.add_argument("--sources", type=Path, default=DEFAULT_SOURCES)
    p.add_argument("--out", type=Path, default=DEFAULT_STORE)
    p.set_defaults(func=cmd_build_default)

    p = data.add_parser("ingest-vasp", help="add VASP output folders (vasprun.xml/DOSCAR/CHGCAR)")
    p.add_argument("dirs", type=Path, nargs="+")
    p.add_argument("--store", type=Path, default=DEFAULT_STORE)
    p.set_defaults(func=cmd_ingest_vasp)

    p = data.add_parser("ingest-mp", help="add materials from the Materials Project API (needs MP_API_KEY)")
    p.add_argument("ids", nargs="+", help="MP ids, e.g. mp-149")
    p.add_argument("--api-key", default=None)
    p.add_argument("--no-dos", action="store_true")
    p.add_argument("--no-density", action="store_true")
    p.add_argument("--store", type=Path, default=DEFAULT_STORE)
    p.set_defaults(func=cmd_ingest_mp)

    p = data.add_parser("ingest-structures", help="add CIF/POSCAR files (a file or a folder)")
    p.add_argument("path", type=Path)
    p.add_argument("--store", type=Path, default=DEFAULT_STORE)
    p.set_defaults(func=cmd_ingest_structures)

    p = data.add_parser("info", help="counts per modality and label coverage")
    p.add_argument("path", type=Path, nargs="?", default=DEFAULT_STORE)
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-verify", action="store_true", help="skip the SHA-256 check of every file")
    p.set_defaults(func=cmd_info)

    dft = sub.add_parser("dft", help="first-principles engine (GPAW)").add_subparsers(dest="dft_command", required=True)
    p = dft.add_parser("pool", help="count and order the eligible structures (diverse order by default)")
    _add_pool_options(p)
    p.add_argument("--show", type=int, default=10)
    p.add_argument("--coverage", type=int, default=500, help="summarise the next N: elements, crystal systems, cost")
    p.set_defaults(func=cmd_dft_pool)

    p = dft.add_parser("run", help="compute DOS and density for the pool, diverse order by default (resumable)")
    p.add_argument("--out", type=Path, default=Path("var") / "dft")
    p.add_argument("--workers", type=int, default=2, help="processes of the local Dask cluster (without --scheduler)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on this running Dask cluster (tcp://host:8786) instead of a local one; its workers "
                        "must see --out (docs/scale.md)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per material")
    _add_pool_options(p)
    p.add_argument("--limit", type=int, default=None, help="at most this many materials")
    p.set_defaults(func=cmd_dft_run)

    p = dft.add_parser("backfill-density", help="SCF-only reruns: the VASP-like density for stored GPAW materials")
    p.add_argument("--store", type=Path, default=DEFAULT_STORE)
    p.add_argument("--out", type=Path, default=Path("var") / "dft_density")
    p.add_argument("--workers", type=int, default=2, help="processes of the local Dask cluster (without --scheduler)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on this running Dask cluster (tcp://host:8786) instead of a local one (docs/scale.md)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per material")
    p.add_argument("--limit", type=int, default=None, help="at most this many materials")
    p.set_defaults(func=cmd_dft_backfill_density)

    p = dft.add_parser("ingest", help="merge finished results into the store as a new shard")
    p.add_argument("--results", type=Path, default=Path("var") / "dft")
    p.add_argument("--store", type=Path, default=DEFAULT_STORE)
    p.set_defaults(func=cmd_dft_ingest)

    p = dft.add_parser("ingest-seed", help="merge ../shared/data/dft-seed into the store")
    p.add_argument("--seed-dir", type=Path, default=Path("..") / "shared" / "data" / "dft-seed")
    p.add_argument("--store", type=Path, default=DEFAULT_STORE)
    p.set_defaults(func=cmd_dft_ingest_seed)

    p = dft.add_parser("validate", help="compute a material from first principles and score its DOS vs a target")
    p.add_argument("material", help="material id in the store")
    p.add_argument("--target-dos", type=Path, required=True, help="601 values, or (energy, dos) columns")
    p.add_argument("--store", type=Path, default=DEFAULT_STORE)
    p.add_argument("--timeout", type=float, default=3600.0)
    p.set_defaults(func=cmd_dft_validate)

    p = sub.add_parser("pretrain", help="contrastive pre-training (torchrun: torchrun ... -m mlcm_core.cli pretrain ...)")
    _add_pretrain_options(p)
    p.set_defaults(func=cmd_pretrain)
    p = sub.add_parser("evaluate", help="retrieval, fine-tuning ablation, inverse design, Magpie+RF; writes "
                                        "results.json + markdown")
    _add_evaluate_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("finetune", help="fine-tune the crystal encoder on one property")
    p.add_argument("--target", required=True,
                   help="band_gap | formation_energy_per_atom | log10_k_vrh | log10_g_vrh | a label column")
    p.add_argument("--pretrained", type=Path, default=None, help="pre-training run or checkpoint directory")
    p.add_argument("--config", type=Path, default=None)
    p.add_argument("--store", type=Path, default=DEFAULT_STORE)
    p.add_argument("--out", type=Path, default=None)
    p.set_defaults(func=cmd_finetune)

    for name, func, text in (
            ("embed", cmd_embed, ("embed every material with each encoder it has data for (keeps the fitted map: "
                                  "new materials are placed with its transform)")),
            ("project", cmd_project, "embed and fit a new UMAP map (cosine) of the crystal embeddings")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--store", type=Path, default=DEFAULT_STORE)
        p.add_argument("--checkpoint", type=Path, default=Path("precomputed/checkpoint"))
        p.add_argument("--out", type=Path, default=Path("precomputed"), help="writes <out>/explore")
        p.add_argument("--workers", type=int, default=0,
                       help="embed chunks of the store on a local Dask cluster of this many processes (without "
                            "--scheduler); 0 (default): in this process, the fastest on one machine (docs/scale.md)")
        p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="embed on this running Dask cluster (tcp://host:8786); its workers must see the store, "
                            "--checkpoint and --out at the same paths (docs/scale.md)")
        p.add_argument("--chunk", type=int, default=512, help="materials per task (per featurize/read step in process)")
        if name == "project":
            p.add_argument("--n-neighbors", type=int, default=15)
            p.add_argument("--min-dist", type=float, default=0.1)
            p.add_argument("--seed", type=int, default=0)
        p.set_defaults(func=func)

    heads = sub.add_parser("heads", help="property heads (fine-tuned ensembles) for predictions").add_subparsers(
        dest="heads_command", required=True)
    p = heads.add_parser("build", help="fine-tune an ensemble per target (resumable) and write the heads folder")
    p.add_argument("--pretrained", type=Path, default=Path("none"),
                   help="'none' (default, what ships): train from scratch; or a pre-trained checkpoint whose "
                        "crystal encoder is fine-tuned (e.g. precomputed/checkpoint with configs/heads_cpu.yaml)")
    p.add_argument("--config", type=Path, default=Path("configs/heads_scratch.yaml"))
    p.add_argument("--store", type=Path, default=DEFAULT_STORE)
    p.add_argument("--runs", type=Path, default=Path("var/runs/heads"), help="fine-tuning runs, one folder per target")
    p.add_argument("--out", type=Path, default=Path("precomputed/heads"))
    p.add_argument("--targets", nargs="*", default=None)
    p.add_argument("--no-classical", action="store_true", help="GNN ensembles only (no forest, no hybrid)")
    p.set_defaults(func=cmd_heads_build)
    p = heads.add_parser("add-classical", help="add (or refit) the random-forest half of the hybrid predictions "
                                                "to a heads folder, without retraining the GNN members")
    p.add_argument("--heads", type=Path, default=Path("precomputed/heads"))
    p.add_argument("--store", type=Path, default=DEFAULT_STORE)
    p.add_argument("--targets", nargs="*", default=None)
    p.add_argument("--trees", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="scikit-learn n_jobs while fitting")
    p.add_argument("--cache", type=Path, default=DESCRIPTOR_CACHE, help="descriptor cache folder")
    p.set_defaults(func=cmd_heads_add_classical)

    p = sub.add_parser("predict", help="predict band gap, formation energy, K and G (± ensemble spread) for CIF/POSCAR files")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--heads", type=Path, default=Path("precomputed/heads"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("app", help="serve the dashboard (127.0.0.1 by default)")
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5006)
    p.add_argument("--allow-websocket-origin", default=None)
    p.add_argument("--show", action="store_true")
    p.add_argument("--num-threads", type=int, default=None,
                   help="callback thread pool size (Panel --num-threads; default: callbacks on the server's one thread)")
    p.add_argument("--prepare", action="store_true",
                   help="only fill the caches the first page needs (map clusters) and exit; scripts/setup.sh runs it")
    p.set_defaults(func=cmd_app)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = list(argv)  # the exact command, recorded by mlcm evaluate in its report
    from mlcm_core.data.store import StoreError

    try:
        return args.func(args)
    except (StoreError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
