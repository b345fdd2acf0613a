"""Dataset store I/O: open + verify, table merge, lazy DOS/density reads. Prints numbers.

    python benchmarks/store_io.py [precomputed/dataset]
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import numpy as np

from mlcm_core.data.store import DatasetStore


def main(path: Path) -> None:
    t0 = time.perf_counter()
    store = DatasetStore.open(path, verify=True)
    t1 = time.perf_counter()
    table = store.table
    t2 = time.perf_counter()
    rng = np.random.default_rng(0)
    dens_ids = rng.choice(table.loc[table["has_charge_density"], "id"].to_numpy(), size=64, replace=False).tolist()
    dos_ids = rng.choice(table.loc[table["has_dos"], "id"].to_numpy(), size=64, replace=False).tolist()
    t3 = time.perf_counter()
    store.density(dens_ids)
    t4 = time.perf_counter()
    store.dos(dos_ids)
    t5 = time.perf_counter()
    store.density(dens_ids[::-1])
    t6 = time.perf_counter()
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    print(f"store: {path}  {size / 2**20:.1f} MiB on disk, {len(table)} materials")
    print(f"open + SHA-256 verify: {t1 - t0:.2f} s")
    print(f"table (read + merge):   {t2 - t1:.2f} s")
    print(f"64 random densities:    {(t4 - t3) * 1e3:.0f} ms cold (opens the zip, builds the id index), "
          f"{(t6 - t5) * 1e3:.0f} ms warm")
    print(f"64 random DOS:          {(t5 - t4) * 1e3:.0f} ms")
    print(f"peak RSS:               {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "precomputed/dataset"))
