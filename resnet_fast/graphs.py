"""``cuda_graph(model, example_input)``: the batch-1 latency path.

At small batch a ResNet-50 forward is ~60 short kernels and the CPU cost of launching them
(Python, dispatcher, Triton's launcher) exceeds the GPU time. A CUDA graph records the launches
once and replays them with a single call.
"""
from __future__ import annotations

import operator
import threading
from typing import Optional

import torch
from torch import nn

from resnet_fast.fused import _CACHE_ATTR

_capture_state = threading.local()


class CaptureCounters:
    """Zeroed int32 counters for the split-K convs one capture records (the Triton conv's
    SERIAL_SPLIT arrival counters): each launch gets its own slice, which its kernel leaves at zero
    for the next replay. Allocated before capture, kept alive with the graph, owned by it alone."""

    def __init__(self, device: torch.device, size: int = 1 << 15):
        self.buffer = torch.zeros(size, dtype=torch.int32, device=device)
        self.used = 0

    def take(self, count: int, device: torch.device) -> Optional[torch.Tensor]:
        """``count`` counters, or None when this arena is used up or on another device. Slices start
        16-byte aligned, like every buffer the launcher passes outside capture: Triton specialises
        pointer alignment, and a misaligned one would mean a new compile during capture."""
        start = self.used
        if device != self.buffer.device or start + count > self.buffer.numel():
            return None
        self.used = start + -(-count // 4) * 4
        return self.buffer[start:start + count]


def capture_counters() -> Optional[CaptureCounters]:
    """The counters of the cuda_graph capture running in this thread, if any."""
    return getattr(_capture_state, "counters", None)


class WeightsWatch:
    """What a captured forward depends on besides its input, compared with what it was at capture: the
    module tree (each module's ``__dict__``, and in it the fold cache, every parameter, buffer and
    submodule, by identity, in order) and every tensor's version and storage, checked in flat C-level
    passes (~80 µs for ResNet-50 on one slow CPU core, against ~150 µs for the recursive walk of
    every module that it replaced). A replaced, removed, inserted or None-d parameter, buffer or
    submodule, a dropped fold cache (``.to()``, ``clear_folds``), an edit that bumps a version and a
    ``.data``/``.to()`` that moves storage are all seen. Not seen: a tensor re-viewed in place at the
    same address (``w.data = w.data.transpose(...)``) and a changed BatchNorm ``eps``."""

    def __init__(self, model: nn.Module):
        self._dicts = [m.__dict__ for m in model.modules()]
        self._objects = self._current()
        tensors = [t for d in self._dicts for group in (d["_parameters"], d["_buffers"]) for t in group.values()
                   if t is not None]
        self._tensors = tensors
        self._ptrs = [t.data_ptr() for t in tensors]
        self._versioned = [t for t in tensors if not t.is_inference()]  # (inference tensors have no version)
        self._versions = [t._version for t in self._versioned]

    def _current(self) -> tuple:
        """(every module's fold cache, parameters, buffers and submodules in order; every module's
        count of each), the second telling a move between a module's dicts from no change."""
        objects, counts = [], []
        for d in self._dicts:
            p, b, m = d["_parameters"], d["_buffers"], d["_modules"]
            objects.append(d.get(_CACHE_ATTR))
            objects.extend(p.values())
            objects.extend(b.values())
            objects.extend(m.values())
            counts.append((len(p), len(b), len(m)))
        return objects, counts

    def changed(self) -> bool:
        objects, counts = self._current()
        kept, kept_counts = self._objects
        if counts != kept_counts or len(objects) != len(kept) or not all(map(operator.is_, objects, kept)):
            return True
        return [t._version for t in self._versioned] != self._versions or [t.data_ptr() for t in self._tensors] != self._ptrs


def _graph_tensors(model: nn.Module) -> list:
    """Every tensor a captured forward reads by address: parameters, buffers and cached folds. The
    graph keeps them alive, so a replay never reads memory freed behind its back (a fold cache is
    dropped by ``.to()``, a parameter replaced by ``load_state_dict(assign=True)``)."""
    # detach(): new tensors on the same storage, so the storage stays even when .half() or a
    # `p.data = ...` swaps what the Parameter object points to.
    kept = [t.detach() for t in list(model.parameters()) + list(model.buffers())]
    for module in model.modules():
        cache = module.__dict__.get(_CACHE_ATTR)
        if cache is not None:
            kept.append(cache.snapshot())
    return kept


def explain_capture_error(e: Exception) -> Exception:
    """What a capture failure means, where it is known: under PyTorch's cudaMallocAsync allocator
    backend the memory a capture allocates is not mapped until the graph runs, and Triton's launcher
    refuses such pointers ("cannot be accessed from Triton", H100, session 7)."""
    if "cannot be accessed from Triton" in str(e) and torch.cuda.get_allocator_backend() == "cudaMallocAsync":
        return RuntimeError(
            "cuda_graph: the Triton kernels cannot be captured under PyTorch's cudaMallocAsync allocator "
            "backend (PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync): memory allocated during capture is "
            "not mapped yet and Triton's launcher refuses it. Use the native allocator backend, or "
            f"resnet_fast.set_backend('torch') for a cuDNN graph. ({e})")
    return e


class CudaGraphModel:
    """A captured eval forward for one input shape, dtype, layout and device.

    Calling it copies the input into the captured buffer and replays the graph. The returned tensor
    is the graph's own output buffer: the next call overwrites it (``.clone()`` to keep it).
    Weights are checked on every call (``WeightsWatch``: ~70 µs for ResNet-50 on a slow CPU core, done
    while the GPU replays); after an edit, an optimizer step, ``load_state_dict``, ``.to()`` or
    a replaced submodule the graph is captured again and replayed again, so no call returns an
    output computed from stale folds. ``check_weights=False`` skips the check for frozen models
    (the graph still keeps the tensors it reads alive, so a skipped check gives stale results,
    never freed memory).
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor, warmup: int = 3, check_weights: bool = True):
        self.model = model
        self.shape = tuple(example_input.shape)
        self.dtype = example_input.dtype
        self.device = example_input.device
        self.channels_last = example_input.is_contiguous(memory_format=torch.channels_last) and example_input.dim() == 4
        self._warmup = warmup
        self.check_weights = check_weights
        self._capture(example_input)

    def _capture(self, example_input: torch.Tensor) -> None:
        # Kernels (Triton's above all) launch on the current device, and capture records there.
        with torch.cuda.device(self.device):
            self._capture_here(example_input)

    def _capture_here(self, example_input: torch.Tensor) -> None:
        self.static_input = example_input.detach().clone(memory_format=torch.preserve_format)
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        # Warm-up outside the graph: Triton autotuning and the BN folds happen here, not in capture.
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(self._warmup):
                self.model(self.static_input)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        counters = CaptureCounters(self.device)
        _capture_state.counters = counters
        try:
            with torch.inference_mode(), torch.cuda.graph(self.graph):
                self.static_output = self.model(self.static_input)
        except ValueError as e:
            explained = explain_capture_error(e)
            if explained is e:
                raise
            raise explained from e
        finally:
            _capture_state.counters = None
        self._counters = counters  # the graph's kernels use (and zero again) its slices on every replay
        self._kept = _graph_tensors(self.model)
        self._watch = WeightsWatch(self.model)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.model.training:
            raise RuntimeError("cuda_graph: the model was switched to train mode; the graph replays eval only")
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != self.shape or x.dtype != self.dtype or x.device != self.device:
            got = f"{type(x).__name__}" if not isinstance(x, torch.Tensor) else f"{tuple(x.shape)} {x.dtype} on {x.device}"
            raise ValueError(
                f"cuda_graph: captured for input {self.shape} {self.dtype} on {self.device}, got {got}; "
                "capture another graph for other shapes"
            )
        self.static_input.copy_(x)
        self.graph.replay()
        # The weights are checked while the GPU replays, so a caller waiting for the result does
        # not pay for the check on top of the replay. If something changed, that replay read the
        # old weights and folds (kept alive by the graph: valid memory, stale values): capture again
        # and replay again, which overwrites its output.
        if self.check_weights and self._watch.changed():
            torch.cuda.current_stream(self.device).synchronize()  # the stale replay ends before its graph goes
            self._capture(x)  # capture records the kernels without running them: replay below computes
            self.static_input.copy_(x)
            self.graph.replay()
        return self.static_output


def cuda_graph(model: nn.Module, example_input: torch.Tensor, warmup: int = 3, check_weights: bool = True) -> CudaGraphModel:
    """Capture ``model``'s eval forward for inputs like ``example_input`` and return a replayer."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"cuda_graph: expected an nn.Module, got {type(model).__name__}")
    if not isinstance(warmup, int) or warmup < 1:
        raise ValueError(f"cuda_graph: expected warmup >= 1 (autotuning and folds must happen before capture), got {warmup!r}")
    if model.training:
        raise ValueError("cuda_graph: expected a model in eval mode (call model.eval()); train mode cannot be captured")
    if not isinstance(example_input, torch.Tensor) or example_input.device.type != "cuda":
        where = example_input.device if isinstance(example_input, torch.Tensor) else type(example_input).__name__
        raise ValueError(f"cuda_graph: expected an example input on a CUDA device, got {where}")
    params = list(model.parameters())
    if params and params[0].device != example_input.device:
        raise ValueError(f"cuda_graph: the model is on {params[0].device}, the example input on {example_input.device}")
    return CudaGraphModel(model, example_input, warmup, check_weights)
