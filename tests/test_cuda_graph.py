import copy

import pytest
import torch

import resnet_fast
from helpers import randomize_bn, rel_err

# Replay against an eager forward, bf16: the same kernels, but cuBLAS may pick another algorithm for
# the fc layer under capture (a few bf16 ulps). A stale fold (running_var x4) changes the output by
# order 1, far above this.
GRAPH_TOL = 1e-2


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
        assert rel_err(run(y), expected) < GRAPH_TOL
    with pytest.raises(ValueError, match=r"captured for input \(1, 3, 224, 224\)"):
        run(torch.randn(2, 3, 224, 224, device="cuda", dtype=torch.bfloat16))
    with torch.no_grad():  # an edit after capture re-captures instead of replaying stale folds
        model.layer1[0].bn1.running_var.mul_(4)
    with torch.inference_mode():
        expected = model(x)
    assert rel_err(run(x), expected) < GRAPH_TOL
    # A no-op .to() drops the fold caches without moving storage; assign=True swaps every tensor.
    model.to(torch.bfloat16)
    torch.cuda.empty_cache()
    assert rel_err(run(x), expected) < GRAPH_TOL
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state, assign=True)
    assert rel_err(run(x), expected) < GRAPH_TOL
    model.train()
    with pytest.raises(RuntimeError, match="train mode"):
        run(x)


def _fresh_folds(model, size=40):
    with torch.inference_mode():
        model(torch.randn(1, 3, size, size))
    return model


@pytest.mark.parametrize("change", ["edit", "to", "assign", "submodule", "buffer_data", "param_data", "clear_folds",
                                    "half", "parameter", "swap", "del_block", "insert_block", "pop_block", "bias_none",
                                    "del_fc", "dict_write", "buffer_to_parameter"])
def test_weights_watch_sees_every_change_a_replay_would_miss(change):
    """The replayer's per-call check (``WeightsWatch``): nothing after forwards or after another model
    was built; each change after which a replay would run stale or removed folds is seen, through
    torch's registration hooks or bypassing them (del, pop, None, direct dict writes). Replacements
    are built before the watch, so that their own registrations could not be what is seen."""
    from resnet_fast import graphs

    model = _fresh_folds(randomize_bn(resnet_fast.resnet18(), 3).eval())
    block = model.layer2[1]
    spare_fc, spare_block = torch.nn.Linear(512, 1000), copy.deepcopy(model.layer1[0])
    spare_param = torch.nn.Parameter(block.conv2.weight.detach().clone())
    watch = graphs.WeightsWatch(model)
    assert not watch.changed()
    torch.nn.Linear(3, 4)
    _fresh_folds(model)  # forwards reuse the folds
    assert not watch.changed()
    with torch.no_grad():
        if change == "edit":
            block.bn2.running_var.mul_(2)
        elif change == "to":  # a no-op .to() moves no storage, but drops every fold cache
            model.to(torch.float32)
        elif change == "assign":
            model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)
        elif change == "submodule":
            model.fc = spare_fc
        elif change == "buffer_data":
            model.layer1[0].bn1.running_mean = model.layer1[0].bn1.running_mean.clone()
        elif change == "param_data":  # .data writes bump no version, but a new storage is seen
            block.conv1.weight.data = block.conv1.weight.data.clone()
        elif change == "clear_folds":  # what to call after in-place .data edits
            block.conv1.weight.data.mul_(2)
            resnet_fast.clear_folds(model)
        elif change == "half":
            model.half()
        elif change == "parameter":
            block.conv2.weight = spare_param
        elif change == "swap":  # same tensor objects, other storage (torch.utils.swap_tensors)
            torch.utils.swap_tensors(block.bn1.weight, torch.nn.Parameter(block.bn1.weight.detach().clone()))
        elif change == "del_block":  # Sequential.__delitem__: delattr, no registration hook
            del model.layer1[1]
        elif change == "insert_block":
            model.layer1.insert(1, spare_block) if hasattr(model.layer1, "insert") else model.layer1.append(spare_block)
        elif change == "pop_block":
            model.layer4.pop(1)
        elif change == "bias_none":  # register_parameter(name, None) fires no hook
            model.fc.bias = None
        elif change == "del_fc":
            del model.fc
        elif change == "dict_write":  # torch.func's NamedMemberAccessor writes _parameters directly
            block.conv2._parameters["weight"] = spare_param
        elif change == "buffer_to_parameter":  # the same tensor moved between a module's dicts
            bn = block.bn1
            w = bn._parameters.pop("weight")
            bn._buffers["weight"] = w
    assert watch.changed()
    assert watch.changed()  # (it says so until the replayer captures again: a new watch)


def test_weights_watch_on_inference_tensor_weights():
    from resnet_fast import graphs

    with torch.inference_mode():
        model = randomize_bn(resnet_fast.resnet18(), 4).eval()
    watch = graphs.WeightsWatch(model)
    assert not watch.changed()
    with torch.inference_mode():
        model.layer1[0].bn1.running_mean = model.layer1[0].bn1.running_mean.clone()
    assert watch.changed()

def test_graph_keeps_the_folds_it_reads_alive():
    """After capture the replayer owns every cached fold, so dropping the caches (``.to()``) cannot
    free memory a replay reads."""
    import weakref

    from resnet_fast.graphs import _graph_tensors

    model = _fresh_folds(randomize_bn(resnet_fast.resnet18(), 5).eval())
    kept = _graph_tensors(model)
    folds = [f for item in kept if isinstance(item, list) for f in item]
    assert len(folds) == 20  # resnet18: stem + 16 block convs + 3 projections, one dtype
    refs = [weakref.ref(f.weight) for f in folds]
    del folds
    model.to(torch.float32)  # drops the caches
    assert all(r() is not None for r in refs)
    del kept
    import gc

    gc.collect()
    assert all(r() is None for r in refs)


@pytest.mark.parametrize("backend", ["native", "cudaMallocAsync"])
def test_capture_error_under_cuda_malloc_async_says_what_to_do(monkeypatch, backend):
    from resnet_fast import graphs

    monkeypatch.setattr(torch.cuda, "get_allocator_backend", lambda: backend)
    triton_refusal = ValueError("Pointer argument (at 1) cannot be accessed from Triton (cpu tensor?)")
    other = ValueError("something else")
    assert graphs.explain_capture_error(other) is other
    explained = graphs.explain_capture_error(triton_refusal)
    if backend == "native":
        assert explained is triton_refusal
    else:
        assert isinstance(explained, RuntimeError)
        assert "cudaMallocAsync" in str(explained) and "native allocator" in str(explained)
