import pytest
import torch

import resnet_fast
from helpers import randomize_bn, rel_err


@pytest.mark.gpu
def test_cuda_graph_replays_and_refuses():
    torch.manual_seed(0)
    model = randomize_bn(resnet_fast.resnet50(), 1).eval().cuda().to(torch.bfloat16)
    x = torch.randn(1, 3, 224, 224, device="cuda", dtype=torch.bfloat16)
    run = resnet_fast.cuda_graph(model, x)
    for _ in range(3):
        y = torch.randn_like(x)
        with torch.inference_mode():
            expected = model(y)
        assert rel_err(run(y), expected) < 1e-6
    with pytest.raises(ValueError, match=r"captured for input \(1, 3, 224, 224\)"):
        run(torch.randn(2, 3, 224, 224, device="cuda", dtype=torch.bfloat16))
    with torch.no_grad():  # an edit after capture re-captures instead of replaying stale folds
        model.layer1[0].bn1.running_var.mul_(4)
    with torch.inference_mode():
        expected = model(x)
    assert rel_err(run(x), expected) < 1e-6
    model.train()
    with pytest.raises(RuntimeError, match="train mode"):
        run(x)
