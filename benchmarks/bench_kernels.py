#!/usr/bin/env python
"""Per-kernel benchmarks: the fused convolution, the residual add+ReLU and the stem's index-free
max-pool, beside what PyTorch runs instead, with the fraction of this device's peak measured in the
same run (matmul TFLOP/s for convolutions, device-to-device copy GB/s for add_relu and the pool).

    python benchmarks/bench_kernels.py --device cuda --dtype bfloat16 --json k.json --markdown k.md
    python benchmarks/bench_kernels.py --device cpu --only add_relu
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

COLUMNS = ["kernel", "shape", "provider", "median_ms", "tflops", "gbps", "fraction_of_peak", "speedup_vs_baseline", "max_rel_err",
           "max_abs_err", "back_to_back_ms", "host_ms", "graph_ms"]


def model_convs(model: str = "resnet50"):
    """Every distinct conv of a torchvision ResNet-family model at 224x224, with the epilogue the model
    gives it: the block's last conv (conv3 of a Bottleneck, conv2 of a BasicBlock) adds the shortcut,
    the projection shortcut has no ReLU.

    (label, C, OC, kernel, stride, padding, H_in, residual, relu, groups)
    """
    import torchvision

    m = getattr(torchvision.models, model)()
    last = {}  # block name -> the name of its last conv
    for name, mod in m.named_modules():
        if type(mod).__name__ in ("Bottleneck", "BasicBlock"):
            last[name] = f"{name}.conv3" if type(mod).__name__ == "Bottleneck" else f"{name}.conv2"
    closing = set(last.values())
    found = []
    for name, mod in m.named_modules():
        if isinstance(mod, torch.nn.Conv2d):
            def hook(mod, inputs, output, name=name):
                found.append((name, mod.in_channels, mod.out_channels, mod.kernel_size[0], mod.stride[0],
                              mod.padding[0], inputs[0].shape[-1], name in closing, not name.endswith("downsample.0"),
                              mod.groups))
            mod.register_forward_hook(hook)
    with torch.no_grad():
        m(torch.randn(1, 3, 224, 224))
    distinct, seen = [], set()
    for row in found:
        if row[1:] not in seen:
            seen.add(row[1:])
            distinct.append(row)
    return distinct



def conv_list(args):
    """The convs --only conv times: ``args.model``'s, or its grouped ones alone (``--grouped-only``)."""
    return [row for row in model_convs(args.model) if row[9] > 1 or not args.grouped_only]


def peak_tflops(device, dtype) -> float:
    n = 8192 if device == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = common.time_fn(lambda i: a @ b, device, 10, 3)["median_ms"]
    return 2 * n**3 / (t * 1e-3) / 1e12


def copy_gbps(device, dtype) -> float:
    nbytes = (1 << 30) if device == "cuda" else (256 << 20)
    src = torch.empty(nbytes // 2, device=device, dtype=torch.bfloat16).normal_()
    dst = torch.empty_like(src)
    t = common.time_fn(lambda i: dst.copy_(src), device, 10, 3)["median_ms"]
    return 2 * nbytes / (t * 1e-3) / 1e9


def bench_add_relu(args, rows, header, prog):
    import resnet_fast  # noqa: F401  (registers the op)

    dtype = getattr(torch, args.dtype)
    peak = copy_gbps(args.device, dtype)
    header["copy_gbps"] = peak
    b = args.batch
    for c, hw in [(256, 56), (512, 28), (1024, 14), (2048, 7)]:
        shape = (b, c, hw, hw)
        x = torch.randn(shape, device=args.device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        y = torch.randn_like(x)
        nbytes = 3 * x.numel() * x.element_size()  # read both, write one
        expected = (x.float() + y.float()).relu()
        got = torch.ops.resnet_fast.add_relu_(x.clone(), y)
        err = common.rel_err(got.float(), expected)
        # A copy of one such tensor: what a launch of this size can reach (the 1 GiB copy above sets
        # the target; at the smallest size a launch's fixed costs are a few % of its time).
        dst = torch.empty_like(x)
        t_copy = common.time_fn(lambda i: dst.copy_(y), args.device, args.iters, 3, args.budget)["median_ms"]
        copy_same_size = 2 * x.numel() * x.element_size() / (t_copy * 1e-3) / 1e9
        base = None
        for provider, fn in [
            ("torch add_+relu_", lambda i: x.add_(y).relu_()),
            ("resnet_fast add_relu_", lambda i: torch.ops.resnet_fast.add_relu_(x, y)),
        ]:
            t = common.time_fn(fn, args.device, args.iters, 3, args.budget)
            gbps = nbytes / (t["median_ms"] * 1e-3) / 1e9
            if provider.startswith("torch"):
                # add_ then relu_: 3 + 2 tensor passes; report the same useful bytes for comparison.
                base = t["median_ms"]
            rows.append({"kernel": "add_relu_", "shape": "x".join(map(str, shape)), "provider": provider,
                         "median_ms": t["median_ms"], "gbps": gbps, "fraction_of_peak": gbps / peak,
                         "speedup_vs_baseline": base / t["median_ms"], "max_rel_err": err if "resnet_fast" in provider else 0.0,
                         "copy_same_size_gbps": copy_same_size})
            common.write_json(args.json, header, rows)
        report(args, header, rows)
        prog.step(f"add_relu {shape}")


def bench_max_pool(args, rows, header, prog):
    """The stem's 3x3 stride-2 max-pool (ResNet-50: 64 x 112 x 112 in): PyTorch's (which writes int64
    indices on CUDA) against resnet_fast::max_pool2d (Triton where the convs run Triton, no indices;
    in the model only with RESNET_FAST_TRITON_POOL=1). GB/s counts the useful bytes: input + output."""
    import resnet_fast  # noqa: F401  (registers the op)

    dtype = getattr(torch, args.dtype)
    peak = header.get("copy_gbps") or copy_gbps(args.device, dtype)
    header["copy_gbps"] = peak
    shape = (args.batch, 64, 112, 112)
    x = torch.randn(shape, device=args.device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    ref = F.max_pool2d(x, 3, 2, 1)
    nbytes = (x.numel() + ref.numel()) * x.element_size()
    base = None
    for provider, fn in [
        ("torch max_pool2d", lambda i: F.max_pool2d(x, 3, 2, 1)),
        ("resnet_fast max_pool2d", lambda i: torch.ops.resnet_fast.max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], False)),
    ]:
        try:
            err = common.rel_err(fn(0).float(), ref.float())
            t = common.time_fn(fn, args.device, args.iters, 3, args.budget)
        except Exception as e:  # noqa: BLE001
            print(f"\nmax_pool2d {provider}: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        gbps = nbytes / (t["median_ms"] * 1e-3) / 1e9
        base = base or t["median_ms"]
        rows.append({"kernel": "max_pool2d 3x3 s2", "shape": "x".join(map(str, shape)), "provider": provider,
                     "median_ms": t["median_ms"], "gbps": gbps, "fraction_of_peak": gbps / peak,
                     "speedup_vs_baseline": base / t["median_ms"], "max_rel_err": err})
        common.write_json(args.json, header, rows)
    report(args, header, rows)
    prog.step("max_pool2d")


def bench_conv(args, convs, rows, header, prog):
    import resnet_fast
    from resnet_fast.fused import to_oc_last, weight_layout

    dtype = getattr(torch, args.dtype)
    peak = peak_tflops(args.device, dtype)
    header["matmul_tflops"] = peak
    cuda = args.device == "cuda"
    if cuda:
        from resnet_fast.kernels import decisions

        # The launcher's first-call decisions (TMA or not, wave splits) timed here, not read from an
        # earlier process's file: the rows report what the timing finds (and the file gets it).
        decisions.store.reading = False
    for label, c, oc, k, s, p, h, res, relu, g in convs:
        n = args.batch
        oh = (h + 2 * p - k) // s + 1
        x = torch.randn(n, c, h, h, device=args.device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w = (torch.randn(oc, c // g, k, k, device=args.device) / (c // g * k * k) ** 0.5).to(dtype)
        w_cl = w.contiguous(memory_format=torch.channels_last)
        w_oc = to_oc_last(w)
        bias = torch.randn(oc, device=args.device)
        bias_t = bias.to(dtype)
        r = torch.randn(n, oc, oh, oh, device=args.device, dtype=dtype).contiguous(memory_format=torch.channels_last) if res else None
        flops = 2 * n * oh * oh * oc * (c // g) * k * k
        # The layout the model's fold would give this weight on this device and dtype.
        weight_for_op = w_oc if weight_layout(x.device, dtype) == "oc_last" else w_cl

        # Inputs rotated so that no provider finds them in L2 (layer4's x, weight and y fit in 50 MB).
        count = common.rotation_count(x.numel() * x.element_size() * (2 if res else 1), args.device)
        xs = [x] + [torch.randn_like(x) for _ in range(count - 1)]
        rs = [r] + [torch.randn_like(r) for _ in range(count - 1)] if res else [None] * count

        def fused(i):
            return resnet_fast.ops.conv2d_bias_act(xs[i % count], weight_for_op, bias, rs[i % count], [s, s], [p, p],
                                                   [1, 1], g, relu)

        def unfused(i):
            y = F.conv2d(xs[i % count], w_cl, None, s, p, 1, g)
            y += bias_t.view(1, -1, 1, 1)
            if res:
                y += rs[i % count]
            return y.relu_() if relu else y

        providers = [("torch conv + separate bias/add/relu", unfused), ("resnet_fast fused", fused)]
        if cuda:
            if res:
                def cudnn(i):
                    return torch.cudnn_convolution_add_relu(xs[i % count], w_cl, rs[i % count], 1.0, bias_t, [s, s], [p, p],
                                                            [1, 1], g)
            elif relu:
                def cudnn(i):
                    return torch.cudnn_convolution_relu(xs[i % count], w_cl, bias_t, [s, s], [p, p], [1, 1], g)
            else:
                def cudnn(i):
                    return F.conv2d(xs[i % count], w_cl, bias_t, s, p, 1, g)
            providers.insert(1, ("cudnn fused (conv_relu / conv_add_relu)", cudnn))
            from resnet_fast.kernels import conv as triton_conv
            from resnet_fast.kernels import conv1x1_tma

            def launcher_row(name, **forced):
                """A diagnostic row: the launcher with one of its automatic choices forced."""
                def fn(i):
                    return triton_conv.conv2d_bias_act(xs[i % count], weight_for_op, bias, rs[i % count], [s, s], [p, p],
                                                       [1, 1], g, relu, **forced)
                providers.append((name, fn))

            if k == 1 and s == 1 and g == 1 and dtype != torch.float32 and conv1x1_tma.available(x):
                # Each 1x1 kernel forced, beside the automatic choice (which kernel wins the tuning
                # timing can differ from run to run).
                launcher_row("resnet_fast launcher, general kernel forced", tma=False)
                launcher_row("resnet_fast launcher, TMA kernel forced", tma=True)
            if triton_conv.wave_split(n, oh * oh, oc // g, c // g * k * k, g, triton_conv._sm_count(x.device)):
                # A shape the launcher may run as two launches (kernels/conv.py wave_split): one launch
                # beside it, whichever the timing on the first call kept.
                launcher_row("resnet_fast launcher, one launch forced", batch_split=0)
            if triton_conv.s2d_fits(c // g, oc // g, g, k, k, [s, s], [1, 1]) and n * oh * oh >= triton_conv.S2D_MIN_M:
                # The stem: both paths forced (the launcher runs the 4-channel one unless RESNET_FAST_S2D=1).
                launcher_row("resnet_fast launcher, 4-channel stem forced", s2d=False)
                launcher_row("resnet_fast launcher, space-to-depth stem forced", s2d=True)
        ref = unfused(0).float()
        shape_name = f"{label} {c}->{oc} k{k} s{s} {h}x{h} n{n}" + (f" g{g}" if g > 1 else "") + (" +res" if res else "")
        # First calls (tuning, errors) for every provider, then the timing rounds, interleaved.
        ready, first = {}, {}
        for provider, fn in providers:
            tuning = {}
            try:
                if provider == "resnet_fast fused" and cuda:
                    triton_conv._conv2d_bias_act_kernel.configs_timings = None
                    conv1x1_tma._conv1x1_tma_kernel.configs_timings = None
                    tma_before = dict(triton_conv._tma_choice)
                    logged, splits_before = len(triton_conv.tuning_log), dict(triton_conv._split_report)
                    stems_before = dict(triton_conv._s2d_report)
                    out0 = fn(0).float()  # the first call tunes (or reads the disk cache)
                    _, timings = triton_conv.tuning_state()
                    runs = triton_conv.tuning_log[logged:]
                    whole = [r for r in runs if not r["part"] and r["config_ms"]]
                    if whole:  # a wave split's two launches tune after the one launch: report the latter
                        timings = whole[0]["config_ms"]
                    # Every config the autotuner timed for this shape: what to keep, what to add.
                    tuning = {"triton_config_ms": timings, "triton_best": min(timings, key=timings.get) if timings else None}
                    # 1x1 convs: whether the TMA kernel was timed against the general one, and won.
                    tma_new = [v for k, v in triton_conv._tma_choice.items() if k not in tma_before]
                    tuning["tma_kernel"] = (("won" if any(tma_new) else "failed" if triton_conv._tma_failure else "not clearly faster")
                                            if tma_new else None)
                    if tma_new:  # its own configs as its tuner timed them ("p1", "p2": persistent)
                        tuning["tma_config_ms"] = triton_conv._first_timings(
                            getattr(conv1x1_tma._conv1x1_tma_kernel, "configs_timings", None))
                        best = conv1x1_tma.best_config()  # its tuner's pick, kept or not
                        tuning["tma_best"] = triton_conv.config_name(best) if best else None
                    # Where the launcher timed one launch against two (wave_split): what it found, and
                    # each launch's tuning (batch, M, config chosen, every config's time).
                    stem = [v for key, v in triton_conv._s2d_report.items() if key not in stems_before]
                    tuning["stem"] = stem[0] if stem else None  # the 4-channel path against space-to-depth
                    split = [v for key, v in triton_conv._split_report.items() if key not in splits_before]
                    tuning["wave_split"] = split[0] if split else None
                    if split:
                        tuning["tuning_runs"] = runs
                else:
                    out0 = fn(0).float()
                err, abs_err = common.rel_err(out0, ref), common.max_abs_err(out0, ref)
                del out0
            except Exception as e:  # noqa: BLE001
                first[provider] = e
                continue
            ready[provider] = fn
            first[provider] = (err, abs_err, tuning)
        timed = common.time_rounds(ready, args.device, args.iters, 3, args.budget, args.rounds)
        base = None
        for provider, fn in providers:
            t = timed.get(provider, first[provider])
            if isinstance(t, Exception):
                print(f"\n{label} {provider}: {type(t).__name__}: {t}", file=sys.stderr)
                # A row that says so: targets.py tells a kernel that failed from a step cut short.
                rows.append({"kernel": "conv2d_bias_act", "shape": shape_name, "provider": provider,
                             "error": f"{type(t).__name__}: {t}"[:300]})
                common.write_json(args.json, header, rows)
                continue
            err, abs_err, tuning = first[provider]
            graph = queued = host = None
            if cuda:
                # Diagnostics beside the do_bench median: calls queued back to back (what sessions 1-7
                # reported), the host's time per call, and the device time alone from a CUDA graph.
                queued = common.back_to_back_ms(fn, args.iters)
                host = common.host_ms(fn, args.iters, args.device)
                try:  # a provider that cannot be captured keeps its other rows
                    graph = common.graph_ms(fn, max(count, 10))
                except Exception as e:  # noqa: BLE001
                    print(f"\n{label} {provider}: graph timing failed ({type(e).__name__}: {e})", file=sys.stderr)
                    torch.cuda.synchronize()
            base = base or t["median_ms"]
            tflops = flops / (t["median_ms"] * 1e-3) / 1e12
            rows.append({"kernel": "conv2d_bias_act", "shape": shape_name,
                         "provider": provider, "median_ms": t["median_ms"], "tflops": tflops, "fraction_of_peak": tflops / peak,
                         "speedup_vs_baseline": base / t["median_ms"], "max_rel_err": err, "max_abs_err": abs_err,
                         "p20_ms": t["p20_ms"], "p80_ms": t["p80_ms"], "round_ms": t["round_ms"], "back_to_back_ms": queued,
                         "host_ms": host, "graph_ms": graph, **tuning})
            common.write_json(args.json, header, rows)
        report(args, header, rows)
        prog.step(label)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None)
    p.add_argument("--only", default="add_relu,max_pool,conv", help="comma list: add_relu, max_pool, conv")
    p.add_argument("--batch", type=int, default=None, help="default: 256 on CUDA, 4 on the CPU")
    p.add_argument("--model", default="resnet50", help="whose distinct convs --only conv times: any torchvision "
                   "ResNet-family factory (resnext50_32x4d: the grouped 3x3s)")
    p.add_argument("--grouped-only", action="store_true", help="only the model's grouped convs (ResNeXt)")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--budget", type=float, default=5.0, help="seconds of timing per provider, shape and round, at most")
    p.add_argument("--rounds", type=int, default=None,
                   help="conv timing rounds, providers interleaved (common.time_rounds); default 3 on CUDA, 1 on the CPU")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json")
    p.add_argument("--markdown")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    args.batch = args.batch or (256 if args.device == "cuda" else 4)
    if args.rounds is None:
        args.rounds = 3 if args.device == "cuda" else 1
    if args.rounds < 1:
        p.error(f"--rounds: expected a positive count, got {args.rounds}")
    if args.threads:
        torch.set_num_threads(args.threads)
    family = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
              "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")
    if args.model not in family:
        p.error(f"--model: expected one of {', '.join(family)}, got {args.model!r}")
    only = set(args.only.split(","))
    unknown = only - {"add_relu", "max_pool", "conv"}
    if unknown:
        p.error(f"--only: expected some of add_relu, max_pool, conv, got {', '.join(sorted(unknown))}")
    header = common.environment(args.device)
    header.update({"device": args.device, "dtype": args.dtype, "batch": args.batch, "benchmark": "bench_kernels",
                   "model": args.model})
    convs = conv_list(args) if "conv" in only else []  # (each call builds the model and runs a forward)
    # What a complete run has, so that targets.py can tell a step cut short from a complete one.
    header["planned"] = {"add_relu": 4 if "add_relu" in only else 0,
                         "conv_shapes": len(convs)}
    rows = []
    total = (4 if "add_relu" in only else 0) + ("max_pool" in only) + len(convs)
    prog = common.Progress(total, "bench_kernels")
    if "add_relu" in only:
        bench_add_relu(args, rows, header, prog)
    if "max_pool" in only:
        bench_max_pool(args, rows, header, prog)
    if "conv" in only:
        bench_conv(args, convs, rows, header, prog)
    print("\n" + report(args, header, rows))
    return 0


def report(args, header, rows) -> str:
    title = f"bench_kernels: {header['device_name']}, torch {header['torch']}, triton {header['triton']}, {args.dtype}, batch {args.batch}, {header['date']}"
    peaks = ", ".join(f"{k} {header[k]:.1f}" for k in ("copy_gbps", "matmul_tflops") if k in header)
    return common.write_markdown(args.markdown, title, header, rows, COLUMNS, extra=f"Measured peaks: {peaks}\n\n")


if __name__ == "__main__":
    raise SystemExit(main())
