import os
import sys

# Triton's interpreter must be switched on before Triton is imported: on a machine without CUDA
# the `interpreter` tests run the kernels on CPU tensors this way.
try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except Exception:  # pragma: no cover
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))


# Under pytest-xdist (the GPU suite runs 4 workers) each worker gets its share of the cores for the
# CPU float64 references, instead of every worker spawning a thread per core.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))

# GPU tests that cost the most (whole models with CPU float64 references, batch-64 convs): last, so
# that a run cut short by the suite's time limit has run every cheaper test first.
_EXPENSIVE_LAST = ("test_gpu_whole_model", "test_gpu_every_resnet50_conv[64-")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: any(item.name.startswith(p) for p in _EXPENSIVE_LAST))  # stable
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_interp = pytest.mark.skip(reason="needs TRITON_INTERPRET=1 and Triton")
    interp_ok = os.environ.get("TRITON_INTERPRET") == "1"
    for item in items:
        if "gpu" in item.keywords and not _HAS_CUDA:
            item.add_marker(skip_gpu)
        if "interpreter" in item.keywords and not interp_ok:
            item.add_marker(skip_interp)


@pytest.fixture(autouse=True)
def _no_stored_decisions(monkeypatch):
    """No test in this process reads or writes the launcher's on-disk decisions (kernels/decisions.py):
    tests make decisions from made-up timings, which must never reach a later test, a benchmark or a
    user. (Tests that start a Python subprocess run it on the CPU, where nothing is decided.)"""
    try:
        from resnet_fast.kernels import decisions
    except ImportError:  # no Triton
        yield
        return
    monkeypatch.setattr(decisions, "store", decisions.DecisionStore(enabled=False))
    yield


@pytest.fixture(autouse=True)
def _seed_and_backend():
    import resnet_fast

    torch.manual_seed(1234)
    resnet_fast.set_backend(None)
    yield
    resnet_fast.set_backend(None)
