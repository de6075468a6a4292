#!/usr/bin/env python
"""Host (Python) time of an eager resnet_fast forward on the Triton path, with no GPU: the kernels
run once in Triton's interpreter (tuning, folds, launch plans), then every launch is stubbed out and
what is left is timed: the model's Python, the op's checks, the plan lookup, the allocations. On an
H100 machine the eager batch-1 forward is host-bound (session 7: ~84 us a conv), so this is the
part of that time a CPU machine can measure and shrink.

    TRITON_INTERPRET=1 RESNET_FAST_BACKEND=triton python benchmarks/host_stub.py [--profile]

(The variables are set here if missing: they must be before Triton is imported.) It does not time
Triton's own launcher (its C call and argument packing), which only exists on a GPU.
"""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("RESNET_FAST_BACKEND", "triton")

import argparse  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import pstats  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402


def stubbed_model(name: str, size: int):
    """The model, warmed up through the interpreter with direct launches recorded as plans, then
    every plan's launcher swapped for a no-op. Returns (model, input, the conv module, launch count)."""
    import torchvision

    import resnet_fast
    from resnet_fast.kernels import conv as triton_conv
    from resnet_fast.kernels import launch as direct

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_model import trained_like

    launched = [0]

    class Stub(direct.Direct):
        """Pointers as integers, as on the GPU; the first launches (while warming up) run the
        interpreter on the tensors the integers came from."""
        seen = {}
        stubbed = False

        def pointer(self, t):
            Stub.seen[t.data_ptr()] = t
            return t.data_ptr()

        @classmethod
        def of(cls, kernel, grid):
            from resnet_fast.kernels import conv1x1_tma

            def launcher(g0, g1, g2, stream, function, metadata, launch_metadata, enter, leave, *values):
                launched[0] += 1
                if Stub.stubbed:
                    return
                general = triton_conv._conv2d_bias_act_kernel.fn
                pad = triton_conv._pad_channels_kernel
                if len(values) == len(general.arg_names):
                    general[(g0, g1, g2)](*[Stub.seen[v] for v in values[:7]], *values[7:])
                elif len(values) == len(pad.arg_names):
                    pad[(g0, g1, g2)](Stub.seen[values[0]], Stub.seen[values[1]], *values[2:-2], CP=values[-2],
                                      BLOCK=values[-1])
                else:
                    conv1x1_tma._conv1x1_tma_kernel.fn[(g0, g1, g2)](*values[:4], Stub.seen[values[4]], *values[5:])

            return cls(kernel, launcher, "function", "metadata", tuple(grid))

    direct.ENABLED = True
    direct.Direct = Stub
    direct._raw_stream = lambda device: 0
    triton_conv._direct_ok = lambda x: True
    factory = getattr(resnet_fast, name)
    model = resnet_fast.from_torchvision(trained_like(getattr(torchvision.models, name)())) if factory else None
    model = model.eval()
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        for _ in range(3):  # tune, launch through Triton (plans kept), launch directly
            model(x)
    Stub.stubbed = True
    Stub.seen.clear()
    return model, x, launched


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--size", type=int, default=16, help="input height and width (the host path does not depend on it)")
    p.add_argument("--forwards", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--profile", action="store_true", help="also print a cProfile of the stubbed forwards")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model, x, launched = stubbed_model(args.model, args.size)
    medians = []
    with torch.inference_mode():
        before = launched[0]
        for _ in range(args.rounds):
            times = []
            for _ in range(args.forwards):
                start = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - start) * 1e3)
            medians.append(statistics.median(times))
        per_forward = (launched[0] - before) / (args.forwards * args.rounds)
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(args.forwards):
                model(x)
            prof.disable()
    median = min(medians)  # the quietest round: other processes only ever add time
    print(f"{args.model} {args.size}x{args.size}: {median:.3f} ms per stubbed forward (best of {args.rounds} rounds' "
          f"medians of {args.forwards}; all: {', '.join(f'{m:.3f}' for m in medians)}), "
          f"{per_forward:.0f} direct launches per forward, {median / max(per_forward, 1) * 1e3:.1f} us per launch")
    if args.profile:
        stream = io.StringIO()
        pstats.Stats(prof, stream=stream).sort_stats("tottime").print_stats(30)
        print(stream.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
