"""The network body shared by the torchvision-style ``ResNet`` and the seed-style one: input checks,
the stem (fused conv7x7+BN+ReLU in eval), the four stages, pooling and the classifier."""
from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from . import backend, fused, ops
from .blocks import ResidualBlock
from .ops import conv_output_size


class ResNetBody(fused.FoldCacheMixin, nn.Module):
    stem_norm_name = "bn1"
    stem_pool_name = "maxpool"

    def _check_input(self, x) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(
                f"expected a 4-D input (N, C, H, W), got a {x.dim()}-D tensor of shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"expected a floating-point input (float32, float16 or bfloat16), got {x.dtype}")
        conv = self.conv1
        if x.shape[1] != conv.in_channels:
            raise ValueError(
                f"expected {conv.in_channels} input channels, got {x.shape[1]} (input shape {tuple(x.shape)})"
            )
        weight = conv.weight
        if x.device != weight.device:
            raise ValueError(f"input is on {x.device} but the model is on {weight.device}; move one with .to()")
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(
                f"input dtype {x.dtype} does not match the model's dtype {weight.dtype}; "
                f"convert the model with .to({x.dtype}) or run under torch.autocast"
            )
        self._check_spatial(x)

    def _check_spatial(self, x: Tensor) -> None:
        conv = self.conv1
        pool = getattr(self, self.stem_pool_name)
        h, w = x.shape[-2:]
        sizes = []
        for i, size in enumerate((h, w)):
            out = conv_output_size(size, conv.kernel_size[i], conv.stride[i], conv.padding[i], conv.dilation[i])
            if isinstance(pool, nn.MaxPool2d) and out > 0:
                k, s, p, d = (v if isinstance(v, int) else v[i] for v in (pool.kernel_size, pool.stride, pool.padding, pool.dilation))
                out = conv_output_size(out, k, s, p, d)
            sizes.append(out)
        if min(sizes) <= 0:
            raise ValueError(
                f"input spatial size {h}x{w} is too small for the stem (conv {conv.kernel_size[0]}x{conv.kernel_size[1]} "
                f"stride {conv.stride[0]}, then max-pool): it would produce {sizes[0]}x{sizes[1]}; need at least 1x1"
            )

    def _stem(self, x: Tensor):
        """Returns (output, fused?)."""
        norm = getattr(self, self.stem_norm_name)
        parts = (self.conv1, norm, self.relu)
        if type(self.relu) is nn.ReLU and fused.fused_allowed(self, x, parts) and fused.foldable(self.conv1, norm):
            dtype = fused.compute_dtype(x)
            if backend.prefers_triton(x.device, dtype):
                # The Triton stem reads x in any layout (its input is copied to 4 padded channels
                # anyway, kernels/conv.py): converting the layout here would be a second pass.
                x = x.to(dtype=dtype)
            else:
                # The one layout conversion of the eval path: everything after stays channels_last.
                x = x.to(dtype=dtype, memory_format=torch.channels_last)
            return fused.folded(self, "conv1", self.conv1, norm, dtype)(x, relu=True), True
        return self.relu(norm(self.conv1(x))), False

    @staticmethod
    def _stem_pool(pool: nn.Module, x: Tensor) -> Tensor:
        """The max-pool after a fused stem: PyTorch's, as DESIGN.md section 2 has it. With
        RESNET_FAST_TRITON_POOL=1, on the Triton path, ``resnet_fast::max_pool2d`` instead: a kernel
        that writes no indices (PyTorch's CUDA max_pool2d always computes them, int64, 4x the bytes
        of a bf16 output); opt-in until a GPU run (bench_kernels' max_pool rows) shows the gain."""
        if os.environ.get("RESNET_FAST_TRITON_POOL", "0") != "1":
            return pool(x)
        args = ops.stem_pool_args(pool)
        if args is None or fused.has_hooks(pool) or not backend.prefers_triton(x.device, x.dtype):
            return pool(x)
        if ops.direct_call_ok(x):
            return ops._max_pool2d_impl(x, *args)
        return torch.ops.resnet_fast.max_pool2d(x, *args)

    def _stages(self, x: Tensor, owned: bool) -> Tensor:
        """layer1..4. While the activation is one this forward created and nobody else can see
        (no hooks), each fused block writes its output over its input instead of allocating."""
        for name in ("layer1", "layer2", "layer3", "layer4"):
            layer = getattr(self, name)
            if not (owned and type(layer) is nn.Sequential and not fused.has_hooks(layer)):
                x, owned = layer(x), False
                continue
            for block in layer:
                pairs = (block._fusable(x) if owned and isinstance(block, ResidualBlock) and not fused.has_hooks(block)
                         else None)
                if pairs is not None:
                    x = block._forward_fused(x, consume_input=True, pairs=pairs)
                else:
                    x, owned = block(x), False
        return x

    def _forward_impl(self, x: Tensor) -> Tensor:
        if fused.fx_tracing():
            return self._forward_traceable(x)
        self._check_input(x)
        x, stem_fused = self._stem(x)
        pool = getattr(self, self.stem_pool_name)
        x = self._stem_pool(pool, x) if stem_fused else pool(x)
        x = self._stages(x, owned=stem_fused and type(pool) is nn.MaxPool2d and not fused.has_hooks(pool))
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)

    def _forward_traceable(self, x: Tensor) -> Tensor:
        """torchvision's forward, module by module: what torch.fx records."""
        x = self.relu(getattr(self, self.stem_norm_name)(self.conv1(x)))
        x = getattr(self, self.stem_pool_name)(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(x)
        return self.fc(torch.flatten(x, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self._forward_impl(x)
