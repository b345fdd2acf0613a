"""Training throughput and peak memory of the DOS and density encoders, paper and cpu configs.

One training step = forward + backward + AdamW step on a batch (default 32) of random inputs of the
real shapes (DOS (B, 601), density (B, 32, 32, 32)); the loss is a stand-in (mean squared embedding),
since a contrastive partner would add the cost of another encoder.

Each (encoder, config) runs in its own subprocess so that peak memory is that encoder's alone: on CPU it
is the process's peak resident set size (resource.getrusage ru_maxrss; tracemalloc does not see torch's
C++ allocations), reported as the total and as the increase during training steps (over the RSS after
building the model, optimiser and batch); on CUDA it is torch.cuda.max_memory_allocated.

    python benchmarks/encoder_speed.py                 # all four, CPU, 2 threads, batch 32
    python benchmarks/encoder_speed.py --only dos:cpu density:cpu --steps 5
    python benchmarks/encoder_speed.py --device cuda --threads 0

The machine's 1-minute load average is printed with the table: on a shared machine the numbers scale
with how many cores other processes take.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALL = ["dos:paper", "dos:cpu", "density:paper", "density:cpu"]


def _build(encoder: str, config: str, batch: int, device: str):
    """(model, input batch) for one encoder and named config."""
    import torch

    if encoder == "dos":
        from mlcm_core.models.dos import DOSEncoder, DOSEncoderConfig

        model = DOSEncoder(getattr(DOSEncoderConfig, config)())
        x = torch.rand(batch, 601)
    elif encoder == "density":
        from mlcm_core.models.density import DensityEncoder, DensityEncoderConfig

        model = DensityEncoder(getattr(DensityEncoderConfig, config)())
        x = torch.rand(batch, 32, 32, 32)
    else:
        raise ValueError(f"unknown encoder {encoder!r}")
    return model.to(device).train(), x.to(device)


def run_one(encoder: str, config: str, batch: int, steps: int, max_seconds: float, threads: int,
            device: str) -> dict:
    """Time training steps of one encoder in this process; returns a JSON-able result."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, x = _build(encoder, config, batch, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cuda = device.startswith("cuda")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()

    rss_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    step()  # warm-up (allocator, oneDNN primitive cache, AdamW state)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times: list[float] = []
    t_start = time.perf_counter()
    while len(times) < steps and (not times or time.perf_counter() - t_start < max_seconds):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sec = statistics.median(times)
    return {
        "encoder": encoder,
        "config": config,
        "params": sum(p.numel() for p in model.parameters()),
        "batch": batch,
        "steps": len(times),
        "sec_per_step": sec,
        "samples_per_s": batch / sec,
        "peak_rss_mib": peak_kib / 1024,
        "train_rss_increase_mib": (peak_kib - rss_before_kib) / 1024,
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "threads": torch.get_num_threads(),
        "device": device,
    }


def format_table(rows: list[dict], load: float | None = None) -> str:
    """A Markdown table of the results."""
    lines = []
    if load is not None:
        lines.append(f"load average (1 min) at start: {load:.2f}, {os.cpu_count()} logical CPUs\n")
    mem_head = "CUDA peak (MiB)" if any(r["cuda_peak_mib"] is not None for r in rows) else \
        "peak RSS (MiB) | RSS increase in training (MiB)"
    lines.append(f"| encoder | config | params | batch | threads | s/step | samples/s | {mem_head} |")
    lines.append("|---|---|---:|---:|---:|---:|---:|" + ("---:|" if "CUDA" in mem_head else "---:|---:|"))
    for r in rows:
        mem = f"{r['cuda_peak_mib']:.0f}" if r["cuda_peak_mib"] is not None else \
            f"{r['peak_rss_mib']:.0f} | {r['train_rss_increase_mib']:.0f}"
        lines.append(f"| {r['encoder']} | {r['config']} | {r['params']:,} | {r['batch']} | {r['threads']} | "
                     f"{r['sec_per_step']:.3f} | {r['samples_per_s']:.1f} | {mem} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", default=ALL, help=f"encoder:config pairs (default: {' '.join(ALL)})")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step (median reported)")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="stop timing a config after this long")
    ap.add_argument("--threads", type=int, default=2, help="torch threads; 0 = torch's default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true", help="print the results as JSON lines too")
    ap.add_argument("--child", nargs=2, metavar=("ENCODER", "CONFIG"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        res = run_one(*args.child, args.batch, args.steps, args.max_seconds, args.threads, args.device)
        print(json.dumps(res))
        return 0

    load = os.getloadavg()[0]
    rows = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for item in args.only:
        encoder, config = item.split(":")
        cmd = [sys.executable, __file__, "--child", encoder, config, "--batch", str(args.batch),
               "--steps", str(args.steps), "--max-seconds", str(args.max_seconds),
               "--threads", str(args.threads), "--device", args.device]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{item} failed:\n{out.stderr}", file=sys.stderr)
            return 1
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"done {item}: {rows[-1]['samples_per_s']:.1f} samples/s", file=sys.stderr)
    print(format_table(rows, load))
    if args.json:
        for r in rows:
            print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
