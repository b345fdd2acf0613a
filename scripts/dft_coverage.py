"""Coverage of the first-principles corpus: materials with a GPAW DOS and density, by element and crystal system.

Run: python scripts/dft_coverage.py [--store precomputed/dataset] [--plot assets/dft_coverage.png]. Prints the
markdown tables that docs/dft.md carries and draws a periodic-table-free bar plot (elements by count, crystal
systems), so the next campaign's diversity can be judged against the MP pool it draws from.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mlcm_core.data.store import DatasetStore
from mlcm_core.dft.pool import COMPUTED_SOURCES, coverage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", type=Path, default=Path("precomputed") / "dataset")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG here")
    args = parser.parse_args()
    t = DatasetStore.open(args.store).table
    done = t[t["dos_source"].isin(COMPUTED_SOURCES) & t["has_charge_density"].astype(bool) & t["has_structure"]]
    pool = t[(t["source"] == "matminer-0.3.9") & t["has_structure"]]
    rows = {name: [{"elements": list(r.elements), "crystal_system": r.crystal_system} for r in df.itertuples()]
            for name, df in (("computed MP", done[done["source"] == "matminer-0.3.9"]),
                             ("computed perov_5", done[done["source"] == "cdvae-perov_5"]), ("MP pool", pool))}
    cov = {name: coverage(r) for name, r in rows.items()}
    print(f"| crystal system | {' | '.join(f'{n} ({len(rows[n])})' for n in cov)} |")
    print("|---" * (len(cov) + 1) + "|")
    for cs in sorted(cov["MP pool"]["crystal_systems"], key=lambda c: -cov["MP pool"]["crystal_systems"][c]):
        print(f"| {cs} | " + " | ".join(str(cov[n]["crystal_systems"].get(cs, 0)) for n in cov) + " |")
    pool_el = cov["MP pool"]["elements"]
    mp_el = cov["computed MP"]["elements"]
    missing = sorted(e for e in pool_el if e not in mp_el)
    print(f"\nelements: {len(mp_el)} of the MP pool's {len(pool_el)} in computed MP materials; none yet: "
          f"{', '.join(missing)}")
    print("most covered: " + ", ".join(f"{e} {n}" for e, n in mp_el.most_common(10)))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 6.5), gridspec_kw={"height_ratios": [2, 1]})
        order = [e for e, _ in pool_el.most_common()]
        ax1.bar(range(len(order)), [pool_el[e] for e in order], color="#d1d5db", label="MP pool (structures)")
        ax1.bar(range(len(order)), [mp_el.get(e, 0) for e in order], color="#2563eb", label="computed (MP)")
        ax1.set_xticks(range(len(order)), order, fontsize=6, rotation=90)
        ax1.set_ylabel("materials containing")
        ax1.legend()
        systems = [cs for cs, _ in cov["MP pool"]["crystal_systems"].most_common()]
        width = 0.27
        for k, (name, colour) in enumerate((("MP pool", "#d1d5db"), ("computed MP", "#2563eb"),
                                            ("computed perov_5", "#f59e0b"))):
            ax2.bar([i + (k - 1) * width for i in range(len(systems))],
                    [cov[name]["crystal_systems"].get(s, 0) for s in systems], width, color=colour, label=name)
        ax2.set_xticks(range(len(systems)), systems)
        ax2.set_yscale("log")
        ax2.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
