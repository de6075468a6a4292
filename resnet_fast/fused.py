"""BatchNorm folding, the per-module fold cache, and the rules for when the fused eval path runs."""
from __future__ import annotations

import threading
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import nn

from . import backend
from . import ops
from .ops import allow_prepack, conv2d_bias_act, direct_call_ok, fx_symbolic_tracing, nhwc_strides

_CACHE_ATTR = "_resnet_fast_fold_cache"


def _is_frozen_bn(norm: nn.Module) -> bool:
    # torchvision.ops.FrozenBatchNorm2d without importing torchvision: buffers only, fixed statistics.
    return type(norm).__name__ == "FrozenBatchNorm2d" and hasattr(norm, "running_var")


def foldable(conv: nn.Module, norm: nn.Module) -> bool:
    """Whether ``norm(conv(x))`` is an affine map of ``conv(x)`` that can be folded into the conv."""
    if type(conv) is not nn.Conv2d or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return False
    if isinstance(norm, nn.modules.batchnorm._BatchNorm):
        # Eval BN uses running statistics only when they exist (track_running_stats=True).
        return (not norm.training and _tensor_attr(norm, "running_mean") is not None
                and _tensor_attr(norm, "running_var") is not None)
    return _is_frozen_bn(norm)


def to_oc_last(weight: torch.Tensor) -> torch.Tensor:
    """The same OIHW tensor stored output-channel-innermost (memory [KH, KW, C/groups, OC])."""
    return weight.permute(2, 3, 1, 0).contiguous().permute(3, 2, 0, 1)


def fold_bn(
    conv: nn.Conv2d, norm: nn.Module, dtype: torch.dtype, layout: str = "channels_last"
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(w', b')`` with ``conv(x, w') + b' == norm(conv(x))``; fp32 math (fp64 for a float64
    model), weight cast to ``dtype``.

    The bias stays in the math dtype: the kernels add it to their fp32 accumulator before the cast.
    ``layout`` is the weight's memory order, its shape is always OIHW: ``channels_last`` (what
    oneDNN and cuDNN want) or ``oc_last`` (output channels innermost: coalesced loads of the
    weight tiles in the Triton kernel).
    """
    if layout not in ("channels_last", "oc_last"):
        raise ValueError(f"layout: expected 'channels_last' or 'oc_last', got {layout!r}")
    math = torch.float64 if dtype == torch.float64 else torch.float32
    with torch.no_grad():
        w = conv.weight.to(math)
        mean = norm.running_mean.to(math)
        var = norm.running_var.to(math)
        gamma = norm.weight.to(math) if norm.weight is not None else torch.ones_like(mean)
        beta = norm.bias.to(math) if norm.bias is not None else torch.zeros_like(mean)
        scale = gamma * torch.rsqrt(var + norm.eps)
        weight = (w * scale.reshape(-1, 1, 1, 1)).to(dtype)
        if layout == "oc_last":
            weight = to_oc_last(weight)
        else:
            weight = weight.contiguous(memory_format=torch.channels_last)
        shift = conv.bias.to(math) - mean if conv.bias is not None else -mean
        bias = (beta + shift * scale).contiguous()
    return weight, bias


class FoldedConv(NamedTuple):
    weight: torch.Tensor
    bias: torch.Tensor
    stride: List[int]
    padding: List[int]
    dilation: List[int]
    groups: int

    def __call__(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None, relu: bool = True) -> torch.Tensor:
        if direct_call_ok(x):
            return ops._conv2d_bias_act_impl(x, self.weight, self.bias, residual, self.stride, self.padding,
                                             self.dilation, self.groups, relu)
        return conv2d_bias_act(x, self.weight, self.bias, residual, self.stride, self.padding, self.dilation, self.groups, relu)

    def add_into(self, residual: torch.Tensor, x: torch.Tensor, relu: bool = True) -> torch.Tensor:
        """``residual = relu?(conv(x) + bias + residual)`` in residual's memory; returns residual."""
        if direct_call_ok(x):
            ops._conv2d_bias_act_add_impl(residual, x, self.weight, self.bias, self.stride, self.padding,
                                          self.dilation, self.groups, relu)
        else:
            torch.ops.resnet_fast.conv2d_bias_act_add_(
                residual, x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups, relu
            )
        return residual


def weight_layout(device: torch.device, dtype: torch.dtype) -> str:
    return "oc_last" if backend.prefers_triton(device, dtype) else "channels_last"


# Channels per group the Triton path widens narrow groups to (see widen_groups): one 32-channel
# run per pixel and tap is 64 bytes of bf16, loaded as 16-byte asynchronous copies.
GROUP_WIDTH = 32


def widen_groups(weight: torch.Tensor, groups: int, width: int = GROUP_WIDTH) -> Tuple[torch.Tensor, int]:
    """The same grouped conv with fewer, wider groups: ``gb`` neighbouring groups become one whose
    weight is block-diagonal (zeros between different original groups), so
    ``conv2d(x, w', groups=groups // gb) == conv2d(x, w, groups=groups)``.

    For ResNeXt's 4-16 channels per group: a group of 4 gives the Triton kernel 8-byte runs per
    pixel and a 16-wide N tile with 4 live columns, one program per (tile, group); widened to 32
    channels it runs the per-tap walk with 16-byte asynchronous copies and full 32-wide tiles, ~4x
    fewer instructions per output on sm_90 (benchmarks/NOTES.md), at gb times the MMA work on
    zeros (these convs are bandwidth-bound). Keeps ``weight``'s memory layout."""
    oc, cg, kh, kw = weight.shape
    gb = max(1, width // cg) if groups > 1 else 1
    while gb > 1 and groups % gb:
        gb //= 2
    if gb == 1:
        return weight, groups
    ocg = oc // groups
    w = weight.reshape(groups // gb, gb, ocg, cg, kh, kw)
    wide = weight.new_zeros(groups // gb, gb, ocg, gb, cg, kh, kw)
    for j in range(gb):
        wide[:, j, :, j] = w[:, j]
    wide = wide.reshape(oc, gb * cg, kh, kw)
    oc_last = weight.stride(0) == 1 and oc > 1
    return (to_oc_last(wide) if oc_last else wide.contiguous(memory_format=torch.channels_last)), groups // gb


def make_folded(conv: nn.Conv2d, norm: nn.Module, dtype: torch.dtype, prepack: bool = False) -> FoldedConv:
    """The fold as the op wants it; ``prepack`` (cached folds only: a pack pays off when reused) lets
    the CPU op keep oneDNN's blocked copy of the weight. For the Triton kernels narrow groups are
    widened (``widen_groups``)."""
    layout = weight_layout(conv.weight.device, dtype)
    weight, bias = fold_bn(conv, norm, dtype, layout)
    groups = conv.groups
    if layout == "oc_last" and groups > 1 and weight.shape[1] < GROUP_WIDTH:
        weight, groups = widen_groups(weight, groups)
    if prepack:
        allow_prepack(weight)
    return FoldedConv(weight, bias, list(conv.stride), list(conv.padding), list(conv.dilation), groups)


_MISSING = object()


def _tensor_attr(module: nn.Module, name: str):
    # Module.__getattr__ searches three dicts through Python; a fold check reads six tensors per
    # conv on every eval forward, so go to the dicts directly (plain attributes fall back).
    t = module._parameters.get(name, _MISSING)
    if t is _MISSING:
        t = module._buffers.get(name, _MISSING)
        if t is _MISSING:
            t = getattr(module, name, None)
    return t


_CONV_TENSORS = ("weight", "bias")
_NORM_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _signature(conv: nn.Conv2d, norm: nn.Module):
    """What a fold depends on: identity, data pointer, version, dtype and device of every tensor
    involved, and eps.

    ``_version`` catches in-place edits (optimizer steps, ``load_state_dict``'s ``copy_``);
    the data pointer catches ``.to()`` and replaced ``.data``. A train-mode forward updates the
    running statistics inside ``native_batch_norm``/``cudnn_batch_norm``, whose schemas do not mark
    them as written (their versions stay), but it also does ``num_batches_tracked.add_(1)``: that
    version is in the signature. (Module ``.to()`` and ``.train()`` also drop the whole cache,
    FoldCacheMixin; edits through ``.data`` bump no version: ``clear_folds``.)
    """
    sig = [norm.eps]
    for module, names in ((conv, _CONV_TENSORS), (norm, _NORM_TENSORS)):
        for name in names:
            t = _tensor_attr(module, name)
            if t is None:
                sig.append(None)
            else:
                # dtype and device too: a submodule's own .double() then .half() (the block's cache is
                # not told) can leave id, address and version as they were. Flat, not a tuple per
                # tensor: read once per conv per forward.
                sig += (id(t), t.data_ptr(), t._version, t.dtype, t.device)
    return tuple(sig)


class FoldCache:
    """One folded ``(w', b')`` per (conv name, dtype, device), refreshed when its signature changes."""

    def __init__(self) -> None:
        self._entries: Dict[tuple, Tuple[tuple, FoldedConv]] = {}
        self._lock = threading.Lock()

    def snapshot(self) -> List[FoldedConv]:
        """The folds held now (a CUDA graph keeps the ones it captured alive)."""
        return [folded for _, folded in list(self._entries.values())]

    def get(self, name: str, conv: nn.Conv2d, norm: nn.Module, dtype: torch.dtype,
            layout: Optional[str] = None) -> FoldedConv:
        """``layout``: ``weight_layout`` of the conv's device and ``dtype``, where the caller has it."""
        try:
            sig = _signature(conv, norm)
        except RuntimeError:  # inference tensors carry no version counter: fold every call
            return make_folded(conv, norm, dtype)
        device = _tensor_attr(conv, "weight").device
        key = (name, dtype, device, layout or weight_layout(device, dtype))
        entry = self._entries.get(key)
        if entry is not None and entry[0] == sig:
            return entry[1]
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] == sig:
                return entry[1]
            folded = make_folded(conv, norm, dtype, prepack=True)
            self._entries[key] = (sig, folded)
            return folded


def fold_cache(module: nn.Module) -> FoldCache:
    cache = module.__dict__.get(_CACHE_ATTR)
    if cache is None:
        cache = module.__dict__.setdefault(_CACHE_ATTR, FoldCache())
    return cache


def folded(module: nn.Module, name: str, conv: nn.Conv2d, norm: nn.Module, dtype: torch.dtype,
           layout: Optional[str] = None) -> FoldedConv:
    """The fold of ``norm(conv(.))`` for ``module``'s submodule ``name``, cached unless tracing.
    ``layout``: ``weight_layout(conv.weight.device, dtype)`` where the caller has it already."""
    if torch.compiler.is_compiling():
        # Traced graphs fold inline; with freezing, inductor turns the fold into constants.
        return make_folded(conv, norm, dtype)
    return fold_cache(module).get(name, conv, norm, dtype, layout)


class FoldCacheMixin:
    """For modules that keep folds: never pickled, deep-copied, carried across ``.to()`` or into
    train mode (whatever training does to the statistics, the next eval forward folds afresh), nor
    shared with DataParallel's per-forward replicas (their broadcast weights are freed after each
    forward, and their ids and addresses reused)."""

    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state.pop(_CACHE_ATTR, None)
        return state

    def _apply(self, *args, **kwargs):
        self.__dict__.pop(_CACHE_ATTR, None)
        return super()._apply(*args, **kwargs)

    def train(self, mode: bool = True):
        if mode:
            self.__dict__.pop(_CACHE_ATTR, None)
        return super().train(mode)

    def _replicate_for_data_parallel(self):
        replica = super()._replicate_for_data_parallel()
        replica.__dict__.pop(_CACHE_ATTR, None)
        return replica


def clear_folds(model: nn.Module) -> nn.Module:
    """Drop every cached fold in ``model``, so that the next eval forward folds from the tensors as
    they are. Needed only after edits that bump no version counter: writes through ``.data`` (an
    old-style EMA, weight clipping) or from outside PyTorch. Returns ``model``."""
    for module in model.modules():
        module.__dict__.pop(_CACHE_ATTR, None)
    return model


def fx_tracing() -> bool:
    """torch.fx symbolic tracing (torchvision's create_feature_extractor): values are Proxies, so
    only the plain reference path, which never branches on a tensor, can be traced. (torch.export
    and torch.compile trace real fake tensors and take the fused path.)"""
    return fx_symbolic_tracing()


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the eval path computes in: autocast's when it is on for x's device, else x's."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type) and x.is_floating_point():
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def writable_in_place(t: torch.Tensor, like: torch.Tensor) -> bool:
    """Whether the epilogue may write its result into ``t`` (the caller owns ``t``)."""
    return (
        not torch.compiler.is_compiling()
        and t.dtype == like.dtype
        and t.device == like.device
        and t.stride() == nhwc_strides(*t.shape)
    )


def child(module: nn.Module, name: str):
    """``getattr(module, name)`` for a submodule, without Module.__getattr__'s search through three
    dictionaries (the eval path reads ~10 submodules per block on every forward)."""
    found = module._modules.get(name, _MISSING)
    return getattr(module, name, None) if found is _MISSING else found


def submodules(module: nn.Module) -> List[nn.Module]:
    """``module`` and every module below it, as ``Module.modules()`` finds them but without building
    their names: the eval path asks each for hooks on every forward."""
    found, seen, i = [module], {id(module)}, 0
    while i < len(found):
        for sub in found[i]._modules.values():
            if sub is not None and id(sub) not in seen:
                seen.add(id(sub))
                found.append(sub)
        i += 1
    return found


def has_hooks(module: nn.Module) -> bool:
    # (Hooks registered with_kwargs or always_call are in these two as well.)
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _needs_grad(part: nn.Module) -> bool:
    """Whether any parameter of ``part`` wants a gradient: its registered ones (a custom shortcut may
    have others than weight and bias), and on a DataParallel replica, which holds its weights as
    plain attributes (``parameters()`` is empty there), the ones ``replicate`` put in
    ``_former_parameters``, and the weight and bias the fold reads."""
    tensors = list(part._parameters.values())
    tensors += list(part.__dict__.get("_former_parameters", {}).values())
    tensors += [_tensor_attr(part, "weight"), _tensor_attr(part, "bias")]
    return any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def fused_allowed(module: nn.Module, x: torch.Tensor, parts) -> bool:
    """The fused path runs in eval mode when nobody could observe the difference.

    Autograd needs the unfused graph (the fused op has no backward), and forward hooks on the
    parts that fusion skips would silently not fire: in both cases the reference path runs.
    """
    if module.training:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(p is not None and _needs_grad(p) for p in parts)):
        return False
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return False
    return not any(p is not None and has_hooks(p) for p in parts)


def shortcut_pair(downsample: Optional[nn.Module]):
    """``(conv, norm)`` when the projection shortcut is ``Sequential(conv, norm)`` and foldable."""
    if isinstance(downsample, nn.Sequential) and len(downsample._modules) == 2:
        conv, norm = downsample._modules.values()  # (Sequential's indexing costs ~2 us a forward)
        if foldable(conv, norm):
            return conv, norm
    return None
