"""What the Triton conv compiles to on Hopper, read without a GPU (ptxas and cuobjdump ship with
Triton): per specialisation and autotune config, registers, spills (local-memory loads/stores in
the SASS), shared memory, and the instruction mix that decides speed: HGMMA (Hopper warpgroup MMA)
rather than HMMA, LDGSTS (asynchronous global->shared copies, i.e. a software pipeline) rather than
plain LDG, and how wide the loads are.

    python benchmarks/sass_report.py [--arch 90] [--only stem_7x7,3x3] [--markdown PATH] [--json PATH]

Each specialisation is compiled with the configs the autotuner keeps for a batch-256 ResNet-50
layer of that kind (``_prune``), its integer arguments specialised as the JIT would at run time.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import torch  # noqa: E402
import triton  # noqa: E402

from resnet_fast.kernels import conv as K  # noqa: E402

# name: (dtype, kernel, flat_k, gemm_1x1, residual, relu, precision, channels, out_channels, groups)
SPECS = {
    "conv3_1x1_residual": ("bf16", 1, False, True, True, True, "tf32", 64, 256, 1),
    "conv1_1x1": ("bf16", 1, False, True, False, True, "tf32", 256, 64, 1),
    "conv1_1x1_wide": ("bf16", 1, False, True, False, True, "tf32", 512, 1024, 1),
    "3x3": ("bf16", 3, False, False, False, True, "tf32", 64, 64, 1),
    "3x3_c256": ("bf16", 3, False, False, False, True, "tf32", 256, 256, 1),
    "1x1_s2_projection": ("bf16", 1, False, False, False, False, "tf32", 256, 512, 1),
    "stem_7x7": ("bf16", 7, True, False, False, True, "tf32", 3, 64, 1),
    # the same stem space-to-depth (kernels/conv.py s2d_fits): a 4x4 stride-1 conv on 16 channels, the
    # input under the 7x7 kernel's missing taps zeroed in registers (the 13th field: s2d_taps(3, 7, 7))
    "stem_s2d_4x4": ("bf16", 4, True, False, False, True, "tf32", 16, 64, 1, 1, False, (3, 3)),
    "3x3_grouped_g32": ("bf16", 3, True, False, False, True, "tf32", 128, 128, 32),
    # resnext101_32x8d: 8 channels per group, a kernel row's 3 x 8 in one K step (the row walk)
    "3x3_grouped_8ch": ("bf16", 3, True, False, False, True, "tf32", 256, 256, 32),
    # what the model runs for ResNeXt-50's layer1 conv instead: its 32 groups of 4 widened to 4
    # groups of 32 (block-diagonal weight, resnet_fast.fused.widen_groups), the per-tap walk
    "3x3_grouped_widened": ("bf16", 3, False, False, False, True, "tf32", 128, 128, 4),
    # batch 1 in layer4: M = 49, K split 8 ways (the 11th field), fp32 partials to a workspace
    "3x3_c512_batch1_split8": ("bf16", 3, False, False, True, True, "tf32", 512, 512, 1, 8),
    # the same with the shares added by each tile's last program (SERIAL_SPLIT, the 12th field),
    # and layer4's 2048->512 1x1 that way: what batch 1 runs by default
    "3x3_c512_batch1_split8_serial": ("bf16", 3, False, False, True, True, "tf32", 512, 512, 1, 8, True),
    "1x1_c2048_batch1_split8_serial": ("bf16", 1, False, True, False, True, "tf32", 2048, 512, 1, 8, True),
    "1x1_c1024_batch1_split4_serial": ("bf16", 1, False, True, False, True, "tf32", 1024, 256, 1, 4, True),
    # fp32 with TF32 tensor cores: operands rounded to TF32 in registers (cvt.rna), 4-byte tiles
    "3x3_fp32_tf32": ("fp32", 3, False, False, False, True, "tf32", 256, 256, 1),
    "conv3_1x1_residual_fp32_tf32": ("fp32", 1, False, True, True, True, "tf32", 64, 256, 1),
}
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _cuobjdump(cubin: bytes, flag: str) -> str:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        return subprocess.run([tool, flag, f.name], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)


def main_loop(sass: str):
    """The instructions of the kernel's longest loop (a backward branch to its start): the K loop.
    Their count is what one K step costs in issue slots per thread, beside its few HGMMAs."""
    ins = []
    for line in sass.splitlines():
        m = re.match(r"^\s+/\*([0-9a-f]+)\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]+)(.*)", line)
        if m:
            ins.append((int(m.group(1), 16), m.group(2), m.group(3)))
    best = []
    for addr, op, rest in ins:
        target = re.search(r"0x([0-9a-f]+)", rest) if op == "BRA" else None
        if target and int(target.group(1), 16) < addr:
            body = [o for a, o, _ in ins if int(target.group(1), 16) <= a <= addr]
            best = body if len(body) > len(best) else best
    return best


def report(spec, config, arch):
    kernel = K.aot_compile(*spec[:7], config=config, arch=arch, channels=spec[7], out_channels=spec[8], groups=spec[9],
                           split_k=spec[10] if len(spec) > 10 else 1, serial_split=len(spec) > 11 and spec[11],
                           taps=spec[12] if len(spec) > 12 else None)
    return {"BLOCK": "x".join(str(config.kwargs[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")),
            "warps": config.num_warps, "stages": config.num_stages, **kernel_stats(kernel)}


def kernel_stats(kernel) -> dict:
    """What one compiled kernel's SASS says: shared memory, MMA and load instructions by kind, spills,
    registers, the longest loop and the whole instruction count."""
    sass = _cuobjdump(kernel.asm["cubin"], "-sass")
    usage = _cuobjdump(kernel.asm["cubin"], "-res-usage")
    regs = re.search(r"REG:(\d+)", usage)
    stack = re.search(r"STACK:(\d+)", usage)
    ops = collections.Counter(
        re.findall(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]+(?:\.[A-Z0-9_]+)*)", sass, re.M))
    base = collections.Counter()
    for op, n in ops.items():
        base[op.split(".")[0]] += n
    wide = sum(n for op, n in ops.items() if op.startswith(("LDG", "LDGSTS")) and ".128" in op)
    loads = base["LDG"] + base["LDGSTS"]
    return {
        "smem_KB": kernel.metadata.shared // 1024,
        "HGMMA": base["HGMMA"], "cvt.rna.tf32": kernel.asm["ptx"].count("cvt.rna.tf32"), "HMMA": base["HMMA"], "LDGSTS": base["LDGSTS"], "LDG": base["LDG"],
        "UTMALDG": base["UTMALDG"], "UTMASTG": base["UTMASTG"],
        # The ReLU: a float max that keeps NaN (torch.relu's semantics), or that max folded into the
        # conversion to 16 bits (F2FP.RELU, which keeps NaN too), against a plain max, which drops NaN.
        "relu_ops": sum(n for op, n in ops.items() if (op.startswith("FMNMX") and ".NAN" in op)
                        or (op.startswith("F2FP") and ".RELU" in op)),
        "FMNMX": sum(n for op, n in ops.items() if op.startswith("FMNMX") and ".NAN" not in op),
        "128-bit loads": f"{wide}/{loads}", "LDL": base["LDL"], "STL": base["STL"],
        "regs": regs.group(1) if regs else "?", "stack": stack.group(1) if stack else "?",
        "loop_instrs": len(main_loop(sass)),
        # All of it: where the K loop was unrolled (the stem's 7 kernel rows, a constant trip
        # count) loop_instrs is 0 and this is what one output tile costs.
        "instrs": sum(base.values()),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--only", default="", help="comma-separated spec names (default: all)")
    parser.add_argument("--markdown", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    names = [n for n in SPECS if not args.only or n in args.only.split(",")]
    lines = [f"Triton {triton.__version__}, sm_{args.arch}", ""]
    results = {}
    for name in names:
        spec = SPECS[name]
        # split specs: every config a split conv can get (M <= 4096 splits; 1024 is layer2 at batch 1)
        m_bucket = 1024 if len(spec) > 10 and spec[10] > 1 else 1 << 20
        named = {"M_BUCKET": m_bucket, "OCg": spec[8] // spec[9], "Cg": spec[7] // spec[9],
                 "x_ptr": torch.empty(0, dtype=_DTYPES[spec[0]])}
        # The constexprs the launcher passes for such a layer (what the prune reads: EVEN_C, SPLIT_K, ...).
        cg, flat_k = named["Cg"], spec[2]
        pad_c = flat_k and K.pads_channels(cg, spec[9], spec[1], 1)
        walk = K.walk_constexprs(spec[1], spec[1], cg, flat_k, spec[3], pad_c, spec[4], spec[10] if len(spec) > 10 else 1,
                                 named["x_ptr"].element_size(), len(spec) > 11 and spec[11],
                                 spec[12] if len(spec) > 12 else None)
        configs = K._prune(K._configs(), named, **walk)
        rows = results[name] = [report(spec, cfg, args.arch) for cfg in configs]
        cols = list(rows[0])
        lines += [f"### {name} {spec}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
        lines.append("")
        print("\n".join(lines[-len(rows) - 4:]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"triton": triton.__version__, "arch": args.arch, "specs": {n: list(SPECS[n]) for n in names},
                       "rows": results}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
