#!/usr/bin/env python
"""A short workload that runs every GPU code path once or more, each result checked against a float64
reference: the program that `benchmarks/device_check.sh` runs under compute-sanitizer (memcheck,
racecheck). Correct output does not prove a kernel stays inside its tensors (a masked-off lane, a
tile past the edge, a vector tail, a split-K counter): the sanitizer sees every access the hardware
makes, which no CPU test can.

    python benchmarks/memcheck_workload.py --device cuda [--sections convs,add_relu,pool,model] [--graph]
    python benchmarks/memcheck_workload.py --device cpu --quick   # the Triton interpreter: CI runs this

Sections:
- ``add_relu``: the CUDA extension's ``add_relu``/``add_relu_`` on sizes with vector tails, views one
  element off 16-byte alignment, channels_last and mixed layouts, every dtype.
- ``convs``: the Triton conv on one small odd-sized case of every walk (1x1 stride 1 and 2, 3x3 stride
  1 and 2, dilated, grouped, the 7x7 stem on 3 channels), with and without the residual, in place,
  with forced split-K (shares added in the kernel and by the reduce kernel), the stem space-to-depth,
  64-bit offsets (with the config tuned for the 32-bit case: the offset width is not a tuning key),
  and the 1x1 TMA kernel with tails. With autotuning on (the default on a GPU) every config the tuner
  considers for a case runs, not just the one it picks.
- ``pool``: ``resnet_fast::max_pool2d`` on odd sizes.
- ``model``: a ResNet forward (batch 1, so layer3/4 convs split K as in the latency path), then with
  ``--graph`` the same through ``resnet_fast.cuda_graph``, replayed twice.

Exit status 1 if a result is wrong (the sanitizer's own exit code reports bad accesses).
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time


def _early_args():
    """--device must be known before torch and Triton are imported (the interpreter is an environment
    variable read at import)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--sections", default="add_relu,convs,pool,model")
    p.add_argument("--model", default=None, help="default: resnet50 on CUDA, resnet18 on the CPU")
    p.add_argument("--size", type=int, default=None, help="model input size (default 224 on CUDA, 40 on the CPU)")
    p.add_argument("--graph", action="store_true", help="also run the model through resnet_fast.cuda_graph")
    p.add_argument("--quick", action="store_true", help="fewer cases (the CPU smoke run)")
    return p.parse_args()


ARGS = _early_args()
if ARGS.device == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("RESNET_FAST_BACKEND", "triton")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import resnet_fast  # noqa: E402
from resnet_fast.fused import to_oc_last  # noqa: E402

FAILURES = []


def report(name: str, out: torch.Tensor, ref: torch.Tensor, bound: float) -> None:
    """One check: ``out`` (on the device) against its float64 reference (built on the CPU)."""
    err = common.rel_err(out.cpu(), ref.cpu())
    ok = err <= bound
    print(f"{'ok  ' if ok else 'FAIL'} {name}: rel err {err:.2e} (bound {bound:.0e})", flush=True)
    if not ok:
        FAILURES.append(name)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _dtypes(device: str):
    # One 16-bit type: fp16 and bf16 run the same code with the same byte offsets. bf16 on the GPU
    # (the benchmarks' type); fp16 in the interpreter, whose bf16 dot is wrong (numpy has no bf16).
    return [torch.bfloat16] if device == "cuda" else [torch.float16]


def _bound(dtype) -> float:
    return {torch.float32: 5e-3, torch.float16: 5e-3, torch.bfloat16: 2e-2}[dtype]


def section_add_relu(device: str, quick: bool) -> None:
    from resnet_fast import _extension

    if device == "cuda" and not _extension.has_cuda_kernels():
        print(f"skip add_relu: the CUDA extension is not built ({_extension.status()})")
        return
    gen = torch.Generator().manual_seed(1)
    sizes = [1, 7, 8, 9, 4097] + ([] if quick else [3 * 29 * 31 * 8 + 5, 1 << 20])
    for dtype in [torch.float32, torch.float16, torch.bfloat16]:
        for n in sizes:
            for offset in (0, 1):  # a view one element off the allocation's 16-byte alignment
                a = torch.randn(n + offset, generator=gen).to(device=device, dtype=dtype)[offset:]
                b = torch.randn(n + offset, generator=gen).to(device=device, dtype=dtype)[offset:]
                ref = (a.double() + b.double()).relu()
                report(f"add_relu {dtype} n={n} offset={offset}", torch.ops.resnet_fast.add_relu(a, b), ref, _bound(dtype))
                torch.ops.resnet_fast.add_relu_(a, b)
                report(f"add_relu_ {dtype} n={n} offset={offset}", a, ref, _bound(dtype))
        x = torch.randn(3, 13, 7, 9, generator=gen).to(device=device, dtype=dtype)
        for a_cl, b_cl in [(True, True), (True, False), (False, True)]:
            a = x.contiguous(memory_format=torch.channels_last) if a_cl else x.clone()
            b = torch.randn(3, 13, 7, 9, generator=gen).to(device=device, dtype=dtype)
            b = b.contiguous(memory_format=torch.channels_last) if b_cl else b
            ref = (a.double() + b.double()).relu()
            torch.ops.resnet_fast.add_relu_(a, b)
            report(f"add_relu_ {dtype} 4-D channels_last a={a_cl} b={b_cl}", a, ref, _bound(dtype))
    _sync(device)


# name, (batch, C, H, W), OC, kernel, stride, padding, dilation, groups, residual
CONV_CASES = [
    ("1x1 s1", (2, 72, 13, 11), 40, 1, 1, 0, 1, 1, True),
    ("1x1 s2 projection", (2, 64, 13, 11), 72, 1, 2, 0, 1, 1, False),
    ("3x3 s1", (2, 64, 13, 11), 64, 3, 1, 1, 1, 1, True),
    ("3x3 s2", (2, 48, 13, 11), 80, 3, 2, 1, 1, 1, False),
    ("3x3 dilated 2", (2, 64, 11, 13), 48, 3, 1, 2, 2, 1, False),
    ("3x3 grouped 32x4", (2, 128, 9, 11), 128, 3, 1, 1, 1, 32, False),
    ("3x3 grouped 8 per group s2", (2, 64, 11, 9), 64, 3, 2, 1, 1, 8, False),
    ("stem 7x7 s2 C=3", (2, 3, 37, 41), 64, 7, 2, 3, 1, 1, False),
]


def _conv_case(shape, oc, k, groups, residual, stride, padding, dilation, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.randn(n, c, h, w, generator=gen).relu()  # post-ReLU inputs, as the network feeds them
    weight = torch.randn(oc, c // groups, k, k, generator=gen) * (2.0 / (c // groups * k * k)) ** 0.5
    bias = torch.randn(oc, generator=gen) * 0.1
    oh = (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    ow = (w + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    res = torch.randn(n, oc, oh, ow, generator=gen) if residual else None
    xq = x.to(dtype)
    wq = weight.to(dtype)
    ref = F.conv2d(xq.double(), wq.double(), bias.double(), stride, padding, dilation, groups)
    if res is not None:
        res = res.to(dtype)
        ref = ref + res.double()
    ref = ref.relu()
    to = dict(device=device)
    x_dev = xq.to(**to).contiguous(memory_format=torch.channels_last)
    res_dev = res.to(**to).contiguous(memory_format=torch.channels_last) if res is not None else None
    return x_dev, to_oc_last(wq.to(**to)), bias.to(**to), res_dev, ref


def section_convs(device: str, quick: bool) -> None:
    from resnet_fast.kernels import conv as triton_conv
    from resnet_fast.kernels import conv1x1_tma

    cases = CONV_CASES[::2] if quick else CONV_CASES
    for dtype in _dtypes(device):
        for i, (name, shape, oc, k, s, p, d, g, residual) in enumerate(cases):
            x, w, b, res, ref = _conv_case(shape, oc, k, g, residual, s, p, d, dtype, device, seed=10 + i)
            conv_args = ([s, s], [p, p], [d, d], g)
            y = triton_conv.conv2d_bias_act(x, w, b, res, *conv_args, True)
            report(f"conv {name} {dtype}", y, ref, _bound(dtype))
            if res is not None:  # in place, as the block's last conv runs it
                into = res.clone()
                triton_conv.conv2d_bias_act(x, w, b, into, *conv_args, True, out=into)
                report(f"conv {name} {dtype} in place", into, ref, _bound(dtype))
            if not quick:
                y = triton_conv.conv2d_bias_act(x, w, b, res, *conv_args, True, index_64=True)
                report(f"conv {name} {dtype} 64-bit offsets", y, ref, _bound(dtype))
        # Split K, both ways of adding the shares, on a long-K case, with the residual in place.
        x, w, b, res, ref = _conv_case((1, 256, 7, 9), 96, 3, 1, True, 1, 1, 1, dtype, device, seed=40)
        for split in ([4] if quick else [2, 8]):
            for serial in (True, False):
                into = res.clone()
                triton_conv.conv2d_bias_act(x, w, b, into, [1, 1], [1, 1], [1, 1], 1, True, out=into,
                                            split_k=split, serial_split=serial)
                how = "in the kernel" if serial else "reduce kernel"
                report(f"conv 3x3 split {split} ({how}) {dtype} in place", into, ref, _bound(dtype))
        # 128 channels, K of 9 whole 128-channel steps: with autotuning on (a GPU), the tuner's 128-deep
        # config runs here among the others. K unsplit: at this M the launcher would split it 4 ways,
        # and the prune keeps that config only for unsplit K.
        x, w, b, res, ref = _conv_case((2, 128, 9, 7), 72, 3, 1, True, 1, 1, 1, dtype, device, seed=45)
        y = triton_conv.conv2d_bias_act(x, w, b, res, [1, 1], [1, 1], [1, 1], 1, True, split_k=1)
        report(f"conv 3x3 C=128 unsplit {dtype}", y, ref, _bound(dtype))
        # A wave split (forced): two launches on images [0, 2) and [2, 3), in place, each on views of x,
        # the residual and y that start inside their allocations.
        x, w, b, res, ref = _conv_case((3, 64, 9, 7), 96, 3, 1, True, 1, 1, 1, dtype, device, seed=47)
        into = res.clone()
        triton_conv.conv2d_bias_act(x, w, b, into, [1, 1], [1, 1], [1, 1], 1, True, out=into, batch_split=2)
        report(f"conv 3x3 as two launches (2 + 1 images) {dtype} in place", into, ref, _bound(dtype))
        # The stem space-to-depth (forced): its input and weight rearranged by two small kernels (odd
        # sizes: the last rearranged row and column lie half outside x), then a 4x4 stride-1 conv.
        x, w, b, res, ref = _conv_case((2, 3, 15, 13), 64, 7, 1, False, 2, 3, 1, dtype, device, seed=48)
        y = triton_conv.conv2d_bias_act(x, w, b, None, [2, 2], [3, 3], [1, 1], 1, True, s2d=True)
        report(f"conv 7x7 stem space-to-depth {dtype}", y, ref, _bound(dtype))
        # The TMA kernel for 1x1 convs, tails in M, K and N (zero fill and clipped stores).
        probe = torch.empty(0, device=device)
        if conv1x1_tma.available(probe):
            x, w, b, res, ref = _conv_case((3, 72, 29, 31), 40, 1, 1, True, 1, 0, 1, dtype, device, seed=50)
            y = triton_conv.conv2d_bias_act(x, w, b, res, [1, 1], [0, 0], [1, 1], 1, True, tma=True)
            report(f"conv 1x1 TMA kernel {dtype}", y, ref, _bound(dtype))
            into = res.clone()
            triton_conv.conv2d_bias_act(x, w, b, into, [1, 1], [0, 0], [1, 1], 1, True, out=into, tma=True)
            report(f"conv 1x1 TMA kernel {dtype} in place", into, ref, _bound(dtype))
            if device == "cuda" and not quick:
                # 412 row tiles of 128 for the persistent configs: more tiles than programs.
                small = (x, w, b, res, ref)
                big = _conv_case((3, 72, 150, 117), 40, 1, 1, True, 1, 0, 1, dtype, device, seed=51)
                for config in conv1x1_tma.hopper_tma_configs():
                    cx, cw, cb, cres, cref = big if config.kwargs["PER_SM"] else small
                    y = torch.full_like(cres, float("nan"))
                    conv1x1_tma.launch(cx, cw, cb, cres, y, True, config.all_kwargs())
                    report(f"conv 1x1 TMA {triton_conv.config_name(config)} {dtype}", y, cref, _bound(dtype))
        else:
            print("skip TMA kernel: not available here")
    _sync(device)


def section_pool(device: str, quick: bool) -> None:
    gen = torch.Generator().manual_seed(3)
    for dtype in _dtypes(device):
        for (h, w) in [(13, 11), (56, 57)][: 1 if quick else 2]:
            x = torch.randn(2, 70, h, w, generator=gen).to(device=device, dtype=dtype)
            x = x.contiguous(memory_format=torch.channels_last)
            y = torch.ops.resnet_fast.max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], False)
            ref = F.max_pool2d(x.double(), 3, 2, 1)
            report(f"max_pool2d {h}x{w} {dtype}", y, ref, 0.0)
    _sync(device)


def section_model(device: str, quick: bool, name: str, size: int, graph: bool) -> None:
    from bench_model import trained_like

    import torchvision

    torch.manual_seed(0)
    tv = trained_like(getattr(torchvision.models, name)()).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        ref = copy.deepcopy(tv).double()(x.double())
    for dtype in _dtypes(device):
        fast = resnet_fast.from_torchvision(tv).to(device=device, dtype=dtype).eval()
        xd = x.to(device=device, dtype=dtype)
        with torch.no_grad():
            out = fast(xd)
            out = fast(xd)  # the tuned launch, after the first call's tuning
        report(f"model {name} b1 {size}x{size} {dtype}", out, ref, 0.1)
        if graph and device == "cuda":
            replay = resnet_fast.cuda_graph(fast, xd)
            for i in range(2):
                report(f"model {name} cuda_graph replay {i} {dtype}", replay(xd), ref, 0.1)
    _sync(device)


def main() -> int:
    if ARGS.device == "cuda" and not torch.cuda.is_available():
        print("memcheck_workload: --device cuda but no CUDA device", file=sys.stderr)
        return 2
    sections = [s for s in ARGS.sections.split(",") if s]
    known = {"add_relu", "convs", "pool", "model"}
    if set(sections) - known:
        print(f"memcheck_workload: unknown sections {sorted(set(sections) - known)}; expected some of {sorted(known)}",
              file=sys.stderr)
        return 2
    model = ARGS.model or ("resnet50" if ARGS.device == "cuda" else "resnet18")
    size = ARGS.size or (224 if ARGS.device == "cuda" else 40)
    t0 = time.perf_counter()
    for s in sections:
        t = time.perf_counter()
        if s == "add_relu":
            section_add_relu(ARGS.device, ARGS.quick)
        elif s == "convs":
            section_convs(ARGS.device, ARGS.quick)
        elif s == "pool":
            section_pool(ARGS.device, ARGS.quick)
        else:
            section_model(ARGS.device, ARGS.quick, model, size, ARGS.graph)
        print(f"-- {s}: {time.perf_counter() - t:.1f} s", flush=True)
    print(f"memcheck_workload: {len(FAILURES)} wrong results, {time.perf_counter() - t0:.1f} s"
          + (": " + "; ".join(FAILURES) if FAILURES else ""))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
