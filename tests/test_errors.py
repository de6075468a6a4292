"""Bad input: a ValueError/TypeError naming what was expected and what came."""
import pytest
import torch

import resnet_fast


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return resnet_fast.resnet18(num_classes=5).eval()


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_errors(model, mode):
    model.train(mode == "train")
    cases = [
        (torch.randn(3, 32, 32), ValueError, r"4-D input \(N, C, H, W\), got a 3-D tensor of shape \(3, 32, 32\)"),
        (torch.randn(1, 1, 3, 32, 32), ValueError, r"got a 5-D tensor"),
        (torch.randn(2, 1, 32, 32), ValueError, r"expected 3 input channels, got 1"),
        (torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8), TypeError, r"floating-point input.*got torch.uint8"),
        (torch.ones(2, 3, 32, 32, dtype=torch.bool), TypeError, r"got torch.bool"),
        (torch.ones(2, 3, 32, 32, dtype=torch.int64), TypeError, r"got torch.int64"),
        (torch.randn(2, 3, 0, 32), ValueError, r"spatial size 0x32 is too small for the stem"),
        (torch.randn(2, 3, 32, 32, dtype=torch.float64), TypeError, r"input dtype torch.float64 does not match the model's dtype torch.float32"),
        ([1, 2, 3], TypeError, r"expected a torch.Tensor.*got list"),
    ]
    for x, exc, pattern in cases:
        with pytest.raises(exc, match=pattern), torch.no_grad():
            model(x)


def test_wrong_device(model):
    meta = torch.empty(2, 3, 32, 32, device="meta")
    with pytest.raises(ValueError, match=r"input is on meta but the model is on cpu"):
        model(meta)


def test_backend_name_is_checked(monkeypatch):
    with pytest.raises(ValueError, match=r"expected one of auto, triton, torch, got 'cuda'"):
        resnet_fast.set_backend("cuda")
    monkeypatch.setenv("RESNET_FAST_BACKEND", "fast")
    with pytest.raises(ValueError, match=r"RESNET_FAST_BACKEND: expected one of auto, triton, torch, got 'fast'"):
        resnet_fast.get_backend()


def test_unknown_weights_name():
    with pytest.raises(ValueError, match=r"unknown weights 'IMAGENET9K' for resnet50: expected one of DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2"):
        resnet_fast.resnet50(weights="IMAGENET9K")
    with pytest.raises(FileNotFoundError, match=r"expected a file at /nonexistent/x.pth"):
        resnet_fast.resnet50(weights="/nonexistent/x.pth")


def test_cuda_graph_refuses_clearly_without_cuda(model):
    model.eval()
    with pytest.raises(ValueError, match=r"expected an example input on a CUDA device, got cpu"):
        resnet_fast.cuda_graph(model, torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"expected a model in eval mode"):
        resnet_fast.cuda_graph(model.train(), torch.randn(1, 3, 32, 32))
    model.eval()
    with pytest.raises(ValueError, match=r"expected warmup >= 1 .*got 0"):
        resnet_fast.cuda_graph(model, torch.randn(1, 3, 32, 32), warmup=0)
