"""BN folding: the math against float64, and that no fold ever goes stale."""
import copy

import pytest
import torch
import torchvision
from torch import nn

import resnet_fast
from helpers import float64_reference, randomize_bn, rel_err


@pytest.mark.parametrize("bias", [False, True])
def test_fold_bn_matches_float64(bias):
    conv = nn.Conv2d(13, 22, 3, stride=2, padding=1, bias=bias)
    bn = nn.BatchNorm2d(22, eps=1e-3)
    randomize_bn(nn.Sequential(conv, bn), 4)
    bn.eval()
    w, b = resnet_fast.fold_bn(conv, bn, torch.float32)
    assert b.dtype == torch.float32 and w.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(3, 13, 29, 31, dtype=torch.float64)
    with torch.no_grad():
        ref = copy.deepcopy(nn.Sequential(conv, bn)).double()(x)
        out = torch.nn.functional.conv2d(x, w.double(), b.double(), stride=2, padding=1)
    assert rel_err(out, ref) < 1e-6


@pytest.fixture
def model_and_input():
    torch.manual_seed(0)
    m = resnet_fast.resnet18(num_classes=10)
    randomize_bn(m, 1)
    return m.eval(), torch.randn(2, 3, 41, 37)


def _check_fresh(model, x):
    ref = float64_reference(model, x)  # the reference recomputes from the current weights
    with torch.no_grad():
        assert rel_err(model(x), ref) < 1e-4


def test_inplace_edit_of_weight_and_running_stats(model_and_input):
    m, x = model_and_input
    _check_fresh(m, x)
    with torch.no_grad():
        m.layer1[0].conv1.weight.mul_(1.7)
    _check_fresh(m, x)
    with torch.no_grad():
        m.layer2[0].bn2.running_var.mul_(3.0)
        m.bn1.running_mean.add_(0.5)
        m.layer3[0].downsample[1].bias.add_(0.25)
    _check_fresh(m, x)


def test_optimizer_step(model_and_input):
    m, x = model_and_input
    _check_fresh(m, x)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    m.train()
    m(torch.randn(4, 3, 41, 37)).sum().backward()  # also moves the running statistics
    opt.step()
    m.eval()
    _check_fresh(m, x)


def test_load_state_dict(model_and_input):
    m, x = model_and_input
    _check_fresh(m, x)
    other = resnet_fast.resnet18(num_classes=10)
    randomize_bn(other, 99)
    m.load_state_dict(other.state_dict())
    _check_fresh(m, x)


def test_to_dtype_and_back(model_and_input):
    m, x = model_and_input
    _check_fresh(m, x)
    ref64 = float64_reference(m, x)
    m.to(torch.float64)
    with torch.no_grad():
        out64 = m(x.double())
    assert out64.dtype == torch.float64
    assert rel_err(out64, ref64) < 1e-12  # a float64 model folds in float64
    m.to(torch.float32)
    with torch.no_grad():
        m.fc.weight.mul_(2)
        m.layer4[1].bn2.weight.mul_(-1)
    _check_fresh(m, x)


def test_replaced_parameter_and_eps(model_and_input):
    m, x = model_and_input
    _check_fresh(m, x)
    m.layer1[1].conv2.weight = nn.Parameter(torch.randn_like(m.layer1[1].conv2.weight) * 0.05)
    _check_fresh(m, x)
    m.layer2[1].bn1.eps = 0.5
    _check_fresh(m, x)


def test_cache_not_in_state_dict_or_pickle(model_and_input, tmp_path):
    m, x = model_and_input
    with torch.no_grad():
        m(x)
    keys = set(m.state_dict())
    assert not any("fold" in k for k in keys)
    assert "_resnet_fast_fold_cache" in m.layer1[0].__dict__
    clone = copy.deepcopy(m)
    assert "_resnet_fast_fold_cache" not in clone.layer1[0].__dict__
    torch.save(m, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    assert "_resnet_fast_fold_cache" not in loaded.layer1[0].__dict__
    with torch.no_grad():
        assert torch.allclose(loaded(x), m(x), rtol=0, atol=0)


def test_frozen_batchnorm_and_unfoldable_norms_still_correct():
    from torchvision.ops import FrozenBatchNorm2d

    torch.manual_seed(2)
    tv = torchvision.models.resnet18(norm_layer=FrozenBatchNorm2d)
    fast = resnet_fast.resnet18(norm_layer=FrozenBatchNorm2d)
    g = torch.Generator().manual_seed(0)
    for m in tv.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.running_var.uniform_(0.5, 2, generator=g)
            m.weight.uniform_(0.5, 1.5, generator=g)
    fast.load_state_dict(tv.state_dict())
    x = torch.randn(2, 3, 45, 39)
    ref = float64_reference(tv.eval(), x)
    with torch.no_grad():
        assert rel_err(fast.eval()(x), ref) < 1e-4

    # GroupNorm cannot be folded: the reference path runs, with the same result as torchvision.
    torch.manual_seed(2)
    tv = torchvision.models.resnet18(norm_layer=lambda c: nn.GroupNorm(4, c))
    torch.manual_seed(2)
    fast = resnet_fast.resnet18(norm_layer=lambda c: nn.GroupNorm(4, c))
    with torch.no_grad():
        assert rel_err(fast.eval()(x), tv.eval()(x)) < 1e-5


def test_forward_hooks_on_inner_modules_still_fire():
    torch.manual_seed(0)
    m = resnet_fast.resnet18().eval()
    seen = []
    m.layer2[0].bn1.register_forward_hook(lambda mod, i, o: seen.append(o.shape))
    with torch.no_grad():
        m(torch.randn(1, 3, 64, 64))
    assert seen == [torch.Size([1, 128, 8, 8])]


def _packs(model):
    from resnet_fast.ops import _PACKED_ATTR

    out = []
    for mod in model.modules():
        cache = mod.__dict__.get("_resnet_fast_fold_cache")
        if cache is not None:
            for _, folded in cache._entries.values():
                out.append(getattr(folded.weight, _PACKED_ATTR, None))
    return out


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN not in this torch build")
def test_cpu_prepacked_weights_per_input_shape(model_and_input):
    # The CPU path keeps oneDNN's blocked copy of each cached fold, one per input shape for the first
    # two shapes; later shapes take the plain weight. Every one of them must give the same numbers.
    from resnet_fast.ops import _HAS_MKLDNN_REORDER, _MAX_PACKED_SHAPES

    m, _ = model_and_input
    if not _HAS_MKLDNN_REORDER:
        pytest.skip("this torch has no mkldnn._reorder_convolution_weight")
    shapes = [(2, 3, 41, 37), (1, 3, 64, 64), (3, 3, 33, 45), (2, 3, 41, 37)]
    for shape in shapes:
        _check_fresh(m, torch.randn(*shape))
    packs = _packs(m)
    assert packs and all(p is not None and len(p) == _MAX_PACKED_SHAPES for p in packs)
    stem = m.__dict__["_resnet_fast_fold_cache"]._entries
    (_, stem_fold), = stem.values()
    assert set(getattr(stem_fold.weight, "_resnet_fast_mkldnn_weights")) == {(2, 3, 41, 37), (1, 3, 64, 64)}
    # A refold (new statistics) starts from fresh packs: none can be stale.
    with torch.no_grad():
        m.bn1.running_var.mul_(2.0)
    _check_fresh(m, torch.randn(1, 3, 64, 64))
    (_, refolded), = stem.values()
    assert refolded.weight is not stem_fold.weight
    # The op never packs weights it was not told are immutable folds.
    w = torch.randn(8, 3, 3, 3).contiguous(memory_format=torch.channels_last)
    resnet_fast.ops.conv2d_bias_act(torch.randn(1, 3, 9, 9), w, torch.zeros(8), None, [1, 1], [1, 1], [1, 1], 1, True)
    assert not hasattr(w, "_resnet_fast_mkldnn_weights")


@pytest.mark.parametrize("channels,groups,expect", [(128, 32, 4), (256, 32, 8), (512, 32, 16), (1024, 32, 32),
                                                     (48, 4, 2), (36, 3, 3), (64, 1, 1), (128, 64, 4)])
def test_widened_groups_are_the_same_conv(channels, groups, expect):
    # ResNeXt's narrow groups (4 to 16 channels) run on the Triton path as groups of 32 channels
    # with a block-diagonal weight; in float64 the two convs agree to rounding.
    from resnet_fast.fused import to_oc_last, widen_groups

    g = torch.Generator().manual_seed(channels + groups)
    cg = channels // groups
    w = torch.randn(channels, cg, 3, 3, generator=g, dtype=torch.float64)
    x = torch.randn(2, channels, 9, 7, generator=g, dtype=torch.float64)
    wide, new_groups = widen_groups(to_oc_last(w), groups)
    assert new_groups == expect
    assert wide.shape == (channels, cg * groups // new_groups, 3, 3) and wide.stride(0) == 1  # still oc-last
    ref = nn.functional.conv2d(x, w, None, 2, 1, 1, groups)
    assert rel_err(nn.functional.conv2d(x, wide, None, 2, 1, 1, new_groups), ref) < 1e-14


@pytest.mark.interpreter
def test_resnext_block_through_triton_with_widened_groups():
    # A ResNeXt-50 layer1 block (32 groups of 4) folded for the Triton kernels: its 3x3 conv runs as
    # 4 groups of 32 channels, the block matches torchvision's in float64.
    from torchvision.models.resnet import Bottleneck as TvBottleneck

    from resnet_fast.fused import make_folded

    torch.manual_seed(5)
    down = nn.Sequential(nn.Conv2d(64, 256, 1, bias=False), nn.BatchNorm2d(256))
    tv = randomize_bn(TvBottleneck(64, 64, downsample=down, groups=32, base_width=4), 4).eval()
    fast_block = resnet_fast.from_torchvision(
        randomize_bn(torchvision.models.resnext50_32x4d(), 4).eval()).layer1[0]
    fast_block.load_state_dict(tv.state_dict())
    x = torch.randn(2, 64, 11, 9)
    from resnet_fast.kernels import conv as triton_conv

    with resnet_fast.use_backend("triton"), torch.no_grad():
        assert make_folded(fast_block.conv2, fast_block.bn2, torch.float32).groups == 4
        before = triton_conv.launch_count
        out = fast_block(x)
        assert triton_conv.launch_count - before == 4  # conv1, conv2 (widened), downsample, conv3
        ref = tv.double()(x.double())
    assert rel_err(out, ref) < 1e-5


def test_training_forwards_without_an_optimizer_step_refold(model_and_input):
    """BN recalibration (AdaBN, linear probing with only fc in the optimizer): train-mode forwards
    move the running statistics inside native_batch_norm, whose schema marks nothing as written, so
    their versions stay. Both ways back to eval refold: model.train() drops the folds, and one BN
    put in train mode alone is seen through its num_batches_tracked."""
    m, x = model_and_input
    _check_fresh(m, x)
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(4, 3, 41, 37) * 2 + 1)
    m.eval()
    _check_fresh(m, x)
    bn = m.layer1[0].bn1
    bn.train()  # the block stays in eval mode: its cached folds stay too
    with torch.no_grad():
        m(torch.randn(4, 3, 41, 37) * 3)
    bn.eval()
    _check_fresh(m, x)


def test_edits_through_data_need_clear_folds(model_and_input):
    m, x = model_and_input
    _check_fresh(m, x)
    m.layer2[1].conv1.weight.data.mul_(1.5)  # .data: no version bump, invisible to any signature
    ref = float64_reference(m, x)
    with torch.no_grad():
        assert rel_err(m(x), ref) > 1e-3  # the documented limitation: still the old fold
        assert resnet_fast.clear_folds(m) is m
        assert rel_err(m(x), ref) < 1e-4


def _data_parallel_replica(module):
    """What nn.parallel.replicate makes of a module on one device (it needs GPUs): a shallow copy
    whose parameters are plain attributes, computed from the originals so that gradients flow back."""
    replica = module._replicate_for_data_parallel()
    for name, child in module._modules.items():
        replica._modules[name] = _data_parallel_replica(child) if child is not None else None
    for name, p in module._parameters.items():
        if p is None:
            replica._parameters[name] = None
        else:
            setattr(replica, name, p * 1)
    return replica


def test_data_parallel_replica_in_eval_with_grad_keeps_gradients(model_and_input):
    """Fine-tuning with frozen BN (model.eval()) under DataParallel: the replica has no registered
    parameters, but its convs' weights want gradients, so the differentiable path must run."""
    m, x = model_and_input
    with torch.no_grad():
        m(x)  # folds cached on the original
    replica = _data_parallel_replica(m)
    assert list(replica.parameters()) == []
    for mod in replica.modules():
        assert resnet_fast.fused._CACHE_ATTR not in mod.__dict__  # no fold shared with the original
    out = replica(x)
    out.sum().backward()
    assert m.conv1.weight.grad is not None and m.layer4[1].conv2.weight.grad is not None
    with torch.no_grad():
        assert rel_err(out, float64_reference(m, x)) < 1e-4


def test_torch_jit_trace_records_the_fused_ops(model_and_input):
    m, x = model_and_input
    with torch.no_grad():
        traced = torch.jit.trace(m, x, check_trace=False)
        graph = str(traced.graph)
        assert "resnet_fast::conv2d_bias_act" in graph and "resnet_fast::conv2d_bias_act_add_" in graph
        other = torch.randn(3, 3, 41, 37)
        assert rel_err(traced(other), float64_reference(m, other)) < 1e-4


class _ScaledShortcut(nn.Module):
    """A custom shortcut whose one parameter is not called weight or bias."""

    def __init__(self):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor([0.5]))

    def forward(self, x):
        return x * self.alpha


def test_a_trainable_parameter_of_any_name_keeps_the_differentiable_path(model_and_input):
    """Backbone frozen, model in eval, grad on, one trainable parameter in a custom shortcut: the block
    must take the differentiable path, or the parameter gets no gradient (the fused op has none)."""
    m, x = model_and_input
    m.layer1[1].downsample = _ScaledShortcut()
    for p in m.parameters():
        p.requires_grad_(False)
    alpha = m.layer1[1].downsample.alpha
    alpha.requires_grad_(True)
    m(x).sum().backward()
    assert alpha.grad is not None and alpha.grad.abs().item() > 0


def test_a_cuda_graph_keeps_the_storage_it_reads_not_just_the_parameters(model_and_input):
    """.half() (or p.data = ...) points a Parameter at new storage and frees the old, which a
    captured graph still reads until it is re-captured: the graph keeps the storage itself."""
    from resnet_fast.graphs import _graph_tensors

    m, x = model_and_input
    with torch.no_grad():
        m(x)
    kept = _graph_tensors(m)
    before = [(t.data_ptr(), t.dtype) for t in kept if isinstance(t, torch.Tensor)]
    m.half()
    after = [(t.data_ptr(), t.dtype) for t in kept if isinstance(t, torch.Tensor)]
    assert before == after and all(dtype != torch.float16 for _, dtype in after if dtype.is_floating_point)
