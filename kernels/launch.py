"""Direct launches of compiled Triton kernels, for the shapes a model calls again and again.

``kernel[grid](*args, **kwargs)`` goes through ``JITFunction.run`` on every call: it binds ~50
arguments, specialises each one, hashes the specialisation into a cache key, checks the kernel's
globals and builds launch metadata, before the C launcher runs. For a ResNet's convolutions at
small batch that host work, not the GPU, sets the pace (session 7 on an H100: ~140 us a conv at
batch 1, the kernels 3-8 us). Once a call has compiled and launched a kernel, ``run`` returns the
``CompiledKernel``; ``Direct`` keeps its launcher and the argument order, and later calls with the
same specialisation (the caller's key must cover every property Triton specialises on: dtypes,
16-byte pointer alignment, the integer arguments) go straight to the launcher, the way PyTorch's
inductor launches the kernels it compiled.

Launch hooks (Triton's profiler, proton) still see every launch: their metadata is built exactly as
``JITFunction.run`` builds it whenever a hook is registered. Triton settings changed after a kernel's
first launches (``knobs.runtime.debug``, the instrumentation mode) do not reach its direct launches.
``RESNET_FAST_DIRECT_LAUNCH=0`` turns direct launches off (every launch through ``JITFunction.run``).
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
ENABLED = os.environ.get("RESNET_FAST_DIRECT_LAUNCH", "1") != "0" and not INTERPRET

try:
    from triton import knobs as _knobs

    _runtime = _knobs.runtime
except Exception:  # pragma: no cover - Triton without knobs (before 3.4): no direct launches
    _runtime = None
    ENABLED = False

_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
if _raw_stream is None:  # pragma: no cover - a PyTorch build without CUDA
    ENABLED = False

launch_count = 0  # direct launches made (tests)
failure = None  # why direct launches were turned off in this process, if they were


def disable(error: BaseException) -> None:
    """Turn direct launches off for the process after a launch raised in Python (a launcher of
    another Triton version refusing the call): launches go through ``JITFunction.run`` again."""
    global ENABLED, failure
    ENABLED = False
    failure = f"{type(error).__name__}: {error}"
    import warnings

    warnings.warn(f"resnet_fast: direct Triton launches failed ({failure}); launching through Triton instead")


def _hook_active(hook) -> bool:
    # Triton 3.6+ keeps an (empty) HookChain where older versions keep None.
    if hook is None:
        return False
    calls = getattr(hook, "calls", None)
    return calls is None or len(calls) > 0


def arg_values(jit_fn, args: Sequence, kwargs: dict) -> Optional[tuple]:
    """Every kernel parameter's value in the kernel's own order (what ``JITFunction.run`` hands the
    launcher: positional arguments, then the rest by name; constexprs included), or None when one is
    missing (a parameter with a default: then no direct launch)."""
    names = getattr(jit_fn, "arg_names", None)
    if names is None or len(args) > len(names):
        return None
    values = list(args)
    for name in names[len(args):]:
        if name not in kwargs:
            return None
        values.append(kwargs[name])
    return tuple(values)


class Direct:
    """A compiled kernel launched with a fixed grid; ``launch(device_index, values)`` takes every
    parameter's value in kernel order (``arg_values``), pointers as ``pointer(tensor)`` gives them.

    Pointers go to the launcher as plain integers (``tensor.data_ptr()``): for a tensor argument
    Triton's C launcher calls ``data_ptr()`` and then asks the driver whether the address is device
    memory (``cuPointerGetAttribute``), once per pointer per launch; for an integer it does neither.
    The caller holds the tensors for the duration of the call, as with tensor arguments (the kernel
    runs on the current stream, where the caching allocator keeps them until they are freed).
    """

    raw_pointers = True

    __slots__ = ("kernel", "launcher", "function", "metadata", "grid")

    def __init__(self, kernel, launcher, function, metadata, grid) -> None:
        self.kernel = kernel
        self.launcher = launcher
        self.function = function
        self.metadata = metadata
        self.grid = grid

    @classmethod
    def of(cls, kernel, grid) -> Optional["Direct"]:
        """From the object ``JITFunction.run`` returned after a launch (so its handles are loaded);
        None when it is not a compiled kernel this module knows how to launch."""
        if not ENABLED or kernel is None:
            return None
        try:
            if hasattr(kernel, "result"):  # a future from Triton's async compile mode
                kernel = kernel.result()
            launcher, function, metadata = kernel.run, kernel.function, kernel.packed_metadata
        except Exception:  # noqa: BLE001 - another Triton's CompiledKernel: keep the normal path
            return None
        if function is None or not callable(launcher) or len(grid) != 3:
            return None
        # What JITFunction.run checks on every launch and a direct launch does not: pre-run hooks
        # (none registered on our kernels) and globals changed since the compile (our kernels read
        # only module constants).
        src_fn = getattr(getattr(kernel, "src", None), "fn", None)
        if getattr(src_fn, "pre_run_hooks", None):
            return None
        return cls(kernel, launcher, function, metadata, tuple(int(g) for g in grid))

    def pointer(self, t: torch.Tensor):
        return t.data_ptr() if self.raw_pointers else t

    def launch(self, device_index: int, values: tuple) -> None:
        global launch_count
        stream = _raw_stream(device_index)
        enter, leave = _runtime.launch_enter_hook, _runtime.launch_exit_hook
        metadata = None
        if _hook_active(enter) or _hook_active(leave):
            metadata = self.kernel.launch_metadata(self.grid, stream, *values)
        else:  # the C launcher skips a None hook; an empty HookChain it would call (two Python calls)
            enter = leave = None
        g0, g1, g2 = self.grid
        self.launcher(g0, g1, g2, stream, self.function, self.metadata, metadata, enter, leave, *values)
        launch_count += 1
