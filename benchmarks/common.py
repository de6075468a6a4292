"""Timing and reporting shared by bench_model.py and bench_kernels.py.

GPU: CUDA events around each call after warm-up, inputs rotated through a pool larger than L2 so
no call finds its input cached. CPU: perf_counter around each call. Both report the median and the
20th/80th percentiles.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Sequence

import torch

L2_BYTES = 64 << 20  # above Hopper's 50 MB L2


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[idx]


def rotation_count(bytes_per_input: int, device: str) -> int:
    if device != "cuda":
        return 1
    return max(1, min(64, -(-2 * L2_BYTES // max(1, bytes_per_input))))


def time_fn(fn: Callable[[int], object], device: str, iters: int, warmup: int, budget_s: float = 10.0) -> Dict[str, float]:
    """``fn(i)`` runs iteration i (use i to pick a rotated input). Times in ms."""
    for i in range(warmup):
        fn(i)
    times: List[float] = []
    deadline = time.perf_counter() + budget_s
    if device == "cuda":
        torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        done = 0
        for i in range(iters):
            starts[i].record()
            fn(warmup + i)
            ends[i].record()
            done += 1
            if i >= 4 and time.perf_counter() > deadline:
                break
        torch.cuda.synchronize()
        times = [s.elapsed_time(e) for s, e in zip(starts[:done], ends[:done])]
    else:
        for i in range(iters):
            start = time.perf_counter()
            fn(warmup + i)
            times.append((time.perf_counter() - start) * 1e3)
            if i >= 2 and time.perf_counter() > deadline:
                break
    return {"median_ms": statistics.median(times), "p20_ms": percentile(times, 0.2), "p80_ms": percentile(times, 0.8), "n": len(times)}


def graph_ms(fn: Callable[[int], object], calls: int, reps: int = 5) -> float:
    """CUDA: device time per call with the host out of the way: ``calls`` calls (``fn(i)``, i picks
    a rotated input) captured in one CUDA graph, the graph replayed ``reps`` times. Beside
    ``time_fn``'s eager figure it tells a kernel that is slow from a call whose host path is."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(3):  # anything left to tune or compile happens outside the capture
            fn(i)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(i)
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / (reps * calls)


def sync_latency_ms(fn: Callable[[int], object], iters: int, budget_s: float = 2.0) -> float:
    """CUDA: the median time from a call to its result being ready, each call alone (synchronised
    before and after): what a caller waiting for one answer sees, CPU work included. ``time_fn``'s
    events measure queued calls, which hides the CPU side of each call behind the previous one."""
    times: List[float] = []
    deadline = time.perf_counter() + budget_s
    for i in range(iters):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn(i)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
        if i >= 4 and time.perf_counter() > deadline:
            break
    return statistics.median(times)


def environment(device: str) -> Dict[str, object]:
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device == "cuda" and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    else:
        info["device_name"] = cpu_name()
    return info


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def write_json(path: str, header: Dict[str, object], rows: List[Dict[str, object]]) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({**header, "rows": rows}, f, indent=1)
    os.replace(tmp, path)  # rewritten after every row: a run cut short keeps what it measured


def write_markdown(path: str, heading: str, header: Dict[str, object], rows: List[Dict[str, object]],
                   columns: List[str], extra: str = "") -> str:
    """The report as markdown; written (when ``path``) after every row, like the JSON."""
    text = f"## {heading}\n\nCommand: `{header['command']}`\n\n{extra}{markdown_table(rows, columns)}\n"
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    return text


def markdown_table(rows: List[Dict[str, object]], columns: List[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


class Progress:
    """A one-line progress bar on stderr (no dependency)."""

    def __init__(self, total: int, label: str = ""):
        self.total, self.done, self.label = max(1, total), 0, label
        self.start = time.perf_counter()

    def step(self, what: str) -> None:
        self.done += 1
        frac = self.done / self.total
        bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
        elapsed = time.perf_counter() - self.start
        sys.stderr.write(f"\r{self.label} [{bar}] {self.done}/{self.total} {elapsed:5.0f}s {what[:40]:<40}")
        sys.stderr.flush()
        if self.done >= self.total:
            sys.stderr.write("\n")


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Norm-wise: ||out - ref|| / ||ref||. (The ``max_rel_err*`` columns hold this, the worst over the
    rows compared; a few wrong tiles among thousands dilute in it, see ``max_abs_err``.)"""
    out, ref = out.detach().double(), ref.detach().double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def max_abs_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Element-wise: max |out - ref| / max |ref|. One wrong tile in a batch-256 layer of ~10^4 tiles
    moves the norm-wise error by ~1% but this by order 1."""
    out, ref = out.detach().double(), ref.detach().double()
    return ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
