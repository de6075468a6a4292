"""``weights=`` for the factories: torchvision's weight enums (and their names) through torchvision's
own download/cache machinery, or a local checkpoint path. No network: a missing cached file is one
clear error saying where the file is expected."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import urlparse

import torch
from torch import nn

# Factory name -> torchvision weights enum class name.
_ENUMS = {
    "resnet18": "ResNet18_Weights",
    "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights",
    "resnet101": "ResNet101_Weights",
    "resnet152": "ResNet152_Weights",
    "resnext50_32x4d": "ResNeXt50_32X4D_Weights",
    "resnext101_32x8d": "ResNeXt101_32X8D_Weights",
    "resnext101_64x4d": "ResNeXt101_64X4D_Weights",
    "wide_resnet50_2": "Wide_ResNet50_2_Weights",
    "wide_resnet101_2": "Wide_ResNet101_2_Weights",
}


@dataclass
class ResolvedWeights:
    enum: Any = None  # a torchvision WeightsEnum member
    path: Optional[str] = None  # a local checkpoint
    num_classes: Optional[int] = None

    def __str__(self) -> str:
        return str(self.enum) if self.enum is not None else str(self.path)


def _enum_class(arch: str):
    try:
        from torchvision.models import resnet as tv_resnet
    except ImportError as e:  # pragma: no cover - torchvision is in requirements.txt
        raise ImportError(
            f"weights given by name for {arch} need torchvision installed (pip install torchvision), "
            "or pass a local checkpoint path"
        ) from e
    return getattr(tv_resnet, _ENUMS[arch])


def _is_weights_enum(obj: Any) -> bool:
    return type(obj).__name__.endswith("_Weights") and hasattr(obj, "url") and hasattr(obj, "meta")


def _checkpoint_state_dict(obj: Any) -> dict:
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
        return obj
    raise TypeError(f"expected a state_dict (dict of tensors) in the checkpoint, got {type(obj).__name__}")


def resolve_weights(arch: str, weights: Any) -> Optional[ResolvedWeights]:
    if weights is None:
        return None
    if isinstance(weights, (str, os.PathLike)) and os.path.isfile(os.fspath(weights)):
        path = os.fspath(weights)
        fc = _checkpoint_state_dict(torch.load(path, map_location="cpu", weights_only=True)).get("fc.weight")
        return ResolvedWeights(path=path, num_classes=None if fc is None else int(fc.shape[0]))
    if isinstance(weights, os.PathLike) or (isinstance(weights, str) and os.sep in weights):
        raise FileNotFoundError(f"weights checkpoint not found: expected a file at {os.fspath(weights)}")
    if isinstance(weights, str) or _is_weights_enum(weights):
        enum_cls = _enum_class(arch)
        if isinstance(weights, str) and "." in weights:  # "ResNet50_Weights.IMAGENET1K_V2"
            prefix, _, weights = weights.partition(".")
            if prefix != enum_cls.__name__:
                raise ValueError(f"{arch} expects {enum_cls.__name__} weights, got {prefix}.{weights}")
        try:
            member = enum_cls.verify(weights)
        except (ValueError, TypeError, KeyError) as e:
            names = ", ".join(["DEFAULT"] + [m.name for m in enum_cls])
            raise ValueError(f"unknown weights {weights!r} for {arch}: expected one of {names} or a checkpoint path") from e
        return ResolvedWeights(enum=member, num_classes=len(member.meta["categories"]))
    raise TypeError(f"weights must be None, a torchvision weights enum, its name, or a checkpoint path; got {type(weights).__name__}")


def expected_cache_path(url: str) -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))


def load_weights(model: nn.Module, weights: ResolvedWeights, progress: bool) -> None:
    if weights.path is not None:
        state = _checkpoint_state_dict(torch.load(weights.path, map_location="cpu", weights_only=True))
    else:
        url = weights.enum.url
        try:
            state = weights.enum.get_state_dict(progress=progress, check_hash=True)
        except Exception as e:  # noqa: BLE001 - URLError, HTTPError, socket errors, hash mismatch
            raise RuntimeError(
                f"could not load {weights}: no cached file at {expected_cache_path(url)} and downloading "
                f"{url} failed ({type(e).__name__}: {e}). Place the file there (TORCH_HOME moves the cache) "
                "or pass weights='/path/to/checkpoint.pth'."
            ) from e
    model.load_state_dict(state)
