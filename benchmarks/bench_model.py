#!/usr/bin/env python
"""Whole-model eval throughput: resnet_fast beside what a user would pick instead, in one process,
on the same weights and inputs.

Providers: torchvision (eager, NCHW), torchvision_cl (eager, channels_last), torch_compile
(torchvision channels_last under torch.compile with freezing; mode max-autotune on CUDA; only with
--compile, compile time reported separately), resnet_fast, resnet_fast_graph (CUDA graph, CUDA only),
resnet_fast_torch_backend (CUDA only: the folded model on cuDNN instead of Triton).

    python benchmarks/bench_model.py --device cpu --models resnet50 --batch-sizes 16 --compile
    python benchmarks/bench_model.py --device cuda --batch-sizes 1,16,256 --dtype bfloat16 --compile \\
        --json out.json --markdown out.md --plot out.png
"""
from __future__ import annotations

import argparse
import copy
import datetime
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

COLUMNS = ["provider", "model", "batch_size", "dtype", "median_ms", "p20_ms", "p80_ms", "images_per_s",
           "speedup_vs_torchvision", "max_rel_err_vs_torchvision", "compile_s", "sync_ms"]
# CUDA, batch sizes up to this: also the latency of one call waited for alone (sync_ms).
SYNC_LATENCY_UP_TO = 16


def trained_like(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return model


def build_providers(name, device, dtype, want_compile, compile_mode, example):
    """``{provider: (callable, takes channels_last input)}`` in timing order; each entry's callable is
    built only when it is reached (``_Lazy``): a step cut short by its time limit keeps the rows of
    every provider timed before it. torch.compile (only with ``want_compile``) comes last; ``run``
    times it in a pass of its own. Compile times land in the returned ``compile_s`` dict as they are
    measured."""
    import torchvision

    import resnet_fast

    torch.manual_seed(0)
    tv = trained_like(getattr(torchvision.models, name)()).eval()
    fast = resnet_fast.from_torchvision(tv).to(device=device, dtype=dtype)
    tv = tv.to(device=device, dtype=dtype)
    tv_cl = copy.deepcopy(tv).to(memory_format=torch.channels_last)
    providers = {
        "torchvision": (tv, False),
        "torchvision_cl": (tv_cl, True),
        "resnet_fast": (fast, False),
    }
    compile_s = {}
    if device == "cuda":
        def cudnn_backend(x):
            # The same folded model with cuDNN convolutions instead of the Triton kernels: tells
            # whether a shape is better served by cuDNN.
            with resnet_fast.use_backend("torch"):
                return fast(x)

        providers["resnet_fast_torch_backend"] = (cudnn_backend, False)
        providers["resnet_fast_graph"] = (_Lazy(lambda: resnet_fast.cuda_graph(fast, example)), False)
    if want_compile:
        def build_compiled():
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
            mode = compile_mode or ("max-autotune" if device == "cuda" else None)
            compiled = torch.compile(copy.deepcopy(tv_cl), mode=mode)
            start = time.perf_counter()
            with torch.inference_mode():
                compiled(example.contiguous(memory_format=torch.channels_last))
            if device == "cuda":
                torch.cuda.synchronize()
            compile_s["torch_compile"] = time.perf_counter() - start
            return compiled

        providers["torch_compile"] = (_Lazy(build_compiled), True)
    return providers, compile_s


class _Lazy:
    """A provider whose construction (a CUDA graph capture, a torch.compile run) waits until its turn."""

    def __init__(self, build):
        self._build = build
        self._fn = None

    def __call__(self, x):
        if self._fn is None:
            self._fn = self._build()
        return self._fn(x)


def run(args) -> int:
    device = args.device
    dtype = getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = args.models.split(",")
    batches = [int(b) for b in args.batch_sizes.split(",")]
    iters, warmup = (5, 2) if args.quick else (args.iters, args.warmup)
    header = common.environment(device)
    header.update({"device": device, "dtype": args.dtype, "benchmark": "bench_model"})
    rows = []
    bases = {}  # (model, batch) -> torchvision's timing: the baseline of both passes
    # torch.compile in a pass of its own, after every other provider of every model and batch size: what
    # it leaves running in the process (inductor's compile workers, its threads) slowed whatever was
    # timed after it (H100, session 12: the b1 CUDA graph 0.48 -> 1.01 ms, torch.compile's own b1
    # 1.73 -> 2.99 ms, when a torch.compile came before them).
    passes = ["eager", "compile"] if args.compile else ["eager"]
    prog = common.Progress(len(models) * len(batches) * len(passes), "bench_model")
    for which in passes:
        for name in models:
            for batch in batches:
                time_batch(args, which, name, batch, dtype, iters, warmup, header, rows, bases)
                prog.step(f"{name} batch {batch}{' torch.compile' if which == 'compile' else ''}")

    if device == "cuda":
        try:  # which Triton config each conv shape got: the next tuning round starts from these
            from resnet_fast.kernels import conv as triton_conv

            header["triton_autotune"] = triton_conv.tuning_state()[0]
            common.write_json(args.json, header, rows)
        except Exception as e:  # noqa: BLE001
            print(f"triton tuning state unavailable: {e}", file=sys.stderr)
    print("\n" + common.write_markdown(args.markdown, heading(header, args), header, rows, COLUMNS))
    if args.plot:
        plot(rows, args.plot, heading(header, args))
    return 0



# Rows in this order whatever order they were timed in: per model and batch size, as providers appear here.
PROVIDER_ORDER = ["torchvision", "torchvision_cl", "resnet_fast", "resnet_fast_torch_backend", "resnet_fast_graph",
                  "torch_compile"]


def time_batch(args, which, name, batch, dtype, iters, warmup, header, rows, bases) -> None:
    """Time one model at one batch size: pass ``which`` "eager" times every provider but torch.compile,
    "compile" torch.compile alone (its error still against torchvision's output, its speedup against
    the eager pass's torchvision timing). Rows are appended, and the JSON and markdown rewritten after
    each one: a run stopped by a time limit keeps what it measured."""
    device = args.device
    models, batches = args.models.split(","), [int(b) for b in args.batch_sizes.split(",")]
    shape = (batch, 3, args.size, args.size)
    bytes_per = batch * 3 * args.size * args.size * torch.finfo(dtype).bits // 8
    torch.manual_seed(batch)  # the same inputs in both passes
    pool = [torch.randn(shape, device=device, dtype=dtype) for _ in range(common.rotation_count(bytes_per, device))]
    pool_cl = [x.contiguous(memory_format=torch.channels_last) for x in pool]
    try:
        providers, compile_s = build_providers(name, device, dtype, which == "compile", args.compile_mode, pool[0])
    except Exception as e:  # noqa: BLE001 - one failed provider must not lose the whole run
        print(f"\n{name} batch {batch}: could not build providers: {e}", file=sys.stderr)
        return
    for skipped in args.skip_providers:
        providers.pop(skipped, None)
    wanted = [p for p in providers if (p == "torch_compile") == (which == "compile")]
    with torch.inference_mode():
        reference = providers["torchvision"][0](pool[0]).float()
        for pname in wanted:
            model, cl = providers[pname]
            inputs = pool_cl if cl else pool
            try:
                out = model(inputs[0])
                err = common.rel_err(out.float(), reference)
                timing = common.time_fn(lambda i: model(inputs[i % len(inputs)]), device, iters, warmup, args.budget)
                sync_ms = None
                if device == "cuda" and batch <= SYNC_LATENCY_UP_TO:
                    sync_ms = common.sync_latency_ms(lambda i: model(inputs[i % len(inputs)]), iters)
            except Exception as e:  # noqa: BLE001
                print(f"\n{pname} {name} batch {batch} failed: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            if pname == "torchvision":
                bases[(name, batch)] = timing
            base = bases.get((name, batch))
            rows.append({
                "provider": pname, "model": name, "batch_size": batch, "dtype": args.dtype, "device": device,
                "median_ms": timing["median_ms"], "p20_ms": timing["p20_ms"], "p80_ms": timing["p80_ms"],
                "images_per_s": batch / timing["median_ms"] * 1e3,
                "speedup_vs_torchvision": base["median_ms"] / timing["median_ms"] if base else None,
                "max_rel_err_vs_torchvision": err,
                "compile_s": compile_s.get(pname),
                "sync_ms": sync_ms,
                "timed_order": len(rows),
            })
            rows.sort(key=lambda r: (models.index(r["model"]), batches.index(r["batch_size"]),
                                     PROVIDER_ORDER.index(r["provider"])))
            common.write_json(args.json, header, rows)
            common.write_markdown(args.markdown, heading(header, args), header, rows, COLUMNS)
    del providers
    if device == "cuda":
        torch.cuda.empty_cache()

def heading(header, args) -> str:
    return (f"bench_model: {header['device_name']}, torch {header['torch']}, triton {header['triton']}, "
            f"{args.dtype}, {header['cpu_threads']} CPU threads, {header['date']}")


def plot(rows, path, title) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return
    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, name in zip(axes[0], models):
        for provider in sorted({r["provider"] for r in rows if r["model"] == name}):
            pts = sorted((r["batch_size"], r["images_per_s"]) for r in rows if r["model"] == name and r["provider"] == provider)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=provider)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("images / s")
        ax.set_title(name)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", default="resnet50")
    p.add_argument("--batch-sizes", default=None, help="default: 1,16,256 on CUDA, 16 on the CPU")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None, help="default: bfloat16 on CUDA, float32 on the CPU")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--budget", type=float, default=20.0, help="seconds of timing per provider and size, at most")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's default)")
    p.add_argument("--compile", action="store_true", help="add torch.compile (freezing) of torchvision")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (default: max-autotune on CUDA)")
    p.add_argument("--skip-providers", default="", help="comma list of providers not to time (never torchvision: "
                   "it is the reference and the baseline)")
    p.add_argument("--quick", action="store_true", help="few iterations: a smoke run")
    p.add_argument("--json")
    p.add_argument("--markdown")
    p.add_argument("--plot")
    p.add_argument("--auto-output", action="store_true", help="write benchmarks/results/<device>-<date>.{json,md,png}")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    args.batch_sizes = args.batch_sizes or ("1,16,256" if args.device == "cuda" else "16")
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    known = {"torchvision_cl", "resnet_fast", "resnet_fast_torch_backend", "resnet_fast_graph", "torch_compile"}
    args.skip_providers = [n for n in args.skip_providers.split(",") if n]
    bad = [n for n in args.skip_providers if n not in known]
    if bad:
        p.error(f"--skip-providers: expected some of {', '.join(sorted(known))}, got {', '.join(bad)}")
    if args.auto_output:
        name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
        stem = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                            f"{name.replace(' ', '-').lower()}-{datetime.date.today().isoformat()}")
        args.json = args.json or stem + ".json"
        args.markdown = args.markdown or stem + ".md"
        args.plot = args.plot or stem + ".png"
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
