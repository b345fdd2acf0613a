"""Entry point for launching pre-training with torchrun (or plain python).

Why a separate module: torchrun starts N copies of a module with ``-m``; this one only parses arguments
and calls ``pretrain``, which detects the distributed environment itself, so the same command works with
one process or many::

    python -m mlcm_core.train.pretrain_cli --config run.yaml --store precomputed/dataset --out var/runs/pt
    torchrun --nproc_per_node 2 -m mlcm_core.train.pretrain_cli --config run.yaml --resume
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mlcm-pretrain", description="contrastive pre-training (torchrun-ready)")
    p.add_argument("--config", type=Path, help="TrainConfig as YAML or JSON (default: TrainConfig())")
    p.add_argument("--store", type=Path, default=Path("precomputed") / "dataset", help="dataset store directory")
    p.add_argument("--out", type=Path, help="run directory (overrides the config's out_dir)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    p.add_argument("--stop-after-steps", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

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


if __name__ == "__main__":
    sys.exit(main())
