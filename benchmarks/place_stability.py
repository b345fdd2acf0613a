"""Does a new point land in the same place when its vector changes only by float32 noise?

Run: python benchmarks/place_stability.py [--materials 20] [--repeats 10]. For shipped materials' crystal
embeddings (precomputed/), each vector is perturbed by 1e-7 relative noise (what a second code path -- an
extra normalisation, another BLAS -- changes) and placed again, with the canonical transform (default) and
with umap's plain arithmetic (``canonical=False``) side by side. umap seeds each point's negative sampling
with the bits of its initial position, so the plain path moves some points by ~0.1 map units.
"""

from __future__ import annotations

import argparse

import numpy as np

from mlcm_core.explore import Explorer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--precomputed", default="precomputed")
    parser.add_argument("--materials", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    explorer = Explorer.load(args.precomputed)
    proj = explorer.projection
    rng = np.random.default_rng(0)
    vectors = [v for v in (explorer.embeddings.get(m, "crystal") for m in explorer.embeddings.ids[: 4 * args.materials])
               if v is not None][: args.materials]
    moved: dict[bool, list[float]] = {True: [], False: []}
    for v in vectors:
        v = v.astype(np.float32) / np.linalg.norm(v.astype(np.float32))
        noisy = np.stack([(v * (1 + 1e-7 * rng.standard_normal(v.shape))).astype(np.float32)
                          for _ in range(args.repeats)])
        for canonical in (True, False):
            base = proj.transform(v[None], canonical=canonical)[0]
            moved[canonical].extend(np.linalg.norm(proj.transform(noisy, canonical=canonical) - base, axis=1))
    extent = float(np.ptp(proj.embedding, axis=0).max())
    print(f"{len(vectors)} materials x {args.repeats} perturbations (1e-7 relative); map extent {extent:.1f}")
    for canonical, label in ((True, "canonical (shipped)"), (False, "umap arithmetic")):
        d = np.asarray(moved[canonical])
        print(f"  {label:20s} moved > 1e-3: {np.mean(d > 1e-3):5.1%}   max {d.max():.3f} map units")


if __name__ == "__main__":
    main()
