"""Which implementation runs the fused eval convolutions.

``auto``   Triton on CUDA tensors, PyTorch (oneDNN fused post-ops) on the CPU.
``triton`` the Triton kernels on any device. CPU tensors need ``TRITON_INTERPRET=1`` set before
           Triton is imported: that is how CI runs the kernels without a GPU.
``torch``  PyTorch everywhere (cuDNN / oneDNN convolution followed by the epilogue).

The choice comes from ``set_backend`` if it was called, else from ``RESNET_FAST_BACKEND``.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import torch

BACKENDS = ("auto", "triton", "torch")
_forced: Optional[str] = None


def _validate(name: str, origin: str) -> str:
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"{origin}: expected one of {', '.join(BACKENDS)}, got {name!r}")
    return name.lower()


_from_env = (None, "auto")  # (the variable's last value read, the backend it named)


def get_backend() -> str:
    global _from_env
    if _forced is not None:
        return _forced
    # Read on every call (a test or a notebook may change it); parsed once per value.
    raw = os.environ.get("RESNET_FAST_BACKEND", "auto")
    if raw != _from_env[0]:
        _from_env = (raw, _validate(raw or "auto", "RESNET_FAST_BACKEND"))
    return _from_env[1]


def may_run_plans(x: torch.Tensor) -> bool:
    """Whether a call on ``x`` may take a launch plan of the Triton conv (kernels/conv.py
    ``run_planned``) before the op's own checks: the backend would send ``x``'s device to Triton.
    (Plans exist only for devices and dtypes the Triton kernels already ran on.)"""
    backend = get_backend()
    return backend == "triton" or (backend == "auto" and x.is_cuda)


def set_backend(name: Optional[str]) -> None:
    """Force a backend for this process (``None`` returns to the environment variable)."""
    global _forced
    _forced = None if name is None else _validate(name, "set_backend")


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Temporarily force a backend: ``with resnet_fast.use_backend("torch"): ...``."""
    global _forced
    previous = _forced
    set_backend(name)
    try:
        yield
    finally:
        _forced = previous


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_triton_available: Optional[bool] = None


def triton_available() -> bool:
    # Cached in a plain global, not functools.lru_cache: torch.compile traces through this call and
    # warns about every lru_cache-wrapped function it meets.
    global _triton_available
    if _triton_available is None:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401

            _triton_available = True
        except Exception:  # pragma: no cover - depends on the install
            _triton_available = False
    return _triton_available


TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def use_triton(device: torch.device, dtype: Optional[torch.dtype] = None) -> bool:
    """Whether the Triton kernels should run for tensors on ``device``; raises when forced but impossible.

    ``auto`` leaves dtypes the kernels do not cover (float64) to PyTorch; a forced ``triton`` does not.
    """
    backend = get_backend()
    if backend == "torch":
        return False
    if backend == "auto":
        return device.type == "cuda" and triton_available() and (dtype is None or dtype in TRITON_DTYPES)
    if not triton_available():
        raise RuntimeError("backend 'triton' was forced but Triton cannot be imported")
    if device.type != "cuda" and not interpreter_enabled():
        raise RuntimeError(
            f"backend 'triton' was forced for a tensor on {device}; Triton runs CPU tensors only "
            "under its interpreter: set TRITON_INTERPRET=1 before importing resnet_fast"
        )
    return True


def prefers_triton(device: torch.device, dtype: Optional[torch.dtype] = None) -> bool:
    """Like ``use_triton`` but never raises: for choices (such as a weight layout) made ahead of a call."""
    try:
        return use_triton(device, dtype)
    except RuntimeError:
        return False
