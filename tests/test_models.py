"""Drop-in equivalence with torchvision for all ten factories: module tree, state_dict, same-seed
initial weights, and eval outputs (fused path) against a float64 reference."""
import pytest
import torch
import torchvision
from torch import nn

import resnet_fast
from helpers import float64_reference, randomize_bn, rel_err

FACTORIES = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
]


def _pair(name, **kwargs):
    torch.manual_seed(7)
    tv = getattr(torchvision.models, name)(**kwargs)
    torch.manual_seed(7)
    fast = getattr(resnet_fast, name)(**kwargs)
    return tv, fast


def _trained(name, bn_seed, **kwargs):
    """The pair with the same trained-looking BN statistics, both in eval mode."""
    tv, fast = _pair(name, **kwargs)
    randomize_bn(tv, bn_seed)
    fast.load_state_dict(tv.state_dict())
    return tv.eval(), fast.eval()


@pytest.mark.parametrize("name", FACTORIES)
def test_same_tree_state_dict_and_init(name):
    tv, fast = _pair(name)
    assert [n for n, _ in tv.named_modules()] == [n for n, _ in fast.named_modules()]
    for (n, a), (_, b) in zip(tv.named_modules(), fast.named_modules()):
        assert type(a).__name__ == type(b).__name__, n
    sd_tv, sd_fast = tv.state_dict(), fast.state_dict()
    assert list(sd_tv) == list(sd_fast)
    for k in sd_tv:
        assert sd_tv[k].shape == sd_fast[k].shape, k
        assert torch.equal(sd_tv[k], sd_fast[k]), f"{k} differs after the same seed"


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(zero_init_residual=True),
        dict(num_classes=17),
        dict(replace_stride_with_dilation=[False, True, True]),
        dict(norm_layer=lambda c: nn.BatchNorm2d(c, eps=1e-3)),
    ],
    ids=["zero_init_residual", "num_classes", "dilation", "norm_layer"],
)
def test_keyword_arguments_match_torchvision(kwargs):
    tv, fast = _pair("resnet50", **kwargs)
    for (k, a), (_, b) in zip(tv.state_dict().items(), fast.state_dict().items()):
        assert torch.equal(a, b), k
    randomize_bn(tv, 3)
    fast.load_state_dict(tv.state_dict())
    x = torch.randn(2, 3, 61, 47)
    ref = float64_reference(tv.eval(), x)
    with torch.no_grad():
        assert rel_err(fast.eval()(x), ref) < 1e-4


def test_basicblock_rejects_what_torchvision_rejects():
    with pytest.raises(ValueError, match="groups=1"):
        resnet_fast.resnet18(groups=2)
    with pytest.raises(NotImplementedError):
        resnet_fast.resnet18(replace_stride_with_dilation=[False, False, True])
    with pytest.raises(ValueError, match="3-element"):
        resnet_fast.resnet50(replace_stride_with_dilation=[True])


# Smaller nets get bigger inputs; the deepest get the smallest odd sizes that still reach layer4.
_SIZES = {"resnet18": (97, 131), "resnet34": (97, 131), "resnet50": (97, 131)}


@pytest.mark.parametrize("name", FACTORIES)
def test_eval_fp32_matches_float64_reference(name):
    tv, fast = _trained(name, 11)
    h, w = _SIZES.get(name, (67, 45))
    x = torch.randn(2, 3, h, w)
    ref = float64_reference(tv, x)
    with torch.no_grad():
        out_nchw = fast(x)
        out_cl = fast(x.contiguous(memory_format=torch.channels_last))
        tv_err = rel_err(tv(x), ref)
    assert out_nchw.dtype == torch.float32 and out_nchw.shape == ref.shape
    assert rel_err(out_nchw, ref) < 1e-4, (rel_err(out_nchw, ref), tv_err)
    assert rel_err(out_cl, ref) < 1e-4


@pytest.mark.parametrize("name", FACTORIES)
def test_eval_bf16_error_within_twice_torchvision(name):
    tv, fast = _trained(name, 5)
    x = torch.randn(2, 3, *_SIZES.get(name, (67, 45)))
    ref = float64_reference(tv, x)
    tv16 = tv.to(torch.bfloat16)
    fast16 = fast.to(torch.bfloat16)
    with torch.no_grad():
        tv_err = rel_err(tv16(x.bfloat16()), ref)
        out = fast16(x.bfloat16().contiguous(memory_format=torch.channels_last))
    assert out.dtype == torch.bfloat16
    assert rel_err(out, ref) <= 2 * tv_err, (rel_err(out, ref), tv_err)


def test_autocast_bf16_runs_in_bf16_and_matches():
    tv, fast = _trained("resnet50", 9)
    x = torch.randn(2, 3, 71, 83)
    ref = float64_reference(tv, x)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        tv_out = tv(x)
        out = fast(x)
    assert out.dtype == tv_out.dtype == torch.bfloat16
    assert rel_err(out, ref) <= 2 * rel_err(tv_out, ref)


def test_eval_is_fused_no_batchnorm_runs():
    tv, fast = _trained("resnet50", 1)
    fast.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        fast(x)  # folds happen once, here
        with torch.profiler.profile() as prof:
            fast(x)
    names = [e.name for e in prof.events()]
    # Every conv of ResNet-50, stem included: 37 with a fresh output, and the 16 block epilogues
    # written over the shortcut tensor they add.
    assert names.count("resnet_fast::conv2d_bias_act") == 37
    assert names.count("resnet_fast::conv2d_bias_act_add_") == 16
    assert not any("batch_norm" in n for n in names)
    assert not any(n in ("aten::relu", "aten::relu_", "aten::add_", "aten::add", "aten::mul") for n in names)
    assert names.count("mkldnn::_convolution_pointwise") == 37  # oneDNN's fused conv+post-ops
    assert names.count("mkldnn::_convolution_pointwise_") == 16


def test_grad_enabled_eval_uses_differentiable_path():
    tv, fast = _trained("resnet18", 2)
    x = torch.randn(2, 3, 45, 53, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    tv(x).sum().backward()
    out = fast(x2)
    assert out.requires_grad
    out.sum().backward()
    assert rel_err(x2.grad, x.grad) < 1e-5


def test_tiny_and_empty_inputs():
    _, fast = _pair("resnet18")
    randomize_bn(fast, 4)
    fast.eval()
    with torch.no_grad():
        assert fast(torch.randn(2, 3, 1, 1)).shape == (2, 1000)
        assert fast(torch.randn(0, 3, 32, 32)).shape == (0, 1000)


def test_eval_never_writes_into_caller_tensors():
    # The network writes block outputs over activations it created itself; never over the
    # caller's input, nor over a tensor a hook kept.
    tv, fast = _trained("resnet50", 3)
    fast.eval()
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    x_copy = x.clone()
    kept = {}
    fast.layer2[1].register_forward_hook(lambda m, i, o: kept.update(inp=i[0], inp_copy=i[0].clone(), out=o))
    with torch.no_grad():
        out = fast(x)
        ref = tv.eval()(x)
    assert torch.equal(x, x_copy)
    assert torch.equal(kept["inp"], kept["inp_copy"])  # layer2[2] must not have written over it
    assert rel_err(out, ref) < 1e-5
    # Calling a block directly: its input is the caller's, so it is left alone too.
    y = torch.randn(1, 256, 9, 11).contiguous(memory_format=torch.channels_last)
    y_copy = y.clone()
    with torch.no_grad():
        fast.layer1[1](y)
    assert torch.equal(y, y_copy)


def test_eval_fp16_on_cpu_within_twice_torchvision():
    # oneDNN has no fp16 convolution on most CPUs: the op falls back to F.conv2d + epilogue.
    tv, fast = _trained("resnet18", 12)
    x = torch.randn(2, 3, 53, 47)
    ref = float64_reference(tv, x)
    with torch.no_grad():
        tv_err = rel_err(tv.half()(x.half()), ref)
        out = fast.half()(x.half())
    assert out.dtype == torch.float16
    assert rel_err(out, ref) <= 2 * tv_err, (rel_err(out, ref), tv_err)


def test_common_model_surgery_matches_torchvision():
    # What users do to a torchvision ResNet: a 1-channel or CIFAR stem, no max-pool, a new head,
    # the classifier dropped for features. The fast model must follow the same edits.
    def edit(m):
        torch.manual_seed(21)
        m.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
        m.maxpool = nn.Identity()
        m.fc = nn.Linear(m.fc.in_features, 10)
        return m

    tv, fast = _trained("resnet18", 14)
    tv, fast = edit(tv).eval(), edit(fast).eval()
    fast.load_state_dict(tv.state_dict())
    x = torch.randn(3, 1, 33, 29)
    ref = float64_reference(tv, x)
    with torch.no_grad():
        assert rel_err(fast(x), ref) < 1e-4
        with pytest.raises(ValueError, match="expected 1 input channels, got 3"):
            fast(torch.randn(1, 3, 32, 32))
        tv.fc = nn.Identity()
        fast.fc = nn.Identity()
        assert rel_err(fast(x), tv(x)) < 1e-5
