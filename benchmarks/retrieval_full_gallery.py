"""Retrieval as the app uses it: test DOS/density queries against every structure, and MultiMat DOS <-> density.

    python benchmarks/retrieval_full_gallery.py [--checkpoint DIR] [--json OUT] [--split test] [--threads 2]

What is measured (definitions in ``mlcm_core/evaluate/full_gallery.py``; hits, ties and chance as in
``retrieval.py``):

* (a) each ``--split`` material with a DOS (resp. density) and a structure: its DOS/density, embedded here
  from the store's raw arrays, ranks its own crystal (its de-duplication group) among all structure
  embeddings, among the MP structures only (source matminer-0.3.9) and among each source's; per query source.
* (b) MultiMat MP DOS <-> MP density among the MultiMat pairs held out of the checkpoint's pre-training
  (re-derived from its train config; with --checkpoint, held out of both, so both score the same pairs), and
  among all MultiMat pairs (some of them trained on).

The shipped checkpoint (``precomputed/checkpoint``) is always measured; its gallery is the explorer's
stored crystal table (``precomputed/explore/embeddings.npz``) once its checksum names the same weights and
a sample of re-embedded structures matches it. ``--checkpoint DIR`` adds another checkpoint side by side;
its crystal gallery is embedded (minutes on CPU) and cached under ``--cache-dir`` (default
var/cache/full_gallery, outside git). Nothing is written into precomputed/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _num(x: float) -> str:
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def measure(checkpoint: Path, store: Any, explore: Path, split: str, cache_dir: Path, verify: int,
            exclude_pairs: set[str]) -> dict[str, Any]:
    """Both tables for one checkpoint (+ provenance and checks)."""
    from mlcm_core.evaluate.full_gallery import embed_crystal_gallery, evaluate_full_gallery, gallery_from_table
    from mlcm_core.explore.embed import EmbeddingTable, load_model_verified
    from mlcm_core.models.checkpoint import read_checkpoint_info

    t0 = time.perf_counter()
    model, desc = load_model_verified(checkpoint)
    info = read_checkpoint_info(checkpoint)
    table_path = explore / "embeddings.npz"
    table = EmbeddingTable.load(table_path) if table_path.exists() else None
    if table is not None and table.meta.get("checkpoint_sha256") == desc["checkpoint_sha256"]:
        gallery, where = gallery_from_table(table), f"{table_path} (same weights SHA-256; re-embedding checked)"
    else:
        gallery = embed_crystal_gallery(checkpoint, store, cache_dir=cache_dir, progress=True)
        where, verify = f"embedded with this checkpoint (cache {cache_dir})", 0
    res = evaluate_full_gallery(model, store, gallery=gallery, split=split, train_config=info.train_config or {},
                                verify=verify, exclude_pairs=exclude_pairs)
    trained_rows = (info.extra or {}).get("train_rows")
    return {"checkpoint": str(checkpoint), "sha256": desc["checkpoint_sha256"], "step": desc["checkpoint_step"],
            "gallery_source": where, "checkpoint_train_rows": trained_rows, **res.to_dict(),
            "wall_s": round(time.perf_counter() - t0, 1)}


def print_tables(results: list[dict[str, Any]], labels: list[str]) -> None:
    import pandas as pd

    keys = ["query", "query_source", "gallery"]
    base = pd.DataFrame(results[0]["full_gallery"])
    print("\n(a) query -> its true crystal among the gallery's structures (median rank / top-k; chance beside)\n")
    head = ["query", "query source", "gallery", "N", "gallery size"]
    for lab in labels:
        head += [f"median rank {lab}", f"top-1 {lab}", f"top-10 {lab}", f"top-100 {lab}"]
    head += ["chance median rank", "chance top-10"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    others = [pd.DataFrame(r["full_gallery"]).set_index(keys) for r in results[1:]]
    for row in base.itertuples(index=False):
        r = row._asdict()
        cells = [r["query"], r["query_source"], r["gallery"], str(r["n_queries"]), str(r["n_gallery"])]
        cells += [_num(r["median_rank"]), _pct(r["top1"]), _pct(r["top10"]), _pct(r["top100"])]
        for o in others:
            k = (r["query"], r["query_source"], r["gallery"])
            if k in o.index and o.loc[k, "n_queries"] == r["n_queries"] and o.loc[k, "n_gallery"] == r["n_gallery"]:
                x = o.loc[k]
                cells += [_num(x["median_rank"]), _pct(x["top1"]), _pct(x["top10"]), _pct(x["top100"])]
            else:
                cells += ["n/a (other N)"] * 4
        cells += [_num(r["chance_median_rank"]), _pct(r["chance_top10"])]
        print("| " + " | ".join(cells) + " |")
    without = {(r["query"], r["gallery"]): r["n_without_hit"] for r in results[0]["full_gallery"]
               if r["query_source"] == "all" and r["n_without_hit"]}
    if without:
        print(f"\nqueries left out for lack of a structure of their group in the gallery: {without}")

    print("\n(b) MultiMat MP DOS <-> MP density (query = gallery = the pairs; chance median rank (N+1)/2)\n")
    head = ["pairs", "query -> gallery", "N"]
    for lab in labels:
        head += [f"median rank {lab}", f"top-1 {lab}", f"top-10 {lab}"]
    head += ["chance median rank", "chance top-10"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    pk = ["pairs", "query", "gallery"]
    others = [pd.DataFrame(r["multimat_pairs"]).set_index(pk) for r in results[1:]]
    for r in results[0]["multimat_pairs"]:
        cells = [r["pairs"], f"{r['query']} -> {r['gallery']}", str(r["n_queries"]),
                 _num(r["median_rank"]), _pct(r["top1"]), _pct(r["top10"])]
        for o in others:
            k = (r["pairs"], r["query"], r["gallery"])
            if k in o.index and o.loc[k, "n_queries"] == r["n_queries"]:
                cells += [_num(o.loc[k, "median_rank"]), _pct(o.loc[k, "top1"]), _pct(o.loc[k, "top10"])]
            else:
                cells += ["n/a (other N)"] * 3  # another checkpoint trained on other MultiMat rows
        cells += [_num(r["chance_median_rank"]), _pct(r["chance_top10"])]
        print("| " + " | ".join(cells) + " |")
    for lab, res in zip(labels, results):
        c = res["checks"]
        print(f"\n{lab} {res['checkpoint']} (sha256 {res['sha256'][:16]}, step {res['step']}), {res['wall_s']} s")
        print(f"  gallery: {c['n_gallery']} crystal embeddings from {res['gallery_source']}")
        if "gallery_verification" in c:
            v = c["gallery_verification"]
            print(f"  re-embedded {v['n_checked']} gallery structures: max |diff| {v['max_abs_diff']:.2e}, "
                  f"min cosine {v['min_cosine']:.6f}")
        print(f"  query rows ({', '.join(res.get('split', []) or [])}): {c['n_query_rows']}")
        if "multimat" in c:
            m = c["multimat"]
            print(f"  MultiMat pairs: {m['pairs']}, in pre-training {m['in_pretraining']}, held out {m['held_out']} "
                  f"(by split {m['held_out_by_split']}); pre-training rows re-derived now {m['pretraining_rows_now']}, "
                  f"checkpoint says {res['checkpoint_train_rows']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shipped", type=Path, default=ROOT / "precomputed" / "checkpoint")
    p.add_argument("--checkpoint", type=Path, default=None, help="another checkpoint to compare side by side")
    p.add_argument("--store", type=Path, default=ROOT / "precomputed" / "dataset")
    p.add_argument("--explore", type=Path, default=ROOT / "precomputed" / "explore",
                   help="folder of the stored crystal table (used when it names the same weights)")
    p.add_argument("--split", default="test")
    p.add_argument("--verify", type=int, default=16, help="gallery structures re-embedded to check a stored table")
    p.add_argument("--cache-dir", type=Path, default=ROOT / "var" / "cache" / "full_gallery")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = p.parse_args(argv)

    import torch

    from mlcm_core.data.store import DatasetStore
    from mlcm_core.evaluate.full_gallery import pretraining_ids
    from mlcm_core.models.checkpoint import read_checkpoint_info

    torch.set_num_threads(args.threads)
    store = DatasetStore.open(args.store)
    ckpts = [args.shipped] + ([args.checkpoint] if args.checkpoint is not None else [])
    labels = ["[shipped]"] + (["[other]"] if args.checkpoint is not None else [])
    # MultiMat pairs count as held out only when no compared checkpoint trained on them: same pairs for all
    trained: set[str] = set()
    for c in ckpts:
        trained |= pretraining_ids(store, read_checkpoint_info(c).train_config or {})
    results = []
    for c in ckpts:
        r = measure(c, store, args.explore, args.split, args.cache_dir, args.verify, trained)
        r["split"] = [args.split]
        results.append(r)
    print(f"store {args.store}: {len(store.table)} materials, {len(store.manifest['shards'])} shards; "
          f"queries: split {args.split!r}")
    print_tables(results, labels)
    if args.json is not None:
        out = {"command": " ".join(["python", "benchmarks/retrieval_full_gallery.py", *(argv or sys.argv[1:])]),
               "store": str(args.store), "store_shards": [s["name"] for s in store.manifest["shards"]],
               "split": args.split, "results": dict(zip(labels, results))}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, default=str))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
