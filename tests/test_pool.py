"""The stem's max-pool kernel (kernels/pool.py): the same values as torch.max_pool2d, exactly (a max
rounds nothing), NaN where PyTorch has NaN, and the model runs it after a fused stem when
RESNET_FAST_TRITON_POOL=1 (off by default: DESIGN.md keeps the pool in PyTorch)."""
import pytest
import torch
import torch.nn.functional as F
import torchvision

import resnet_fast

# (kernel, stride, padding, dilation, ceil_mode, H, W)
SETTINGS = [
    (3, 2, 1, 1, False, 13, 11),          # the ResNet stem's pool, odd sizes
    (3, 2, 0, 1, True, 12, 12),           # ceil_mode adds a clipped last window (6 instead of 5)
    (2, 2, 0, 1, False, 9, 8),
    (3, 1, 1, 2, False, 10, 9),           # dilated
    ((3, 2), (2, 1), (1, 0), 1, True, 11, 10),
]


def _input(dtype, h, w, device="cpu", c=70, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, c, h, w, generator=gen)
    x[0, 3, 2, 5] = float("nan")
    x[1, 7, 4, 1] = float("-inf")
    x[1, 8, 0, 0] = float("inf")
    return x.to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)


def _same(y, ref):
    assert y.shape == ref.shape and y.dtype == ref.dtype
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y.isnan(), ref.isnan()) and y.isnan().any()
    assert torch.equal(torch.nan_to_num(y), torch.nan_to_num(ref))


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("setting", SETTINGS, ids=[str(i) for i in range(len(SETTINGS))])
def test_max_pool_matches_torch_exactly(setting, dtype):
    from resnet_fast.kernels import pool

    k, s, p, d, ceil, h, w = setting
    x = _input(dtype, h, w)
    ref = F.max_pool2d(x.float(), k, s, p, d, ceil).to(dtype)
    _same(pool.max_pool2d(x, k, s, p, d, ceil), ref)
    _same(pool.max_pool2d(x.contiguous(), k, s, p, d, ceil), ref)  # NCHW input: converted first
    _same(pool.max_pool2d(x, k, s, p, d, ceil, index_64=True), ref)  # the >= 2^31-element variant


@pytest.mark.interpreter
def test_max_pool_bad_input_is_refused_clearly():
    from resnet_fast.kernels import pool

    with pytest.raises(ValueError, match="expected a 4-d"):
        pool.max_pool2d(torch.randn(3, 8, 8), 3, 2, 1)
    with pytest.raises(TypeError, match="expected float32, float16 or bfloat16, got torch.int32"):
        pool.max_pool2d(torch.zeros(1, 2, 8, 8, dtype=torch.int32), 3, 2, 1)
    with pytest.raises(ValueError, match="too small"):
        pool.max_pool2d(torch.randn(1, 2, 2, 2), 5, 1, 0)


def test_only_settings_pytorch_runs_the_same_are_taken():
    from resnet_fast.ops import stem_pool_args

    assert stem_pool_args(torch.nn.MaxPool2d(3, 2, 1)) == ([3, 3], [2, 2], [1, 1], [1, 1], False)
    assert stem_pool_args(torch.nn.MaxPool2d((3, 2), None, (1, 0), 2, ceil_mode=True)) == (
        [3, 2], [3, 2], [1, 0], [2, 2], True)
    assert stem_pool_args(torch.nn.MaxPool2d(3, 2, 1, return_indices=True)) is None
    assert stem_pool_args(torch.nn.MaxPool2d(3, 2, 2)) is None  # PyTorch refuses padding > kernel / 2
    assert stem_pool_args(torch.nn.AvgPool2d(3, 2, 1)) is None
    assert stem_pool_args(torch.nn.Identity()) is None


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.interpreter)])
def test_pool_op_and_its_fake_kernel(backend):
    x = _input(torch.float32, 13, 11)
    ref = F.max_pool2d(x, 3, 2, 1)
    with resnet_fast.use_backend(backend):
        y = torch.ops.resnet_fast.max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], False)
        _same(y, ref)
        _same(torch.ops.resnet_fast.max_pool2d(x.contiguous(), [3, 3], [2, 2], [1, 1], [1, 1], False), ref)
        # schema, fake kernel (shape and channels_last strides), dynamic shapes through AOT dispatch
        torch.library.opcheck(torch.ops.resnet_fast.max_pool2d.default,
                              (torch.randn(2, 5, 9, 8), [3, 3], [2, 2], [1, 1], [1, 1], True))
        with pytest.raises(RuntimeError, match="resnet_fast::max_pool2d: expected a 4-D"):
            torch.ops.resnet_fast.max_pool2d(torch.randn(5, 9, 8), [3, 3], [2, 2], [1, 1], [1, 1], False)
        with pytest.raises(RuntimeError, match="too small"):
            torch.ops.resnet_fast.max_pool2d(torch.randn(1, 2, 2, 2), [5, 5], [1, 1], [0, 0], [1, 1], False)


@pytest.mark.interpreter
def test_pool_kernel_is_opt_in(monkeypatch):
    from resnet_fast.kernels import pool

    monkeypatch.delenv("RESNET_FAST_TRITON_POOL", raising=False)
    model = resnet_fast.resnet18(num_classes=10).eval()
    x = _input(torch.float32, 13, 11)
    with resnet_fast.use_backend("triton"), torch.no_grad():
        before = pool.launch_count
        _same(model._stem_pool(model.maxpool, x), F.max_pool2d(x, 3, 2, 1))
        assert pool.launch_count == before


@pytest.mark.interpreter
def test_modes_and_the_profiler_see_the_pool_op(monkeypatch):
    # Like the convs: the model calls the pool's body directly only in plain eager mode; a
    # TorchDispatchMode (or the profiler) sees resnet_fast::max_pool2d, which still runs Triton.
    from helpers import record_ops

    from resnet_fast.kernels import pool

    monkeypatch.setenv("RESNET_FAST_TRITON_POOL", "1")
    model = resnet_fast.resnet18(num_classes=10).eval()
    with resnet_fast.use_backend("triton"), torch.no_grad():
        before = pool.launch_count
        with record_ops() as rec:
            model._stem_pool(model.maxpool, _input(torch.float32, 13, 11))
        assert [n for n in rec.names if "pool" in n] == ["resnet_fast.max_pool2d.default"]
        with torch.profiler.profile() as prof:
            model._stem_pool(model.maxpool, _input(torch.float32, 13, 11))
        assert any("resnet_fast::max_pool2d" in e.name for e in prof.events())
        assert pool.launch_count - before == 2


@pytest.mark.interpreter
def test_model_runs_the_pool_kernel_after_a_fused_stem(monkeypatch):
    from resnet_fast.kernels import conv, pool

    def torch_conv(x, weight, bias, residual, stride, padding, dilation, groups, relu, out=None):
        # The Triton conv is tested elsewhere (and slow in the interpreter): the routing is the point.
        y = F.conv2d(x, weight, bias.to(x.dtype), stride, padding, dilation, groups)
        y = y + residual if residual is not None else y
        y = (y.relu() if relu else y).contiguous(memory_format=torch.channels_last)
        return y if out is None else out.copy_(y)

    monkeypatch.setattr(conv, "conv2d_bias_act", torch_conv)
    monkeypatch.setenv("RESNET_FAST_TRITON_POOL", "1")
    tv = torchvision.models.resnet18(num_classes=10).eval()
    model = resnet_fast.resnet18(num_classes=10).eval()
    model.load_state_dict(tv.state_dict())
    x = torch.randn(2, 3, 35, 29)
    with torch.no_grad():
        ref = tv.double()(x.double())
    with resnet_fast.use_backend("triton"), torch.no_grad():
        before = pool.launch_count
        y = model(x)
        assert pool.launch_count - before == 1
        assert (torch.linalg.vector_norm(y.double() - ref) / torch.linalg.vector_norm(ref)).item() < 1e-4
        handle = model.maxpool.register_forward_hook(lambda *a: None)  # hooked: PyTorch's pool runs
        model(x)
        handle.remove()
        model.maxpool.return_indices = True  # not a plain pool any more (the model would fail on it)
        assert resnet_fast.ops.stem_pool_args(model.maxpool) is None
        assert pool.launch_count - before == 1
    with torch.no_grad():  # the torch backend never takes it
        model.maxpool.return_indices = False
        model(x)
    assert pool.launch_count - before == 1


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_stem_pool_matches_torch_exactly(dtype):
    from resnet_fast.kernels import pool

    x = _input(dtype, 112, 112, device="cuda", c=64)
    _same(pool.max_pool2d(x, 3, 2, 1), F.max_pool2d(x, 3, 2, 1))
    x = _input(dtype, 37, 29, device="cuda", c=70, seed=1)
    _same(pool.max_pool2d(x, 3, 2, 1, 1, True), F.max_pool2d(x, 3, 2, 1, 1, True))
