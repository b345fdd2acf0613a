"""First-principles engine: the GPAW PBE protocol, its subprocess worker, the seed results and validation.

GPAW runs only under Debian's /usr/bin/python3, so `engine` drives `worker.py` as a subprocess; everything
here runs in the project interpreter. See docs/dft.md for the choices and measured timings.
"""

from mlcm_core.dft.engine import (
    CostEstimate,
    DFTError,
    RunSummary,
    build_job,
    compute,
    estimate_cost,
    gpaw_available,
    order_pool,
    record_from_npz,
    run_many,
)
from mlcm_core.dft.protocol import LOW_PROTOCOL, PROTOCOL, DFTProtocol
from mlcm_core.dft.seed import band_coverage_audit, load_seed, seed_structures
from mlcm_core.dft.validate import dos_mae, validate

__all__ = [
    "LOW_PROTOCOL",
    "PROTOCOL",
    "CostEstimate",
    "DFTError",
    "DFTProtocol",
    "RunSummary",
    "band_coverage_audit",
    "build_job",
    "compute",
    "dos_mae",
    "estimate_cost",
    "gpaw_available",
    "load_seed",
    "order_pool",
    "record_from_npz",
    "run_many",
    "seed_structures",
    "validate",
]
