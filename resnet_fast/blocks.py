"""Residual blocks shared by the torchvision-style and the seed-style models.

A block is a chain of conv+norm stages (ReLU between them), a shortcut, and the residual join
``relu(out + shortcut)``. Subclasses only name their submodules; the two forward paths live here:

* reference (train mode, autograd, hooks): exactly torchvision's op sequence, with the join through
  ``resnet_fast::add_relu_``;
* fused (eval): each conv with its BN folded in runs as one ``conv2d_bias_act`` call, the last
  one also adding the shortcut and applying the ReLU in its epilogue.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import fused
from .ops import residual_add_relu


class ResidualBlock(fused.FoldCacheMixin, nn.Module):
    # (conv attribute, norm attribute) per stage, and the shortcut attribute; set by subclasses.
    stages: Tuple[Tuple[str, str], ...] = ()
    shortcut_name: str = "downsample"

    def _stage_modules(self) -> List[Tuple[nn.Module, nn.Module]]:
        return [(fused.child(self, c), fused.child(self, n)) for c, n in self.stages]

    def forward(self, x: Tensor) -> Tensor:
        if not fused.fx_tracing():
            pairs = self._fusable(x)
            if pairs is not None:
                return self._forward_fused(x, pairs=pairs)
        return self._forward_reference(x)

    def _fusable(self, x: Tensor) -> Optional[List[Tuple[nn.Module, nn.Module]]]:
        """The (conv, norm) stage pairs when the fused eval path may run on ``x``, else None."""
        relu = fused.child(self, "relu")
        if type(relu) is not nn.ReLU:
            return None
        pairs = self._stage_modules()
        parts = [m for pair in pairs for m in pair]
        shortcut = fused.child(self, self.shortcut_name)
        if shortcut is not None:
            parts.extend(fused.submodules(shortcut))
        parts.append(relu)
        if fused.fused_allowed(self, x, parts) and all(fused.foldable(c, n) for c, n in pairs):
            return pairs
        return None

    def _forward_reference(self, x: Tensor) -> Tensor:
        out = x
        last = len(self.stages) - 1
        for i, (conv, norm) in enumerate(self._stage_modules()):
            out = norm(conv(out))
            if i < last:
                out = self.relu(out)
        shortcut = getattr(self, self.shortcut_name)
        identity = x if shortcut is None else shortcut(x)
        return residual_add_relu(out, identity)

    def _forward_fused(self, x: Tensor, consume_input: bool = False,
                       pairs: Optional[List[Tuple[nn.Module, nn.Module]]] = None) -> Tensor:
        """The eval path. ``consume_input``: the caller owns ``x`` and lets the block write its
        output into x's memory (the network does, for activations it created itself). ``pairs``:
        ``_fusable``'s answer, where the caller asked it."""
        dtype = fused.compute_dtype(x)
        if x.dtype != dtype:
            x = x.to(dtype)
        if pairs is None:
            pairs = self._stage_modules()
        # One weight layout for the block's folds (it depends on the device type and the backend).
        layout = fused.weight_layout(pairs[0][0].weight.device, dtype)
        folds = [fused.folded(self, c, conv, norm, dtype, layout) for (c, _), (conv, norm) in zip(self.stages, pairs)]
        out = x
        for f in folds[:-1]:
            out = f(out, relu=True)
        shortcut = fused.child(self, self.shortcut_name)
        if shortcut is None:
            identity, owned = x, consume_input
        else:
            pair = fused.shortcut_pair(shortcut)
            if pair is not None:
                identity = fused.folded(self, self.shortcut_name, pair[0], pair[1], dtype, layout)(x, relu=False)
                owned = True  # created right here
            else:  # an arbitrary shortcut module still runs, only its output joins the epilogue
                identity, owned = shortcut(x), False
        if owned and fused.writable_in_place(identity, out):
            return folds[-1].add_into(identity, out, relu=True)
        return folds[-1](out, residual=identity, relu=True)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3x3 convolution, padded so that stride 1 keeps the size (padding = dilation)."""
    return nn.Conv2d(
        in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation, groups=groups, bias=False, dilation=dilation
    )


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(ResidualBlock):
    """Two 3x3 convs (ResNet-18/34). Module names and construction order are torchvision's."""

    expansion: int = 1
    stages = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        norm_layer=None,
    ) -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        if groups != 1 or base_width != 64:
            raise ValueError(f"BasicBlock only supports groups=1 and base_width=64, got groups={groups}, base_width={base_width}")
        if dilation > 1:
            raise NotImplementedError("Dilation > 1 not supported in BasicBlock")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride


class Bottleneck(ResidualBlock):
    """1x1 reduce, 3x3 (stride, groups, dilation), 1x1 expand: ResNet-50 and up, "ResNet v1.5".

    The stride sits on the 3x3 conv, as in torchvision, not on the first 1x1 as in the paper.
    """

    expansion: int = 4
    stages = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        norm_layer=None,
    ) -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, groups, dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
