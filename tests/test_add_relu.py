"""resnet_fast::add_relu / add_relu_: the compiled extension's ops."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import resnet_fast
from resnet_fast import _extension

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _layouts(shape, dtype, device):
    """(self, other) pairs in every layout combination the model can produce, and a strided view."""
    n, c, h, w = shape
    a = torch.randn(shape, device=device).to(dtype)
    b = torch.randn(shape, device=device).to(dtype)
    cl = torch.channels_last
    wide = torch.randn(n, c, h, w + 3, device=device).to(dtype)[..., 1 : w + 1]  # not dense
    return {
        "contiguous": (a, b),
        "channels_last": (a.contiguous(memory_format=cl), b.contiguous(memory_format=cl)),
        "mixed_self_cl": (a.contiguous(memory_format=cl), b),
        "mixed_other_cl": (a, b.contiguous(memory_format=cl)),
        "strided_self": (wide, b),
    }


def test_extension_is_compiled():
    # make setup builds it; CI must exercise the C++ kernels, not the fallback.
    assert _extension.load(), _extension.status()
    dump = torch._C._dispatch_dump("resnet_fast::add_relu")
    assert "csrc/add_relu.cpp" in dump


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "mixed_self_cl", "mixed_other_cl", "strided_self"])
@pytest.mark.parametrize("shape", [(2, 7, 5, 3), (1, 64, 17, 19), (3, 1, 1, 1)])
def test_cpu_bit_equal_to_torch(dtype, layout, shape):
    a, b = _layouts(shape, dtype, "cpu")[layout]
    expected = (a + b).relu()
    out = torch.ops.resnet_fast.add_relu(a, b)
    assert torch.equal(out, expected)
    a_copy = a.clone(memory_format=torch.preserve_format) if layout != "strided_self" else a
    ptr, strides = a_copy.data_ptr(), a_copy.stride()
    ret = torch.ops.resnet_fast.add_relu_(a_copy, b)
    assert ret.data_ptr() == ptr and a_copy.stride() == strides  # really in place
    assert torch.equal(a_copy, expected)


@pytest.mark.parametrize("n", [1, 7, 15, 16, 17, 33, 1000, 65537, 1 << 20 | 3])
def test_cpu_vector_tail_and_parallel_sizes(n):
    a, b = torch.randn(n), torch.randn(n)
    assert torch.equal(torch.ops.resnet_fast.add_relu(a, b), (a + b).relu())


def test_nan_and_inf_propagate_like_torch():
    a = torch.tensor([float("nan"), 1.0, -float("inf"), float("inf"), -1.0] * 5)
    b = torch.tensor([0.0, float("nan"), 1.0, -1.0, 0.5] * 5)
    assert torch.equal(torch.ops.resnet_fast.add_relu(a, b).isnan(), (a + b).relu().isnan())
    out = torch.ops.resnet_fast.add_relu(a, b)
    ref = (a + b).relu()
    finite = ~ref.isnan()
    assert torch.equal(out[finite], ref[finite])


def test_opcheck():
    a = torch.randn(2, 5, 7, 3, requires_grad=True)
    b = torch.randn(2, 5, 7, 3, requires_grad=True)
    torch.library.opcheck(torch.ops.resnet_fast.add_relu.default, (a, b))
    # Non-leaf inputs that need grad: with none, opcheck skips the autograd registration check.
    a2 = torch.randn(2, 5, 7, 3).contiguous(memory_format=torch.channels_last).requires_grad_() * 1
    b2 = torch.randn(2, 5, 7, 3, requires_grad=True)
    assert a2.is_contiguous(memory_format=torch.channels_last)
    # PyTorch cannot functionalize custom ops with aliased outputs (the schema's ``-> Tensor(a!)``),
    # so the AOT-dispatch check does not apply; the model uses the functional op while compiling.
    torch.library.opcheck(
        torch.ops.resnet_fast.add_relu_.default,
        (a2, b2),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )


def test_gradcheck_float64():
    a = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(torch.ops.resnet_fast.add_relu, (a, b))
    # In place on a non-leaf, exactly like ``y.add_(b).relu_()``.
    assert torch.autograd.gradcheck(lambda a, b: torch.ops.resnet_fast.add_relu_(a * 1.0, b), (a, b))
    assert torch.autograd.gradgradcheck(torch.ops.resnet_fast.add_relu, (a, b))


def test_inplace_autograd_matches_torch_pair():
    x = torch.randn(3, 4, 5, 6, requires_grad=True)
    z = torch.randn(3, 4, 5, 6, requires_grad=True)
    y1 = x * 2
    torch.ops.resnet_fast.add_relu_(y1, z)
    (y1 * torch.arange(6.0)).sum().backward()
    gx, gz = x.grad.clone(), z.grad.clone()
    x.grad = z.grad = None
    y2 = x * 2
    y2.add_(z).relu_()
    (y2 * torch.arange(6.0)).sum().backward()
    assert torch.equal(gx, x.grad) and torch.equal(gz, z.grad)
    leaf = torch.randn(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable"):
        torch.ops.resnet_fast.add_relu_(leaf, torch.randn(3))


BAD_INPUTS = r"""
import torch, resnet_fast
def attempt(label, fn):
    try:
        fn()
        print(label, "NO ERROR")
    except RuntimeError as e:
        print(label, "|", str(e).splitlines()[0])
a = torch.randn(2, 3, 4, 4)
attempt("shape", lambda: torch.ops.resnet_fast.add_relu(a, torch.randn(2, 3, 4, 5)))
attempt("dtype", lambda: torch.ops.resnet_fast.add_relu(a, a.double()))
attempt("int", lambda: torch.ops.resnet_fast.add_relu(a.int(), a.int()))
attempt("device", lambda: torch.ops.resnet_fast.add_relu(a, torch.empty(2, 3, 4, 4, device="meta")))
attempt("overlap", lambda: torch.ops.resnet_fast.add_relu_(a, a))
attempt("partial", lambda: torch.ops.resnet_fast.add_relu_(a.view(-1)[:40], a.view(-1)[8:48]))
attempt("expanded", lambda: torch.ops.resnet_fast.add_relu_(torch.randn(3, 1).expand(3, 4), torch.randn(3, 4)))
attempt("inplace_shape", lambda: torch.ops.resnet_fast.add_relu_(a, torch.randn(1, 3, 4, 4)))
print("survived")
"""


def test_bad_inputs_raise_in_a_subprocess():
    # A subprocess: a crash (segfault, abort) shows as a crash, not as a failed assertion.
    proc = subprocess.run([sys.executable, "-c", BAD_INPUTS], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" | ", 1) if " | " in line else (line, "") for line in proc.stdout.splitlines())
    assert "survived" in lines
    assert "shape mismatch, self is [2, 3, 4, 4] but other is [2, 3, 4, 5]" in lines["shape"]
    assert "dtype mismatch, self is Float but other is Double" in lines["dtype"]
    assert "expected a floating-point dtype, got Int" in lines["int"]
    assert "device" in lines["device"]
    assert "other overlaps self in memory" in lines["overlap"]
    assert "other overlaps self in memory" in lines["partial"]
    assert "internally overlapping" in lines["expanded"]
    assert "shape mismatch" in lines["inplace_shape"]


_FALLBACK = r"""
import warnings, torch
warnings.simplefilter("error", RuntimeWarning) if False else None
import resnet_fast
from resnet_fast import _extension
print("STATUS", _extension.status())
a, b = torch.randn(3, 8, 5, 5), torch.randn(3, 8, 5, 5)
print("EQUAL", torch.equal(torch.ops.resnet_fast.add_relu(a, b), (a + b).relu()))
print("DUMP", "add_relu.cpp" in torch._C._dispatch_dump("resnet_fast::add_relu"))
"""


@pytest.mark.parametrize("mode", ["none", "jit"])
def test_fallbacks_give_identical_results(mode, tmp_path):
    env = dict(os.environ, RESNET_FAST_EXTENSION=mode, TORCH_EXTENSIONS_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", _FALLBACK], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "EQUAL True" in proc.stdout
    if mode == "none":
        assert "STATUS disabled" in proc.stdout and "DUMP False" in proc.stdout
    else:
        assert "STATUS JIT-built" in proc.stdout and "DUMP True" in proc.stdout


# ---------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _the_cuda_kernels_are_what_runs(request):
    """Without a CUDA build the op falls back to torch.add + relu on CUDA tensors, and every GPU test
    below would pass against PyTorch itself: they require the extension's own CUDA kernels."""
    if request.node.get_closest_marker("gpu") is not None:
        from resnet_fast import _extension

        assert _extension.has_cuda_kernels(), f"the CUDA add_relu kernels are not built: {_extension.status()}"


@pytest.mark.gpu
def test_gpu_extension_has_cuda_kernels():
    # First of the GPU tests (the fixture above does the checking): a build problem reads as one
    # failure here, before anything else.
    pass


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "mixed_self_cl", "mixed_other_cl", "strided_self"])
def test_gpu_every_dtype_and_layout(dtype, layout):
    a, b = _layouts((2, 64, 17, 19), dtype, "cuda")[layout]
    expected = (a.float() + b.float()).relu().to(dtype) if dtype != torch.float64 else (a + b).relu()
    assert torch.equal(torch.ops.resnet_fast.add_relu(a, b), expected)
    if a.is_contiguous() or a.is_contiguous(memory_format=torch.channels_last):
        a2 = a.clone(memory_format=torch.preserve_format)
    else:  # clone() would make it dense: a copy of the parent, then the same view of it
        a2 = a._base.clone().as_strided(a.shape, a.stride(), a.storage_offset())
        assert not (a2.is_contiguous() or a2.is_contiguous(memory_format=torch.channels_last))
    parent = a2._base
    torch.ops.resnet_fast.add_relu_(a2, b)
    assert torch.equal(a2, expected)
    if parent is not None:  # written through the view: what lies outside it is untouched
        assert torch.equal(parent[..., 0], a._base[..., 0]) and torch.equal(parent[..., -2:], a._base[..., -2:])


@pytest.mark.gpu
@pytest.mark.parametrize("n", [1, 3, 7, 8, 9, 4095, 4097, 1 << 20 | 5])
@pytest.mark.parametrize("offset", [0, 1])  # offset 1: misaligned pointers take the scalar kernel
def test_gpu_vector_tail_and_alignment(n, offset):
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(n + offset, device="cuda").to(dtype)[offset:]
        b = torch.randn(n + offset, device="cuda").to(dtype)[offset:]
        assert torch.equal(torch.ops.resnet_fast.add_relu(a, b), (a.float() + b.float()).relu().to(dtype))


@pytest.mark.gpu
@pytest.mark.parametrize("n", [(1 << 31) // 2 + 4099, (1 << 31) + 4099], ids=["2^31_bytes", "2^31_elements"])
def test_gpu_over_2_31_bytes(n):
    # bf16: just over 2^31 bytes per tensor (a 32-bit byte offset would wrap), then just over 2^31
    # elements (a 32-bit element index would), 4.3 GB per tensor.
    a = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    expected_tail = (a[-5000:].float() + b[-5000:].float()).relu().bfloat16()
    torch.ops.resnet_fast.add_relu_(a, b)
    assert torch.equal(a[-5000:], expected_tail)
    del a, b
    torch.cuda.empty_cache()


@pytest.mark.gpu
def test_gpu_opcheck_and_gradcheck():
    a = torch.randn(2, 5, 7, 3, device="cuda", requires_grad=True)
    b = torch.randn(2, 5, 7, 3, device="cuda", requires_grad=True)
    torch.library.opcheck(torch.ops.resnet_fast.add_relu.default, (a, b))
    torch.library.opcheck(  # non-leaf inputs that need grad, or the autograd registration check is skipped
        torch.ops.resnet_fast.add_relu_.default,
        (a.detach().clone().requires_grad_() * 1, b),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )
    a64 = a.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_()
    assert torch.autograd.gradcheck(torch.ops.resnet_fast.add_relu, (a64, b64))


@pytest.mark.gpu
def test_gpu_mixed_devices_is_a_clear_error():
    a = torch.randn(4, 4, device="cuda")
    with pytest.raises(RuntimeError, match="device mismatch, self is on cuda:0 but other is on cpu"):
        torch.ops.resnet_fast.add_relu(a, torch.randn(4, 4))
    with pytest.raises(RuntimeError, match="device mismatch"):
        torch.ops.resnet_fast.add_relu_(a, torch.randn(4, 4))
