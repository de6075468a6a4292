"""The conv launcher's first-call decisions, kept on disk beside Triton's autotuning cache.

On a layer shape's first call the launcher times alternatives and keeps the faster (kernels/conv.py):
the TMA kernel against the general one for 1x1 convs (with the TMA kernel's own tuning, which
Triton does not cache on disk), one launch against a wave split's two, and (opt-in) the
space-to-depth stem. Without this store every process timed them again: the first forward paid for
it, and two processes could decide differently where the two sides timed close (session 7: the
general kernel in one run, TMA in the next), so a profile taken in a second process (Nsight
Compute, whose launch interception slows short timings) need not show the kernels the model runs.

One JSON file per GPU model and software stack: its name hashes the device's name, compute
capability and SM count, the Triton, PyTorch and CUDA versions, and the source of the kernels the
decisions are about, and the environment knobs that change what is compared (``RESNET_FAST_TMA``,
``RESNET_FAST_TMA_PERSISTENT``, ``RESNET_FAST_SPLIT_K_REDUCE``, ``RESNET_FAST_WAVE_SPLIT``), so a change
to any of them starts a new file. ``RESNET_FAST_AUTOTUNE_CACHE=0`` (the knob of Triton's autotuning
cache) turns it off: every process decides anew. Deleting the folder (``store.directory()``) makes the
next process decide anew.

A process whose alternative failed (the TMA kernel, a wave split, the space-to-depth stem: each then
off for that process) stops writing: what it decides after that was decided without what failed.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import warnings
from typing import Any, Optional

import torch

# The kernel sources a decision depends on (their bytes go into the file's name), and the knobs that
# change what the launcher compares.
_SOURCES = ("conv.py", "conv1x1_tma.py", "tiles.py")
_KNOBS = ("RESNET_FAST_TMA", "RESNET_FAST_TMA_PERSISTENT", "RESNET_FAST_SPLIT_K_REDUCE", "RESNET_FAST_WAVE_SPLIT")

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: writers are not serialised
    fcntl = None
_HERE = os.path.dirname(os.path.abspath(__file__))
MISSING = object()


def _cache_root() -> str:
    try:
        from triton import knobs

        return knobs.cache.dir
    except Exception:  # noqa: BLE001 - Triton releases before knobs
        return os.environ.get("TRITON_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".triton", "cache")


def _plain(value):
    """A decision key's parts as JSON values: dtypes by name, devices by type (the file is per GPU model)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, torch.device):
        return value.type
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"decision key: expected tuples of ints, strings, dtypes and devices, got {type(value).__name__}")


def key_text(kind: str, key) -> str:
    return json.dumps([kind, _plain(key)], separators=(",", ":"))


class DecisionStore:
    """``get``/``put`` of JSON values by (kind, key) for a device. Files are read once per process and
    device. Each ``put`` holds an exclusive lock on the file's ``.lock`` beside it while it reads the
    file, merges this process's own decisions in and replaces the file (a fresh temporary, then
    ``os.replace``): concurrent processes keep each other's entries (the last writer of one key wins).
    Nothing here raises into a conv call: a store that cannot work turns itself off with one warning."""

    def __init__(self, directory: Optional[str] = None, enabled: Optional[bool] = None):
        self.enabled = os.environ.get("RESNET_FAST_AUTOTUNE_CACHE", "1") != "0" if enabled is None else enabled
        # bench_kernels turns reading off: it reports what the timing finds, not an earlier process's.
        self.reading = True
        self._directory = directory
        self._tables = {}  # device identity -> (path, {key text: value})
        self._own = {}  # device identity -> {key text: value} this process decided
        self._lock = threading.Lock()
        self._write_failed = False
        self._frozen = False
        self._source_hash = None

    def directory(self) -> str:
        if self._directory is None:
            self._directory = os.path.join(_cache_root(), "resnet_fast")
        return self._directory

    def _sources(self) -> str:
        if self._source_hash is None:
            h = hashlib.sha256()
            for name in _SOURCES:
                with open(os.path.join(_HERE, name), "rb") as f:
                    h.update(f.read())
            self._source_hash = h.hexdigest()
        return self._source_hash

    def identity(self, device: torch.device) -> dict:
        """What the decisions of a device hold for: its model, the software stack and the knobs."""
        import triton

        if device.type == "cuda":
            props = torch.cuda.get_device_properties(device)
            name = f"{props.name} sm_{props.major}{props.minor} {props.multi_processor_count} SMs"
        else:
            name = device.type
        return {"device": name, "triton": triton.__version__, "torch": torch.__version__,
                "cuda": torch.version.cuda, "interpreter": os.environ.get("TRITON_INTERPRET", "0") == "1",
                "kernels": self._sources(), "knobs": {k: os.environ.get(k) for k in _KNOBS}}

    def path(self, device: torch.device) -> str:
        digest = hashlib.sha256(json.dumps(self.identity(device), sort_keys=True).encode()).hexdigest()[:24]
        return os.path.join(self.directory(), f"decisions-{digest}.json")

    def _table(self, device: torch.device) -> dict:
        ident = str(device)
        entry = self._tables.get(ident)
        if entry is None:
            path = self.path(device)
            entry = self._tables[ident] = (path, self._read(path))
        return entry[1]

    def _off(self, why: str) -> None:
        self.enabled = False
        warnings.warn(f"resnet_fast: the conv launcher's decisions are not kept on disk in this process ({why})")

    @staticmethod
    def _read_file(path: str) -> dict:
        try:
            with open(path) as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):  # none yet, unreadable, or half-written by a crashed process
            return {}

    @staticmethod
    def _read(path: str) -> dict:
        table = DecisionStore._read_file(path).get("decisions")
        return dict(table) if isinstance(table, dict) else {}

    def get(self, kind: str, key, device: torch.device) -> Any:
        """The stored decision, or MISSING."""
        if not (self.enabled and self.reading):
            return MISSING
        try:
            with self._lock:
                return self._table(device).get(key_text(kind, key), MISSING)
        except Exception as e:  # noqa: BLE001 - never break a conv call (a missing source file, an odd key)
            self._off(f"{type(e).__name__}: {e}")
            return MISSING

    def freeze(self) -> None:
        """No more writes from this process (an alternative failed here: later decisions lack it)."""
        self._frozen = True

    def put(self, kind: str, key, device: torch.device, value) -> None:
        if not self.enabled or self._frozen:
            return
        try:
            text = key_text(kind, key)
            with self._lock:
                table = self._table(device)
                table[text] = value
                own = self._own.setdefault(str(device), {})
                own[text] = value
                if not self._write_failed:
                    self._write(self._tables[str(device)][0], device, table, own)
        except Exception as e:  # noqa: BLE001 - never break a conv call
            self._off(f"{type(e).__name__}: {e}")

    def _write(self, path: str, device: torch.device, table: dict, own: dict) -> None:
        tmp = None
        try:
            folder = os.path.dirname(path)
            os.makedirs(folder, exist_ok=True)
            identity = self.identity(device)
            with open(path + ".lock", "a") as lock:
                if fcntl is not None:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                merged = {**self._read(path), **own}
                fd, tmp = tempfile.mkstemp(dir=folder, prefix=".decisions-", suffix=".tmp")
                with os.fdopen(fd, "w") as f:
                    json.dump({"identity": identity, "decisions": merged}, f, indent=0, sort_keys=True)
                os.replace(tmp, path)
                tmp = None
            table.update(merged)
        except OSError as e:
            self._write_failed = True
            warnings.warn(f"resnet_fast: cannot save the conv launcher's decisions in {path} ({e}); "
                          "each process will time them again")
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    def forget(self) -> None:
        """Drop what this process read and decided (tests: a new process's view of the disk)."""
        with self._lock:
            self._tables.clear()
            self._own.clear()


def describe(directory: Optional[str] = None) -> str:
    """One line per decisions file in ``directory`` (default: the store's): its device and, per kind,
    how many decisions took the alternative and how many the default (benchmark summaries)."""
    folder = directory or store.directory()
    try:
        names = sorted(n for n in os.listdir(folder) if n.startswith("decisions-") and n.endswith(".json"))
    except OSError:
        names = []
    lines = []
    for name in names:
        data = DecisionStore._read_file(os.path.join(folder, name))
        kinds = {}
        for text, value in (data.get("decisions") or {}).items():
            try:
                kind = json.loads(text)[0]
            except (ValueError, IndexError, TypeError):
                continue
            taken, default = kinds.get(kind, (0, 0))
            kinds[kind] = (taken + 1, default) if value else (taken, default + 1)
        words = {"tma": ("TMA kernel", "general kernel"), "split": ("two launches", "one launch"),
                 "s2d": ("space-to-depth", "4-channel stem")}
        counts = "; ".join(f"{kind}: {t} {words.get(kind, ('alternative', 'default'))[0]}, "
                           f"{d} {words.get(kind, ('alternative', 'default'))[1]}" for kind, (t, d) in sorted(kinds.items()))
        device = (data.get("identity") or {}).get("device", "?")
        lines.append(f"{name} ({device}): {counts or 'empty'}")
    return "\n".join(lines) if lines else f"no decisions on disk in {folder}"


store = DecisionStore()
