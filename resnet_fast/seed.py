"""The seed implementation's API: ``ResNet(ResBlock, layer_list, num_classes, num_channels=3)``,
``Bottleneck``, ``Block`` and ``ResNet18/34/50/101/152(num_classes, channels=3)``.

Module names are the seed's (``batch_norm1..3``, ``i_downsample``, ``max_pool``), and so is the conv
bias on every Bottleneck and projection conv, so that its checkpoints load with ``strict=True`` and
give the same outputs. Two bugs of the seed's ``Block`` are deliberately not reproduced: it reused
its second BN after the first conv, and put the stride on both 3x3 convs.
Initialisation is PyTorch's default per layer, as in the seed.
"""
from __future__ import annotations

from typing import List, Optional, Type, Union

from torch import nn

from .blocks import ResidualBlock
from .network import ResNetBody

__all__ = ["ResNet", "Bottleneck", "Block", "ResNet18", "ResNet34", "ResNet50", "ResNet101", "ResNet152"]


class Bottleneck(ResidualBlock):
    expansion = 4
    stages = (("conv1", "batch_norm1"), ("conv2", "batch_norm2"), ("conv3", "batch_norm3"))
    shortcut_name = "i_downsample"

    def __init__(self, in_channels: int, out_channels: int, i_downsample: Optional[nn.Module] = None, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)
        self.batch_norm1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=stride, padding=1)
        self.batch_norm2 = nn.BatchNorm2d(out_channels)
        self.conv3 = nn.Conv2d(out_channels, out_channels * self.expansion, kernel_size=1, stride=1, padding=0)
        self.batch_norm3 = nn.BatchNorm2d(out_channels * self.expansion)
        self.i_downsample = i_downsample
        self.stride = stride
        self.relu = nn.ReLU()


class Block(ResidualBlock):
    expansion = 1
    stages = (("conv1", "batch_norm1"), ("conv2", "batch_norm2"))
    shortcut_name = "i_downsample"

    def __init__(self, in_channels: int, out_channels: int, i_downsample: Optional[nn.Module] = None, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, stride=stride, bias=False)
        self.batch_norm1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, stride=1, bias=False)
        self.batch_norm2 = nn.BatchNorm2d(out_channels)
        self.i_downsample = i_downsample
        self.stride = stride
        self.relu = nn.ReLU()


class ResNet(ResNetBody):
    stem_norm_name = "batch_norm1"
    stem_pool_name = "max_pool"

    def __init__(self, ResBlock: Type[Union[Bottleneck, Block]], layer_list: List[int], num_classes: int, num_channels: int = 3):
        super().__init__()
        if len(layer_list) != 4:
            raise ValueError(f"layer_list should list 4 block counts, got {layer_list}")
        self.in_channels = 64
        self.conv1 = nn.Conv2d(num_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.batch_norm1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.max_pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(ResBlock, layer_list[0], planes=64)
        self.layer2 = self._make_layer(ResBlock, layer_list[1], planes=128, stride=2)
        self.layer3 = self._make_layer(ResBlock, layer_list[2], planes=256, stride=2)
        self.layer4 = self._make_layer(ResBlock, layer_list[3], planes=512, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * ResBlock.expansion, num_classes)

    def _make_layer(self, ResBlock, blocks: int, planes: int, stride: int = 1) -> nn.Sequential:
        ii_downsample = None
        if stride != 1 or self.in_channels != planes * ResBlock.expansion:
            ii_downsample = nn.Sequential(
                nn.Conv2d(self.in_channels, planes * ResBlock.expansion, kernel_size=1, stride=stride),
                nn.BatchNorm2d(planes * ResBlock.expansion),
            )
        layers = [ResBlock(self.in_channels, planes, i_downsample=ii_downsample, stride=stride)]
        self.in_channels = planes * ResBlock.expansion
        for _ in range(blocks - 1):
            layers.append(ResBlock(self.in_channels, planes))
        return nn.Sequential(*layers)


def ResNet18(num_classes: int, channels: int = 3) -> ResNet:
    return ResNet(Block, [2, 2, 2, 2], num_classes, channels)


def ResNet34(num_classes: int, channels: int = 3) -> ResNet:
    return ResNet(Block, [3, 4, 6, 3], num_classes, channels)


def ResNet50(num_classes: int, channels: int = 3) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, channels)


def ResNet101(num_classes: int, channels: int = 3) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 23, 3], num_classes, channels)


def ResNet152(num_classes: int, channels: int = 3) -> ResNet:
    return ResNet(Bottleneck, [3, 8, 36, 3], num_classes, channels)
