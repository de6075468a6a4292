"""weights= (torchvision enums, their names, a local path) and from_torchvision, all offline."""
import os

import pytest
import torch
import torchvision
from torchvision.models import ResNet50_Weights

import resnet_fast
from helpers import randomize_bn, rel_err


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A torch hub cache under tmp_path holding a (random) ResNet-50 checkpoint under V2's file name."""
    previous = torch.hub._hub_dir
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.hub.set_dir(str(tmp_path / "hub"))
    torch.manual_seed(0)
    tv = randomize_bn(torchvision.models.resnet50(), 2)
    path = resnet_fast.weights.expected_cache_path(ResNet50_Weights.IMAGENET1K_V2.url)
    os.makedirs(os.path.dirname(path))
    torch.save(tv.state_dict(), path)
    yield tv
    torch.hub._hub_dir = previous


@pytest.mark.parametrize("weights", [ResNet50_Weights.IMAGENET1K_V2, "IMAGENET1K_V2", "DEFAULT", "ResNet50_Weights.IMAGENET1K_V2"])
def test_weights_from_hub_cache(hub_cache, weights):
    m = resnet_fast.resnet50(weights=weights)
    for k, v in hub_cache.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    assert m.fc.out_features == 1000


def test_missing_cached_file_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "empty_hub"))

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    expected = str(tmp_path / "empty_hub" / "checkpoints" / "resnet50-0676ba61.pth")
    with pytest.raises(RuntimeError, match="no cached file at " + expected.replace(".", r"\.")):
        resnet_fast.resnet50(weights="IMAGENET1K_V1")


def test_num_classes_conflict_with_weights(hub_cache):
    with pytest.raises(ValueError, match="num_classes"):
        resnet_fast.resnet50(weights="IMAGENET1K_V2", num_classes=10)


def test_local_checkpoint_path(tmp_path):
    torch.manual_seed(1)
    src = randomize_bn(resnet_fast.resnet18(num_classes=12), 3)
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": src.state_dict(), "epoch": 3}, path)
    m = resnet_fast.resnet18(weights=str(path))  # num_classes read from the checkpoint
    assert m.fc.out_features == 12
    for k, v in src.state_dict().items():
        assert torch.equal(m.state_dict()[k], v)
    m2 = resnet_fast.resnet18(weights=path)  # a PathLike works too
    assert torch.equal(m2.fc.weight, src.fc.weight)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d"])
def test_from_torchvision(name):
    torch.manual_seed(4)
    tv = randomize_bn(getattr(torchvision.models, name)(num_classes=9), 4).eval()
    fast = resnet_fast.from_torchvision(tv)
    assert isinstance(fast, resnet_fast.resnet.ResNet)
    assert type(tv) is torchvision.models.ResNet  # the original is untouched
    assert not fast.training
    x = torch.randn(2, 3, 53, 61)
    with torch.no_grad():
        assert rel_err(fast(x), tv(x)) < 1e-5
    assert list(fast.state_dict()) == list(tv.state_dict())
    with pytest.raises(TypeError, match="expected a torchvision.models.ResNet"):
        resnet_fast.from_torchvision(torch.nn.Linear(2, 2))
