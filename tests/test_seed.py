"""The seed API: constructors, module names, checkpoints saved by the seed-style implementation."""
import io

import pytest
import torch

import resnet_fast
from helpers import randomize_bn, rel_err
from seed_reference import SEED_CONFIGS, RefResNet


def test_seed_classes_and_expansion():
    assert resnet_fast.Bottleneck.expansion == 4
    assert resnet_fast.Block.expansion == 1
    m = resnet_fast.ResNet(resnet_fast.Bottleneck, [3, 4, 6, 3], 10, 1)
    assert m.conv1.in_channels == 1 and m.fc.out_features == 10
    assert isinstance(resnet_fast.ResNet50(10), resnet_fast.ResNet)


@pytest.mark.parametrize("name", ["ResNet18", "ResNet34", "ResNet50", "ResNet101"])
def test_seed_checkpoint_loads_strict_and_reproduces_outputs(name):
    block, layers = SEED_CONFIGS[name]
    torch.manual_seed(3)
    ref = RefResNet(block, layers, num_classes=13, num_channels=4)
    randomize_bn(ref, 8)
    buf = io.BytesIO()
    torch.save(ref.state_dict(), buf)  # what a seed user has on disk
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    if block.__name__ == "RefBottleneck":
        assert "layer1.0.conv1.bias" in state and "layer1.0.i_downsample.0.bias" in state
        assert "layer2.0.batch_norm3.running_var" in state

    fast = getattr(resnet_fast, name)(13, channels=4)
    fast.load_state_dict(state, strict=True)
    assert list(fast.state_dict()) == list(state)

    x = torch.randn(2, 4, 67, 59)
    ref.eval(), fast.eval()
    with torch.no_grad():
        expected = ref.double()(x.double())
        out = fast(x)
    assert rel_err(out, expected) < 1e-4

    # Train mode too: same outputs, same gradients.
    ref.float().train(), fast.train()
    out_ref = ref(x)
    out_fast = fast(x)
    assert rel_err(out_fast, out_ref) < 1e-5
    out_ref.square().mean().backward()
    out_fast.square().mean().backward()
    for (n, p), (_, q) in zip(ref.named_parameters(), fast.named_parameters()):
        assert rel_err(q.grad, p.grad) < 1e-4, n


def test_seed_same_seed_same_init():
    torch.manual_seed(21)
    ref = RefResNet(*SEED_CONFIGS["ResNet50"], num_classes=5, num_channels=3)
    torch.manual_seed(21)
    fast = resnet_fast.ResNet50(5)
    for (k, a), (_, b) in zip(ref.state_dict().items(), fast.state_dict().items()):
        assert torch.equal(a, b), k


def test_block_bugs_are_not_reproduced():
    blk = resnet_fast.Block(8, 8, stride=2)
    assert blk.conv1.stride == (2, 2) and blk.conv2.stride == (1, 1)
    assert blk.batch_norm1 is not blk.batch_norm2
