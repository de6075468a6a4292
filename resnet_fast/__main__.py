"""``python -m resnet_fast``: which backends this machine has, then resnet50 beside torchvision."""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch


def _backends() -> list:
    from . import _extension, backend

    rows = [("torch", torch.__version__)]
    if torch.cuda.is_available():
        rows.append(("CUDA", f"yes: {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"))
    else:
        rows.append(("CUDA", "no device" + (f" (torch built for CUDA {torch.version.cuda})" if torch.version.cuda else "")))
    if backend.triton_available():
        import triton

        if backend.interpreter_enabled():
            mode = "interpreter (TRITON_INTERPRET=1): kernels run on CPU tensors when forced"
        elif torch.cuda.is_available():
            mode = "compiled kernels on CUDA"
        else:
            mode = "installed; no CUDA device (TRITON_INTERPRET=1 runs it on the CPU)"
        rows.append(("Triton", f"{triton.__version__}, {mode}"))
    else:
        rows.append(("Triton", "not installed"))
    rows.append(("extension resnet_fast._C", _extension.status()))
    rows.append(("oneDNN (CPU fused conv)", "yes" if torch.backends.mkldnn.is_available() else "no"))
    rows.append(("backend", f"{backend.get_backend()} (RESNET_FAST_BACKEND or resnet_fast.set_backend)"))
    return rows


def _time(fn, iters: int, cuda: bool) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(iters):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _table(rows, headers) -> str:
    widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnet_fast", description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64 on CUDA, 16 on the CPU")
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"], help="default: bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--no-model", action="store_true", help="only list the backends")
    args = parser.parse_args(argv)

    import resnet_fast

    print(f"resnet_fast {resnet_fast.__version__} on {platform.machine()}, {torch.get_num_threads()} CPU threads")
    print(_table(_backends(), ["component", "status"]))
    if args.no_model:
        return 0
    try:
        import torchvision
    except ImportError:
        print("\ntorchvision is not installed: nothing to compare against")
        return 0

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    batch = args.batch_size or (64 if cuda else 16)
    torch.manual_seed(0)
    tv = torchvision.models.resnet50()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # trained-looking BN statistics, so that folding is really exercised
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    fast = resnet_fast.from_torchvision(tv)
    tv = tv.eval().to(device=device, dtype=dtype)
    fast = fast.eval().to(device=device, dtype=dtype)
    x = torch.randn(batch, 3, args.size, args.size, device=device, dtype=dtype)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    tv_cl = torchvision.models.resnet50().eval().to(device=device, dtype=dtype, memory_format=torch.channels_last)
    tv_cl.load_state_dict(tv.state_dict())

    print(f"\nresnet50 eval, batch {batch}, {args.size}x{args.size}, {dtype}, {device}")
    with torch.inference_mode():
        out_tv = tv(x)
        out_fast = fast(x)
        # float64 reference on the CPU (too slow to be worth it for a big CUDA batch).
        ref = copy.deepcopy(tv).double()(x.double()) if not cuda else out_tv.double()
        err = lambda o: ((o.double() - ref).norm() / ref.norm()).item()  # noqa: E731
        max_err = lambda o: ((o.double() - ref).abs().max() / ref.abs().max()).item()  # noqa: E731
        t_tv = _time(lambda: tv(x), args.iters, cuda)
        t_tv_cl = _time(lambda: tv_cl(x_cl), args.iters, cuda)
        t_fast = _time(lambda: fast(x), args.iters, cuda)
    ref_name = "float64 torchvision" if not cuda else "torchvision, same dtype"
    rows = [
        ("torchvision (NCHW)", f"{t_tv * 1e3:.1f}", f"{batch / t_tv:.1f}", "1.00x", f"{max_err(out_tv):.2e}", f"{err(out_tv):.2e}"),
        ("torchvision (channels_last)", f"{t_tv_cl * 1e3:.1f}", f"{batch / t_tv_cl:.1f}", f"{t_tv / t_tv_cl:.2f}x", "-", "-"),
        ("resnet_fast", f"{t_fast * 1e3:.1f}", f"{batch / t_fast:.1f}", f"{t_tv / t_fast:.2f}x", f"{max_err(out_fast):.2e}", f"{err(out_fast):.2e}"),
    ]
    print(f"errors against {ref_name}: max |out - ref| / max |ref|, and ||out - ref|| / ||ref||")
    print(_table(rows, ["model", "median ms", "images/s", "speedup", "max rel. error", "rel. error (norm)"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
