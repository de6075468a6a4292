"""Fused convolution: ``relu?(conv2d(x, w) + bias + residual)`` as one Triton implicit-GEMM kernel.

GEMM view, per group g: M = N·OH·OW output pixels, N = OC/groups output channels,
K = KH·KW·C/groups. Activations are channels_last, so a row of A (one output pixel, a run of input
channels at one tap) is contiguous, and the output tile [pixels, channels] is a contiguous block of
the NHWC output. The kernel wants the weight output-channel-innermost (memory [KH, KW, C/groups, OC],
``resnet_fast.fused.to_oc_last``) so that B tiles load coalesced; the fold stores it that way, the
launcher repacks any other layout.

Two ways to walk K, picked per problem by a constexpr:
* per-tap (``FLAT_K=False``): for each (kh, kw) a loop over input-channel blocks, halo masked once
  per tap; the 1x1 stride-1 case skips the pixel decomposition and reads A as a plain [M, C] matrix.
* flat (``FLAT_K=True``): K walked as one index decomposed into (kh, kw, c): for few channels per
  group, where a channel block would be mostly mask. The 3-channel stem takes its row walk (one K
  step per kernel row) on a copy of x padded to 4 channels (``PAD_C``), so that a row's (kw, c) run
  is one aligned vector load. (The model hands ResNeXt's 4-16-channel groups over widened to 32
  channels, ``resnet_fast.fused.widen_groups``: the per-tap walk; the flat walk serves direct calls.)

Epilogue (constexpr flags): + bias (fp32), + residual (channels_last), ReLU, cast to the output dtype.
1x1 stride-1 convs on sm_90+ may run ``kernels/conv1x1_tma.py`` instead (TMA loads and stores), where it
tuned faster for the layer shape.
Split K (small M, long K: batch 1): each program of a tile writes an fp32 partial; the tile's last
program to finish (an arrival counter per tile) adds them in share order and applies the epilogue.
fp32 inputs use TF32 only where PyTorch lets cuDNN convolutions use it (``cudnn_conv_allows_tf32``).
"""
from __future__ import annotations

import functools
import inspect
import os
import threading
from typing import List, Optional

import torch
import triton
import triton.language as tl

from resnet_fast.fused import to_oc_last
from resnet_fast.kernels import conv1x1_tma
from resnet_fast.kernels import decisions
from resnet_fast.kernels import launch as direct
from resnet_fast.kernels.tiles import grouped_tile, relu_keep_nan, sm_count
from resnet_fast.ops import nhwc_strides

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Counts launches, so tests can prove the kernels ran (and did not silently fall back).
launch_count = 0


# The interpreter runs each program in numpy: one mid-size tile keeps CPU tests fast. The 64-deep one
# only for the row walk of 64 elements (the space-to-depth stem): see ``_prune``.
_INTERPRETER_CONFIGS = (
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}, num_warps=4, num_stages=1),
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 64, "GROUP_M": 4}, num_warps=4, num_stages=1),
)


def _configs() -> List[triton.Config]:
    if INTERPRET:
        return list(_INTERPRETER_CONFIGS)
    if os.environ.get("RESNET_FAST_AUTOTUNE", "1") == "0":
        # One config, no tuning: correctness runs (the GPU tests) without compiling every config.
        return [untuned_config()]
    return hopper_configs()


def untuned_config() -> triton.Config:
    """The one config of RESNET_FAST_AUTOTUNE=0, for every conv shape (walks included)."""
    return triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=3)


def hopper_configs() -> List[triton.Config]:
    """What the autotuner chooses from on a GPU (``_prune`` narrows it per problem)."""
    configs = []
    # Hopper: 132 SMs, 228 KB shared memory per SM. Large tiles for the big-M early layers, narrower
    # ones for the small-M late layers and small batches, deep pipelines to hide the gather latency.
    # Kept short on purpose: every config is compiled per kernel specialisation on first use. Each
    # was checked with benchmarks/sass_report.py (Triton 3.6 and 3.8, sm_90): HGMMA, asynchronous
    # copies, no spills for the walks (and epilogues) it is kept for.
    for bm, bn, bk, warps, stages in [
        # Channel-block walks (1x1 GEMM, per-tap): K steps of 64 channels.
        (128, 128, 64, 8, 3),
        (128, 128, 64, 8, 4),
        # Large tiles for wide problems (OC/group >= 256 or M-heavy): fewer re-reads of the
        # activation tile per output. Without a residual only: loading a residual tile of this size
        # in the epilogue spills (15-24 LDL/STL, 255 registers).
        (128, 256, 64, 8, 3),
        (256, 128, 64, 8, 3),
        (128, 64, 64, 4, 4),
        # The same tile with 72 KB of pipeline instead of 96: three CTAs per SM instead of two (146
        # registers allow three). For 64 output channels and a K of 5-16 steps (layer1's 3x3), where
        # ncu saw 12% occupancy and 30% of DRAM peak: latency, not bandwidth.
        (128, 64, 64, 4, 3),
        (64, 128, 64, 4, 4),
        (64, 64, 64, 4, 4),
        (16, 64, 64, 4, 5),  # tiny M: batch 1 in layer3/4
        # Short K (64 to 256: layer1's 1x1 convs, the first projection): one to four K steps leave
        # nothing to pipeline, and the memory-bound GEMM wants more tiles resident per SM instead,
        # so two stages (48-64 KB of shared memory instead of 96-128).
        (128, 128, 64, 8, 2),
        (128, 64, 64, 4, 2),
        # Flat-K walk (stem, few channels per group): the element-wise (kh, kw, c) gather costs
        # registers; with K steps of 64 and 4 warps a 128-row tile spills.
        (128, 128, 32, 8, 3),
        (128, 64, 32, 8, 4),
        (64, 64, 32, 4, 4),
        # Long K in whole 128-channel blocks (8 steps or more: layer2-4's 3x3s at 128-512 channels,
        # the 1024/2048-channel 1x1s): the cp.async pipeline puts two CTA-wide barriers around every
        # K step's MMAs; a 128-deep step halves them per MMA and takes 23% fewer instructions than two
        # 64-deep steps (sm_90 SASS, Triton 3.6: 203 against 2 x 132, 150 registers, no spills). Its
        # 192 KB leave one CTA per SM, where the 64-deep 128x128 tile fits two: timing decides.
        (128, 128, 128, 8, 3),
        # Narrow tiles for grouped convs with few output channels per group (ResNeXt: 4 to 32),
        # where a 64-wide N tile would be mostly mask. Pruned away for wide problems.
        (128, 32, 32, 4, 3),
        (64, 16, 32, 4, 3),
    ]:
        configs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=warps, num_stages=stages))
    return configs


def even_c(cg: int, flat_k: bool) -> int:
    """The kernel's EVEN_C: the largest channel block (128 or 64) that divides the channels per group,
    else 0. A channel-block walk drops its channel mask when its BLOCK_K divides EVEN_C (the kernel
    checks this itself, so no config can read past a group's channels)."""
    if flat_k:
        return 0
    return 128 if cg % 128 == 0 else 64 if cg % 64 == 0 else 0


# Hopper's shared memory per block (227 KB); a config whose pipeline buffers exceed it fails to load.
_SHARED_MEMORY_BYTES = 232448


def _prune(configs, named_args, **kwargs):
    """The configs made for this problem's K walk, minus tiles far larger than the problem (tiny M at
    batch 1, few channels per group)."""
    m = named_args["M_BUCKET"]
    ocg = named_args["OCg"]
    flat_k = bool(kwargs.get("FLAT_K", named_args.get("FLAT_K", False)))
    k = named_args["Cg"] * kwargs.get("KH", 1) * kwargs.get("KW", 1)
    residual = bool(kwargs.get("HAS_RESIDUAL", False))
    narrow = ocg <= 32
    # A flat walk whose kernel row is 64 elements (the space-to-depth stem: 4 x 16 channels) walks one
    # row per 64-deep K step (the kernel's ROW_WALK): 64-deep configs only, where every other flat
    # walk takes 32-deep ones.
    row64 = flat_k and not kwargs.get("PAD_C") and kwargs.get("KW", 1) * kwargs.get("FLAT_CG", 1) == 64
    if all(any(c is i for i in _INTERPRETER_CONFIGS) for c in configs):
        return [c for c in configs if (c.kwargs["BLOCK_K"] == 64) == row64]  # one: no timing runs

    element_size = named_args["x_ptr"].element_size()

    def wanted(c):
        bm, bn, bk = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]
        if row64 and bk != 64:
            return False
        if c.num_stages * (bm + bn) * bk * element_size > _SHARED_MEMORY_BYTES:
            return False  # fp32: the pipeline's A and B buffers alone exceed shared memory
        if element_size == 4 and bm >= 128 and c.num_warps == 4 and c.num_stages > 2:
            return False  # fp32: operands pass through registers for TF32 rounding; this one spills
        even = int(kwargs.get("EVEN_C", 0))
        if even and even % bk:
            return False  # whole channel blocks, but not of this depth: the walk would need its channel mask
        if bk == 128:
            # Only where it can pay: K of 8 steps or more in whole blocks, no K split (batch 1's
            # shares are a few steps each). (fp32 tiles of this depth exceed shared memory above.)
            return even == 128 and k >= 8 * bk and not flat_k and kwargs.get("SPLIT_K", 1) == 1
        if bn < 64:
            return narrow
        if (bm, bn, c.num_stages) == (128, 64, 3):
            return ocg <= 64 and 256 < k <= 1024 and not flat_k
        if (bk == 32) != (flat_k and not row64):
            return False
        if bm == 16:
            return m <= 1024  # 16-row tiles only for tiny M
        if bm * bn > 128 * 128:
            # (and not with SERIAL_SPLIT: its last program's reduction of two such tiles spills)
            return not residual and not flat_k and k > 128 and not kwargs.get("SERIAL_SPLIT")
        if c.num_stages == 2:
            return k <= 256  # K of 1-4 steps: a deep pipeline only costs occupancy
        return flat_k or k > 128

    kept = [
        c for c in configs
        if wanted(c)
        and c.kwargs["BLOCK_M"] <= max(16, triton.next_power_of_2(m))
        and c.kwargs["BLOCK_N"] <= max(16, triton.next_power_of_2(ocg))
    ]
    # Every kept config is compiled on first use (per specialisation): keep the list short.
    if not kept and row64:  # (the row walk of 64 needs a 64-deep step: the space-to-depth stem's masks are there)
        return [c for c in configs if c.kwargs["BLOCK_K"] == 64][-1:]
    return kept or configs[-1:]


def _quick_bench(fn, quantiles=None):
    # Short timing runs: the defaults (25 ms warm-up, 100 ms per config) would make the first
    # forward of a new input size take seconds per conv shape.
    return triton.testing.do_bench(fn, warmup=5, rep=20, quantiles=quantiles)


# Triton releases before ~3.3 take warmup/rep instead of a do_bench callable.
_AUTOTUNE_PARAMS = inspect.signature(triton.autotune).parameters
_BENCH_ARGS = {"do_bench": _quick_bench} if "do_bench" in _AUTOTUNE_PARAMS else {"warmup": 5, "rep": 20}
# Tuning results persist in Triton's cache folder (keyed on Triton, the GPU target, the kernel source,
# the tuning key and the config list): a new process, or a second benchmark script, does not re-time
# the configs of a layer it has seen. RESNET_FAST_AUTOTUNE_CACHE=0 re-tunes in every process.
if "cache_results" in _AUTOTUNE_PARAMS and os.environ.get("RESNET_FAST_AUTOTUNE_CACHE", "1") != "0":
    _BENCH_ARGS["cache_results"] = True


@triton.jit
def _tf32_operand(v, INPUT_PRECISION: tl.constexpr):
    """fp32 operands of a TF32 dot, rounded to nearest TF32 as cuDNN rounds them: the tensor cores
    would otherwise drop the low 13 mantissa bits, a biased truncation with ~2.5x the error on
    ResNet-like (post-ReLU, all positive) activations. 16-bit operands pass through."""
    if INPUT_PRECISION == "tf32":
        if v.dtype == tl.float32:
            v = tl.inline_asm_elementwise("cvt.rna.tf32.f32 $0, $1;", "=r,r", [v], dtype=tl.float32,
                                          is_pure=True, pack=1)
    return v


@triton.autotune(
    configs=_configs(),
    # M_BUCKET (M rounded up to a power of two) instead of N, OH, OW: batch and image sizes that
    # land in the same bucket share one tuning run. Stride and dilation change the gather (layer2-4's
    # first 3x3 has the same M, C and OC as the stride-1 ones after it), so they are keys too.
    key=["M_BUCKET", "OCg", "Cg", "KH", "KW", "FLAT_K", "GEMM_1X1", "HAS_RESIDUAL", "SPLIT_K", "SERIAL_SPLIT",
         "INPUT_PRECISION", "stride_h", "stride_w", "dil_h", "dil_w"],
    prune_configs_by={"early_config_prune": _prune},
    **_BENCH_ARGS,
)
# Sizes and conv geometry are plain runtime ints: specialising them (==1, divisible by 16) would
# compile a new variant per batch size and image size. Strides and channel counts stay specialised,
# their divisibility lets the loads vectorise.
@triton.jit(do_not_specialize=["N", "H", "W", "OH", "OW", "M_BUCKET", "stride_h", "stride_w", "pad_h", "pad_w", "dil_h", "dil_w"])
def _conv2d_bias_act_kernel(
    x_ptr, w_ptr, b_ptr, r_ptr, y_ptr, ws_ptr, lock_ptr,
    N, H, W, OH, OW, OC, Cg, OCg, M_BUCKET,
    sxn, sxh, sxw,
    swc, swh, sww,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr,
    FLAT_K: tl.constexpr, FLAT_CG: tl.constexpr, PAD_C: tl.constexpr, EVEN_C: tl.constexpr, GEMM_1X1: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, EARLY_RESIDUAL: tl.constexpr, RELU: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    INDEX_64: tl.constexpr, SPLIT_K: tl.constexpr, SERIAL_SPLIT: tl.constexpr, S2D_C: tl.constexpr,
    S2D_TAIL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Whole channel blocks of this depth (EVEN_C: 128 or 64 channels per group divide it): no channel mask.
    UNMASKED_C: tl.constexpr = EVEN_C > 0 and EVEN_C % BLOCK_K == 0
    # Unit strides are implied, not passed: x's channels and the weight's output channels are
    # innermost (the launcher guarantees both), so every A row and B row is a contiguous run that
    # the compiler can load 16 bytes at a time and pipeline with asynchronous copies.
    pid = tl.program_id(0)
    g = tl.program_id(1)
    if INDEX_64:
        # 2^31 elements or more in x, y, the weight or the workspace: the sizes and strides every
        # offset is made of become 64-bit, so no product (N * OH * OW, a tap's kh * swh, a row's
        # dh * sxh) wraps before it is added. (A multiply, not .to(): a stride of 1 arrives as a
        # constexpr.)
        wide = tl.full([], 1, tl.int64)
        N = wide * N
        OH = wide * OH
        OW = wide * OW
        OC = wide * OC
        sxn = wide * sxn
        sxh = wide * sxh
        sxw = wide * sxw
        swc = wide * swc
        swh = wide * swh
        sww = wide * sww
    M = N * OH * OW
    pid_m, pid_n = grouped_tile(pid, M, OCg, BLOCK_M, BLOCK_N, GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    if INDEX_64:
        # Activations of 2^31 elements or more: every offset derived from the pixel index is 64-bit.
        # Otherwise 32-bit math, half the integer work of the address computation in the K loop.
        offs_m = offs_m.to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < OCg
    oc = g * OCg + offs_n
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # Split-K (small M, long K: batch 1 in layer3/4, where the output tiles alone cannot fill the
    # GPU): program_id(2) takes one contiguous share of the K steps and writes an fp32 partial sum to
    # the workspace ws_ptr [SPLIT_K, M, OC]. The shares are added in a fixed order (deterministic)
    # and the epilogue applied either by the program of the tile that finishes last (SERIAL_SPLIT,
    # see the epilogue) or by _splitk_reduce_kernel. SPLIT_K == 1 compiles to the plain single pass.
    # Few channels per group, where a kernel row's (kw, c) pairs fill half a K step or more (the
    # stem: 7 x 4 = 28 of 32, its 3 channels padded to 4): the row walk below.
    ROW_WALK: tl.constexpr = FLAT_K and KW * FLAT_CG <= BLOCK_K and (PAD_C or 2 * KW * FLAT_CG > BLOCK_K)
    tl.static_assert(ROW_WALK or not PAD_C, "channel-padded input needs the row walk")
    tl.static_assert(ROW_WALK or S2D_C == 0, "the space-to-depth stem's tap masks are in the row walk")
    if GEMM_1X1:
        k_steps = tl.cdiv(Cg, BLOCK_K)
    elif ROW_WALK:
        k_steps = KH  # one K step per kernel row
    elif FLAT_K:
        k_steps = tl.cdiv(KH * KW * Cg, BLOCK_K)
    else:
        k_steps = KH * KW * tl.cdiv(Cg, BLOCK_K)
    if SPLIT_K == 1:
        step_lo = 0
        step_hi = k_steps
    else:
        per_split = tl.cdiv(k_steps, SPLIT_K)
        step_lo = tl.program_id(2) * per_split
        step_hi = min(step_lo + per_split, k_steps)

    # The output (and residual) are channels_last, i.e. a row-major [M, OC] matrix.
    y_offs = offs_m[:, None] * OC + oc[None, :]
    y_mask = mask_m[:, None] & mask_n[None, :]
    if EARLY_RESIDUAL:
        # Short K (a block's last 1x1 conv in layer1-3: 1 to 4 K steps), memory-bound: the residual
        # tile is requested with the first A and B tiles, so its latency hides behind the K loop
        # instead of following it (the tile then waits in registers: 16-32 per thread).
        r_early = tl.load(r_ptr + y_offs, mask=y_mask, other=0.0)
    if GEMM_1X1:
        # x is [M, C] row-major: pixel m's channels start at m * sxw.
        a_rows = offs_m * sxw + g * Cg
        for c0 in range(step_lo * BLOCK_K, step_hi * BLOCK_K, BLOCK_K):
            c = c0 + offs_k
            if UNMASKED_C:
                a = tl.load(x_ptr + a_rows[:, None] + c[None, :], mask=mask_m[:, None], other=0.0)
                b = tl.load(w_ptr + oc[None, :] + c[:, None] * swc, mask=mask_n[None, :], other=0.0)
            else:
                mask_c = c < Cg
                a = tl.load(x_ptr + a_rows[:, None] + c[None, :], mask=mask_m[:, None] & mask_c[None, :], other=0.0)
                b = tl.load(w_ptr + oc[None, :] + c[:, None] * swc, mask=mask_c[:, None] & mask_n[None, :], other=0.0)
            acc = tl.dot(_tf32_operand(a, INPUT_PRECISION), _tf32_operand(b, INPUT_PRECISION), acc,
                       input_precision=INPUT_PRECISION)
    else:
        # m = (n * OH + oh) * OW + ow: two divisions per row, unsigned where the offsets are 32-bit
        # (m >= 0; a runtime signed division costs the sign fix-ups on top), instead of three signed.
        if INDEX_64:
            q = offs_m // OW
            n = q // OH
        else:
            q = (offs_m.to(tl.uint32) // OW.to(tl.uint32)).to(tl.int32)
            n = (q.to(tl.uint32) // OH.to(tl.uint32)).to(tl.int32)
        ow = offs_m - q * OW
        oh = q - n * OH
        ih0 = oh * stride_h - pad_h
        iw0 = ow * stride_w - pad_w
        x_rows = n * sxn + g * Cg
        # Every walk below addresses A as a per-row term plus a per-step (or per-column) term, and
        # checks each halo side with one unsigned compare: rows past M (and columns past K) get a
        # coordinate far below zero, which fails it.
        far = -(1 << 24)
        row_base = x_rows + ih0 * sxh + iw0 * sxw
        if FLAT_K and FLAT_CG % 4 == 0:
            # x is dense channels_last (the launcher's promise), so its strides and every group's
            # first channel are multiples of the channels per group: a group's channels at one pixel
            # are an aligned run the compiler may load as one vector (4 or 8 elements) instead of
            # element by element, which also lets it pipeline them with asynchronous copies.
            row_base = tl.multiple_of(row_base, 8 if FLAT_CG % 8 == 0 else 4)
        ih0_rows = tl.where(mask_m, ih0, far)
        if ROW_WALK:
            # Row walk (the stem: 7 taps x 3 channels = 21 of a 32-wide K step): one K step per
            # kernel row kh, K indexing (kw, c) within it. What depends on that index (the split
            # into kw and c, the column offsets, the left/right halo mask) is the same for every
            # step and is computed once; a step adds a scalar row offset and checks one compare
            # per output row. The (kh, kw, c) walk below decomposes every k of every step, and
            # Triton 3.6 lays the A tile out with 16 k per thread: 654 instructions per K step.
            J = KW * FLAT_CG
            kw_j = offs_k // FLAT_CG
            c_j = offs_k - kw_j * FLAT_CG
            mask_j = offs_k < J
            if PAD_C:
                # x holds FLAT_CG (4) channels per pixel, the last ones zero, and dil_w is 1 (the
                # launcher's _pad_channels): a kernel row's (kw, c) run is one contiguous, 8-byte
                # aligned stretch of memory, which the compiler loads 4 elements at a time with
                # asynchronous copies (2-byte elements, one load each, cannot be pipelined). The
                # weight has the real Cg channels: its rows for the padding channels are masked.
                dw_j = tl.where(mask_j, kw_j, far)
                a_offs = tl.multiple_of(row_base, FLAT_CG)[:, None] + offs_k[None, :]
                b_rows = kw_j * Cg + c_j
                b_mask = (mask_j & (c_j < Cg))[:, None] & mask_n[None, :]
                b_row_step = KW * Cg
            else:
                dw_j = tl.where(mask_j, kw_j * dil_w, far)
                a_offs = row_base[:, None] + (kw_j * dil_w * sxw + c_j)[None, :]
                b_rows = offs_k
                b_mask = mask_j[:, None] & mask_n[None, :]
                b_row_step = J
            iw_ok = (iw0[:, None] + dw_j[None, :]).to(tl.uint32) < W.to(tl.uint32)
            for kh in range(step_lo, step_hi):
                dh = kh * dil_h
                ih_ok = (ih0_rows + dh).to(tl.uint32) < H.to(tl.uint32)
                a = tl.load(x_ptr + a_offs + dh * sxh, mask=ih_ok[:, None] & iw_ok, other=0.0)
                if S2D_C > 0:
                    # The space-to-depth stem (S2D_C channels per quadrant (dh, dw) of a rearranged
                    # pixel): a 7-wide kernel leaves the last kernel column's dw = 1 quadrants (bit 2
                    # of S2D_TAIL) and the last row's dh = 1 quadrants (bit 1) outside the real
                    # kernel. Their weights are zero, but 0 x NaN or 0 x inf is NaN: zeroed in
                    # registers (the copies stay 16-byte asynchronous ones), so that a non-finite
                    # input reaches exactly the outputs it reaches in the 7x7 conv.
                    q_j = c_j // S2D_C
                    keep = q_j >= 0
                    if S2D_TAIL % 2 == 1:
                        keep = keep & ((kh != KH - 1) | (q_j < 2))
                    if S2D_TAIL >= 2:
                        keep = keep & ((kw_j != KW - 1) | (q_j % 2 == 0))
                    a = tl.where(keep[None, :], a, 0.0)
                b = tl.load(w_ptr + oc[None, :] + (kh * b_row_step + b_rows)[:, None] * OC, mask=b_mask, other=0.0)
                acc = tl.dot(_tf32_operand(a, INPUT_PRECISION), _tf32_operand(b, INPUT_PRECISION), acc,
                             input_precision=INPUT_PRECISION)
        elif FLAT_K:
            # K = (kh, kw, c) flattened, with the channel count a constexpr (FLAT_CG: 3 for the stem,
            # 4-16 for ResNeXt groups) so that splitting k is multiply-shift, not the ~20-instruction
            # runtime division that made this loop issue-bound (612 instructions per K step for the
            # stem's 128x64 tile, against 4 HGMMAs).
            K = KH * KW * FLAT_CG
            for k0 in range(step_lo * BLOCK_K, step_hi * BLOCK_K, BLOCK_K):
                k = k0 + offs_k
                mask_k = k < K
                c = k % FLAT_CG
                kw = (k // FLAT_CG) % KW
                kh = k // (FLAT_CG * KW)
                dh = kh * dil_h
                dw = kw * dil_w
                ih = (ih0_rows[:, None] + tl.where(mask_k, dh, far)[None, :]).to(tl.uint32)
                iw = (iw0[:, None] + dw[None, :]).to(tl.uint32)
                a_mask = (ih < H.to(tl.uint32)) & (iw < W.to(tl.uint32))
                a = tl.load(x_ptr + row_base[:, None] + (dh * sxh + dw * sxw + c)[None, :], mask=a_mask, other=0.0)
                # The launcher makes the weight dense [KH, KW, Cg, OC]: row k of B starts at k * OC.
                b = tl.load(w_ptr + oc[None, :] + k[:, None] * OC, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
                acc = tl.dot(_tf32_operand(a, INPUT_PRECISION), _tf32_operand(b, INPUT_PRECISION), acc,
                             input_precision=INPUT_PRECISION)
        else:
            # One loop over (tap, channel block) pairs rather than a loop per tap: with 64 channels
            # a tap is a single K step, and only one loop lets the pipeliner overlap the next taps'
            # loads with this tap's MMA. The tap and channel offsets are scalar per iteration.
            c_blocks = tl.cdiv(Cg, BLOCK_K)
            # (tap, channel block) carried from step to step: no runtime division per K step.
            tap = step_lo // c_blocks
            cb = step_lo - tap * c_blocks
            for it in range(step_lo, step_hi):
                c = cb * BLOCK_K + offs_k
                kh = tap // KW
                kw = tap - kh * KW
                dh = kh * dil_h
                dw = kw * dil_w
                valid = ((ih0_rows + dh).to(tl.uint32) < H.to(tl.uint32)) & ((iw0 + dw).to(tl.uint32) < W.to(tl.uint32))
                a_ptrs = x_ptr + row_base[:, None] + (dh * sxh + dw * sxw + c)[None, :]
                b_ptrs = w_ptr + oc[None, :] + (kh * swh + kw * sww) + c[:, None] * swc
                if UNMASKED_C:  # whole channel blocks: no channel mask
                    a = tl.load(a_ptrs, mask=valid[:, None], other=0.0)
                    b = tl.load(b_ptrs, mask=mask_n[None, :], other=0.0)
                else:
                    mask_c = c < Cg
                    a = tl.load(a_ptrs, mask=valid[:, None] & mask_c[None, :], other=0.0)
                    b = tl.load(b_ptrs, mask=mask_c[:, None] & mask_n[None, :], other=0.0)
                acc = tl.dot(_tf32_operand(a, INPUT_PRECISION), _tf32_operand(b, INPUT_PRECISION), acc,
                             input_precision=INPUT_PRECISION)
                cb += 1
                next_tap = (cb == c_blocks).to(tl.int32)
                tap += next_tap
                cb -= next_tap * c_blocks

    # Epilogue
    n_ok = mask_n
    out_ok = y_mask
    if SPLIT_K > 1:
        # This program's share goes to its slice of the fp32 workspace.
        share = tl.program_id(2)
        if INDEX_64:
            ws_stride = M.to(tl.int64) * OC
        else:
            ws_stride = M * OC
        ws_tile = ws_ptr + y_offs
        tl.store(ws_tile + share * ws_stride, acc, mask=y_mask)
        if SERIAL_SPLIT:
            # The program that finishes its tile's share last adds the shares and applies the epilogue
            # (no second kernel: at batch 1, 22 launches fewer per ResNet-50 forward). Every thread's
            # partial is stored before the barrier; one thread then counts the arrival with an
            # acquire-release atomic at GPU scope, and Triton hands its result to the whole program
            # through shared memory behind a second barrier: CUTLASS's serial split-K semaphore
            # (PTX checked: st.global; bar.sync; @tid0 atom.global.gpu.acq_rel.add; bar.sync). The
            # last program reads the other shares past L1 (.cg), resets the counter for the next
            # launch (and the next CUDA graph replay), and adds in share order: the result is
            # bit-identical to _splitk_reduce_kernel's. The others only mask their epilogue off.
            tl.debug_barrier()
            lock = lock_ptr + tl.program_id(1) * tl.num_programs(0) + pid
            last = tl.atomic_add(lock, 1, sem="acq_rel", scope="gpu") == SPLIT_K - 1
            # A loop, for 8 shares unrolled twice: two shares' tiles in flight at a time (4 L2 round
            # trips, not 7; 207 registers for a 64x128 tile on sm_90). Fully unrolled, the compiler
            # hoists every load: 255 registers and ~600 spilled words for 8 shares, ~20 for 4
            # unrolled twice. This program's own share is read back too (an L2 hit) rather than
            # kept live through the loop.
            total = tl.load(ws_tile, mask=y_mask & last, other=0.0, cache_modifier=".cg")
            for s in tl.range(1, SPLIT_K, loop_unroll_factor=2 if SPLIT_K > 4 else 1):
                total += tl.load(ws_tile + s * ws_stride, mask=y_mask & last, other=0.0, cache_modifier=".cg")
            tl.store(lock, 0, mask=last)
            acc = total
            n_ok = mask_n & last
            out_ok = y_mask & last
    if SPLIT_K == 1 or SERIAL_SPLIT:
        acc += tl.load(b_ptr + oc, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        if EARLY_RESIDUAL:
            acc += r_early.to(tl.float32)
        elif HAS_RESIDUAL:
            acc += tl.load(r_ptr + y_offs, mask=out_ok, other=0.0).to(tl.float32)
        if RELU:
            acc = relu_keep_nan(acc)
        tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=out_ok)


@triton.jit
def _splitk_reduce_kernel(ws_ptr, b_ptr, r_ptr, y_ptr, total, OC,
                          SPLIT_K: tl.constexpr, HAS_RESIDUAL: tl.constexpr, RELU: tl.constexpr,
                          BLOCK: tl.constexpr):
    """y = relu?(sum of the SPLIT_K partials + bias + residual), in a fixed order (deterministic)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    acc = tl.load(ws_ptr + offs, mask=mask, other=0.0)
    for s in tl.static_range(1, SPLIT_K):
        acc += tl.load(ws_ptr + tl.full([], s, tl.int64) * total + offs, mask=mask, other=0.0)
    acc += tl.load(b_ptr + offs % OC, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        acc += tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if RELU:
        acc = relu_keep_nan(acc)
    tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _pad_channels_kernel(x_ptr, y_ptr, P, C, H, W, sxn, sxc, sxh, sxw, CP: tl.constexpr, BLOCK: tl.constexpr):
    """y[p, c] = x[n, c, h, w] for c < C and 0 up to CP: x of any strides to a dense channels_last
    tensor of CP channels, pixels p = (n, h, w) in order."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    c = tl.arange(0, CP)
    w = offs % W
    rows = offs // W  # 64-bit like offs: no W * H product that could wrap
    h = rows % H
    n = rows // H
    mask_p = offs < P
    v = tl.load(x_ptr + (n * sxn + h * sxh + w * sxw)[:, None] + c.to(tl.int64)[None, :] * sxc,
                mask=mask_p[:, None] & (c < C)[None, :], other=0.0)
    tl.store(y_ptr + offs[:, None] * CP + c[None, :], v, mask=mask_p[:, None])


# Channels the stem's input is padded to (see pads_channels).
_PADDED_CHANNELS = 4


def pads_channels(cg: int, groups: int, kw: int, dilation_w: int) -> bool:
    """Whether the launcher pads x's channels to 4 (zeros) for this conv: the 3-channel stem (kernel
    width 5 to 8, undilated), where the row walk then reads each kernel row's (kw, c) run as 4-element
    vectors with asynchronous copies instead of one 2-byte load per element, and 4 x KW fills more
    than half of a 32-wide K step."""
    return cg == 3 and groups == 1 and dilation_w == 1 and 16 < _PADDED_CHANNELS * kw <= 32


def early_residual(residual: bool, split_k: int, kh: int, kw: int, cg: int, element_size: int) -> bool:
    """Whether the kernel loads the residual tile before its K loop: K of at most 4 steps of 64
    (ResNet's block-closing 1x1 convs in layer1 to layer3), no split (the reduction adds it), 16-bit
    data (an fp32 tile waiting in registers spills: 255 registers, 51 LDL on sm_90)."""
    return residual and split_k == 1 and kh * kw * cg <= 4 * 64 and element_size <= 2


def walk_constexprs(kh: int, kw: int, cg: int, flat_k: bool, gemm_1x1: bool, pad_c: bool, residual: bool,
                    split_k: int, element_size: int, serial_split: bool = False, taps=None) -> dict:
    """The kernel's K-walk and epilogue specialisation for one conv (the launcher's and
    ``aot_compile``'s: the code compiled offline is the code a GPU runs). ``taps``: a space-to-depth
    stem's (channels per quadrant, tail bits), see ``s2d_taps``."""
    return dict(
        S2D_C=taps[0] if taps else 0, S2D_TAIL=taps[1] if taps else 0,
        KH=kh, KW=kw, FLAT_K=flat_k, FLAT_CG=(_PADDED_CHANNELS if pad_c else cg) if flat_k else 1, PAD_C=pad_c,
        EVEN_C=even_c(cg, flat_k), GEMM_1X1=gemm_1x1, HAS_RESIDUAL=residual,
        EARLY_RESIDUAL=early_residual(residual, split_k, kh, kw, cg, element_size), SPLIT_K=split_k,
        SERIAL_SPLIT=split_k > 1 and serial_split,
    )


def _pad_channels(x: torch.Tensor) -> torch.Tensor:
    """x [N, C, H, W] (any strides) as a dense channels_last [N, 4, H, W] tensor, channels C..3 zero.
    Launched directly (``_launch_small``) from an input's second call on."""
    n, c, h, w = x.shape
    cp = _PADDED_CHANNELS
    y = torch.empty_strided((n, cp, h, w), nhwc_strides(n, cp, h, w), dtype=x.dtype, device=x.device)
    pixels = n * h * w
    block = 256
    _launch_small(_pad_channels_kernel, (triton.cdiv(pixels, block), 1, 1), (x, y),
                  (pixels, c, h, w, *x.stride()), dict(CP=cp, BLOCK=block))
    return y


# The space-to-depth stem. A 7x7 stride-2 conv on 3 channels is a 4x4 stride-1 conv on the input
# rearranged 2x2 pixels to 12 channels (padded to 16): x'[n, hs, ws, (dh * 2 + dw) * C + c] =
# x[n, c, 2 hs + dh - pad, 2 ws + dw - pad], w'[o, (dh * 2 + dw) * C + c, kh', kw'] = w[o, c, 2 kh' + dh,
# 2 kw' + dw] (zero past the 7x7 kernel). With 16 channels (32 bytes) per pixel a kernel row of x' is
# one 16-byte aligned run of 4 x 16 elements (128 bytes), which the row walk reads with 16-byte
# asynchronous copies in one 64-deep K step per kernel row (4 steps, K = 256). The 4-channel path reads
# each kernel row as 8-byte copies (pixels at stride 2 start 8-byte aligned), 7 rows of 28 in steps of
# 32 (K = 224): session 7's ncu put the stem at 84% of L1 throughput, 29% of DRAM, 511 us at batch 256.
S2D_CHANNELS = 16
# Where the stem is this large or more (batch 21+ at 224x224) the two rearranging launches (input,
# weight) are cheap beside it; below, the 4-channel path without them.
S2D_MIN_M = 1 << 18
# Opt-in (RESNET_FAST_S2D=1), where the tuner runs, never in the interpreter: timed against the
# 4-channel path on a stem shape's first call, kept only where clearly faster. Off by default since its
# first GPU run (H100, session 12, bf16 batch 256): 0.780 ms against the 4-channel path's 0.592 ms, so
# the timing only cost the first call its two tunings.
_s2d_auto = (os.environ.get("RESNET_FAST_AUTOTUNE", "1") != "0" and os.environ.get("RESNET_FAST_S2D", "0") == "1"
             and not INTERPRET)
S2D_MARGIN = 0.97
_s2d_choice = {}
_s2d_report = {}


def s2d_fits(cg: int, ocg: int, groups: int, kh: int, kw: int, stride, dilation) -> bool:
    """Whether the conv can run space-to-depth: a stem (at most 4 channels, one group, 64 output
    channels or more), stride 2, undilated, a 7x7 or 8x8 kernel (4x4 after the rearrangement: one
    64-deep K step per kernel row, the row walk, which is where the kernel zeroes the input under a
    7-wide kernel's missing taps; narrower outputs would get the flat walk's narrow tiles)."""
    return (groups == 1 and cg <= 4 and ocg >= 64 and list(stride) == [2, 2] and list(dilation) == [1, 1]
            and kh in (7, 8) and kw in (7, 8))


@triton.jit
def _space_to_depth_kernel(x_ptr, y_ptr, P, C, H, W, HS, WS, pad_h, pad_w, sxn, sxc, sxh, sxw,
                           CP: tl.constexpr, BLOCK: tl.constexpr):
    """y[p, (dh * 2 + dw) * C + c] = x[n, c, 2 hs + dh - pad_h, 2 ws + dw - pad_w] for pixels p = (n, hs,
    ws) of a dense channels_last [N, CP, HS, WS] y; zero outside x and in channels 4 C and up."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    j = tl.arange(0, CP)
    q = j // C
    c = j - q * C
    dh = q // 2
    dw = q - 2 * dh
    ws = offs % WS
    rows = offs // WS
    hs = rows % HS
    n = rows // HS
    ih = 2 * hs[:, None] + dh[None, :] - pad_h
    iw = 2 * ws[:, None] + dw[None, :] - pad_w
    mask_p = offs < P
    inside = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    v = tl.load(x_ptr + (n * sxn)[:, None] + (c.to(tl.int64) * sxc)[None, :] + ih * sxh + iw * sxw,
                mask=mask_p[:, None] & (j < 4 * C)[None, :] & inside, other=0.0)
    tl.store(y_ptr + offs[:, None] * CP + j[None, :], v, mask=mask_p[:, None])


@triton.jit
def _s2d_weight_kernel(w_ptr, y_ptr, OC, C, KH, KW, swo, swc, swh, sww, KS_W: tl.constexpr, CP: tl.constexpr,
                       BLOCK: tl.constexpr):
    """Row r = (kh', kw', j) of the rearranged weight, dense [KS_H, KS_W, CP, OC] (output channels
    innermost, as the conv kernel reads it): y[r, o] = w[o, c, 2 kh' + dh, 2 kw' + dw] for j = (dh * 2 +
    dw) * C + c, zero past the kernel and in channels 4 C and up."""
    r = tl.program_id(0)
    j = r % CP
    t = r // CP
    kws = t % KS_W
    khs = t // KS_W
    q = j // C
    c = j - q * C
    kh = 2 * khs + q // 2
    kw = 2 * kws + q % 2
    o = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    real = (j < 4 * C) & (kh < KH) & (kw < KW)
    v = tl.load(w_ptr + o * swo + c * swc + kh * swh + kw * sww, mask=(o < OC) & real, other=0.0)
    tl.store(y_ptr + r * OC + o, v, mask=o < OC)


# (kernel, every tensor's shape/strides/dtype/device/alignment, the scalars) -> a direct launch.
_small_plans = {}


def _launch_small(fn, grid, tensors, scalars, constexprs: dict, num_warps: int = 4) -> None:
    """Launch a small helper kernel whose parameters are ``tensors``, then ``scalars``, then
    ``constexprs`` (in that order), directly (kernels/launch.py) once a call with the same key has
    launched it: these run on every forward, and a launch through JITFunction.run costs ~100 us of
    host time on an H100 host."""
    key = None
    if direct.ENABLED and _direct_ok(tensors[0]):
        key = (fn, tuple((t.shape, t.stride(), t.dtype, t.device, t.data_ptr() % 16 == 0) for t in tensors),
               tuple(scalars), tuple(constexprs.items()), grid, num_warps)
    plan = _small_plans.get(key) if key is not None else None
    if plan is not None:
        try:
            plan.launch(tensors[0].get_device(),
                        tuple(plan.pointer(t) for t in tensors) + tuple(scalars) + tuple(constexprs.values()))
            return
        except (TypeError, ValueError, AttributeError) as e:  # as in _run_plan: a launcher refusing the call
            direct.disable(e)
            key = None
    kernel = fn[grid](*tensors, *scalars, **constexprs, num_warps=num_warps)
    if key is not None:
        launch = direct.Direct.of(kernel, grid)
        if launch is not None:
            if len(_small_plans) >= 64:
                _small_plans.clear()
            _small_plans[key] = launch


def _space_to_depth(x: torch.Tensor, hs: int, ws: int, padding) -> torch.Tensor:
    n, c, h, w = x.shape
    cp = S2D_CHANNELS
    y = torch.empty_strided((n, cp, hs, ws), nhwc_strides(n, cp, hs, ws), dtype=x.dtype, device=x.device)
    pixels, block = n * hs * ws, 128
    _launch_small(_space_to_depth_kernel, (triton.cdiv(pixels, block), 1, 1), (x, y),
                  (pixels, c, h, w, hs, ws, padding[0], padding[1], *x.stride()), dict(CP=cp, BLOCK=block))
    return y


def _s2d_weight(weight: torch.Tensor, ks_h: int, ks_w: int) -> torch.Tensor:
    oc, c, kh, kw = weight.shape
    cp = S2D_CHANNELS
    y = torch.empty_strided((oc, cp, ks_h, ks_w), (1, oc, ks_w * cp * oc, cp * oc), dtype=weight.dtype,
                            device=weight.device)
    block = min(128, triton.next_power_of_2(oc))
    _launch_small(_s2d_weight_kernel, (ks_h * ks_w * cp, triton.cdiv(oc, block), 1), (weight, y),
                  (oc, c, kh, kw, *weight.stride()), dict(KS_W=ks_w, CP=cp, BLOCK=block))
    return y


def s2d_taps(c: int, kh: int, kw: int) -> tuple:
    """What the rearranged conv's kernel must know to zero the input under the taps past an odd
    kernel (``S2D_C``, ``S2D_TAIL``): the channels per quadrant, and bit 1 for an odd height (the last
    kernel row's dh = 1 quadrants), bit 2 for an odd width (the last column's dw = 1 quadrants)."""
    return (c, (kh % 2) | ((kw % 2) << 1))


def _s2d_conv(x, weight, bias, residual, padding, relu, y) -> None:
    """The stem as a stride-1 conv on its space-to-depth input: y = relu?(conv(x, w) + bias + residual)."""
    oc, c, kh, kw = weight.shape
    ks_h, ks_w = (kh + 1) // 2, (kw + 1) // 2
    xs = _space_to_depth(x, y.shape[2] + ks_h - 1, y.shape[3] + ks_w - 1, padding)
    conv2d_bias_act(xs, _s2d_weight(weight, ks_h, ks_w), bias, residual, [1, 1], [0, 0], [1, 1], 1, relu, out=y,
                    taps=s2d_taps(c, kh, kw))


_compile_pool = None
_precompile_failed = False


def _precompile(args, constexprs, grid) -> None:
    """Compile every config the autotuner is about to time for this launch at once, on a thread
    pool (Triton's AsyncCompileMode; its passes and ptxas release the GIL), instead of one after the
    other inside the tuning loop: a ResNet's first forward compiles ~40 (specialisation, config)
    pairs. Any failure falls back to the autotuner's own serial compiles.
    RESNET_FAST_PARALLEL_COMPILE=0 turns it off."""
    global _compile_pool, _precompile_failed
    if (INTERPRET or _precompile_failed or not hasattr(triton, "AsyncCompileMode")
            or os.environ.get("RESNET_FAST_PARALLEL_COMPILE", "1") == "0"):
        return
    try:
        if _compile_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _compile_pool = ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)),
                                               thread_name_prefix="resnet_fast_compile")
        with triton.AsyncCompileMode(_compile_pool):
            _conv2d_bias_act_kernel.warmup(*args, grid=grid, **constexprs)
    except Exception as e:  # noqa: BLE001 - an optimisation only: never break a launch
        _precompile_failed = True
        try:  # Triton 3.6 leaves the mode active in this thread when a compile in it failed
            from triton.runtime import _async_compile

            _async_compile.active_mode.set(None)
        except Exception:  # noqa: BLE001
            pass
        import warnings

        warnings.warn(f"resnet_fast: parallel Triton compile unavailable ({type(e).__name__}: {e}); compiling serially")


# tuning key -> launch kwargs of the config the autotuner picked for it (see conv2d_bias_act).
_chosen_configs = {}
_tuning_lock = threading.Lock()


def config_name(config) -> str:
    """"128x64x64 w4 s3" for a triton.Config or its ``all_kwargs()`` dict ("... p2" for the TMA kernel's
    persistent configs: two programs per SM)."""
    k = config.all_kwargs() if isinstance(config, triton.Config) else config
    persistent = f" p{k['PER_SM']}" if k.get("PER_SM") else ""
    return f"{k['BLOCK_M']}x{k['BLOCK_N']}x{k['BLOCK_K']} w{k['num_warps']} s{k['num_stages']}{persistent}"


# One entry per tuning run of the general kernel (benchmark reports): the batch, M, whether it was a
# wave split's launch, the K split, the config chosen and every config's median as the tuner timed it
# or read it from its disk cache (None where only one config was left, or the tuner's memory had it).
tuning_log = []


def _first_timings(timings):
    if not timings:
        return None
    return {config_name(c): (t[0] if isinstance(t, (list, tuple)) else t) for c, t in timings.items()}


def _describe_tma(choice) -> str:
    return "TMA kernel " + config_name(choice) if choice else "general kernel (TMA not clearly faster)"


def tuning_state():
    """What the autotuner knows, for benchmark reports: ``({tuning key: chosen config}, {config:
    median ms})``, the latter from the most recent tuning run (or its disk-cached timings)."""
    tuner = _conv2d_bias_act_kernel
    chosen = {str(key): config_name(c) for key, c in getattr(tuner, "cache", {}).items()}
    # 1x1 layers where the TMA kernel was timed against the general one: which won.
    for key, choice in _tma_choice.items():
        chosen[f"tma {key}"] = _tma_report.get(key) or _describe_tma(choice)
    if _tma_failure:
        chosen["tma failure"] = _tma_failure
    for key, won in _s2d_choice.items():
        chosen[f"stem {key}"] = _s2d_report.get(key, "space-to-depth" if won else "4-channel path")
    for key, n1 in _split_choice.items():
        chosen[f"wave split {key}"] = _split_report.get(key, f"images [0, {n1}) and [{n1}, N)" if n1 else "one launch")
    return chosen, _first_timings(getattr(tuner, "configs_timings", None)) or {}


# How split-K shares are added up: "serial" (default) in the kernel itself, by the program of each
# tile that finishes last (SERIAL_SPLIT); "kernel", by the separate _splitk_reduce_kernel.
_SPLIT_K_REDUCE = os.environ.get("RESNET_FAST_SPLIT_K_REDUCE", "serial")
if _SPLIT_K_REDUCE not in ("serial", "kernel"):
    raise ValueError(f"RESNET_FAST_SPLIT_K_REDUCE: expected serial or kernel, got {_SPLIT_K_REDUCE!r}")
SERIAL_SPLIT_K = _SPLIT_K_REDUCE == "serial"
# (device, stream) -> int32 arrival counters of SERIAL_SPLIT launches, all zero between launches.
_stream_counters = {}


def _split_counters(x: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` zeroed int32 counters for a SERIAL_SPLIT launch (each tile's last program puts its
    own back to zero). Outside capture: one buffer per (device, stream), reused, since launches on a
    stream run one after another. During CUDA graph capture: a slice the capture owns, from
    resnet_fast.cuda_graph (no extra graph node), else a fresh zeroed buffer (one memset node), so
    that graphs replayed concurrently on different streams never share counters."""
    if _capturing(x):
        from resnet_fast.graphs import capture_counters

        arena = capture_counters()
        taken = arena.take(count, x.device) if arena is not None else None
        return taken if taken is not None else torch.zeros(count, dtype=torch.int32, device=x.device)
    key = (x.device, torch.cuda.current_stream(x.device).cuda_stream if x.is_cuda else 0)
    counters = _stream_counters.get(key)
    if counters is None or counters.numel() < count:
        counters = torch.zeros(max(count, 4096), dtype=torch.int32, device=x.device)
        _stream_counters[key] = counters
    return counters


def _on_the_tensors_device(launcher):
    """Triton launches on the current CUDA device (and autotuning times there): switch to x's."""
    @functools.wraps(launcher)
    def on_device(x, *args, **kwargs):
        index = x.get_device()  # -1 on the CPU
        if index >= 0 and index != torch.cuda.current_device():
            with torch.cuda.device(x.device):
                return launcher(x, *args, **kwargs)
        return launcher(x, *args, **kwargs)

    return on_device


@_on_the_tensors_device
def conv2d_bias_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    residual: Optional[torch.Tensor],
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    groups: int,
    relu: bool,
    out: Optional[torch.Tensor] = None,
    index_64: Optional[bool] = None,
    split_k: Optional[int] = None,
    serial_split: Optional[bool] = None,
    tma: Optional[bool] = None,
    batch_split: Optional[int] = None,
    part: bool = False,
    s2d: Optional[bool] = None,
    taps: Optional[tuple] = None,
) -> torch.Tensor:
    """Host launcher; shapes were checked by the op. Returns a channels_last tensor in x's dtype.

    ``out`` (tests) is the buffer to write, dense channels_last of the output shape. ``index_64``
    forces (True) or forbids (False) 64-bit offsets; by default they are used only where an
    activation has 2^31 elements or more. ``split_k`` forces a K split (tests); by default
    ``choose_split_k`` decides. ``serial_split`` picks how the shares are added (tests): in the conv
    kernel (True) or by a second kernel (False); by default ``SERIAL_SPLIT_K``. ``tma`` forces (True)
    or forbids (False) the TMA kernel for 1x1 convs; by default it runs where it tuned faster.
    ``batch_split`` forces (n1 > 0) or forbids (0) two launches, on images [0, n1) and [n1, N); by
    default ``wave_split`` proposes it where the last wave of big tiles is at most half full, and it
    runs where it timed faster. ``part`` marks such a launch (internal): it is never split again,
    and tunes for its exact M. ``s2d`` forces (True) or forbids (False) the space-to-depth stem
    (``s2d_fits``); by default the 4-channel path, and under RESNET_FAST_S2D=1 space-to-depth where it
    timed faster than the 4-channel path (M of ``S2D_MIN_M`` or more). ``taps`` (internal) marks the rearranged conv of such a stem
    (``s2d_taps``).
    """
    global launch_count
    if batch_split is not None:
        if isinstance(batch_split, bool) or not isinstance(batch_split, int) or not 0 <= batch_split < x.shape[0]:
            raise ValueError(f"batch_split: expected 0 (one launch) or a count of images in [1, {x.shape[0]}) for "
                             f"the first of two launches, got {batch_split!r}")
        if batch_split and not (index_64 is None and split_k is None and serial_split is None and tma is None):
            raise ValueError("batch_split: two launches cannot also force index_64, split_k, serial_split or tma "
                             "(each launch chooses its own)")
    if s2d:
        if not s2d_fits(weight.shape[1], weight.shape[0] // groups, groups, weight.shape[2], weight.shape[3], stride,
                        dilation):
            raise ValueError("s2d=True: only a stem conv runs space-to-depth (at most 4 channels, one group, 64 output "
                             f"channels or more, a 7x7 or 8x8 kernel, stride 2, no dilation), got weight {tuple(weight.shape)}, stride "
                             f"{list(stride)}, dilation {list(dilation)}, groups {groups}")
        if not (index_64 is None and split_k is None and serial_split is None and tma is None and not batch_split):
            raise ValueError("s2d=True cannot also force index_64, split_k, serial_split, tma or batch_split "
                             "(its stride-1 conv chooses its own)")
    plan_key = None
    if (direct.ENABLED and _direct_ok(x) and index_64 is None and split_k is None and serial_split is None
            and not batch_split):
        plan_key = _plan_key(x, weight, bias, residual, out, stride, padding, dilation, groups, relu, tma,
                             "part" if part else batch_split, s2d, taps)
        y = _run_plan(plan_key, x, weight, bias, residual, out)
        if y is not None:
            return y
    x_in, weight_in, bias_in, residual_in = x, weight, bias, residual

    def inputs_kept(x_padded: bool = False) -> bool:
        """Whether the launch used the caller's tensors (no copy, repack or tuning clone), which a
        plan reuses; the stem's padded x is redone by the plan itself."""
        return (x is x_in or x_padded) and weight is weight_in and bias is bias_in and residual is residual_in
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"resnet_fast Triton conv: expected float32, float16 or bfloat16, got {x.dtype}")
    reason = unsupported(x, padding, groups)
    if reason is not None:
        raise ValueError(f"resnet_fast Triton conv: {reason} (the op resnet_fast::conv2d_bias_act runs PyTorch's conv there)")
    n, c, h, w = x.shape
    oc, cg, kh, kw = weight.shape
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if out is None:
        y = torch.empty_strided((n, oc, oh, ow), nhwc_strides(n, oc, oh, ow), dtype=x.dtype, device=x.device)
    else:
        if out.shape != (n, oc, oh, ow) or out.stride() != nhwc_strides(n, oc, oh, ow) or out.dtype != x.dtype:
            raise ValueError(f"out: expected a dense channels_last {x.dtype} tensor of shape {(n, oc, oh, ow)}")
        y = out
    if y.numel() == 0:
        return y
    ocg = oc // groups
    gemm_1x1 = kh == 1 and kw == 1 and list(stride) == [1, 1] and list(padding) == [0, 0]
    flat_k = not gemm_1x1 and cg < 32
    dense = (1, oc, kw * cg * oc, cg * oc)
    if any(size > 1 and st != want for size, st, want in zip(weight.shape, weight.stride(), dense)):
        # The kernel wants the weight dense [KH, KW, C/groups, OC], output channels innermost
        # (coalesced B tiles; the flat-K walk also reads row k of B at k * OC); folded weights
        # already come that way (resnet_fast.fused.to_oc_last), others are repacked here.
        weight = to_oc_last(weight)
    if bias.stride(0) != 1:
        bias = bias.contiguous()  # the kernels index bias by output channel
    conv = (stride, padding, dilation, groups, relu)
    stored = None  # (kind, key) where this call makes the first run of an earlier process's decision
    if (s2d is None and _s2d_auto and n * oh * ow >= S2D_MIN_M and index_64 is None and split_k is None
            and serial_split is None and tma is None and batch_split is None and not part
            and s2d_fits(cg, ocg, groups, kh, kw, stride, dilation)):
        # The stem: its 4-channel path, or space-to-depth (a stride-1 conv on 16 channels), whichever
        # timed faster on the layer shape's first call.
        s2d_key = _layer_key(x, weight, residual, *conv) + (tuple(x.stride()),)
        s2d = _s2d_choice.get(s2d_key)
        if s2d is None:
            s2d = _stored_decision("s2d", s2d_key, x.device, (True, False), _s2d_choice, _s2d_report,
                                   lambda v: "space-to-depth" if v else "4-channel path")
        if s2d and ("s2d", s2d_key) in _from_disk:
            stored = ("s2d", s2d_key)
        if s2d is None:
            r = _timing_residual(x, weight, residual, y)
            counted = launch_count
            won, timed = _timed_choice(
                lambda: conv2d_bias_act(x, weight, bias, r, *conv, out=y, s2d=False),
                lambda: _s2d_conv(x, weight, bias, r, padding, relu, y),
                "the space-to-depth stem", "the stem runs its 4-channel path from now on", _no_s2d, S2D_MARGIN)
            _s2d_choice[s2d_key] = won
            _s2d_report[s2d_key] = f"{'space-to-depth' if won else '4-channel path'}: space-to-depth {timed} for 4 channels"
            decisions.store.put("s2d", s2d_key, x.device, won)  # (a frozen store, after a failure, keeps nothing)
            launch_count = counted + 1  # as a later call counts (not the timing runs)
            return y
    if s2d and stored:
        ran, residual = _stored_first_run(stored, lambda r: _s2d_conv(x, weight, bias, r, padding, relu, y), residual, y,
                                          "the space-to-depth stem", "the stem runs its 4-channel path from now on",
                                          _no_s2d, _s2d_choice, False)
        if not ran:
            s2d, stored = False, None
    if s2d:
        if not stored:
            _s2d_conv(x, weight, bias, residual, padding, relu, y)
        if plan_key is not None and inputs_kept():
            pad = tuple(padding)  # (the caller's list may change after this call)
            _keep_plan(plan_key, _ComposedPlan(
                "s2d", lambda x, weight, bias, residual, y: _s2d_conv(x, weight, bias, residual, pad, relu, y), y))
        return y  # (its conv counted itself)
    if (batch_split is None and not part and _split_auto and not flat_k
            and index_64 is None and split_k is None and serial_split is None and tma is None):
        # (Before x is padded or made dense: each launch does that for its own images.)
        # A wave-split candidate (layer4's 512-channel convs at batch 256): one launch, or two whose
        # first fills whole waves of big tiles. Decided by timing on the layer shape's first call.
        n1 = wave_split(n, oh * ow, ocg, kh * kw * cg, groups, _sm_count(x.device))
        if n1:
            split_key = _layer_key(x, weight, residual, *conv)
            batch_split = _split_choice.get(split_key)
            if batch_split is None:
                batch_split = _stored_decision("split", split_key, x.device, (0, n1), _split_choice, _split_report,
                                               lambda v: f"two launches: images [0, {v}) + [{v}, N)" if v else "one launch")
            if batch_split and ("split", split_key) in _from_disk:
                stored = ("split", split_key)
            if batch_split is None:
                r = _timing_residual(x, weight, residual, y)
                counted = launch_count
                won = _split_choice[split_key] = _decide_wave_split(
                    lambda: conv2d_bias_act(x, weight, bias, r, *conv, out=y, batch_split=0),
                    lambda: _split_launch(n1, x, weight, bias, r, y, conv), n1, split_key)
                decisions.store.put("split", split_key, x.device, won)
                launch_count = counted + (2 if won else 1)  # as a later call counts (not the timing runs)
                return y  # (the decision's last run, the split one, wrote y)
    if batch_split and stored:
        n1 = batch_split
        ran, residual = _stored_first_run(stored, lambda r: _split_launch(n1, x, weight, bias, r, y, conv), residual, y,
                                          "a wave split's two launches", "every conv runs as one launch from now on",
                                          _no_more_splits, _split_choice, 0)
        if not ran:
            batch_split = 0
    if batch_split:
        if not stored:
            _split_launch(batch_split, x, weight, bias, residual, y, conv)
        if plan_key is not None and inputs_kept():
            n1, frozen = batch_split, (tuple(stride), tuple(padding), tuple(dilation), groups, relu)
            _keep_plan(plan_key, _ComposedPlan(
                "split", lambda x, weight, bias, residual, y: _split_launch(n1, x, weight, bias, residual, y, frozen), y))
        return y  # (each launch counted itself)
    pad_c = flat_k and pads_channels(cg, groups, kw, dilation[1])
    if pad_c:
        x = _pad_channels(x)  # also makes it dense channels_last
    elif x.stride() != nhwc_strides(n, c, h, w):
        x = torch.empty_strided(x.shape, nhwc_strides(n, c, h, w), dtype=x.dtype, device=x.device).copy_(x)
    if residual is not None and (residual.stride() != y.stride() or residual.dtype != y.dtype):
        residual = torch.empty_like(y).copy_(residual)
    # fp16/bf16 operands ignore the setting (tf32 is Triton's default); fp32 gets TF32 tensor cores
    # only where cuDNN's flag allows them, else exact fp32 FMA.
    if x.dtype != torch.float32 or (x.device.type == "cuda" and cudnn_conv_allows_tf32()):
        precision = "tf32"
    else:
        precision = "ieee"

    m = n * oh * ow
    if split_k is None:
        split_k = choose_split_k(m, ocg, groups, cg, kh, kw, flat_k, gemm_1x1, _sm_count(x.device))
    serial = split_k > 1 and (SERIAL_SPLIT_K if serial_split is None else serial_split)
    workspace = counters = None
    if split_k > 1:
        workspace = torch.empty((split_k, m, oc), dtype=torch.float32, device=x.device)
    if serial:
        # One counter per output tile: as many as the smallest tiles (16 x 16) make.
        counter_count = triton.cdiv(m, 16) * triton.cdiv(ocg, 16) * groups
        counters = _split_counters(x, counter_count)

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(ocg, meta["BLOCK_N"]), groups, split_k)

    # A wave split's launch tunes for its exact M: its images were chosen to fill whole waves, and the
    # bucket would hand it the tuning of the whole batch (layer4 at batch 256: both in 16384).
    m_bucket = m if part else triton.next_power_of_2(m)
    args = (
        x, weight, bias, residual if residual is not None else y, y,
        y if workspace is None else workspace, bias if counters is None else counters,
        n, h, w, oh, ow, oc, cg, ocg, m_bucket,
        x.stride(0), x.stride(2), x.stride(3),
        weight.stride(1), weight.stride(2), weight.stride(3),
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
    )
    constexprs = dict(
        walk_constexprs(kh, kw, cg, flat_k, gemm_1x1, pad_c, residual is not None, split_k, x.element_size(),
                        serial, taps),
        RELU=relu, INPUT_PRECISION=precision,
        INDEX_64=index_64 if index_64 is not None else needs_index_64(x, weight, y, split_k),
    )
    # The autotuner's own key (its `key` list plus the tensors' dtypes). Once a key is tuned, launch
    # the kernel with its config directly: Autotuner.run rebuilds dicts over all 35 arguments on
    # every call, Python overhead paid 53 times per ResNet-50 forward.
    tuning_key = (m_bucket, ocg, cg, kh, kw, flat_k, gemm_1x1, residual is not None, split_k, serial, precision,
                  tuple(stride), tuple(dilation), x.dtype, bias.dtype)
    # The TMA kernel for 1x1 stride-1 convs (kernels/conv1x1_tma.py): forced (tma=True, tests),
    # forbidden (False), or by default on a GPU that has it, tuned beside the general kernel on a
    # layer shape's first call and kept only if faster there.
    want_tma = tma if tma is not None else _tma_by_default(m)
    tma_possible = (want_tma and split_k == 1 and conv1x1_tma.fits(x, weight, y, residual, groups, gemm_1x1)
                    and conv1x1_tma.available(x))
    if tma and not tma_possible:
        raise ValueError("tma=True: this conv cannot take the TMA kernel (it needs a 1x1 stride-1 conv of one group, "
                         "16-bit data with 16-byte-aligned rows, no K split, and an sm_90+ GPU or the interpreter)")
    auto_tma = tma is None and tma_possible
    tma_choice = _tma_choice.get(tuning_key) if auto_tma else None
    if auto_tma and tma_choice is None:
        tma_choice = _stored_decision("tma", tuning_key, x.device, [False] + [c.all_kwargs() for c in conv1x1_tma.tma_configs()],
                                      _tma_choice, _tma_report, _describe_tma)
    if tma_choice and ("tma", tuning_key) in _from_disk:
        try:  # the first run of an earlier process's choice: a failure here falls back, as in _decide_tma
            kernel = conv1x1_tma.launch(x, weight, bias, residual, y, relu, tma_choice)
            _from_disk.discard(("tma", tuning_key))
        except Exception as e:  # noqa: BLE001 - an optimisation only: never break a launch
            _from_disk.discard(("tma", tuning_key))
            _no_tma(e)
            tma_choice = _tma_choice[tuning_key] = False
    elif tma_choice:
        kernel = conv1x1_tma.launch(x, weight, bias, residual, y, relu, tma_choice)
    if tma_choice:
        if plan_key is not None and inputs_kept():
            _remember_tma(plan_key, kernel, x, weight, bias, residual, y, relu, tma_choice)
        launch_count += 1
        return y
    tma_config = _tma_forced.get(tuning_key) if tma else None
    config_kwargs = _chosen_configs.get(tuning_key)
    tuning = (config_kwargs is None) if not tma else tma_config is None
    decide_tma = auto_tma and tma_choice is None
    if tuning or decide_tma:
        if _capturing(x):
            raise _not_tuned(x, weight)
        if (workspace is None or serial) and residual is not None and _same_storage(residual, y):
            # In place (out is the residual): tuning runs every candidate many times on these
            # arguments, and each run would add the residual again. Tune (and let the tuner's final
            # run write y) against a copy of it: one copy, on the first call of a layer shape only.
            residual = residual.clone()
            args = args[:3] + (residual,) + args[4:]
    if tma:
        with _tuning_lock:
            kernel = conv1x1_tma.launch(x, weight, bias, residual, y, relu, tma_config, m_bucket=m_bucket)
            if tma_config is None:
                _tma_forced[tuning_key] = conv1x1_tma.best_config()
        if plan_key is not None and tma_config is not None and inputs_kept():
            _remember_tma(plan_key, kernel, x, weight, bias, residual, y, relu, tma_config)
        launch_count += 1
        return y
    if config_kwargs is None:
        with _tuning_lock:  # best_config is the tuner's last pick: no other launch in between
            _precompile(args, constexprs, grid)
            _conv2d_bias_act_kernel.configs_timings = None
            _conv2d_bias_act_kernel[grid](*args, **constexprs)
            config = getattr(_conv2d_bias_act_kernel, "best_config", None)
            timings = getattr(_conv2d_bias_act_kernel, "configs_timings", None)
        if config is not None:
            config_kwargs = _chosen_configs[tuning_key] = config.all_kwargs()
            if len(tuning_log) < 4096:
                tuning_log.append({"n": n, "m": m, "part": part, "split_k": split_k, "best": config_name(config),
                                   "config_ms": _first_timings(timings)})
    else:
        kernel = _conv2d_bias_act_kernel.fn[grid](*args, **constexprs, **config_kwargs)
        if plan_key is not None and not decide_tma and inputs_kept(pad_c):
            values = direct.arg_values(_conv2d_bias_act_kernel.fn, args, {**constexprs, **config_kwargs})
            if values is not None:
                _remember(plan_key, kernel, grid(config_kwargs), y, relu, tail=values[7:], pad_c=pad_c,
                          workspace=None if workspace is None else tuple(workspace.shape),
                          counters=counter_count if serial else 0, reduce=workspace is not None and not serial)
    if decide_tma and config_kwargs is not None:
        _tma_choice[tuning_key] = _decide_tma(
            lambda: _conv2d_bias_act_kernel.fn[grid](*args, **constexprs, **config_kwargs),
            x, weight, bias, residual, y, relu, m_bucket=m_bucket)
        decisions.store.put("tma", tuning_key, x.device, _tma_choice[tuning_key])
    if workspace is not None and not serial:
        _splitk_reduce(workspace, bias, residual, y, relu)
    launch_count += 1
    return y


# Direct launches (kernels/launch.py): a conv call whose arguments have every property the launch
# depends on in common with an earlier call (shapes, strides, dtypes, devices, 16-byte alignment, the
# conv's geometry, the tuning state) reuses that call's compiled kernel, grid and scalar arguments.
_plans = {}
_MAX_PLANS = 4096


def _plan_key(x, weight, bias, residual, out, stride, padding, dilation, groups, relu, tma=None, split=None,
              s2d=None, taps=None):
    """Everything a launch of this conv depends on, or None (no direct launch: a pointer that is not
    16-byte aligned, which Triton would compile another specialisation for)."""
    ptrs = x.data_ptr() | weight.data_ptr() | bias.data_ptr()
    extra = None
    if residual is not None:
        ptrs |= residual.data_ptr()
        extra = (residual.shape, residual.stride(), residual.dtype, residual.device)
    if out is not None:
        ptrs |= out.data_ptr()
        extra = (extra, out.shape, out.stride(), out.dtype, out.device,
                 residual is not None and out.data_ptr() == residual.data_ptr())
    if ptrs & 15:
        return None
    tf32 = cudnn_conv_allows_tf32() if x.dtype == torch.float32 else None
    # Devices as torch.device (type and index): run_planned skips the op's one-device check, and
    # get_device() alone is -1 for the CPU and meta alike, 0 for cuda:0 and any other backend's 0.
    return (x.shape, x.stride(), x.dtype, x.device, weight.shape, weight.stride(), weight.dtype,
            weight.device, bias.shape, bias.stride(), bias.dtype, bias.device, extra,
            tuple(stride), tuple(padding), tuple(dilation), groups, relu, tf32, _tma_auto, tma, split, _split_auto,
            s2d, taps, _s2d_auto)


def _direct_ok(x: torch.Tensor) -> bool:
    return x.is_cuda  # (the CPU tests route direct launches to the interpreter)


def _run_plan(plan_key, x, weight, bias, residual, out) -> Optional[torch.Tensor]:
    """y from the plan kept under ``plan_key``, or None (no such plan, or it cannot run this call)."""
    global launch_count
    plan = _plans.get(plan_key) if plan_key is not None else None
    if plan is None or not plan.current():
        return None
    if isinstance(plan, _ComposedPlan):
        return plan.run(x, weight, bias, residual, out)  # (its launches take their own plans, or the full path)
    try:
        y = plan.run(x, weight, bias, residual, out)
    except (TypeError, ValueError, AttributeError) as e:
        # A launcher of another Triton refusing the call (raised before the kernel was queued):
        # the normal path. Anything else (out of memory, a CUDA error) is not theirs.
        direct.disable(e)
        _plans.clear()
        return None
    if y is not None:
        launch_count += 1
    return y


def run_planned(x, weight, bias, residual, stride, padding, dilation, groups, relu, out=None) -> Optional[torch.Tensor]:
    """The op's first try (resnet_fast/ops.py), before its checks: a call whose every launch property
    (``_plan_key``) matches an earlier call's runs that call's plan; None sends it down the full path.

    Skipping the op's checks here is sound because they read nothing the key does not hold: shapes,
    dtypes, devices and the conv's geometry, all equal to those of a call that passed them. A tensor
    on another device than the current one goes the full way (the launcher switches devices there).
    Eager batch-1 forwards are host-bound on an H100 (session 7: ~84 us of host time a conv); this
    leaves one key and one dictionary lookup between the model and the launch."""
    if not (direct.ENABLED and _plans and _direct_ok(x)):
        return None
    if x.is_cuda and x.get_device() != torch.cuda.current_device():
        return None
    return _run_plan(_plan_key(x, weight, bias, residual, out, stride, padding, dilation, groups, relu),
                     x, weight, bias, residual, out)


class _Plan:
    """How to repeat one launch: the output's shape, the buffers to allocate, the compiled kernel."""

    __slots__ = ("direct", "tail", "y_shape", "y_strides", "pad_c", "workspace", "counters", "reduce", "tma_config",
                 "relu", "tuning")

    def __init__(self, direct_launch, tail, y, pad_c, workspace, counters, reduce, tma_config, relu):
        self.direct = direct_launch
        self.tail = tuple(tail)
        self.y_shape, self.y_strides = tuple(y.shape), tuple(y.stride())
        self.pad_c, self.workspace, self.counters, self.reduce = pad_c, workspace, counters, reduce
        self.tma_config, self.relu = tma_config, relu
        self.tuning = _tuning_tables()

    def current(self) -> bool:
        """Whether the tuning tables the plan came from are still the launcher's (tests and tools swap
        them to tune afresh; the plan holds them, so a new table never reuses an old one's identity),
        and the TMA kernel is still allowed for a TMA plan (RESNET_FAST_TMA is read on every call)."""
        return _tables_current(self.tuning) and (self.tma_config is None or conv1x1_tma.allowed())

    def run(self, x, weight, bias, residual, out):
        """y, or None where this call needs the full launcher (counters not 16-byte aligned)."""
        device = x.get_device()
        counters = _split_counters(x, self.counters) if self.counters else None
        if counters is not None and counters.data_ptr() & 15:
            return None
        y = out if out is not None else torch.empty_strided(self.y_shape, self.y_strides, dtype=x.dtype, device=x.device)
        launch = self.direct
        ptr = launch.pointer
        if self.tma_config is not None:
            c = self.tma_config
            a, b, r, o = conv1x1_tma.descriptors(x, weight, y, residual, c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"])
            launch.launch(device, (a, b, r, o, ptr(bias)) + self.tail)
            return y
        if self.pad_c:
            x = _pad_channels(x)
        workspace = torch.empty(self.workspace, dtype=torch.float32, device=x.device) if self.workspace else None
        r = residual if residual is not None else y
        launch.launch(device, (ptr(x), ptr(weight), ptr(bias), ptr(r), ptr(y), ptr(y if workspace is None else workspace),
                               ptr(bias if counters is None else counters)) + self.tail)
        if self.reduce:
            _splitk_reduce(workspace, bias, residual, y, self.relu)
        return y


class _ComposedPlan:
    """A plan made of other launches, each through its own plan (or the full path): a wave split's two
    launches (``kind`` "split") or the stem's space-to-depth (rearranging kernels, then its stride-1
    conv: "s2d"). ``launch(x, weight, bias, residual, y)`` writes y."""

    __slots__ = ("kind", "launch", "y_shape", "y_strides", "tuning")

    def __init__(self, kind, launch, y):
        self.kind, self.launch = kind, launch
        self.y_shape, self.y_strides = tuple(y.shape), tuple(y.stride())
        self.tuning = _tuning_tables()

    def current(self) -> bool:
        return _tables_current(self.tuning)

    def run(self, x, weight, bias, residual, out):
        y = out if out is not None else torch.empty_strided(self.y_shape, self.y_strides, dtype=x.dtype, device=x.device)
        self.launch(x, weight, bias, residual, y)
        return y


def _tuning_tables():
    return (_chosen_configs, _tma_choice, _tma_forced, _split_choice, _s2d_choice)


def _tables_current(tables) -> bool:
    return all(a is b for a, b in zip(tables, _tuning_tables()))


def _remember_tma(key, kernel, x, weight, bias, residual, y, relu, config):
    _remember(key, kernel, conv1x1_tma.launch_grid(x, y, config), y, relu, tma_config=config,
              tail=conv1x1_tma.launch_values(x, weight, bias, residual, y, relu, config)[5:])


def _remember(key, kernel, grid, y, relu, tail, tma_config=None, pad_c=False, workspace=None, counters=0, reduce=False):
    launch = direct.Direct.of(kernel, grid) if direct.ENABLED else None
    if launch is None:
        return
    _keep_plan(key, _Plan(launch, tail, y, pad_c, workspace, counters, reduce, tma_config, relu))


def _keep_plan(key, plan) -> None:
    if len(_plans) >= _MAX_PLANS:
        _plans.clear()
    _plans[key] = plan


def _splitk_reduce(workspace, bias, residual, y, relu):
    """y = relu?(sum of the K-split partials in workspace + bias + residual)."""
    split_k, m, oc = workspace.shape
    total = m * oc
    block = 1024
    _splitk_reduce_kernel[(triton.cdiv(total, block),)](
        workspace, bias, residual if residual is not None else y, y, total, oc,
        SPLIT_K=split_k, HAS_RESIDUAL=residual is not None, RELU=relu, BLOCK=block, num_warps=4,
    )


# How much faster than the general kernel the TMA kernel must time to be kept.
TMA_MARGIN = 0.95
# tuning key -> the TMA kernel's config where it won against the general kernel, or False.
_tma_choice = {}
# tuning key -> the TMA kernel's tuned config, for launches that force it (tests).
_tma_forced = {}
# Off after a failure of the TMA kernel (it is an optimisation: the general kernel serves every conv),
# and under RESNET_FAST_AUTOTUNE=0 (no timing runs).
_tma_auto = os.environ.get("RESNET_FAST_AUTOTUNE", "1") != "0"
_tma_failure: Optional[str] = None  # why it was turned off, for the benchmark reports
# (kind, key) of decisions for the alternative (TMA, two launches, space-to-depth) read from an earlier
# process's file (kernels/decisions.py) whose first run in this process has not happened yet (guarded:
# ``_stored_first_run``).
_from_disk = set()
_tma_report = {}  # tuning key -> where a stored choice came from


def _tma_by_default(m: int) -> bool:
    """Whether a 1x1 conv of M output pixels is timed against (or takes) the TMA kernel by default:
    on a GPU, where tuning runs, from ``conv1x1_tma.MIN_M`` pixels (tests: made to in the interpreter)."""
    return _tma_auto and m >= conv1x1_tma.MIN_M and not INTERPRET


def _decide_tma(general, x, weight, bias, residual, y, relu, bench=None, m_bucket=None):
    """Tune the TMA kernel for this conv, time it against the general kernel's tuned launch
    (``general``), and return its config if it is clearly faster (``TMA_MARGIN``), else False. Both write y in full and
    correctly (``residual`` is a copy where the launch is in place), so y holds the result either
    way. A failure raised in Python (a compile or launch error) turns the TMA kernel off for the
    process, with one warning; a device fault (an illegal address) cannot be caught this way, as it
    leaves the CUDA context unusable for every kernel."""
    bench = bench or _quick_bench
    try:
        with _tuning_lock:
            conv1x1_tma.launch(x, weight, bias, residual, y, relu, m_bucket=m_bucket)
            config = conv1x1_tma.best_config()
        t_tma = bench(lambda: conv1x1_tma.launch(x, weight, bias, residual, y, relu, config))
        t_general = bench(general)
    except Exception as e:  # noqa: BLE001 - an optimisation only: never break a launch
        _no_tma(e)
        general()  # y as the general kernel writes it
        return False
    # A clear win only: each TMA launch also encodes four descriptors on the host, and where the two
    # kernels tie, timing noise picked either (session 7, layer4.1.conv1: general in one run, TMA in
    # the next, where its benchmark row came out 3x slower).
    return config if t_tma < TMA_MARGIN * t_general else False


# Wave splits only for long K (compute-bound: where big tiles pay) and one or two whole waves (where
# a half-empty last wave is a quarter to a sixth of the time).
SPLIT_MIN_K = 1024
SPLIT_MAX_WAVES = 2


def wave_split(n: int, pixels: int, ocg: int, k: int, groups: int, sms: int) -> int:
    """Images for the first of two launches where one launch of big tiles leaves its last wave at most
    half full, else 0. The first launch gets whole waves of big tiles (128x256, or 256x128 for 128
    output channels), the second the rest, where the tuner may pick smaller tiles that fill the GPU
    (a 128x128 tile alone on an SM runs ~2/3 of a 128x256's time). ResNet-50 at batch 256 on 132
    SMs: layer4's 512-channel convs (M = 12544: 196 tiles, 1.48 waves) as 172 + 84 images; no other
    layer. Whether the two launches are faster is timed (``_decide_wave_split``). ``k`` is the GEMM's
    K (KH * KW * C / groups)."""
    if groups != 1 or ocg < 128 or k < SPLIT_MIN_K or n < 2 or sms < 1:
        return 0
    bm, bn = (128, 256) if ocg >= 256 else (256, 128)
    n_tiles = triton.cdiv(ocg, bn)
    whole, rest = divmod(triton.cdiv(n * pixels, bm) * n_tiles, sms)
    if not 0 < whole <= SPLIT_MAX_WAVES or rest == 0 or 2 * rest > sms:
        return 0
    n1 = (whole * sms // n_tiles) * bm // pixels
    return n1 if 0 < n1 < n else 0


# Wave splits: on by default where the tuner runs (RESNET_FAST_WAVE_SPLIT=0 turns them off); never in
# the interpreter, where there are no waves.
_split_auto = (os.environ.get("RESNET_FAST_AUTOTUNE", "1") != "0" and os.environ.get("RESNET_FAST_WAVE_SPLIT", "1") != "0"
               and not INTERPRET)
# How much faster than one launch the two must time to be kept (each also costs a launch's host time).
SPLIT_MARGIN = 0.97
# layer shape -> images of the first launch where two launches won, else 0; and what was timed.
_split_choice = {}
_split_report = {}


def _split_launch(n1, x, weight, bias, residual, y, conv):
    """The conv as two launches, on images [0, n1) and [n1, N), writing y's two halves."""
    for lo, hi in ((0, n1), (n1, y.shape[0])):
        conv2d_bias_act(x[lo:hi], weight, bias, None if residual is None else residual[lo:hi], *conv,
                        out=y[lo:hi], part=True)


def _timed_choice(default, alternative, what, fallback, disable, margin, bench=None):
    """Run ``default``, then ``alternative`` (each tunes on its first call), time both, and return
    (whether the alternative is clearly faster: ``margin``, what was timed). Both write y in full and
    right, so y holds a right result either way. The alternative is an optimisation: if it (or its
    timing) raises, ``disable()`` turns it off for the process, with one warning, and ``default``
    writes y again. (A device fault cannot be caught this way.)"""
    bench = bench or _quick_bench
    default()
    try:
        alternative()
        t_default = bench(default)
        t_alternative = bench(alternative)
    except Exception as e:  # noqa: BLE001 - never break a launch for an optimisation
        disable()
        import warnings

        warnings.warn(f"resnet_fast: {what} failed ({type(e).__name__}: {e}); {fallback}")
        default()
        return False, f"failed ({type(e).__name__}: {e})"[:300]
    won = t_alternative < margin * t_default
    return won, f"{t_alternative:.4g} ms against {t_default:.4g} ms"


def _layer_key(x, weight, residual, stride, padding, dilation, groups, relu) -> tuple:
    """A layer shape's key for the launcher's first-call decisions (wave split, stem path)."""
    return (x.device, tuple(x.shape), tuple(weight.shape), tuple(stride), tuple(padding), tuple(dilation),
            residual is not None, relu, x.dtype, x.dtype == torch.float32 and x.is_cuda and cudnn_conv_allows_tf32())


def _timing_residual(x, weight, residual, y):
    """The residual a first-call decision's timing runs read: a copy where the call is in place (out is
    the residual), or each run would add it again. Timing synchronises the device: never during CUDA
    graph capture."""
    if _capturing(x):
        raise _not_tuned(x, weight)
    return residual.clone() if residual is not None and _same_storage(residual, y) else residual


def _no_tma(e: Exception) -> None:
    """The TMA kernel off for this process, with one warning; no more decisions saved (kernels/decisions.py)."""
    global _tma_auto, _tma_failure
    _tma_auto = False
    _tma_failure = f"{type(e).__name__}: {e}"
    decisions.store.freeze()
    import warnings

    warnings.warn(f"resnet_fast: the TMA 1x1 conv kernel failed ({type(e).__name__}: {e}); using the general "
                  "kernel for every conv")


def _no_more_splits():
    global _split_auto
    _split_auto = False
    decisions.store.freeze()


def _no_s2d():
    global _s2d_auto
    _s2d_auto = False
    decisions.store.freeze()


def _stored_first_run(stored, run, residual, y, what, fallback, disable, choices, default):
    """The first run in this process of an earlier process's decision (``stored``: kind, key), guarded
    as its timing would have been. Returns (True, residual) where it ran. If it raises (a compile or
    launch error), it is turned off for the process (``disable``, one warning), ``choices`` gets
    ``default``, and (False, the residual the caller's default path must read) comes back: where the
    call is in place, a copy taken before the run, since a run that wrote part of y (the residual)
    before raising has changed it."""
    _from_disk.discard(stored)
    r = residual.clone() if residual is not None and _same_storage(residual, y) else residual
    try:
        run(r)
        return True, residual
    except Exception as e:  # noqa: BLE001 - an optimisation only: never break a launch
        disable()
        choices[stored[1]] = default
        import warnings

        warnings.warn(f"resnet_fast: {what} failed ({type(e).__name__}: {e}); {fallback}")
        return False, r


def _decide_wave_split(whole, split, n1, key, bench=None) -> int:
    """Time one launch against two (the split runs last), return n1 if the two launches are clearly
    faster (``SPLIT_MARGIN``), else 0."""
    won, timed = _timed_choice(whole, split, "a wave split's two launches", "every conv runs as one launch from now on",
                               _no_more_splits, SPLIT_MARGIN, bench)
    _split_report[key] = (f"one launch: images [0, {n1}) + [{n1}, N) {timed}" if timed.startswith("failed") else
                          f"{'two launches' if won else 'one launch'}: images [0, {n1}) + [{n1}, N) {timed} for one launch")
    return n1 if won else 0


def _stored_decision(kind, key, device, allowed, choices, reports=None, describe=None):
    """An earlier process's decision of this kind for this key (kernels/decisions.py), if it is one of
    ``allowed`` (what this process could decide: a TMA config of today's list, this split's n1):
    entered into ``choices`` (and ``reports``) and returned; else None, and the caller decides."""
    value = decisions.store.get(kind, key, device)
    if value is decisions.MISSING or value is None or not any(value == a and type(value) is type(a) for a in allowed):
        return None
    choices[key] = value
    if value:  # (the default path needs no guarded first run)
        _from_disk.add((kind, key))
    if reports is not None:
        reports[key] = f"{describe(value)} (decided by an earlier process: kernels/decisions.py)"
    return value


def _not_tuned(x, weight) -> RuntimeError:
    # Tuning and timing synchronise the device, which would invalidate the capture.
    n, c, h, w = x.shape
    oc, _, kh, kw = weight.shape
    return RuntimeError(
        f"resnet_fast: the Triton conv for this layer shape ({n}x{c}x{h}x{w} -> {oc} channels, "
        f"{kh}x{kw} kernel, {x.dtype}) is not tuned yet, and it cannot be tuned during CUDA graph "
        "capture: run the model once on inputs of this shape before capturing (a warm-up "
        "iteration, as torch.cuda.graph's documentation asks), or use resnet_fast.cuda_graph")


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether a and b view one storage (the in-place block epilogue: out is the residual)."""
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _capturing(x: torch.Tensor) -> bool:
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


def cudnn_conv_allows_tf32() -> bool:
    """Whether PyTorch lets cuDNN convolutions use TF32: the same rule for our fp32 convs.

    PyTorch's newer per-backend setting wins: ``torch.backends.cudnn.conv.fp32_precision``, which
    reads "none" through to ``torch.backends.cudnn`` and then ``torch.backends`` (checked on torch
    2.11 and 2.14); "none" all the way up means no TF32 (the state the legacy ``cudnn.allow_tf32 =
    False`` leaves). Reading the legacy flag raises once conv and RNN were set differently through
    the new API, so it is read only on PyTorch builds without the new one.
    """
    conv_level = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)
    if conv_level is None:
        return bool(torch.backends.cudnn.allow_tf32)
    return conv_level == "tf32"


def _sm_count(device: torch.device) -> int:
    return sm_count(device)  # 0 on the CPU (the interpreter): no split there, tests force it


def needs_index_64(x: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, split_k: int) -> bool:
    """64-bit offsets where any tensor the kernel indexes has 2^31 elements or more: x, the weight,
    y (and the residual, of y's size), the split-K workspace."""
    return max(x.numel(), weight.numel(), y.numel(), split_k * y.numel()) >= 2**31


# The halo checks give rows past M (and K columns past a kernel row) a coordinate of -2^24, which a
# tap's offset must not bring back to >= 0: spatial extents, padding included, up to 2^24.
MAX_SPATIAL = 1 << 24
MAX_GROUPS = 65535  # groups are the grid's second dimension


def unsupported(x: torch.Tensor, padding, groups: int) -> Optional[str]:
    """Why the Triton kernel cannot take this conv (the op then runs PyTorch's), or None."""
    h, w = x.shape[-2:]
    if h + 2 * padding[0] > MAX_SPATIAL or w + 2 * padding[1] > MAX_SPATIAL:
        return (f"spatial size with padding up to {MAX_SPATIAL} per side, got {h}x{w} "
                f"padded by {padding[0]}x{padding[1]}")
    if groups > MAX_GROUPS:
        return f"at most {MAX_GROUPS} groups, got {groups}"
    return None


def choose_split_k(m: int, ocg: int, groups: int, cg: int, kh: int, kw: int, flat_k: bool, gemm_1x1: bool,
                   sm_count: int) -> int:
    """How many K shares a conv gets: 1 unless its output tiles (counted as 64x64) cannot fill half
    the GPU and its K walk is long (16 steps or more). Batch-1 ResNet-50 on 132 SMs: layer4's 3x3
    (8 tiles, 72 K steps) and 2048->512 1x1 (8 tiles, 32 steps) split 8 ways, layer3's 3x3 (16 tiles,
    36 steps) 8 ways, layer2's 3x3 4 ways; at batch 16 nothing splits. Each share keeps at least 4 K
    steps; at most 8 shares."""
    if sm_count <= 0 or m > 4096:
        return 1
    tiles = triton.cdiv(m, 64) * triton.cdiv(ocg, 64) * groups
    if gemm_1x1:
        k_steps = triton.cdiv(cg, 64)
    elif flat_k:
        k_steps = triton.cdiv(kh * kw * cg, 32)
    else:
        k_steps = kh * kw * triton.cdiv(cg, 64)
    if k_steps < 16:  # short K: the saving would not pay for the reduction's launch
        return 1
    split = 1
    while split < 8 and tiles * split * 2 <= sm_count and k_steps // (split * 2) >= 4:
        split *= 2
    return split


def aot_compile(dtype: str, kernel: int, flat_k: bool, gemm_1x1: bool, residual: bool, relu: bool,
                precision: str, config: triton.Config, arch: int = 90, channels: int = 64,
                out_channels: int = 64, groups: int = 1, index_64: bool = False, split_k: int = 1,
                serial_split: bool = False, taps=None):
    """Compile one specialisation for an NVIDIA target without a GPU (ptxas ships with Triton):
    the CPU-side check that the kernel still builds for real hardware, and what the SASS reports
    read (benchmarks/sass_report.py). Needs TRITON_INTERPRET unset.

    Integer arguments are specialised as the JIT specialises them at run time (1 becomes a
    constant, a multiple of 16 gets a divisibility hint, pointers are 16-byte aligned) for a batch-256
    56x56 input with ``channels`` in and ``out_channels`` out, so the code compiled here is the code
    a GPU would run for such a layer.
    """
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.compiler import ASTSource

    jit_fn = _conv2d_bias_act_kernel.fn
    cg, ocg = channels // groups, out_channels // groups
    n, h, w = 256, 56, 56
    pad_c = flat_k and pads_channels(cg, groups, kernel, 1)
    cx = _PADDED_CHANNELS if pad_c else channels  # channels of x in memory
    example = dict(N=n, H=h, W=w, OH=h, OW=w, OC=out_channels, Cg=cg, OCg=ocg, M_BUCKET=n * h * w,
                   sxn=h * w * cx, sxh=w * cx, sxw=cx,
                   swc=out_channels, swh=kernel * cg * out_channels, sww=cg * out_channels,
                   stride_h=1, stride_w=1, pad_h=kernel // 2, pad_w=kernel // 2, dil_h=1, dil_w=1)
    constexprs = dict(walk_constexprs(kernel, kernel, cg, flat_k, gemm_1x1, pad_c, residual, split_k,
                                      4 if dtype == "fp32" else 2, serial_split, taps),
                      RELU=relu, INPUT_PRECISION=precision, INDEX_64=index_64, **config.kwargs)
    signature, attrs = {}, {}
    for i, name in enumerate(jit_fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*" + {"b_ptr": "fp32", "ws_ptr": "fp32", "lock_ptr": "i32"}.get(name, dtype)
            attrs[(i,)] = BaseBackend.parse_attr("D")
        else:
            value = example[name]
            if name in jit_fn.do_not_specialize or i in jit_fn.do_not_specialize:
                signature[name] = "i32"
            elif value == 1:
                signature[name] = "constexpr"
                constexprs[name] = 1
            else:
                signature[name] = "i32"
                attrs[(i,)] = BaseBackend.parse_attr("D" if value % 16 == 0 else "")
    src = ASTSource(fn=jit_fn, signature=signature, attrs=attrs,
                    constexprs={(jit_fn.arg_names.index(k),): v for k, v in constexprs.items()})
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
