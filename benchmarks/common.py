"""Timing and reporting shared by bench_model.py and bench_kernels.py.

GPU: ``triton.testing.do_bench`` after warm-up (DESIGN.md section 6: L2 cleared before each call,
CUDA events around it), inputs rotated through a pool larger than L2 as well. CPU: perf_counter
around each call. Both report the median and the 20th/80th percentiles. ``back_to_back_ms``,
``host_ms`` and ``graph_ms`` are diagnostics beside it: queued calls, the host's share, the device
time with the host out of the way.
"""
from __future__ import annotations

import datetime
import itertools
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
    """``fn(i)`` runs iteration i (use i to pick a rotated input). Times in ms: median, 20th and 80th
    percentiles, the number of timed calls.

    CUDA: ``triton.testing.do_bench`` (DESIGN.md section 6): before each timed call Triton overwrites
    a 256 MB buffer (nothing stays in L2), then CUDA events around the call. The repetition time asks
    for about ``iters`` calls, within ``budget_s``. CPU: perf_counter around each call."""
    if device == "cuda":
        return _do_bench(fn, iters, warmup, budget_s)
    for i in range(warmup):
        fn(i)
    times: List[float] = []
    deadline = time.perf_counter() + budget_s
    for i in range(iters):
        start = time.perf_counter()
        fn(warmup + i)
        times.append((time.perf_counter() - start) * 1e3)
        if i >= 2 and time.perf_counter() > deadline:
            break
    return _summary(times)


def time_rounds(fns: Dict[str, Callable[[int], object]], device: str, iters: int, warmup: int, budget_s: float = 10.0,
                rounds: int = 1) -> Dict[str, object]:
    """``time_fn`` for several providers of one problem, interleaved: ``rounds`` rounds, each timing
    every provider once, each round starting one provider later. A disturbance of a few hundred ms
    (a clock change, another process, a background compile) then lands on one round of every
    provider instead of on the whole figure of one, and no provider always runs first or last. Per
    provider: the median (and p20, p80) of the rounds' medians (p20s, p80s), ``round_ms`` (each
    round's median) and ``n``; or the exception its timing raised (it is not timed again)."""
    names = list(fns)
    if not names:
        return {}
    per: Dict[str, List[Dict[str, float]]] = {name: [] for name in names}
    failed: Dict[str, BaseException] = {}
    for r in range(max(1, rounds)):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if name in failed:
                continue
            try:
                per[name].append(time_fn(fns[name], device, iters, warmup, budget_s))
            except Exception as e:  # noqa: BLE001 - the caller reports it as that provider's row
                failed[name] = e
    out: Dict[str, object] = {}
    for name in names:
        if name in failed:
            out[name] = failed[name]
            continue
        got = per[name]
        counts = [g["n"] for g in got]
        out[name] = {"median_ms": statistics.median(g["median_ms"] for g in got),
                     "p20_ms": statistics.median(g["p20_ms"] for g in got),
                     "p80_ms": statistics.median(g["p80_ms"] for g in got),
                     "n": None if None in counts else sum(counts), "round_ms": [g["median_ms"] for g in got]}
    return out


def _summary(times: Sequence[float]) -> Dict[str, float]:
    return {"median_ms": statistics.median(times), "p20_ms": percentile(times, 0.2), "p80_ms": percentile(times, 0.8),
            "n": len(times)}


def _do_bench(fn: Callable[[int], object], iters: int, warmup: int, budget_s: float) -> Dict[str, float]:
    import triton.testing

    calls = itertools.count()

    def call():
        return fn(next(calls))

    for _ in range(warmup):
        call()
    torch.cuda.synchronize()
    start = time.perf_counter()
    call()
    torch.cuda.synchronize()
    one_ms = max((time.perf_counter() - start) * 1e3, 1e-3)  # with the host's share: an upper bound
    # do_bench turns milliseconds into a call count with its own estimate (L2 clear included).
    rep_ms = min(max(iters * one_ms, 20.0), budget_s * 1e3)
    raised = []

    def watched():
        try:
            return call()
        except BaseException as e:
            raised.append(e)
            raise

    try:
        times = triton.testing.do_bench(watched, warmup=one_ms, rep=rep_ms, return_mode="all")
    except (AssertionError, TypeError):
        if raised:  # the benchmarked call's own error, not an older Triton's refusal
            raise
        median, p20, p80 = triton.testing.do_bench(call, warmup=one_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
        return {"median_ms": median, "p20_ms": p20, "p80_ms": p80, "n": None}
    return _summary(list(times))


def back_to_back_ms(fn: Callable[[int], object], iters: int, warmup: int = 3) -> float:
    """CUDA: the median of CUDA-event times around calls queued one after another, no cache clear in
    between (sessions 1-7 timed every GPU row this way). A call whose host path is slower than its
    kernels shows its host time here; ``time_fn`` (do_bench) hides host time up to the length of its
    L2-clearing write (~0.1 ms on an H100)."""
    for i in range(warmup):
        fn(i)
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for i in range(iters):
        starts[i].record()
        fn(warmup + i)
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def host_ms(fn: Callable[[int], object], iters: int, device: str) -> float:
    """The host's time per call: ``iters`` calls issued without waiting, divided by ``iters`` (then one
    sync). Beside a row's device time it says whether the call can keep the GPU busy."""
    fn(0)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(iters):
        fn(1 + i)
    issued = time.perf_counter() - start
    if device == "cuda":
        torch.cuda.synchronize()
    return issued / iters * 1e3


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
