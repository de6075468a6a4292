#!/usr/bin/env python
"""One eval forward inside a CUDA profiler range, for Nsight Compute (`benchmarks/device_check.sh`).

The warm-up forwards (autotuning, folds, compiles) run outside the range, so with
``ncu --profile-from-start off`` only the kernels of one tuned forward are profiled: per conv its
duration, DRAM throughput against the card's peak, SM throughput, registers and occupancy, which
the event timings of bench_kernels.py cannot say.

    ncu --clock-control none --profile-from-start off --section SpeedOfLight --csv \\
        python benchmarks/ncu_forward.py --batch 256 --dtype bfloat16
    python benchmarks/ncu_forward.py --summarize ncu.csv --markdown ncu.md   # the CSV as a table

The summary (``--summarize``, from ncu's ``--csv --page details --print-units base`` output) has one
row per kernel in launch order: duration, DRAM and SM throughput as % of the card's peak, registers
per thread, achieved occupancy, and the forward's total.
"""
from __future__ import annotations

import argparse
import collections
import csv
import io
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_model import trained_like  # noqa: E402

import resnet_fast  # noqa: E402

# ncu's metric names (the SpeedOfLight, LaunchStats and Occupancy sections) -> summary columns.
NCU_METRICS = {
    "Duration": "us",
    "DRAM Throughput": "dram_pct",
    "Compute (SM) Throughput": "sm_pct",
    "Registers Per Thread": "regs",
    "Achieved Occupancy": "occupancy_pct",
}


def _number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:  # "n/a", "N/A", empty
        return float("nan")


def summarize(csv_path: str):
    """ncu's details CSV -> one dict per kernel launch, in launch order (durations in us)."""
    kernels = collections.OrderedDict()
    with open(csv_path, newline="") as f:
        # ncu's own messages (==PROF==, ==WARNING==, ==ERROR==) share the file with the CSV; a
        # quoted CSV field (a rule's description) may span lines, so the rest is parsed as one text.
        text = "".join(line for line in f if not line.startswith("=="))
    for row in csv.DictReader(io.StringIO(text)):
        metric = row.get("Metric Name")
        if metric not in NCU_METRICS:
            continue
        k = kernels.setdefault(row["ID"], {"kernel": row["Kernel Name"], "grid": row.get("Grid Size", ""),
                                           "block": row.get("Block Size", "")})
        value = _number(row["Metric Value"])
        if metric == "Duration":
            unit = row.get("Metric Unit", "ns")
            value *= {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}.get(unit, 1e-3)
        k[NCU_METRICS[metric]] = value
    return list(kernels.values())


def summary_markdown(rows) -> str:
    total = sum(r.get("us", 0.0) for r in rows)
    out = [f"{len(rows)} kernels, {total:.1f} us of kernel time in all (each kernel replayed with flushed caches:"
           " not comparable with the benchmarks' warm timings).", "",
           "| # | kernel | grid | us | share | DRAM % of peak | SM % of peak | regs | occupancy % |",
           "|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows):
        name = r["kernel"] if len(r["kernel"]) <= 60 else r["kernel"][:57] + "..."
        us = r.get("us", float("nan"))
        out.append(f"| {i} | `{name}` | {r['grid']} | {us:.1f} | {us / total if total else 0:.1%} | "
                   f"{r.get('dram_pct', float('nan')):.0f} | {r.get('sm_pct', float('nan')):.0f} | "
                   f"{r.get('regs', float('nan')):.0f} | {r.get('occupancy_pct', float('nan')):.0f} |")
    return "\n".join(out) + "\n"


DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--torchvision", action="store_true",
                   help="also profile one torchvision channels_last forward (cuDNN convs, BN, ReLU, add), after ours")
    p.add_argument("--summarize", metavar="CSV", help="no forward: turn ncu's CSV into a markdown table")
    p.add_argument("--markdown", metavar="PATH", help="with --summarize: where the table goes (default: stdout)")
    args = p.parse_args()
    if args.summarize:
        rows = summarize(args.summarize)
        text = summary_markdown(rows)
        if not rows:  # say why: ncu's own messages (a counter-permission error, a failed launch)
            with open(args.summarize) as f:
                text += "".join([line for line in f if line.startswith(("==ERROR==", "==WARNING=="))][:20])
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(text)
        print(text)
        return 0
    if not torch.cuda.is_available():
        print("ncu_forward: needs a CUDA device", file=sys.stderr)
        return 2
    import torchvision

    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    tv = trained_like(getattr(torchvision.models, args.model)()).eval()
    fast = resnet_fast.from_torchvision(tv).to(device="cuda", dtype=dtype).eval()
    x = torch.randn(args.batch, 3, args.size, args.size, device="cuda", dtype=dtype)
    tv_cl = tv.to(device="cuda", dtype=dtype, memory_format=torch.channels_last) if args.torchvision else None
    cudart = torch.cuda.cudart()
    with torch.inference_mode():
        for _ in range(args.warmup):
            fast(x)
            if tv_cl is not None:
                tv_cl(x.contiguous(memory_format=torch.channels_last))
        torch.cuda.synchronize()
        cudart.cudaProfilerStart()
        fast(x)
        if tv_cl is not None:
            torch.cuda.synchronize()
            tv_cl(x.contiguous(memory_format=torch.channels_last))
        torch.cuda.synchronize()
        cudart.cudaProfilerStop()
    print(f"ncu_forward: {args.model} batch {args.batch} {args.dtype}, one forward profiled"
          + (" (then torchvision channels_last)" if tv_cl is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
