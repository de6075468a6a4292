"""torchvision-compatible ResNet family: same signatures, module tree, ``state_dict`` keys and
same-seed initial weights as ``torchvision.models.resnet`` (0.29), with the fused eval path."""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Type, Union

from torch import nn

from .blocks import BasicBlock, Bottleneck, conv1x1
from .network import ResNetBody
from .weights import load_weights, resolve_weights

__all__ = [
    "ResNet",
    "BasicBlock",
    "Bottleneck",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
]


class ResNet(ResNetBody):
    def __init__(
        self,
        block: Type[Union[BasicBlock, Bottleneck]],
        layers: List[int],
        num_classes: int = 1000,
        zero_init_residual: bool = False,
        groups: int = 1,
        width_per_group: int = 64,
        replace_stride_with_dilation: Optional[List[bool]] = None,
        norm_layer: Optional[Callable[..., nn.Module]] = None,
    ) -> None:
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        self._norm_layer = norm_layer
        self.inplanes = 64
        self.dilation = 1
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise ValueError(
                f"replace_stride_with_dilation should be None or a 3-element tuple, got {replace_stride_with_dilation}"
            )
        if len(layers) != 4:
            raise ValueError(f"layers should list 4 block counts, got {layers}")
        self.groups = groups
        self.base_width = width_per_group
        # Construction order matters: the RNG draws of each module's default init happen here, and
        # must be the same as torchvision's for torch.manual_seed(s) to give the same weights.
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2, dilate=replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2, dilate=replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2, dilate=replace_stride_with_dilation[2])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

        # Zero-initialising each block's last BN makes every residual branch start as identity,
        # which improves large-batch training (https://arxiv.org/abs/1706.02677).
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck) and m.bn3.weight is not None:
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock) and m.bn2.weight is not None:
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(
        self,
        block: Type[Union[BasicBlock, Bottleneck]],
        planes: int,
        blocks: int,
        stride: int = 1,
        dilate: bool = False,
    ) -> nn.Sequential:
        norm_layer = self._norm_layer
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                norm_layer(planes * block.expansion),
            )
        layers = [
            block(self.inplanes, planes, stride, downsample, self.groups, self.base_width, previous_dilation, norm_layer)
        ]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(
                block(
                    self.inplanes,
                    planes,
                    groups=self.groups,
                    base_width=self.base_width,
                    dilation=self.dilation,
                    norm_layer=norm_layer,
                )
            )
        return nn.Sequential(*layers)


def _overwrite_named_param(kwargs: dict, param: str, new_value: Any) -> None:
    if param in kwargs and kwargs[param] != new_value:
        raise ValueError(f"The parameter '{param}' expected value {new_value} but got {kwargs[param]} instead.")
    kwargs[param] = new_value


def _resnet(arch: str, block, layers: List[int], weights, progress: bool, **kwargs: Any) -> ResNet:
    weights = resolve_weights(arch, weights)
    if weights is not None and weights.num_classes is not None:
        _overwrite_named_param(kwargs, "num_classes", weights.num_classes)
    model = ResNet(block, layers, **kwargs)
    if weights is not None:
        load_weights(model, weights, progress)
    return model


def resnet18(*, weights=None, progress: bool = True, **kwargs: Any) -> ResNet:
    """ResNet-18 (`Deep Residual Learning for Image Recognition <https://arxiv.org/abs/1512.03385>`_)."""
    return _resnet("resnet18", BasicBlock, [2, 2, 2, 2], weights, progress, **kwargs)


def resnet34(*, weights=None, progress: bool = True, **kwargs: Any) -> ResNet:
    """ResNet-34."""
    return _resnet("resnet34", BasicBlock, [3, 4, 6, 3], weights, progress, **kwargs)


def resnet50(*, weights=None, progress: bool = True, **kwargs: Any) -> ResNet:
    """ResNet-50 v1.5 (stride on the 3x3 conv), the drop-in for ``torchvision.models.resnet50``."""
    return _resnet("resnet50", Bottleneck, [3, 4, 6, 3], weights, progress, **kwargs)


def resnet101(*, weights=None, progress: bool = True, **kwargs: Any) -> ResNet:
    """ResNet-101."""
    return _resnet("resnet101", Bottleneck, [3, 4, 23, 3], weights, progress, **kwargs)


def resnet152(*, weights=None, progress: bool = True, **kwargs: Any) -> ResNet:
    """ResNet-152."""
    return _resnet("resnet152", Bottleneck, [3, 8, 36, 3], weights, progress, **kwargs)


def resnext50_32x4d(*, weights=None, progress: bool = True, **kwargs: Any) -> ResNet:
    """ResNeXt-50 32x4d (`Aggregated Residual Transformations <https://arxiv.org/abs/1611.05431>`_)."""
    _overwrite_named_param(kwargs, "groups", 32)
    _overwrite_named_param(kwargs, "width_per_group", 4)
    return _resnet("resnext50_32x4d", Bottleneck, [3, 4, 6, 3], weights, progress, **kwargs)


def resnext101_32x8d(*, weights=None, progress: bool = True, **kwargs: Any) -> ResNet:
    """ResNeXt-101 32x8d."""
    _overwrite_named_param(kwargs, "groups", 32)
    _overwrite_named_param(kwargs, "width_per_group", 8)
    return _resnet("resnext101_32x8d", Bottleneck, [3, 4, 23, 3], weights, progress, **kwargs)


def resnext101_64x4d(*, weights=None, progress: bool = True, **kwargs: Any) -> ResNet:
    """ResNeXt-101 64x4d."""
    _overwrite_named_param(kwargs, "groups", 64)
    _overwrite_named_param(kwargs, "width_per_group", 4)
    return _resnet("resnext101_64x4d", Bottleneck, [3, 4, 23, 3], weights, progress, **kwargs)


def wide_resnet50_2(*, weights=None, progress: bool = True, **kwargs: Any) -> ResNet:
    """Wide ResNet-50-2 (`Wide Residual Networks <https://arxiv.org/abs/1605.07146>`_): bottleneck twice as wide."""
    _overwrite_named_param(kwargs, "width_per_group", 64 * 2)
    return _resnet("wide_resnet50_2", Bottleneck, [3, 4, 6, 3], weights, progress, **kwargs)


def wide_resnet101_2(*, weights=None, progress: bool = True, **kwargs: Any) -> ResNet:
    """Wide ResNet-101-2."""
    _overwrite_named_param(kwargs, "width_per_group", 64 * 2)
    return _resnet("wide_resnet101_2", Bottleneck, [3, 4, 23, 3], weights, progress, **kwargs)
