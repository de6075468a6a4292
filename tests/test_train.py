"""Train mode is torchvision's computation: outputs, every gradient, BN running statistics."""
import pytest
import torch
import torchvision

import resnet_fast
from helpers import randomize_bn, rel_err


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_train_step_matches_torchvision(name, channels_last):
    torch.manual_seed(5)
    tv = getattr(torchvision.models, name)(num_classes=7)
    randomize_bn(tv, 6)
    fast = getattr(resnet_fast, name)(num_classes=7)
    fast.load_state_dict(tv.state_dict())
    tv.train(), fast.train()
    x = torch.randn(4, 3, 57, 49)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 7, (4,))
    for step in range(2):
        out_tv = tv(x)
        out_fast = fast(x)
        assert rel_err(out_fast, out_tv) < 1e-5
        torch.nn.functional.cross_entropy(out_tv, target).backward()
        torch.nn.functional.cross_entropy(out_fast, target).backward()
        for (n, p), (_, q) in zip(tv.named_parameters(), fast.named_parameters()):
            assert rel_err(q.grad, p.grad) < 1e-5, (step, n)
        for (n, a), (_, b) in zip(tv.named_buffers(), fast.named_buffers()):
            if a.is_floating_point():
                assert rel_err(b, a) < 1e-5, (step, n)
            else:
                assert torch.equal(a, b), n
        with torch.no_grad():  # identical SGD steps keep the two in lockstep
            for p, q in zip(tv.parameters(), fast.parameters()):
                p -= 0.1 * p.grad
                q -= 0.1 * q.grad
                p.grad = None
                q.grad = None


def test_train_residual_goes_through_the_op():
    torch.manual_seed(0)
    m = resnet_fast.resnet50().train()
    x = torch.randn(2, 3, 64, 64)
    with torch.profiler.profile() as prof:
        m(x)
    op = "resnet_fast::add_relu_"
    events = [e for e in prof.events() if e.name == op]
    # The autograd kernel re-dispatches to the CPU kernel: count the outermost calls only.
    outer = [e for e in events if e.cpu_parent is None]
    assert len(outer) == 16  # one per Bottleneck
    assert len(events) == 32


@pytest.mark.gpu
def test_gpu_train_step_matches_torchvision():
    """Train mode on CUDA: the residual's out += identity; relu through the op (the extension's CUDA
    kernel where built: test_add_relu's GPU tests require it), autograd included, everything else
    torchvision's cuDNN computation; channels_last, as a training script would run it."""
    torch.manual_seed(5)
    tv = randomize_bn(torchvision.models.resnet50(num_classes=7), 6).cuda()
    fast = resnet_fast.resnet50(num_classes=7).cuda()
    fast.load_state_dict(tv.state_dict())
    tv = tv.to(memory_format=torch.channels_last).train()
    fast = fast.to(memory_format=torch.channels_last).train()
    x = torch.randn(8, 3, 64, 72, device="cuda").contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 7, (8,), device="cuda")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out_fast = fast(x)
    out_tv = tv(x)
    outer = [e for e in prof.events() if e.name == "resnet_fast::add_relu_" and e.cpu_parent is None]
    assert len(outer) == 16
    # cuDNN may pick different (TF32) algorithms for the two models' convs: a few 1e-4 apart. A wrong
    # residual or relu gradient is order 1.
    assert rel_err(out_fast, out_tv) < 5e-3
    torch.nn.functional.cross_entropy(out_tv, target).backward()
    torch.nn.functional.cross_entropy(out_fast, target).backward()
    for (n, p), (_, q) in zip(tv.named_parameters(), fast.named_parameters()):
        assert rel_err(q.grad, p.grad) < 2e-2, n
    for (n, a), (_, b) in zip(tv.named_buffers(), fast.named_buffers()):
        if a.is_floating_point():
            assert rel_err(b, a) < 5e-3, n
