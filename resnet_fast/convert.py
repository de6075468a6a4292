"""``from_torchvision``: a torchvision ResNet instance, turned into the fast one with the same weights."""
from __future__ import annotations

import copy

from torch import nn

from . import blocks, resnet


def from_torchvision(model: nn.Module) -> resnet.ResNet:
    """Return a ``resnet_fast`` copy of a ``torchvision.models.ResNet`` (weights, buffers, mode,
    device, dtype and norm layers kept). The original is left untouched.

    The module trees are identical by construction, so the copy only changes the classes of the
    network and its blocks: anything the torchvision model carried (custom norm layers, a replaced
    ``fc``, frozen parameters) carries over.
    """
    try:
        from torchvision.models import resnet as tv
    except ImportError as e:  # pragma: no cover
        raise ImportError("from_torchvision needs torchvision installed") from e
    if type(model) is not tv.ResNet:
        raise TypeError(f"expected a torchvision.models.ResNet instance, got {type(model).__module__}.{type(model).__name__}")
    swaps = {tv.BasicBlock: blocks.BasicBlock, tv.Bottleneck: blocks.Bottleneck}
    for name, m in model.named_modules():
        if name.count(".") == 1 and name.startswith("layer") and type(m) not in swaps:
            raise TypeError(f"{name} is a {type(m).__name__}; only torchvision's BasicBlock and Bottleneck convert")
    fast = copy.deepcopy(model)
    for m in fast.modules():
        if type(m) in swaps:
            m.__class__ = swaps[type(m)]
    fast.__class__ = resnet.ResNet
    return fast
