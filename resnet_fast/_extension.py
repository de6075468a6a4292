"""Loads the compiled extension ``resnet_fast._C`` (the ``add_relu`` ops).

Order: an ahead-of-time build (``setup.py`` / ``pip install``), else a JIT build with ninja from a
source checkout's ``csrc/``, else one warning and the PyTorch implementation of the same ops.
"""
from __future__ import annotations

import glob
import importlib
import os
import platform
import warnings
from typing import Optional

import torch

_status: Optional[str] = None  # human-readable, for ``python -m resnet_fast``
_loaded = False


def _source_dir() -> Optional[str]:
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, "csrc"))
    return root if os.path.isfile(os.path.join(root, "add_relu.cpp")) else None


def _jit_build() -> None:
    from torch.utils import cpp_extension

    src = _source_dir()
    if src is None:
        raise RuntimeError("no csrc/ next to the package (not a source checkout)")
    sources = sorted(glob.glob(os.path.join(src, "*.cpp")))
    # The JIT build is CPU-only: a CUDA build needs nvcc and minutes of compile time, which belongs
    # to setup.py. On a GPU machine without the AOT build the CUDA add_relu falls back to PyTorch.
    flags = ["-O3", "-fopenmp"]  # at::parallel_for is OpenMP
    if platform.machine() in ("x86_64", "AMD64"):
        flags += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    cpp_extension.load(
        name="resnet_fast_C_jit",
        sources=sources,
        extra_cflags=flags,
        extra_ldflags=["-fopenmp"],
        is_python_module=False,
        verbose=False,
    )


def load() -> bool:
    """Load the extension once; returns whether its ops are registered."""
    global _status, _loaded
    if _status is not None:
        return _loaded
    mode = os.environ.get("RESNET_FAST_EXTENSION", "auto").lower()
    if mode not in ("auto", "jit", "none"):
        raise ValueError(f"RESNET_FAST_EXTENSION: expected auto, jit or none, got {mode!r}")
    if mode == "none":
        _status = "disabled by RESNET_FAST_EXTENSION=none (PyTorch implementation)"
        return False
    aot_reason = "skipped: RESNET_FAST_EXTENSION=jit"
    if mode == "auto":
        try:
            _C = importlib.import_module("resnet_fast._C")
            _loaded = True
            _status = f"compiled ({'CUDA + CPU' if getattr(_C, 'WITH_CUDA', False) else 'CPU only'})"
            return True
        except ImportError as aot_error:
            aot_reason = str(aot_error)
    try:
        _jit_build()
        _loaded = True
        _status = "JIT-built from csrc/ (CPU kernels only)"
        return True
    except Exception as jit_error:  # noqa: BLE001 - any build failure means the fallback
        _status = f"not available ({aot_reason}; JIT build: {type(jit_error).__name__}: {jit_error})"
        warnings.warn(
            "resnet_fast: the compiled extension could not be loaded or built; using the PyTorch "
            f"implementation of add_relu (identical results). Details: {_status}",
            RuntimeWarning,
            stacklevel=2,
        )
        return False


def status() -> str:
    load()
    return _status or "unknown"


def has_cuda_kernels() -> bool:
    if not load():
        return False
    try:
        _C = importlib.import_module("resnet_fast._C")
        return bool(getattr(_C, "WITH_CUDA", False))
    except ImportError:
        return False
