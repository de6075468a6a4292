#!/usr/bin/env python
"""Where one resnet_fast forward spends its time, kernel by kernel (torch.profiler).

The per-conv benchmark times each conv shape alone at one batch size; this looks at the whole eval
forward as the model runs it: per kernel name, launches and device time per forward, its share of
the forward's device time, and the forward's wall time beside the sum of its kernels (a wall time
far above the kernel sum means the forward is launch-bound: the CUDA graph's case). On the CPU the
rows are operators (CPU time) instead of kernels.

    python benchmarks/profile_model.py --device cuda --batch-sizes 1,256 --dtype bfloat16 --markdown out.md
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from bench_model import trained_like  # noqa: E402

COLUMNS = ["batch_size", "name", "calls_per_forward", "us_per_forward", "share"]


def profile_forward(model, x, device: str, iters: int):
    """``(rows, wall_us, busy_us, sequence)`` for ``iters`` profiled forwards after a warm-up;
    ``sequence`` is the last forward's kernels (operators on the CPU) in launch order."""
    from torch.profiler import ProfilerActivity, profile

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.inference_mode():
        for _ in range(3):  # tuning, folds, compiles: outside the profile
            model(x)
        sync()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        with profile(activities=activities) as prof:
            start = time.perf_counter()
            for _ in range(iters):
                model(x)
            sync()
            wall_us = (time.perf_counter() - start) / iters * 1e6
    totals = collections.Counter()
    calls = collections.Counter()
    timeline = []
    for event in prof.events():
        if device == "cuda":
            if event.device_type != torch.autograd.DeviceType.CUDA:
                continue
            duration = event.device_time_total if hasattr(event, "device_time_total") else event.cuda_time_total
        else:
            # Top-level operators only: nested ones would count their time twice.
            if event.cpu_parent is not None:
                continue
            duration = event.cpu_time_total
        totals[event.name] += duration
        calls[event.name] += 1
        timeline.append((event.time_range.start, event.name, duration))
    per_forward = len(timeline) // iters
    sequence = [{"index": i, "name": name[:90], "us": us}
                for i, (_, name, us) in enumerate(sorted(timeline)[len(timeline) - per_forward:])]
    busy_us = sum(totals.values()) / iters
    rows = [{"name": name[:90], "calls_per_forward": calls[name] / iters, "us_per_forward": total / iters,
             "share": total / iters / busy_us if busy_us else None}
            for name, total in totals.most_common()]
    return rows, wall_us, busy_us, sequence


def graph_replay_ab(model, x, replays: int = 200) -> dict:
    """CUDA graph replay time (us, GPU only: replays back to back between two events, best of 5
    rounds) with split-K shares added inside the conv kernel (SERIAL_SPLIT, the default) and with the
    separate reduce kernels (RESNET_FAST_SPLIT_K_REDUCE=kernel), in this process; also how many
    kernels one forward launches each way."""
    import resnet_fast
    from resnet_fast.kernels import conv as triton_conv

    out = {}
    default = triton_conv.SERIAL_SPLIT_K
    try:
        for label, serial in (("serial", True), ("reduce_kernel", False)):
            triton_conv.SERIAL_SPLIT_K = serial
            run = resnet_fast.cuda_graph(model, x)  # warm-up (tuning the new variant) before capture
            for _ in range(10):
                run.graph.replay()
            torch.cuda.synchronize()
            best = float("inf")
            for _ in range(5):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(replays // 5):
                    run.graph.replay()
                end.record()
                end.synchronize()
                best = min(best, start.elapsed_time(end) * 1e3 / (replays // 5))
            _, _, _, sequence = profile_forward(model, x, "cuda", 1)
            out[label] = {"replay_us": best, "kernels_per_forward": len(sequence)}
            del run
    finally:
        triton_conv.SERIAL_SPLIT_K = default
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch-sizes", default="1,256")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                   help="default: bfloat16 on CUDA, float32 on the CPU")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--top", type=int, default=25, help="rows per batch size in the markdown table")
    p.add_argument("--sequence-up-to", type=int, default=16,
                   help="list one forward's kernels in launch order for batch sizes up to this")
    p.add_argument("--graph-ab-up-to", type=int, default=1,
                   help="CUDA: for batch sizes up to this, time the CUDA graph replay with split-K shares "
                        "added in the conv kernel and with separate reduce kernels (0: never)")
    p.add_argument("--json")
    p.add_argument("--markdown")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    if args.iters < 1:
        p.error(f"--iters: expected at least 1, got {args.iters}")
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device == "cuda" else "float32"))

    import resnet_fast

    header = common.environment(args.device)
    header.update({"device": args.device, "dtype": str(dtype).replace("torch.", ""), "benchmark": "profile_model",
                   "model": args.model, "forwards": {}})
    model = resnet_fast.__dict__[args.model]()
    model = trained_like(model).eval().to(device=args.device, dtype=dtype)
    rows, table_rows, notes, sequences = [], [], [], ""
    heading = (f"profile_model: {args.model} eval, {header['device_name']}, {header['dtype']}, torch "
               f"{header['torch']}, triton {header['triton']}, {header['date']}")

    def save() -> str:
        """JSON and markdown as they stand: after every batch size and every A/B, so that a step cut
        short by its time limit keeps what it measured."""
        common.write_json(args.json, header, rows)
        text = common.write_markdown(args.markdown, heading, header, table_rows, COLUMNS, extra="\n".join(notes) + "\n\n")
        if args.markdown and sequences:
            with open(args.markdown, "a") as f:
                f.write(sequences)
        return text + sequences

    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        x = torch.randn(batch, 3, args.size, args.size, device=args.device, dtype=dtype)
        batch_rows, wall_us, busy_us, sequence = profile_forward(model, x, args.device, args.iters)
        for r in batch_rows:
            r["batch_size"] = batch
        rows += batch_rows
        table_rows += batch_rows[:args.top]
        header["forwards"][str(batch)] = {"wall_us": wall_us, "busy_us": busy_us, "sequence": sequence}
        if batch <= args.sequence_up_to:
            sequences += (f"\n### batch {batch}: one forward in launch order\n\n"
                          + common.markdown_table(sequence, ["index", "name", "us"]) + "\n")
        what = "kernel time" if args.device == "cuda" else "top-level operator time"
        notes.append(f"- batch {batch}: wall {wall_us:.0f} us per forward (profiled), {what} {busy_us:.0f} us")
        save()  # before the A/B, which compiles a variant
        if args.device == "cuda" and batch <= args.graph_ab_up_to:
            try:
                ab = graph_replay_ab(model, x)
            except Exception as e:  # noqa: BLE001 - the A/B is extra: the profile above stands without it
                ab = {"error": f"{type(e).__name__}: {e}"}
                notes.append(f"- batch {batch}, CUDA graph replay A/B failed: {ab['error']}")
            else:
                notes.append(f"- batch {batch}, CUDA graph replay: {ab['serial']['replay_us']:.1f} us with split-K "
                             f"shares added in the conv ({ab['serial']['kernels_per_forward']} kernels), "
                             f"{ab['reduce_kernel']['replay_us']:.1f} us with reduce kernels "
                             f"({ab['reduce_kernel']['kernels_per_forward']} kernels)")
            header["forwards"][str(batch)]["graph_replay"] = ab
            save()
    print(save())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
