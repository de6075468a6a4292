"""The 1x1 stride-1 conv as a plain GEMM read and written through Hopper's TMA unit.

``y[M, OC] = relu?(x[M, C] . w[C, OC] + bias (+ residual))`` with x, y and the residual dense
channels_last (rows of C or OC channels) and the weight output-channel-innermost, so all four are
2-D row-major matrices that a tensor descriptor can describe. The copy engine then moves whole
tiles into shared memory, out-of-bounds rows and columns zero-filled, with no per-thread address
arithmetic: on sm_90 the K loop of a 128x128x64 tile is 84 instructions per thread against 103-133
for the cp.async path, at 106 registers against 144-168 (benchmarks/NOTES.md, session 5). The
output tile goes back with one TMA store.

It is an alternative, not a replacement: for each layer shape the launcher (``kernels/conv.py``)
tunes both this kernel and the general one and keeps whichever is faster on the device, so a GPU
where TMA does not pay keeps the cp.async path. Only 16-bit data (fp32 operands are rounded to TF32
in registers, which this kernel never holds them in), one group, and rows 16-byte aligned.
"""
from __future__ import annotations

import os
from typing import List, Optional

import torch
import triton
import triton.language as tl

from resnet_fast.kernels.tiles import grouped_tile, relu_keep_nan, sm_count

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - Triton before 3.3
    TensorDescriptor = None

# Below this many output pixels (batch 1-4 in the late layers) a launch is too short for the
# descriptor set-up on the host to pay, and the general kernel's small tiles fit better.
MIN_M = 8192


def _set_block_shapes(nargs) -> None:
    """Autotuner pre-hook: the descriptors' tile shapes follow the config being run."""
    bm, bn, bk = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    nargs["a_desc"].block_shape = [bm, bk]
    nargs["b_desc"].block_shape = [bk, bn]
    nargs["r_desc"].block_shape = [bm, bn]
    nargs["y_desc"].block_shape = [bm, bn]


def _config(bm, bn, bk, warps, stages, per_sm=0) -> triton.Config:
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "PER_SM": per_sm}, num_warps=warps,
                         num_stages=stages, pre_hook=_set_block_shapes)


def hopper_tma_configs() -> List[triton.Config]:
    """What the autotuner chooses from on a GPU. Checked with aot_compile (sm_90, Triton 3.6 and
    3.8): UTMALDG + HGMMA, no spills, 90-176 registers. Two stages for short K (1-4 steps: more CTAs
    per SM instead of a deep pipeline). The last two are persistent (``PER_SM`` programs per SM, each
    walking tiles): the next tile's loads overlap this tile's epilogue (residual read, TMA store),
    which is a large share of a tile's time where K is 1-4 steps. Their shared memory (the pipeline
    plus the residual and output buffers, which the flattened loop keeps apart: 64-104 KB for 128x64)
    sets PER_SM at two. The H100 run of session 12 timed them beside the one-tile configs on every
    ResNet-50 1x1 at bf16 batch 256: the 128x64 s2 p2 won layer1.0.downsample by 2% (189 against 194
    us), the s3 p2 tied on layer2.1.conv1, and the two 128x128 p1 configs (one per SM) won nowhere,
    so they went."""
    return [_config(*shape) for shape in [(128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 64, 64, 4, 4),
                                          (64, 128, 64, 4, 4), (128, 256, 64, 8, 3), (128, 128, 64, 8, 2),
                                          (128, 64, 64, 4, 2),
                                          (128, 64, 64, 4, 2, 2), (128, 64, 64, 4, 3, 2)]]


def untuned_tma_config() -> triton.Config:
    """The one config of RESNET_FAST_AUTOTUNE=0 (the GPU tests force this kernel with it)."""
    return _config(128, 64, 64, 4, 3)


def tma_configs() -> List[triton.Config]:
    if INTERPRET:
        # Persistent, so the interpreter runs the tile walk (a few programs: see ``programs``); tests
        # launch the one-tile-per-program form with an explicit config.
        return [_config(32, 32, 32, 4, 1, per_sm=1)]
    if os.environ.get("RESNET_FAST_AUTOTUNE", "1") == "0":
        return [untuned_tma_config()]
    if os.environ.get("RESNET_FAST_TMA_PERSISTENT", "1") == "0":  # (read at import)
        return [c for c in hopper_tma_configs() if not c.kwargs["PER_SM"]]
    return hopper_tma_configs()


def _prune(configs, named_args, **kwargs):
    m, n, k = named_args["M_BUCKET"], named_args["N"], named_args["K"]

    def wanted(c):
        bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        if bm > max(16, triton.next_power_of_2(m)) or bn > max(16, triton.next_power_of_2(n)):
            return False
        if bm * bn > 128 * 128 and k <= 128:
            return False
        if INTERPRET:
            return True
        return (c.num_stages == 2) == (k <= 256)  # short K: two stages, more CTAs per SM
    kept = [c for c in configs if wanted(c)]
    return kept or configs[:1]


def _quick_bench(fn, quantiles=None):
    return triton.testing.do_bench(fn, warmup=5, rep=20, quantiles=quantiles)


@triton.jit
def _epilogue(acc, off_m, off_n, b_ptr, r_desc, y_desc, N, HAS_RESIDUAL: tl.constexpr, RELU: tl.constexpr,
              BLOCK_N: tl.constexpr):
    offs_n = off_n + tl.arange(0, BLOCK_N)
    acc += tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    if HAS_RESIDUAL:
        # In place (y is the residual) is safe: each tile's residual is read before that tile is stored.
        acc += r_desc.load([off_m, off_n]).to(tl.float32)
    if RELU:
        acc = relu_keep_nan(acc)
    y_desc.store([off_m, off_n], acc.to(y_desc.dtype))  # the store clips rows and columns past the edge


# Short timing runs, as the general kernel's. (No disk cache: Triton skips it for configs with a
# pre-hook, so each process tunes this kernel again, ~10 ms per config and layer shape.) IS_BF16 is in
# the key only: the descriptors' dtype is not a key the autotuner sees.
@triton.autotune(configs=tma_configs(), key=["M_BUCKET", "N", "K", "HAS_RESIDUAL", "RELU", "IS_BF16"],
                 prune_configs_by={"early_config_prune": _prune}, do_bench=_quick_bench)
@triton.jit(do_not_specialize=["M", "M_BUCKET"])
def _conv1x1_tma_kernel(a_desc, b_desc, r_desc, y_desc, b_ptr, M, N, K, M_BUCKET,
                        HAS_RESIDUAL: tl.constexpr, RELU: tl.constexpr, IS_BF16: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                        PER_SM: tl.constexpr):
    # Rows past M and channels past K or N are zero-filled by the copy engine: no masks.
    if PER_SM == 0:  # one program per output tile
        pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            acc = tl.dot(a_desc.load([pid_m * BLOCK_M, k]), b_desc.load([k, pid_n * BLOCK_N]), acc)
        _epilogue(acc, pid_m * BLOCK_M, pid_n * BLOCK_N, b_ptr, r_desc, y_desc, N, HAS_RESIDUAL, RELU, BLOCK_N)
    else:
        # Persistent: PER_SM programs per SM walk the tiles with a stride of the grid. The tile loop
        # and the K loop are flattened into one software pipeline, so the next tile's first A and B
        # copies are in flight while this tile's epilogue runs (short K: 1-4 steps a tile).
        programs = tl.num_programs(0)
        tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
        done = tl.program_id(0) - programs  # the epilogue's own tile counter (kept apart from the loads')
        for tile in tl.range(tl.program_id(0), tiles, programs, flatten=True):
            pid_m, pid_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for k in range(0, K, BLOCK_K):
                acc = tl.dot(a_desc.load([pid_m * BLOCK_M, k]), b_desc.load([k, pid_n * BLOCK_N]), acc)
            done += programs
            out_m, out_n = grouped_tile(done, M, N, BLOCK_M, BLOCK_N, GROUP_M)
            _epilogue(acc, out_m * BLOCK_M, out_n * BLOCK_N, b_ptr, r_desc, y_desc, N, HAS_RESIDUAL, RELU, BLOCK_N)


_HOPPER_OR_LATER = {}


def allowed() -> bool:
    """Triton has tensor descriptors and RESNET_FAST_TMA=0 is not set (read on every call)."""
    return TensorDescriptor is not None and os.environ.get("RESNET_FAST_TMA", "1") != "0"


def available(x: torch.Tensor) -> bool:
    """Whether this device and Triton can run the kernel at all (sm_90+, tensor descriptors).
    RESNET_FAST_TMA=0 turns it off."""
    if not allowed():
        return False
    if INTERPRET:
        return True
    if not x.is_cuda:
        return False
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    if index not in _HOPPER_OR_LATER:
        _HOPPER_OR_LATER[index] = torch.cuda.get_device_capability(index)[0] >= 9
    return _HOPPER_OR_LATER[index]


def fits(x: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, residual: Optional[torch.Tensor],
         groups: int, gemm_1x1: bool) -> bool:
    """Whether this conv is one the kernel takes: a 1x1 stride-1 GEMM of one group on 16-bit
    data, every matrix 16-byte aligned with 16-byte row strides (the copy engine's rules)."""
    if not gemm_1x1 or groups != 1 or x.dtype not in (torch.float16, torch.bfloat16):
        return False
    c, oc = x.shape[1], y.shape[1]
    if (c * x.element_size()) % 16 or (oc * x.element_size()) % 16:
        return False
    tensors = [x, weight, y] + ([residual] if residual is not None else [])
    return all(t.data_ptr() % 16 == 0 for t in tensors)


def descriptors(x, weight, y, residual, block_m: int = 16, block_n: int = 16, block_k: int = 16):
    """(a, b, r, y) tensor descriptors over x [M, C], the weight [C, OC], the residual and y [M, OC]
    (all dense: the launcher's promise); the autotuner's pre-hook sets the tile shapes per config."""
    m = x.shape[0] * x.shape[2] * x.shape[3]
    c, oc = x.shape[1], y.shape[1]
    a = TensorDescriptor(x, [m, c], [c, 1], [block_m, block_k])
    b = TensorDescriptor(weight, [c, oc], [oc, 1], [block_k, block_n])
    out = TensorDescriptor(y, [m, oc], [oc, 1], [block_m, block_n])
    r = TensorDescriptor(residual, [m, oc], [oc, 1], [block_m, block_n]) if residual is not None else out
    return a, b, r, out


# Under the interpreter (or on a CPU tensor) a persistent launch runs this many programs per PER_SM,
# so that each walks several tiles even on the tests' small shapes.
INTERPRETER_SMS = 2


def programs(x: torch.Tensor, tiles: int, per_sm: int) -> int:
    """How many programs a launch of ``tiles`` output tiles runs: one per tile, or for a persistent
    config (``per_sm`` > 0) per_sm per SM of x's device, never more than there are tiles."""
    if not per_sm:
        return tiles
    sms = INTERPRETER_SMS if INTERPRET or not x.is_cuda else sm_count(x.device)
    return max(1, min(tiles, per_sm * sms))


def launch_grid(x, y, config_kwargs: dict) -> tuple:
    m = x.shape[0] * x.shape[2] * x.shape[3]
    tiles = triton.cdiv(m, config_kwargs["BLOCK_M"]) * triton.cdiv(y.shape[1], config_kwargs["BLOCK_N"])
    return (programs(x, tiles, config_kwargs.get("PER_SM", 0)), 1, 1)


def launch_values(x, weight, bias, residual, y, relu: bool, config_kwargs: dict) -> tuple:
    """Every kernel parameter's value in the kernel's order, for one launch with this config."""
    m = x.shape[0] * x.shape[2] * x.shape[3]
    c, oc = x.shape[1], y.shape[1]
    a, b, r, out = descriptors(x, weight, y, residual, config_kwargs["BLOCK_M"], config_kwargs["BLOCK_N"],
                               config_kwargs["BLOCK_K"])
    named = dict(a_desc=a, b_desc=b, r_desc=r, y_desc=out, b_ptr=bias, M=m, N=oc, K=c, M_BUCKET=triton.next_power_of_2(m),
                 HAS_RESIDUAL=residual is not None, RELU=relu, IS_BF16=x.dtype == torch.bfloat16, **config_kwargs)
    return tuple(named[name] for name in _conv1x1_tma_kernel.fn.arg_names)


def launch(x, weight, bias, residual, y, relu: bool, config_kwargs: Optional[dict] = None,
           m_bucket: Optional[int] = None):
    """One launch: tuned (the autotuner times its configs) unless ``config_kwargs`` gives the config.
    Returns what Triton's launch returned for a given config (the compiled kernel), else None.
    ``m_bucket``: the tuning key's M (default M rounded up to a power of two; a wave split's launch
    passes its exact M, as for the general kernel)."""
    if config_kwargs is None:
        m = x.shape[0] * x.shape[2] * x.shape[3]
        c, oc = x.shape[1], y.shape[1]

        def grid(meta):
            return (programs(x, triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(oc, meta["BLOCK_N"]), meta["PER_SM"]),)

        a, b, r, out = descriptors(x, weight, y, residual)
        bucket = triton.next_power_of_2(m) if m_bucket is None else m_bucket
        _conv1x1_tma_kernel[grid](a, b, r, out, bias, m, oc, c, bucket, HAS_RESIDUAL=residual is not None,
                                  RELU=relu, IS_BF16=x.dtype == torch.bfloat16)
        return None
    options = {k: v for k, v in config_kwargs.items() if k not in _conv1x1_tma_kernel.fn.arg_names}
    return _conv1x1_tma_kernel.fn[launch_grid(x, y, config_kwargs)](
        *launch_values(x, weight, bias, residual, y, relu, config_kwargs), **options)


def aot_compile(dtype: str, config: triton.Config, residual: bool, relu: bool = True, arch: int = 90):
    """Compile one config for an NVIDIA target without a GPU (as kernels/conv.py's aot_compile):
    what tests/test_triton_aot.py reads the SASS of. Needs TRITON_INTERPRET unset."""
    from triton.compiler import ASTSource
    from triton.backends.compiler import GPUTarget

    bm, bn, bk = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.kwargs["BLOCK_K"]
    jit_fn = _conv1x1_tma_kernel.fn
    signature = {"a_desc": f"tensordesc<{dtype}[{bm},{bk}]>", "b_desc": f"tensordesc<{dtype}[{bk},{bn}]>",
                 "r_desc": f"tensordesc<{dtype}[{bm},{bn}]>", "y_desc": f"tensordesc<{dtype}[{bm},{bn}]>",
                 "b_ptr": "*fp32", "M": "i32", "N": "i32", "K": "i32", "M_BUCKET": "i32"}
    constexprs = dict(HAS_RESIDUAL=residual, RELU=relu, IS_BF16=dtype == "bf16", **config.kwargs)
    signature.update({name: "constexpr" for name in constexprs})
    src = ASTSource(fn=jit_fn, signature={name: signature[name] for name in jit_fn.arg_names},
                    constexprs={(jit_fn.arg_names.index(k),): v for k, v in constexprs.items()})
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": config.num_warps, "num_stages": config.num_stages})


def best_config() -> Optional[dict]:
    config = getattr(_conv1x1_tma_kernel, "best_config", None)
    return None if config is None else config.all_kwargs()
