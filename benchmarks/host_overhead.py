#!/usr/bin/env python
"""Host (CPU) time per eager forward and per conv call, with and without direct launches.

At small batch an eager forward is launch-bound: the GPU waits for Python. This times, in one
process, torchvision (channels_last) and resnet_fast with direct launches on and off
(``kernels/launch.py``; toggled at run time, same kernels, same tuning), two ways:

* ``queued_ms``: N forwards queued, then one sync, divided by N: the host's pace (the GPU keeps up).
* ``sync_ms``: one forward waited for alone (median): what a caller that needs the result sees.

Then the host cost of one conv call three ways (the op through the dispatcher, the model's direct
call of the op body, the Triton launcher alone) at a batch-1 shape, and a cProfile of the eager
forward with direct launches on: where the remaining host time goes.

    python benchmarks/host_overhead.py --device cuda --dtype bfloat16 --markdown out.md --json out.json
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from bench_model import trained_like  # noqa: E402


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def queued_ms(fn, device, iters):
    fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters * 1e3


def sync_ms(fn, device, iters):
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--batch-sizes", default="1,16")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--json")
    p.add_argument("--markdown")
    args = p.parse_args(argv)

    import torchvision

    import resnet_fast
    from resnet_fast import ops
    from resnet_fast.kernels import conv as triton_conv
    from resnet_fast.kernels import launch as direct

    device, dtype = args.device, getattr(torch, args.dtype)
    header = common.environment(device)
    header.update(dtype=args.dtype, direct_launch_available=direct.ENABLED)
    rows = []
    tv = trained_like(torchvision.models.resnet50()).eval().to(device=device, dtype=dtype)
    tv = tv.to(memory_format=torch.channels_last)
    fast = resnet_fast.from_torchvision(trained_like(torchvision.models.resnet50())).eval().to(device=device, dtype=dtype)
    enabled = direct.ENABLED
    profile_text = ""
    with torch.inference_mode():
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            x = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)
            x_cl = x.contiguous(memory_format=torch.channels_last)
            for _ in range(3):
                fast(x)  # tuning, folds, plans
            providers = [("torchvision_cl", lambda: tv(x_cl), None)]
            if enabled:
                providers.append(("resnet_fast direct launches", lambda: fast(x), True))
            providers.append(("resnet_fast through JITFunction.run", lambda: fast(x), False))
            for name, fn, on in providers:
                if on is not None:
                    direct.ENABLED = on
                before = direct.launch_count
                alone = max(10, args.iters // 2)
                q = queued_ms(fn, device, args.iters)
                s = sync_ms(fn, device, alone)
                direct.ENABLED = enabled
                forwards = args.iters + 1 + alone  # queued_ms runs one more first
                rows.append({"what": "forward", "batch_size": batch, "provider": name, "queued_ms": round(q, 4),
                             "sync_ms": round(s, 4),
                             "direct_launches_per_forward": (direct.launch_count - before) / forwards})
                common.write_json(args.json, header, rows)
                print(rows[-1], flush=True)
        # One conv at batch 1 (layer4.1.conv1: 2048 -> 512, 7x7): host cost per call, queued.
        x = torch.randn(1, 2048, 7, 7, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w = resnet_fast.fused.to_oc_last(torch.randn(512, 2048, 1, 1, device=device, dtype=dtype) / 45)
        b = torch.randn(512, device=device)
        calls = [
            ("torch.ops.resnet_fast.conv2d_bias_act", lambda: torch.ops.resnet_fast.conv2d_bias_act(x, w, b, None, [1, 1], [0, 0], [1, 1], 1, True)),
            ("op body (the model's direct call)", lambda: ops._conv2d_bias_act_impl(x, w, b, None, [1, 1], [0, 0], [1, 1], 1, True)),
            ("Triton launcher alone", lambda: triton_conv.conv2d_bias_act(x, w, b, None, [1, 1], [0, 0], [1, 1], 1, True)),
            ("torch conv (cuDNN) + bias + relu", lambda: torch.nn.functional.conv2d(x, w, b.to(dtype)).relu_()),
        ]
        if device != "cuda":  # the launcher runs CUDA tensors (CPU ones only under the interpreter)
            calls = [c for c in calls if c[0] != "Triton launcher alone"]
        for on in ([True, False] if enabled else [False]):
            direct.ENABLED = on
            for name, fn in calls:
                for _ in range(3):
                    fn()
                q = queued_ms(fn, device, args.iters * 4)
                rows.append({"what": "conv 2048->512 1x1 7x7 b1", "batch_size": 1, "provider": f"{name}" + (
                    "" if "torch conv" in name else (" [direct]" if on else " [JITFunction.run]")), "queued_ms": round(q, 4)})
                print(rows[-1], flush=True)
        direct.ENABLED = enabled
        common.write_json(args.json, header, rows)
        x = torch.randn(1, 3, 224, 224, device=device, dtype=dtype)
        fast(x)
        _sync(device)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(20):
            fast(x)
        _sync(device)
        prof.disable()
        stream = io.StringIO()
        pstats.Stats(prof, stream=stream).sort_stats("tottime").print_stats(25)
        profile_text = stream.getvalue()
    common.write_json(args.json, header, rows)
    text = common.markdown_table(rows, ["what", "batch_size", "provider", "queued_ms", "sync_ms", "direct_launches_per_forward"])
    text = (f"## host_overhead: {header.get('device_name', device)}, {args.dtype}, eager resnet50 (20 forwards profiled at batch 1)\n\n"
            + text + "\n\n```\n" + "\n".join(profile_text.splitlines()[:45]) + "\n```\n")
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
