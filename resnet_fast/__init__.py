"""resnet_fast: a drop-in, faster ResNet family for PyTorch.

``from resnet_fast import resnet50`` replaces ``torchvision.models.resnet50``; the seed API
(``ResNet50(num_classes, channels=3)``, ``Bottleneck``, ``Block``) is here too.
"""
from __future__ import annotations

import importlib.util
import os
import sys


def _map_kernels_package() -> None:
    # kernels/ ships as resnet_fast.kernels (setup.py package_dir). An install maps it; a bare
    # source checkout on PYTHONPATH does not, so map it here by hand.
    if importlib.util.find_spec("resnet_fast.kernels") is not None:
        return
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "kernels", "__init__.py")
    if os.path.isfile(src):
        spec = importlib.util.spec_from_file_location(
            "resnet_fast.kernels", src, submodule_search_locations=[os.path.dirname(src)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["resnet_fast.kernels"] = module
        spec.loader.exec_module(module)


_map_kernels_package()

from . import ops  # noqa: E402  (registers the torch ops)
from .backend import get_backend, set_backend, use_backend  # noqa: E402
from .convert import from_torchvision  # noqa: E402
from .fused import clear_folds, fold_bn  # noqa: E402
from .graphs import cuda_graph  # noqa: E402
from .resnet import (  # noqa: E402
    BasicBlock,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
    resnext50_32x4d,
    resnext101_32x8d,
    resnext101_64x4d,
    wide_resnet50_2,
    wide_resnet101_2,
)
from .seed import Block, Bottleneck, ResNet, ResNet18, ResNet34, ResNet50, ResNet101, ResNet152  # noqa: E402

__version__ = "0.1.0"

__all__ = [
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
    "BasicBlock",
    "ResNet",
    "Bottleneck",
    "Block",
    "ResNet18",
    "ResNet34",
    "ResNet50",
    "ResNet101",
    "ResNet152",
    "from_torchvision",
    "fold_bn",
    "clear_folds",
    "cuda_graph",
    "get_backend",
    "set_backend",
    "use_backend",
    "ops",
]
