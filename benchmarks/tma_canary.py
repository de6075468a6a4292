#!/usr/bin/env python
"""Every config of the 1x1 TMA kernel, once, on the GPU, before the benchmarks depend on it.

gpu_suite.sh runs this first: a config that is wrong, faults or hangs on the hardware (new kernel
code reaches a GPU only in a lent session) would otherwise cost the model step, whose tuning runs
every config. One line per config; the one-tile configs run first, then the persistent ones (PER_SM >
0), and "one-tile configs: ok" is printed between them, so that a log cut short by a hang still says
which kind failed. Exit status: 0 all right (or no TMA here: nothing to check), 3 a persistent config
wrong, 1 a one-tile config wrong. gpu_suite.sh then turns off the persistent configs
(RESNET_FAST_TMA_PERSISTENT=0) or the whole kernel (RESNET_FAST_TMA=0) for the steps after it.

    python benchmarks/tma_canary.py [--device cuda]
    python benchmarks/tma_canary.py --device cpu   # the Triton interpreter, small configs (CI)
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [os.path.join(here, os.pardir), here]
    import common
    import torch
    import torch.nn.functional as F

    from resnet_fast.fused import to_oc_last
    from resnet_fast.kernels import conv1x1_tma as T
    from resnet_fast.kernels.conv import config_name

    if not T.available(torch.empty(0, device=args.device)):
        print("skip: the TMA kernel is not available here (needs sm_90+ and Triton tensor descriptors)")
        return 0
    if args.device == "cuda":
        # Tails in M, K and N; 412 row tiles of 128, more than a persistent config's programs.
        n, c, h, w, oc = 3, 72, 150, 117, 40
        configs = T.hopper_tma_configs() + [T.untuned_tma_config()]
    else:
        n, c, h, w, oc = 2, 24, 9, 7, 40  # 126 rows: 8 x 3 tiles of 16 x 16, 2 or 4 programs
        configs = [T._config(16, 16, 16, 4, 1), T._config(16, 16, 16, 4, 1, per_sm=1),
                   T._config(16, 16, 16, 4, 1, per_sm=2)]
    # bf16 as the benchmarks run it; fp16 in the interpreter, whose bf16 tensor descriptors are wrong.
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float16
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(n, c, h, w, generator=gen).relu().to(dtype)
    weight = (torch.randn(oc, c, 1, 1, generator=gen) / c**0.5).to(dtype)
    bias = torch.randn(oc, generator=gen)
    res = torch.randn(n, oc, h, w, generator=gen).to(dtype)
    ref = (F.conv2d(x.double(), weight.double(), bias.double()) + res.double()).relu()
    # A 16-bit output's rounding is 2^-8 relative at most, far below this bound; a wrong tile is order 1.
    bound = 2e-2

    def on_device(t):
        return t.to(args.device).contiguous(memory_format=torch.channels_last)

    x, res, bias = on_device(x), on_device(res), bias.to(args.device)
    weight = to_oc_last(weight.to(args.device))
    failed = {False: [], True: []}
    for persistent in (False, True):
        for config in [cfg for cfg in configs if bool(cfg.kwargs.get("PER_SM", 0)) == persistent]:
            for in_place in (False, True):
                y = res.clone() if in_place else torch.full_like(res, float("nan"))
                T.launch(x, weight, bias, y if in_place else res, y, True, config.all_kwargs())
                if args.device == "cuda":
                    torch.cuda.synchronize()
                err = common.rel_err(y.cpu(), ref)
                ok = err <= bound  # NaN (an unwritten tile) fails too
                name = f"{config_name(config)}{' in place' if in_place else ''}"
                print(f"{'ok  ' if ok else 'FAIL'} {name}: rel err {err:.2e}", flush=True)
                if not ok:
                    failed[persistent].append(name)
        if not persistent and not failed[False]:
            print("one-tile configs: ok", flush=True)
    if failed[False]:
        print(f"one-tile configs wrong: {failed[False]}")
        return 1
    if failed[True]:
        print(f"persistent configs wrong: {failed[True]}")
        return 3
    print("every config: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
