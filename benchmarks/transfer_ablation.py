"""What each training change does to retrieval at the app's scale (issue 16, item 2): DOS -> its crystal among
every MP structure, per variant and seed, side by side.

    python benchmarks/transfer_ablation.py [--variants base,augment,...] [--seeds 0] [--epochs 15] [--json OUT]
    python benchmarks/transfer_ablation.py --summarize var/runs/transfer/*.json     # one table, mean +- std

Each variant is a crystal + DOS pre-training run (the two modalities the DOS search uses; densities wait for
the density backfill, docs/dft.md) with the `cpu` budget of `mlcm evaluate` (model `cpu`, batch 32, LR 5e-4,
20 warm-up steps, training rows = train-split materials with a structure and a DOS) and one change:

* ``base``: nothing else (the budget's 15 epochs);
* ``long``: 3x the epochs (is the model under-trained on ~600 pairs?);
* ``augment``: ``augment_dos`` (extra Gaussian broadening 0-0.3 eV, zero shifted by up to +-0.3 eV, p=0.8);
* ``long_augment``: both;
* ``augment_cut``: ``augment`` plus the DOS fading out above a random energy in +3..+10 eV (a run with few
  empty bands, as VASP's Si run: 0.66 states/eV at +8 eV where GPAW has 6.5);
* ``unpaired``: 32 train-split crystals without a DOS join every batch as extra negatives of the DOS queries
  (``unpaired_per_batch``, loss option ``unpaired_negatives``): the app's gallery is mostly such crystals;
* ``unpaired_long``: 32 of them and 3x the epochs;
* ``unpaired128``: 128 of them per batch;
* ``unpaired_augment``: 32 of them and ``augment_dos``;
* ``anchored3`` / ``anchored3_unpaired``: the shipped recipe (crystal, DOS and density, anchored CLIP; rows
  with 2 of 3 modalities) without / with 32 unpaired crystals per batch (the store's densities are in two
  conventions until the backfill ends: a check of the DOS side only).

Measured for each run (``mlcm_core/evaluate/full_gallery.py``'s rules: hits are de-duplication groups,
ties count against the hit, chance beside): the ``val`` and ``test`` split's GPAW DOS of MP materials rank
their crystal among all 6,317 MP structures (the gallery the issue's targets use), and the VASP DOS of Si
(tests/files/vasp-si, another code: tetrahedron DOS, VASP's zero) ranks Si (mp-149, a training row: a check
of code transfer, not of generalisation). Choose on ``val``; ``test`` is printed for the record.

Runs are resumable (``var/runs/transfer/<variant>/seed<k>``); gallery embeddings are cached per weights.
Training must not share the cores with a DFT campaign: pause it (SIGSTOP) while this runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "long": {"epochs_mult": 3},
    "augment": {"augment_dos": True},
    "long_augment": {"epochs_mult": 3, "augment_dos": True},
    "unpaired": {"unpaired_per_batch": 32, "loss_options": {"unpaired_negatives": True}},
    "augment_cut": {"augment_dos": True, "augment_dos_options": {"top_cut_ev": (3.0, 10.0)}},
    "unpaired_long": {"epochs_mult": 3, "unpaired_per_batch": 32, "loss_options": {"unpaired_negatives": True}},
    "unpaired128": {"unpaired_per_batch": 128, "loss_options": {"unpaired_negatives": True}},
    "anchored3": {"modalities": ("crystal", "dos", "density"), "loss": "anchored_clip"},
    "anchored3_unpaired": {"modalities": ("crystal", "dos", "density"), "loss": "anchored_clip",
                           "unpaired_per_batch": 32, "loss_options": {"unpaired_negatives": True}},
    "unpaired_augment": {"unpaired_per_batch": 32, "loss_options": {"unpaired_negatives": True}, "augment_dos": True},
}


def train_config(variant: str, seed: int, epochs: int, out: Path) -> Any:
    from mlcm_core.train.config import TrainConfig

    v = dict(VARIANTS[variant])
    mult = v.pop("epochs_mult", 1)
    cfg = TrainConfig(model="cpu", loss="all_pairs_clip", modalities=("crystal", "dos"), min_modalities=2,
                      epochs=epochs * mult, batch_size=32, lr=5e-4, warmup_steps=20, seed=seed,
                      out_dir=str(out / variant / f"seed{seed}"), checkpoint_every=10_000, keep_last=1,
                      device="cpu")
    return replace(cfg, **v)


def si_vasp_query(model: Any) -> Any:
    from mlcm_core.data.sources.vasp import dos_from_vasprun

    dos = dos_from_vasprun(ROOT / "tests/files/vasp-si/vasprun.xml.gz")
    import torch

    with torch.no_grad():
        return model.embed("dos", torch.as_tensor(dos.total, dtype=torch.float32)[None]).float().numpy()


def measure(checkpoint: Path, store: Any, cache: Path) -> dict[str, Any]:
    from mlcm_core.evaluate.full_gallery import MP_SOURCE, embed_crystal_gallery, embed_modality, query_ids
    from mlcm_core.evaluate.retrieval import retrieval_metrics
    from mlcm_core.explore.embed import load_model_verified

    model, _ = load_model_verified(checkpoint)
    table = store.table
    mp = table[table["source"] == MP_SOURCE]
    ids, z = embed_crystal_gallery(checkpoint, store, cache_dir=cache, ids=mp["id"].astype(str).tolist())
    groups = dict(zip(table["id"].astype(str), table["dedup_group"].astype(str)))
    out: dict[str, Any] = {}
    for split in ("val", "test"):
        q = [i for i in query_ids(table, split, "dos") if i in set(mp["id"].astype(str))]
        q_ids, q_z = embed_modality(model, store, q, "dos")
        out[split] = retrieval_metrics(q_z, z, q_ids, ids, groups, (1, 10, 100))
    si = retrieval_metrics(si_vasp_query(model), z, ["mp-149"], ids, groups, (1, 10, 100))
    out["si_vasp_rank"] = si["median_rank"]
    out["n_gallery"] = len(ids)
    return out


def summarize(paths: list[Path]) -> None:
    """One markdown table from the --json files of several invocations: mean +- std over seeds per variant."""
    merged: dict[str, dict[str, Any]] = {}
    for path in paths:
        for variant, by_seed in json.loads(path.read_text()).items():
            merged.setdefault(variant, {}).update(by_seed)

    def stat(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.1f} ± {sd:.1f}"

    print("| variant | seeds | val median rank | val top-10 | test median rank | test top-10 | VASP Si rank (each seed) |")
    print("|---|---|---|---|---|---|---|")
    for variant, by_seed in merged.items():
        runs = [by_seed[k] for k in sorted(by_seed, key=int)]
        print(f"| {variant} | {len(runs)} | {stat([r['val']['median_rank'] for r in runs])} | "
              f"{stat([100 * r['val']['top10'] for r in runs])} % | {stat([r['test']['median_rank'] for r in runs])} | "
              f"{stat([100 * r['test']['top10'] for r in runs])} % | "
              f"{', '.join(str(round(r['si_vasp_rank'])) for r in runs)} |")
    any_run = next(iter(next(iter(merged.values())).values()))
    print(f"\nN queries: val {any_run['val']['n_queries']}, test {any_run['test']['n_queries']}; gallery "
          f"{any_run['n_gallery']:,} MP structures; chance median rank {any_run['val']['chance_median_rank']:.0f}.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--store", type=Path, default=ROOT / "precomputed/dataset")
    ap.add_argument("--out", type=Path, default=ROOT / "var/runs/transfer")
    ap.add_argument("--cache", type=Path, default=ROOT / "var/cache/full_gallery")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--reference", type=Path, default=None, help="also measure this checkpoint (e.g. the shipped one)")
    ap.add_argument("--summarize", type=Path, nargs="+", default=None,
                    help="only print one table from these --json files (several invocations merged)")
    args = ap.parse_args()
    if args.summarize:
        summarize(args.summarize)
        return

    import torch

    from mlcm_core.data.store import DatasetStore
    from mlcm_core.train.pretrain import pretrain

    torch.set_num_threads(args.threads)
    store = DatasetStore.open(args.store)
    results: dict[str, dict[int, Any]] = {}
    if args.reference:
        ref = measure(args.reference, store, args.cache)
        results["reference"] = {0: ref}
        print(f"reference {args.reference}: val median {ref['val']['median_rank']:.1f} (N {ref['val']['n_queries']}) "
              f"top-10 {100 * ref['val']['top10']:.1f}% | test median {ref['test']['median_rank']:.1f} "
              f"(N {ref['test']['n_queries']}) top-10 {100 * ref['test']['top10']:.1f}% | VASP Si rank "
              f"{ref['si_vasp_rank']:.0f}", flush=True)
    for variant in args.variants.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            cfg = train_config(variant, seed, args.epochs, args.out)
            t0 = time.perf_counter()
            ckpt = pretrain(store, cfg, resume=True, progress=False)
            t_train = time.perf_counter() - t0
            res = measure(ckpt, store, args.cache)
            res["train_s"] = round(t_train, 1)
            res["epochs"] = cfg.epochs
            results.setdefault(variant, {})[seed] = res
            v, t = res["val"], res["test"]
            print(f"{variant:>14s} seed {seed}: val median {v['median_rank']:7.1f} (N {v['n_queries']}, chance "
                  f"{v['chance_median_rank']:.0f}) top-10 {100 * v['top10']:5.1f}% | test median "
                  f"{t['median_rank']:7.1f} (N {t['n_queries']}) top-10 {100 * t['top10']:5.1f}% | VASP Si rank "
                  f"{res['si_vasp_rank']:.0f} | {res['epochs']} epochs, train {t_train:.0f} s", flush=True)
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(results, indent=1, default=float))
    print(f"\nGallery: {res['n_gallery']:,} MP structures. Mean +- std over seeds:")
    for variant, by_seed in results.items():
        for split in ("val", "test"):
            ranks = [r[split]["median_rank"] for r in by_seed.values()]
            sd = statistics.stdev(ranks) if len(ranks) > 1 else 0.0
            print(f"  {variant:>14s} {split:>4s}: median rank {statistics.mean(ranks):7.1f} +- {sd:5.1f} "
                  f"({len(ranks)} seeds)")


if __name__ == "__main__":
    main()
