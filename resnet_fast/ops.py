"""The ``resnet_fast`` torch ops: schemas, device kernels, fake kernels and autograd.

``add_relu`` / ``add_relu_``  ``relu(self + other)``: the residual join of train mode and of any eval
                              layer whose epilogue is not fused. Schemas and CPU/CUDA kernels come
                              from the compiled extension (csrc/); when it is unavailable the same
                              schemas are defined here with a PyTorch body.
``conv2d_bias_act``           ``relu?(conv2d(x, weight) + bias + residual)`` for folded conv+BN:
                              Triton on CUDA (or anywhere when forced), oneDNN/PyTorch otherwise.
``conv2d_bias_act_add_``      the same written into the residual's memory (block epilogues whose
                              shortcut tensor the network owns).
``max_pool2d``                max pooling to a channels_last result without indices (the eval stem's
                              pool): Triton where the convs run Triton, PyTorch otherwise.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

from . import _extension, backend

ADD_RELU_SCHEMA = "add_relu(Tensor self, Tensor other) -> Tensor"
ADD_RELU_INPLACE_SCHEMA = "add_relu_(Tensor(a!) self, Tensor other) -> Tensor(a!)"
CONV_SCHEMA = (
    "conv2d_bias_act(Tensor x, Tensor weight, Tensor bias, Tensor? residual, int[2] stride, "
    "int[2] padding, int[2] dilation, int groups, bool relu) -> Tensor"
)

# Extension first: its TORCH_LIBRARY block owns the namespace; everything below is a fragment.
EXTENSION_LOADED = _extension.load()
_lib = torch.library.Library("resnet_fast", "FRAGMENT")


# --------------------------------------------------------------------------------------------
# add_relu
# --------------------------------------------------------------------------------------------
def _check_add_relu(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    # The same checks, with the same wording, as csrc/add_relu_common.cpp.
    if a.shape != b.shape:
        raise RuntimeError(f"{name}: shape mismatch, self is {list(a.shape)} but other is {list(b.shape)}")
    if a.dtype != b.dtype:
        raise RuntimeError(f"{name}: dtype mismatch, self is {a.dtype} but other is {b.dtype}")
    if a.device != b.device:
        raise RuntimeError(f"{name}: device mismatch, self is on {a.device} but other is on {b.device}")
    if not a.is_floating_point():
        raise RuntimeError(f"{name}: expected a floating-point dtype, got {a.dtype}")


def _byte_range(t: torch.Tensor):
    if t.numel() == 0:
        return 0, 0
    lo = hi = t.storage_offset()
    for size, stride in zip(t.shape, t.stride()):
        extent = (size - 1) * stride
        lo, hi = (lo + extent, hi) if extent < 0 else (lo, hi + extent)
    item = t.element_size()
    return lo * item, (hi + 1) * item


def _overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Conservative: any shared byte range between the two views counts as overlap."""
    if a.numel() == 0 or b.numel() == 0:
        return False
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    a_lo, a_hi = _byte_range(a)
    b_lo, b_hi = _byte_range(b)
    return a_lo < b_hi and b_lo < a_hi


def _add_relu_torch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    _check_add_relu(a, b, "resnet_fast::add_relu")
    return torch.add(a, b).relu_()


def _add_relu_inplace_torch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    _check_add_relu(a, b, "resnet_fast::add_relu_")
    if _overlaps(a, b):
        raise RuntimeError("resnet_fast::add_relu_: other overlaps self in memory; pass a separate tensor")
    return a.add_(b).relu_()


if not EXTENSION_LOADED:
    _lib.define(ADD_RELU_SCHEMA)
    _lib.define(ADD_RELU_INPLACE_SCHEMA)
for _key in ("CPU", "CUDA"):
    if not torch._C._dispatch_has_kernel_for_dispatch_key("resnet_fast::add_relu", _key):
        _lib.impl("add_relu", _add_relu_torch, _key)
        _lib.impl("add_relu_", _add_relu_inplace_torch, _key)


@torch.library.register_fake("resnet_fast::add_relu")
def _add_relu_fake(a, b):
    _check_add_relu(a, b, "resnet_fast::add_relu")
    return torch.empty_like(a)


@torch.library.register_fake("resnet_fast::add_relu_")
def _add_relu_inplace_fake(a, b):
    _check_add_relu(a, b, "resnet_fast::add_relu_")
    return a


def _add_relu_setup(ctx, inputs, output):
    ctx.save_for_backward(output)


def _relu_grad(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    # grad * (out > 0), computed by the very kernel torch's relu backward uses, so that train mode
    # stays bit-identical to torchvision (same values and same memory layout downstream).
    return torch.ops.aten.threshold_backward(grad, out, 0)


def _add_relu_backward(ctx, grad):
    (out,) = ctx.saved_tensors
    g = _relu_grad(grad, out)
    return g, g


torch.library.register_autograd("resnet_fast::add_relu", _add_relu_backward, setup_context=_add_relu_setup)


class _AddReluInplace(torch.autograd.Function):
    # register_autograd refuses mutable ops, so the in-place op gets an autograd.Function that marks
    # ``self`` dirty, as torch's own ``add_`` + ``relu_`` pair does.
    @staticmethod
    def forward(ctx, a, b):
        with torch._C._AutoDispatchBelowAutograd():
            torch.ops.resnet_fast.add_relu_(a, b)
        ctx.mark_dirty(a)
        ctx.save_for_backward(a)
        return a

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        g = _relu_grad(grad, out)
        return g, g


def _add_relu_inplace_autograd(a, b):
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        return _AddReluInplace.apply(a, b)
    with torch._C._AutoDispatchBelowAutograd():
        return torch.ops.resnet_fast.add_relu_(a, b)


_lib.impl("add_relu_", _add_relu_inplace_autograd, "Autograd")


def add_relu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``relu(a + b)`` as a new tensor."""
    return torch.ops.resnet_fast.add_relu(a, b)


fx_symbolic_tracing = getattr(torch.fx._symbolic_trace, "is_fx_symbolic_tracing", None) or torch.fx._symbolic_trace.is_fx_tracing


def residual_add_relu(out: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """The residual join ``out += identity; relu_(out)`` of every block that does not fuse it."""
    if fx_symbolic_tracing():  # Proxies: record the op, branch on nothing
        return torch.ops.resnet_fast.add_relu(out, identity)
    if identity.dtype != out.dtype:  # autocast can leave the shortcut in another dtype
        identity = identity.to(out.dtype)
    if torch.compiler.is_compiling():
        # PyTorch cannot functionalize a custom op that returns an alias of its input (the
        # ``Tensor(a!)`` result of add_relu_), so traced graphs use the functional op.
        return torch.ops.resnet_fast.add_relu(out, identity)
    return torch.ops.resnet_fast.add_relu_(out, identity)


# --------------------------------------------------------------------------------------------
# conv2d_bias_act
# --------------------------------------------------------------------------------------------
_lib.define(CONV_SCHEMA)


def nhwc_strides(n: int, c: int, h: int, w: int):
    """Strides of a dense channels_last [N, C, H, W] tensor, size-1 dimensions included: the one
    layout every conv2d_bias_act output has (real and fake kernels alike)."""
    return (h * w * c, 1, w * c, c)


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _check_conv(x, weight, bias, residual, stride, padding, dilation, groups) -> List[int]:
    name = "resnet_fast::conv2d_bias_act"
    if x.dim() != 4 or weight.dim() != 4:
        raise RuntimeError(f"{name}: expected 4-D x and weight, got x {list(x.shape)} and weight {list(weight.shape)}")
    if len(stride) != 2 or len(padding) != 2 or len(dilation) != 2:
        raise RuntimeError(f"{name}: stride, padding and dilation must have 2 elements each")
    n, c, h, w = x.shape
    oc, cg, kh, kw = weight.shape
    if groups < 1 or c != cg * groups or oc % groups:
        raise RuntimeError(
            f"{name}: x has {c} channels, weight {list(weight.shape)} with groups={groups} expects {cg * groups}"
        )
    if bias.shape != (oc,):
        raise RuntimeError(f"{name}: expected bias of shape [{oc}], got {list(bias.shape)}")
    if not x.is_floating_point() or x.dtype != weight.dtype:
        raise RuntimeError(f"{name}: x ({x.dtype}) and weight ({weight.dtype}) must share one floating dtype")
    if x.device != weight.device or x.device != bias.device:
        raise RuntimeError(f"{name}: x, weight and bias must be on one device, got {x.device}, {weight.device}, {bias.device}")
    oh = conv_output_size(h, kh, stride[0], padding[0], dilation[0])
    ow = conv_output_size(w, kw, stride[1], padding[1], dilation[1])
    if oh <= 0 or ow <= 0:
        raise RuntimeError(f"{name}: input {h}x{w} is too small for a {kh}x{kw} kernel (output {oh}x{ow})")
    out_shape = [n, oc, oh, ow]
    if residual is not None:
        if list(residual.shape) != out_shape:
            raise RuntimeError(f"{name}: residual must have the output shape {out_shape}, got {list(residual.shape)}")
        if residual.device != x.device:
            raise RuntimeError(f"{name}: residual is on {residual.device}, x on {x.device}")
    return out_shape


def _mkldnn_dtype_ok(dtype: torch.dtype) -> bool:
    if dtype == torch.float32:
        return True
    if dtype == torch.bfloat16:
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if dtype == torch.float16:
        return torch.ops.mkldnn._is_mkldnn_fp16_supported()
    return False


_HAS_MKLDNN_POINTWISE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def _onednn_fused(x: torch.Tensor) -> bool:
    """Whether the CPU body runs oneDNN's fused conv (+post-ops) for this input."""
    return x.device.type == "cpu" and _HAS_MKLDNN_POINTWISE and _mkldnn_dtype_ok(x.dtype) and x.numel() > 0


# oneDNN's blocked copies of a folded CPU weight, attached to the (dense) folded weight tensor. The op
# schema takes dense tensors only (an opaque mkldnn tensor would dispatch to MkldnnCPU), so the packed
# copies ride along as an attribute: the Python object of a tensor survives the dispatcher.
_PACKED_ATTR = "_resnet_fast_mkldnn_weights"
_HAS_MKLDNN_REORDER = _HAS_MKLDNN_POINTWISE and hasattr(torch.ops.mkldnn, "_reorder_convolution_weight")
_MAX_PACKED_SHAPES = 2


def allow_prepack(weight: torch.Tensor) -> None:
    """Let the CPU op keep oneDNN's blocked layout of ``weight``, which must never be written again
    (a cached fold).

    Without it every call of the fused oneDNN conv reorders the plain weight first: at small inputs
    (batch 1, CIFAR-sized images, the late layers) the reorder costs more than the convolution
    (ResNet-50's 512->512 3x3 on a 1x1 map: 392 us plain, 30 us packed, 2 cores).
    """
    if weight.device.type == "cpu" and _HAS_MKLDNN_REORDER and weight.dim() == 4 and not fx_symbolic_tracing():
        setattr(weight, _PACKED_ATTR, {})


def _mkldnn_weight(weight, x, stride, padding, dilation, groups) -> torch.Tensor:
    packs = getattr(weight, _PACKED_ATTR, None)
    if packs is None:
        return weight
    # oneDNN picks the blocked format for the input shape it is given, and a weight packed for
    # another shape can run far slower than the plain one (a 1x1 conv packed for a 1x1 map, then run
    # on 2x2: 25 ms instead of 0.1; oneDNN in torch 2.14, AVX2). So one pack per input shape, for
    # the first _MAX_PACKED_SHAPES shapes; later shapes take the plain weight (oneDNN reorders it).
    key = tuple(x.shape)
    packed = packs.get(key)
    if packed is None:
        if len(packs) >= _MAX_PACKED_SHAPES:
            return weight
        try:
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                weight, list(padding), list(stride), list(dilation), groups, list(x.shape))
        except RuntimeError:  # a oneDNN build without this case: plain weights still work
            packed = weight
        packs[key] = packed
    return packed


def _conv2d_bias_act_torch(x, weight, bias, residual, stride, padding, dilation, groups, relu):
    """PyTorch body: oneDNN's fused conv (+add)(+relu) on the CPU, else conv followed by the epilogue."""
    if bias.dtype != x.dtype:
        bias = bias.to(x.dtype)
    if residual is not None and residual.dtype != x.dtype:
        residual = residual.to(x.dtype)
    if _onednn_fused(x):
        weight = _mkldnn_weight(weight, x, stride, padding, dilation, groups)
        if residual is None:
            return torch.ops.mkldnn._convolution_pointwise(
                x, weight, bias, padding, stride, dilation, groups, "relu" if relu else "none", [], ""
            )
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, residual, weight, bias, padding, stride, dilation, groups, "add", None, "relu" if relu else None, [], ""
        )
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    if residual is not None:
        y = y.add_(residual)
    return y.relu_() if relu else y


# kernels/conv.py's run_planned once the Triton conv has been imported (no launch plan exists before).
_run_planned = None


def _triton_conv():
    global _run_planned
    from .kernels import conv as triton_conv

    _run_planned = triton_conv.run_planned
    return triton_conv


def _conv2d_bias_act_impl(x, weight, bias, residual, stride, padding, dilation, groups, relu):
    if _run_planned is not None and backend.may_run_plans(x):
        # A repeat of an earlier call's launch (same shapes, strides, dtypes, devices, geometry):
        # its checks passed then and read nothing else.
        y = _run_planned(x, weight, bias, residual, stride, padding, dilation, groups, relu)
        if y is not None:
            return y
    _check_conv(x, weight, bias, residual, stride, padding, dilation, groups)
    if backend.use_triton(x.device, x.dtype):
        triton_conv = _triton_conv()
        if triton_conv.unsupported(x, padding, groups) is None:  # else PyTorch's conv, below
            # The launcher makes x dense channels_last itself, or (the 3-channel stem) reads any
            # layout straight into its 4-channel padded copy: one pass over the input, not two.
            return triton_conv.conv2d_bias_act(x, weight, bias, residual, stride, padding, dilation, groups, relu)
    x = x.contiguous(memory_format=torch.channels_last)
    y = _conv2d_bias_act_torch(x, weight, bias, residual, stride, padding, dilation, groups, relu)
    strides = nhwc_strides(*y.shape)
    if y.stride() != strides:  # only size-1 dims can differ; keep the fake kernel's promise exact
        y = torch.empty_strided(y.shape, strides, dtype=y.dtype, device=y.device).copy_(y)
    return y


_lib.impl("conv2d_bias_act", _conv2d_bias_act_impl, "CPU")
_lib.impl("conv2d_bias_act", _conv2d_bias_act_impl, "CUDA")


@torch.library.register_fake("resnet_fast::conv2d_bias_act")
def _conv2d_bias_act_fake(x, weight, bias, residual, stride, padding, dilation, groups, relu):
    out_shape = _check_conv(x, weight, bias, residual, stride, padding, dilation, groups)
    return x.new_empty_strided(out_shape, nhwc_strides(*out_shape))


# In-place twin: ``residual = relu?(conv2d(x, weight) + bias + residual)``, written into the residual's
# memory. On the CPU a fresh activation costs page faults on every call (glibc maps big blocks
# anew), so the block epilogue writes into the shortcut tensor it already owns. No return value:
# PyTorch can functionalize a mutating custom op only when it returns no alias.
CONV_INPLACE_SCHEMA = (
    "conv2d_bias_act_add_(Tensor(a!) residual, Tensor x, Tensor weight, Tensor bias, int[2] stride, "
    "int[2] padding, int[2] dilation, int groups, bool relu) -> ()"
)
_lib.define(CONV_INPLACE_SCHEMA)


def _check_conv_inplace(residual, x, weight, bias, stride, padding, dilation, groups):
    _check_conv(x, weight, bias, residual, stride, padding, dilation, groups)
    name = "resnet_fast::conv2d_bias_act_add_"
    if residual.dtype != x.dtype:
        raise RuntimeError(f"{name}: residual ({residual.dtype}) must have x's dtype ({x.dtype})")
    if residual.stride() != nhwc_strides(*residual.shape):
        raise RuntimeError(f"{name}: residual must be a dense channels_last tensor, got strides {residual.stride()}")
    if _overlaps(residual, x):
        raise RuntimeError(f"{name}: residual overlaps x in memory")


def _conv2d_bias_act_add_impl(residual, x, weight, bias, stride, padding, dilation, groups, relu):
    if (_run_planned is not None and backend.may_run_plans(x) and not _overlaps(residual, x)
            and _run_planned(x, weight, bias, residual, stride, padding, dilation, groups, relu, out=residual) is not None):
        return  # an earlier call's launch (see _conv2d_bias_act_impl); the overlap is the one check on data
    _check_conv_inplace(residual, x, weight, bias, stride, padding, dilation, groups)
    x = x.contiguous(memory_format=torch.channels_last)
    if backend.use_triton(x.device, x.dtype):
        triton_conv = _triton_conv()
        if triton_conv.unsupported(x, padding, groups) is None:  # else PyTorch's conv, below
            # Each output element is read (as residual) and then written by the same program.
            triton_conv.conv2d_bias_act(x, weight, bias, residual, stride, padding, dilation, groups, relu, out=residual)
            return
    if bias.dtype != x.dtype:
        bias = bias.to(x.dtype)
    if _onednn_fused(x):
        torch.ops.mkldnn._convolution_pointwise_.binary(
            residual, x, _mkldnn_weight(weight, x, stride, padding, dilation, groups), bias, padding, stride, dilation, groups, "add", None, "relu" if relu else None, [], ""
        )
        return
    residual.add_(F.conv2d(x, weight, bias, stride, padding, dilation, groups))
    if relu:
        residual.relu_()


_lib.impl("conv2d_bias_act_add_", _conv2d_bias_act_add_impl, "CPU")
_lib.impl("conv2d_bias_act_add_", _conv2d_bias_act_add_impl, "CUDA")


@torch.library.register_fake("resnet_fast::conv2d_bias_act_add_")
def _conv2d_bias_act_add_fake(residual, x, weight, bias, stride, padding, dilation, groups, relu):
    _check_conv_inplace(residual, x, weight, bias, stride, padding, dilation, groups)


# --------------------------------------------------------------------------------------------
# max_pool2d: the eval stem's pool, channels_last, no indices
# --------------------------------------------------------------------------------------------
POOL_SCHEMA = (
    "max_pool2d(Tensor x, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
    "bool ceil_mode) -> Tensor"
)
_lib.define(POOL_SCHEMA)


def pool_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> int:
    """PyTorch's pooling output size (with ceil_mode, a last window must start inside the input or
    its left padding)."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= size + padding:
            out -= 1
        return out
    return span // stride + 1


def _pair(v) -> List[int]:
    return [v, v] if isinstance(v, int) else [int(i) for i in v]


def stem_pool_args(pool: torch.nn.Module) -> Optional[tuple]:
    """``(kernel_size, stride, padding, dilation, ceil_mode)`` of an ``nn.MaxPool2d`` that
    ``resnet_fast::max_pool2d`` computes exactly as PyTorch does; None for any other module."""
    if type(pool) is not torch.nn.MaxPool2d or pool.return_indices:
        return None
    kernel, padding = _pair(pool.kernel_size), _pair(pool.padding)
    stride = _pair(pool.stride) if pool.stride not in (None, (), []) else kernel
    if any(p > k // 2 for p, k in zip(padding, kernel)):
        return None  # PyTorch refuses it: leave the error to PyTorch's pool
    return kernel, stride, padding, _pair(pool.dilation), bool(pool.ceil_mode)


def _check_pool(x, kernel_size, stride, padding, dilation, ceil_mode):
    name = "resnet_fast::max_pool2d"
    if x.dim() != 4:
        raise RuntimeError(f"{name}: expected a 4-D [N, C, H, W] tensor, got shape {list(x.shape)}")
    n, c, h, w = x.shape
    out = [pool_output_size(size, k, st, p, d, ceil_mode)
           for size, k, st, p, d in zip((h, w), kernel_size, stride, padding, dilation)]
    if min(out) <= 0:
        raise RuntimeError(f"{name}: input {h}x{w} is too small for a {kernel_size[0]}x{kernel_size[1]} window "
                           f"(stride {stride}, padding {padding}, dilation {dilation}): output {out[0]}x{out[1]}")
    return [n, c, out[0], out[1]]


def _max_pool2d_impl(x, kernel_size, stride, padding, dilation, ceil_mode):
    _check_pool(x, kernel_size, stride, padding, dilation, ceil_mode)
    if backend.use_triton(x.device, x.dtype):
        from .kernels import pool

        return pool.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)
    y = F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)
    strides = nhwc_strides(*y.shape)
    if y.stride() != strides:  # the fake kernel promises dense channels_last
        y = torch.empty_strided(y.shape, strides, dtype=y.dtype, device=y.device).copy_(y)
    return y


_lib.impl("max_pool2d", _max_pool2d_impl, "CPU")
_lib.impl("max_pool2d", _max_pool2d_impl, "CUDA")


@torch.library.register_fake("resnet_fast::max_pool2d")
def _max_pool2d_fake(x, kernel_size, stride, padding, dilation, ceil_mode):
    out_shape = _check_pool(x, kernel_size, stride, padding, dilation, ceil_mode)
    return x.new_empty_strided(out_shape, nhwc_strides(*out_shape))


_len_dispatch_stack = getattr(torch._C, "_len_torch_dispatch_stack", None)
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", None)
_tracing_state = getattr(torch._C, "_get_tracing_state", lambda: None)
_function_mode_on = getattr(torch._C, "_is_torch_function_mode_enabled", None)


def direct_call_ok(x: torch.Tensor) -> bool:
    """Whether a call the model makes itself (folded weights, activations it created) may run the
    op's CPU/CUDA body directly instead of going through the dispatcher (~5 us a conv: a tenth of
    a small-batch forward). Only for plain tensors in plain eager mode, with no autograd to record:
    whenever anything could look at the op (torch.compile/export tracing, torch.jit.trace, a
    TorchDispatchMode or TorchFunctionMode such as FlopCounterMode, the profiler, tensor subclasses,
    vmap and the other torch.func transforms) the op runs."""
    if torch.compiler.is_compiling():  # first: dynamo folds it to True and traces nothing below
        return False
    return (
        _tracing_state() is None  # torch.jit.trace (and the TorchScript-based ONNX export) records ops
        and type(x) is torch.Tensor
        and _len_dispatch_stack is not None and _function_mode_on is not None
        # vmap, torch.func.grad, functionalize: their wrapped tensors are of type torch.Tensor too
        and _functorch_active is not None and not _functorch_active()
        and not (torch.is_grad_enabled() and x.requires_grad)
        and _len_dispatch_stack() == 0
        and not _function_mode_on()
        and not torch.autograd._profiler_enabled()
    )


def conv2d_bias_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    residual: Optional[torch.Tensor] = None,
    stride: Sequence[int] = (1, 1),
    padding: Sequence[int] = (0, 0),
    dilation: Sequence[int] = (1, 1),
    groups: int = 1,
    relu: bool = True,
) -> torch.Tensor:
    """``relu?(conv2d(x, weight) + bias + residual)``: ``torch.ops.resnet_fast.conv2d_bias_act``.

    In plain eager mode on CPU/CUDA tensors that need no gradient (``direct_call_ok``) the op's
    body runs without the dispatcher's round trip (~17 us a call on an H100 host, a quarter of a
    small conv's host time); anything that could observe the op (tracing, modes, the profiler,
    subclasses, autograd) goes through ``torch.ops``."""
    stride, padding, dilation = list(stride), list(padding), list(dilation)
    # direct_call_ok first: its type check stops an FX Proxy before anything branches on it.
    if (direct_call_ok(x) and (x.is_cuda or x.is_cpu) and _plain(weight) and _plain(bias)
            and (residual is None or _plain(residual))):
        return _conv2d_bias_act_impl(x, weight, bias, residual, stride, padding, dilation, groups, relu)
    return torch.ops.resnet_fast.conv2d_bias_act(x, weight, bias, residual, stride, padding, dilation, groups, relu)


def _plain(t) -> bool:
    return type(t) is torch.Tensor and not (t.requires_grad and torch.is_grad_enabled())
