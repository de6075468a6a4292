"""The launcher's first-call decisions on disk (kernels/decisions.py): what one process decided, the
next reads instead of timing again, and nothing else."""
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

pytest.importorskip("triton")

from resnet_fast.kernels import decisions  # noqa: E402

CPU = torch.device("cpu")
TMA_KEY = (262144, 256, 64, 1, 1, False, True, True, 1, False, "tf32", (1, 1), (1, 1), torch.bfloat16, torch.float32)
SPLIT_KEY = (CPU, (256, 512, 7, 7), (512, 3, 3, 512), (1, 1), (1, 1), (1, 1), False, True, torch.bfloat16, False)


def _store(tmp_path, **kw):
    return decisions.DecisionStore(directory=str(tmp_path / "decisions"), enabled=True, **kw)


def test_a_decision_outlives_its_process(tmp_path):
    config = {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8, "PER_SM": 2, "num_warps": 4,
              "num_ctas": 1, "num_stages": 2}
    first = _store(tmp_path)
    assert first.get("tma", TMA_KEY, CPU) is decisions.MISSING
    first.put("tma", TMA_KEY, CPU, config)
    first.put("split", SPLIT_KEY, CPU, 172)
    first.put("s2d", SPLIT_KEY, CPU, False)
    later = _store(tmp_path)  # a new process: nothing in memory
    assert later.get("tma", TMA_KEY, CPU) == config
    assert later.get("split", SPLIT_KEY, CPU) == 172 and later.get("s2d", SPLIT_KEY, CPU) is False
    assert later.get("tma", TMA_KEY[:-1] + (torch.float16,), CPU) is decisions.MISSING  # another key
    files = sorted(p.name for p in (tmp_path / "decisions").iterdir())
    assert len(files) == 2 and files[1] == files[0] + ".lock"  # the file and its lock, no temporaries left
    data = json.loads((tmp_path / "decisions" / files[0]).read_text())
    assert data["identity"]["device"] == "cpu" and data["identity"]["triton"] and len(data["decisions"]) == 3
    assert set(data["identity"]["knobs"]) == {"RESNET_FAST_TMA", "RESNET_FAST_TMA_PERSISTENT",
                                              "RESNET_FAST_SPLIT_K_REDUCE", "RESNET_FAST_WAVE_SPLIT"}


def test_writers_keep_each_others_decisions(tmp_path):
    a, b = _store(tmp_path), _store(tmp_path)
    assert b.get("split", SPLIT_KEY, CPU) is decisions.MISSING  # b has read the (empty) file before a writes
    a.put("split", SPLIT_KEY, CPU, 0)
    b.put("s2d", SPLIT_KEY, CPU, True)
    fresh = _store(tmp_path)
    assert fresh.get("split", SPLIT_KEY, CPU) == 0 and fresh.get("s2d", SPLIT_KEY, CPU) is True
    assert b.get("split", SPLIT_KEY, CPU) == 0  # merged into b's table when b wrote
    assert not [p for p in (tmp_path / "decisions").iterdir() if p.suffix == ".tmp"]
    # An entry of b's that a concurrent writer's replace lost comes back with b's next write.
    path = fresh.path(CPU)
    data = json.loads(open(path).read())
    del data["decisions"][decisions.key_text("s2d", SPLIT_KEY)]
    open(path, "w").write(json.dumps(data))
    b.put("split", TMA_KEY, CPU, 0)
    assert _store(tmp_path).get("s2d", SPLIT_KEY, CPU) is True
    b.forget()
    assert not b._tables and not b._own


WRITER = r"""
import sys, time
from resnet_fast.kernels import decisions
import torch
folder, me, start = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
store = decisions.DecisionStore(directory=folder, enabled=True)
store.get("split", ("warm-up",), torch.device("cpu"))
while time.time() < start:
    pass
for i in range(25):
    store.put("split", (me, i), torch.device("cpu"), i)
"""


def test_concurrent_writers_lose_no_entry(tmp_path):
    # Several processes of one machine (training ranks, benchmark scripts) saving at the same moment.
    import time

    start = time.time() + 4.0
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "decisions"), str(me), str(start)])
             for me in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    store = _store(tmp_path)
    assert all(store.get("split", (me, i), CPU) == i for me in range(4) for i in range(25))
    assert not [p for p in (tmp_path / "decisions").iterdir() if p.suffix == ".tmp"]


def test_off_reading_off_and_a_broken_file(tmp_path, monkeypatch):
    off = decisions.DecisionStore(directory=str(tmp_path / "off"), enabled=False)
    off.put("split", SPLIT_KEY, CPU, 2)
    assert off.get("split", SPLIT_KEY, CPU) is decisions.MISSING and not (tmp_path / "off").exists()
    monkeypatch.setenv("RESNET_FAST_AUTOTUNE_CACHE", "0")
    assert not decisions.DecisionStore().enabled
    monkeypatch.delenv("RESNET_FAST_AUTOTUNE_CACHE")
    assert decisions.DecisionStore().enabled

    blind = _store(tmp_path)
    blind.reading = False  # bench_kernels: decide anew, still write
    blind.put("split", SPLIT_KEY, CPU, 2)
    assert blind.get("split", SPLIT_KEY, CPU) is decisions.MISSING and _store(tmp_path).get("split", SPLIT_KEY, CPU) == 2

    path = _store(tmp_path).path(CPU)
    with open(path, "w") as f:
        f.write('{"decisions": {"half-written')
    broken = _store(tmp_path)
    assert broken.get("split", SPLIT_KEY, CPU) is decisions.MISSING
    broken.put("split", SPLIT_KEY, CPU, 0)
    assert _store(tmp_path).get("split", SPLIT_KEY, CPU) == 0


def test_a_store_that_cannot_work_turns_itself_off_and_never_raises(tmp_path, monkeypatch):
    # A kernel source missing (a bytecode-only install), a key part JSON cannot hold: one warning,
    # the store off, the conv call goes on (it times, as without a store).
    store = _store(tmp_path)
    monkeypatch.setattr(decisions, "_SOURCES", ("conv.py", "no_such_file.py"))
    with pytest.warns(UserWarning, match="not kept on disk in this process .FileNotFoundError"):
        assert store.get("split", SPLIT_KEY, CPU) is decisions.MISSING
    assert not store.enabled
    store.put("split", SPLIT_KEY, CPU, 2)  # off: silent
    monkeypatch.undo()
    odd = _store(tmp_path)
    with pytest.warns(UserWarning, match="not kept on disk in this process .TypeError"):
        odd.put("split", (object(),), CPU, 2)
    assert not odd.enabled and odd.get("split", SPLIT_KEY, CPU) is decisions.MISSING


def test_an_unwritable_folder_warns_once_and_keeps_the_decisions_in_memory(tmp_path):
    (tmp_path / "decisions").write_text("a file where the folder should be")
    store = _store(tmp_path)
    with pytest.warns(UserWarning, match="cannot save the conv launcher's decisions"):
        store.put("split", SPLIT_KEY, CPU, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store.put("s2d", SPLIT_KEY, CPU, True)
    assert store.get("split", SPLIT_KEY, CPU) == 2 and store.get("s2d", SPLIT_KEY, CPU) is True


def test_the_file_changes_with_the_kernels_and_the_stack(tmp_path, monkeypatch):
    store = _store(tmp_path)
    path = store.path(CPU)
    assert path == _store(tmp_path).path(CPU)
    changed = _store(tmp_path)
    changed._source_hash = "0" * 64  # another kernel source
    assert changed.path(CPU) != path
    monkeypatch.setenv("RESNET_FAST_TMA_PERSISTENT", "0")  # what the suite's canary gate sets
    assert _store(tmp_path).path(CPU) != path
    monkeypatch.delenv("RESNET_FAST_TMA_PERSISTENT")
    monkeypatch.setattr(torch, "__version__", torch.__version__ + "-other")
    assert _store(tmp_path).path(CPU) != path
    with pytest.raises(TypeError, match="decision key: expected"):
        decisions.key_text("split", (object(),))


def test_conftest_keeps_tests_off_the_disk():
    # Every test runs with a switched-off store (made-up timings must never reach a user).
    assert not decisions.store.enabled


def test_the_kernel_sources_are_hashed():
    # Each file named in _SOURCES exists (a rename would otherwise break every first call).
    here = os.path.dirname(decisions.__file__)
    assert all(os.path.exists(os.path.join(here, name)) for name in decisions._SOURCES)
    assert len(decisions.DecisionStore()._sources()) == 64


def test_the_environment_switch_is_read_when_the_store_is_made():
    script = "from resnet_fast.kernels import decisions; print(decisions.store.enabled)"
    env = {k: v for k, v in os.environ.items() if k != "RESNET_FAST_AUTOTUNE_CACHE"}
    outs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True,
                           env={**env, **extra}).stdout.strip() for extra in ({}, {"RESNET_FAST_AUTOTUNE_CACHE": "0"})]
    assert outs == ["True", "False"]


@pytest.mark.parametrize("stored,taken", [("config", True), ("false", True), ("other config", False), ("one", False)])
def test_only_a_decision_this_process_could_make_is_taken(tmp_path, monkeypatch, stored, taken):
    # The TMA choice on file must be one of today's configs (or False, the general kernel); a split's
    # n1 the one this process proposes. True must not pass for 1, nor 1 for True.
    from resnet_fast.kernels import conv as triton_conv
    from resnet_fast.kernels import conv1x1_tma

    store = _store(tmp_path)
    monkeypatch.setattr(decisions, "store", store)
    today = [False] + [c.all_kwargs() for c in conv1x1_tma.tma_configs()]
    value = {"config": today[-1], "false": False, "other config": {**today[-1], "BLOCK_M": 1024}, "one": 1}[stored]
    store.put("tma", TMA_KEY, CPU, value)
    store.forget()
    choices, reports = {}, {}
    got = triton_conv._stored_decision("tma", TMA_KEY, CPU, today + ([True] if stored == "one" else []), choices,
                                       reports, lambda v: "described")
    if taken:
        assert got == value and choices == {TMA_KEY: value} and reports[TMA_KEY].startswith("described (decided by")
    else:
        assert got is None and not choices and not reports


def test_describe_counts_each_kind(tmp_path):
    assert decisions.describe(str(tmp_path / "none")).startswith("no decisions on disk in ")
    store = _store(tmp_path)
    store.put("tma", TMA_KEY, CPU, {"BLOCK_M": 128})
    store.put("tma", TMA_KEY[:-1] + (torch.float16,), CPU, False)
    store.put("split", SPLIT_KEY, CPU, 172)
    (tmp_path / "decisions" / "decisions-broken.json").write_text("{")
    lines = decisions.describe(str(tmp_path / "decisions")).splitlines()
    assert len(lines) == 2 and "decisions-broken.json (?): empty" in lines
    (line,) = [ln for ln in lines if "broken" not in ln]
    assert line.endswith("(cpu): split: 1 two launches, 0 one launch; tma: 1 TMA kernel, 1 general kernel"), line
