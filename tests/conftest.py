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


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_interp = pytest.mark.skip(reason="needs TRITON_INTERPRET=1 and Triton")
    interp_ok = os.environ.get("TRITON_INTERPRET") == "1"
    for item in items:
        if "gpu" in item.keywords and not _HAS_CUDA:
            item.add_marker(skip_gpu)
        if "interpreter" in item.keywords and not interp_ok:
            item.add_marker(skip_interp)


@pytest.fixture(autouse=True)
def _seed_and_backend():
    import resnet_fast

    torch.manual_seed(1234)
    resnet_fast.set_backend(None)
    yield
    resnet_fast.set_backend(None)
