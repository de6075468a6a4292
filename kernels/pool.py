"""Max pooling over a channels_last activation, without indices: the stem's 3x3 stride-2 pool.

PyTorch's CUDA ``max_pool2d`` always runs ``max_pool2d_with_indices`` and writes an int64 index per
output element: at ResNet-50's stem (batch 256, 64 x 112 x 112 in, 56 x 56 out) that is 411 MB of
indices beside a 103 MB output and a 411 MB input, ~0.3 ms of memory traffic at 3 TB/s. Eval needs
no indices; this kernel reads the input once and writes the output, nothing else (~0.17 ms).

Each program takes a block of output pixels x a block of channels; every window tap is a
[pixels, channels] load, contiguous along channels. Out-of-image taps are -inf, NaN propagates as in
``torch.max_pool2d``.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from resnet_fast.kernels.conv import _on_the_tensors_device
from resnet_fast.ops import _pair, nhwc_strides, pool_output_size

# Counts launches, so tests can prove the kernel ran.
launch_count = 0


@triton.jit(do_not_specialize=["P", "H", "W", "OH", "OW"])
def _max_pool2d_nhwc_kernel(
    x_ptr, y_ptr, P, H, W, C, OH, OW,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, INDEX_64: tl.constexpr,
):
    if INDEX_64:  # 64-bit offsets only where x or y has 2^31 elements or more
        offs_p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
        OW = OW.to(tl.int64)  # so that OW * OH below cannot wrap either (OW is never specialised)
    else:
        offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < P  # P = N * OH * OW, from the host (a 64-bit argument once it needs one)
    mask_c = offs_c < C
    ow = offs_p % OW
    oh = (offs_p // OW) % OH
    n = offs_p // (OW * OH)
    ih0 = oh * SH - PH
    iw0 = ow * SW - PW
    acc = tl.full((BLOCK_P, BLOCK_C), float("-inf"), dtype=tl.float32)
    for kh in tl.static_range(KH):
        ih = ih0 + kh * DH
        row_ok = mask_p & (ih >= 0) & (ih < H)
        for kw in tl.static_range(KW):
            iw = iw0 + kw * DW
            ok = row_ok & (iw >= 0) & (iw < W)
            pix = (n * H + ih) * W + iw
            v = tl.load(x_ptr + pix[:, None] * C + offs_c[None, :], mask=ok[:, None] & mask_c[None, :],
                        other=float("-inf"))
            acc = tl.maximum(acc, v.to(tl.float32), propagate_nan=tl.PropagateNan.ALL)
    tl.store(y_ptr + offs_p[:, None] * C + offs_c[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=mask_p[:, None] & mask_c[None, :])


@_on_the_tensors_device
def max_pool2d(x: torch.Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               index_64: Optional[bool] = None) -> torch.Tensor:
    """``torch.nn.functional.max_pool2d`` for a 4-d tensor, the result dense channels_last.
    ``index_64`` forces (tests) or forbids 64-bit offsets; by default they are used from 2^31 elements."""
    global launch_count
    if x.dim() != 4:
        raise ValueError(f"resnet_fast max_pool2d: expected a 4-d [N, C, H, W] tensor, got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"resnet_fast max_pool2d: expected float32, float16 or bfloat16, got {x.dtype}")
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride if stride not in (None, (), []) else kernel_size)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    n, c, h, w = x.shape
    oh = pool_output_size(h, kh, sh, ph, dh, ceil_mode)
    ow = pool_output_size(w, kw, sw, pw, dw, ceil_mode)
    if oh <= 0 or ow <= 0:
        raise ValueError(f"resnet_fast max_pool2d: input {h}x{w} is too small for a {kh}x{kw} window "
                         f"(stride {sh}x{sw}, padding {ph}x{pw}, dilation {dh}x{dw}): output {oh}x{ow}")
    if x.stride() != nhwc_strides(n, c, h, w):
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.empty_strided((n, c, oh, ow), nhwc_strides(n, c, oh, ow), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    block_c = min(64, triton.next_power_of_2(c))
    block_p = max(1, 4096 // block_c)
    grid = (triton.cdiv(n * oh * ow, block_p), triton.cdiv(c, block_c))
    if index_64 is None:
        index_64 = max(x.numel(), y.numel()) >= 2**31
    _max_pool2d_nhwc_kernel[grid](x, y, n * oh * ow, h, w, c, oh, ow, KH=kh, KW=kw, SH=sh, SW=sw, PH=ph, PW=pw,
                                  DH=dh, DW=dw, BLOCK_P=block_p, BLOCK_C=block_c, INDEX_64=index_64, num_warps=4)
    launch_count += 1
    return y
