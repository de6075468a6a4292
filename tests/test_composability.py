"""torch.compile, torch.export, DistributedDataParallel (gloo), SyncBatchNorm, deepcopy, save/load, threads."""
import copy
import os
import threading

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import resnet_fast
from helpers import float64_reference, randomize_bn, rel_err


def _model(seed=0, **kwargs):
    torch.manual_seed(seed)
    m = resnet_fast.resnet18(num_classes=6, **kwargs)
    return randomize_bn(m, seed + 1)


@pytest.mark.slow
def test_torch_compile_eval():
    m = _model().eval()
    x = torch.randn(2, 3, 45, 51)
    ref = float64_reference(m, x)
    compiled = torch.compile(m, fullgraph=True)  # fullgraph: a graph break is an error
    with torch.no_grad():
        out = compiled(x)
    assert rel_err(out, ref) < 1e-4


@pytest.mark.slow
def test_torch_compile_train_step_matches_eager():
    m = _model()
    ref = copy.deepcopy(m)
    x = torch.randn(2, 3, 45, 51)
    compiled = torch.compile(m)
    out = compiled(x)
    out_ref = ref(x)
    assert rel_err(out, out_ref) < 1e-4
    out.square().mean().backward()
    out_ref.square().mean().backward()
    for (n, p), (_, q) in zip(ref.named_parameters(), m.named_parameters()):
        assert rel_err(q.grad, p.grad) < 1e-3, n


def test_torch_export_eval_with_a_dynamic_batch():
    # README: torch.export works. The exported eval graph holds one fused op per conv (resnet18: 20)
    # and, with the batch dimension dynamic, serves another batch size.
    m = _model().eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    with torch.no_grad():
        ep = torch.export.export(m, (torch.randn(2, 3, 45, 51),), dynamic_shapes={"x": {0: batch}})
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count("resnet_fast.conv2d_bias_act.default") == 20, targets
    assert not any("batch_norm" in t or "convolution" in t or t == "aten.conv2d.default" for t in targets)
    x = torch.randn(3, 3, 45, 51)
    with torch.no_grad():
        out = ep.module()(x)
    assert out.shape == (3, 6) and rel_err(out, float64_reference(m, x)) < 1e-4


def test_torch_export_train_records_the_residual_op():
    m = _model().train()
    ep = torch.export.export(m, (torch.randn(2, 3, 45, 51),))
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count("resnet_fast.add_relu.default") == 8 and targets.count("aten.batch_norm.default") == 20, targets


def test_ops_trace_with_fake_tensors():
    # The fake kernels give shapes and layouts without running anything: what compile relies on.
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 8, 11, 13).contiguous(memory_format=torch.channels_last)
        w = torch.empty(16, 8, 3, 3)
        y = torch.ops.resnet_fast.conv2d_bias_act(x, w, torch.empty(16), None, [2, 2], [1, 1], [1, 1], 1, True)
        assert y.shape == (2, 16, 6, 7) and y.is_contiguous(memory_format=torch.channels_last)
        z = torch.ops.resnet_fast.add_relu(y, y)
        assert z.shape == y.shape


def test_deepcopy_and_save_load(tmp_path):
    m = _model().eval()
    x = torch.randn(2, 3, 37, 41)
    with torch.no_grad():
        expected = m(x)
    clone = copy.deepcopy(m)
    with torch.no_grad():
        clone.fc.weight.mul_(0)  # the clone is independent of the original
        assert torch.equal(m(x), expected)
    torch.save(m.state_dict(), tmp_path / "sd.pt")
    fresh = _model(seed=9).eval()
    fresh.load_state_dict(torch.load(tmp_path / "sd.pt", weights_only=True))
    with torch.no_grad():
        assert torch.equal(fresh(x), expected)
    torch.save(m, tmp_path / "whole.pt")
    whole = torch.load(tmp_path / "whole.pt", weights_only=False)
    with torch.no_grad():
        assert torch.equal(whole(x), expected)


def test_sync_batchnorm_conversion():
    m = _model()
    x = torch.randn(3, 3, 39, 33)
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(m))
    assert any(isinstance(s, nn.SyncBatchNorm) for s in sync.modules())
    m.eval(), sync.eval()
    ref = float64_reference(m, x)
    with torch.no_grad():
        assert rel_err(sync(x), ref) < 1e-4
    # Train mode without a process group: SyncBatchNorm acts as BatchNorm.
    m.train(), sync.train()
    assert rel_err(sync(x), m(x)) < 1e-5


def test_threads_share_one_eval_model():
    m = _model().eval()
    inputs = [torch.randn(2, 3, 33 + i, 35) for i in range(8)]
    with torch.no_grad():
        serial = [m(x) for x in inputs]
    m2 = _model().eval()  # a cold model: the threads race to build the fold cache
    results = [None] * len(inputs)
    errors = []

    def work(i):
        try:
            with torch.no_grad():
                results[i] = m2(inputs[i])
        except Exception as e:  # pragma: no cover - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads[:4]:
        t.start()
    for t in threads[:4]:
        t.join()
    for t in threads[4:]:
        t.start()
    for t in threads[4:]:
        t.join()
    assert not errors
    for a, b in zip(serial, results):
        assert torch.equal(a, b)


def _ddp_worker(rank, world, init_file, x, target, state, out_dir, train_mode):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    m = resnet_fast.resnet18(num_classes=6)
    m.load_state_dict(state)
    m.train(train_mode)
    ddp = nn.parallel.DistributedDataParallel(m)
    shard = x.chunk(world)[rank]
    loss = nn.functional.cross_entropy(ddp(shard), target.chunk(world)[rank])
    loss.backward()
    if rank == 0:
        torch.save({n: p.grad for n, p in m.named_parameters()}, os.path.join(out_dir, "grads.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("train_mode", [True, False], ids=["train", "frozen_bn"])
def test_ddp_gloo_two_processes(tmp_path, train_mode):
    m = _model()
    state = m.state_dict()
    x = torch.randn(4, 3, 41, 43)
    target = torch.randint(0, 6, (4,))
    mp.start_processes(
        _ddp_worker,
        args=(2, str(tmp_path / "init"), x, target, state, str(tmp_path), train_mode),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    grads = torch.load(tmp_path / "grads.pt", weights_only=True)
    ref = _model()
    ref.train(train_mode)
    if train_mode:
        # BN uses per-process batch statistics, so the single-process equivalent is the average of
        # the two half-batch gradients (what DDP's all-reduce computes).
        for xs, ts in zip(x.chunk(2), target.chunk(2)):
            (nn.functional.cross_entropy(ref(xs), ts) / 2).backward()
    else:
        # Frozen BN (eval statistics): exactly one process on the full batch.
        nn.functional.cross_entropy(ref(x), target).backward()
    for n, p in ref.named_parameters():
        assert rel_err(grads[n], p.grad) < 1e-4, n


def test_fx_feature_extractor_like_torchvision():
    import torchvision
    from torchvision.models.feature_extraction import create_feature_extractor

    torch.manual_seed(3)
    tv = randomize_bn(torchvision.models.resnet50(), 3).eval()
    fast = resnet_fast.from_torchvision(tv)
    nodes = {"layer2": "c3", "layer4": "c5"}
    fe_tv = create_feature_extractor(tv, return_nodes=nodes)
    fe_fast = create_feature_extractor(fast, return_nodes=nodes)
    x = torch.randn(2, 3, 67, 71)
    with torch.no_grad():
        a, b = fe_tv(x), fe_fast(x)
    for k in nodes.values():
        assert rel_err(b[k], a[k]) < 1e-5


def test_direct_eager_calls_equal_the_op_and_modes_still_see_the_op():
    # In plain eager mode the model runs the ops' bodies directly (no dispatcher round trip); any
    # TorchDispatchMode (FlopCounterMode, debugging modes) must still see every conv as the op, and
    # both routes must give the same bits.
    from helpers import record_ops

    torch.manual_seed(0)
    model = randomize_bn(resnet_fast.resnet18(num_classes=10), 3).eval()
    x = torch.randn(2, 3, 45, 53)
    with torch.no_grad():
        direct = model(x)
        with record_ops() as rec:
            via_op = model(x)
    assert sum(n.startswith("resnet_fast.conv2d_bias_act") for n in rec.names) == 20, rec.names
    assert torch.equal(direct, via_op)
    ref = float64_reference(model, x)
    assert rel_err(direct, ref) < 1e-4


@pytest.mark.interpreter
def test_compiled_resnext_block_on_the_triton_path(recwarn):
    # torch.compile traces the fold inline: here the ResNeXt widening of narrow groups (the Triton
    # path's weight layout) and the backend checks, which once warned about an lru_cache on every
    # compile. The compiled block gives the eager bits.
    import torchvision

    torch._dynamo.reset()
    torch.manual_seed(5)
    model = resnet_fast.from_torchvision(randomize_bn(torchvision.models.resnext50_32x4d(), 4).eval())
    block = model.layer1[1]
    x = torch.randn(1, 256, 9, 7)
    with resnet_fast.use_backend("triton"), torch.no_grad():
        eager = block(x)
        compiled = torch.compile(block)(x)
    assert torch.equal(compiled, eager)
    assert not [w for w in recwarn if "lru_cache" in str(w.message)]
    assert rel_err(eager, float64_reference(block, x)) < 1e-5


def test_public_conv_function_skips_the_dispatcher_only_when_nothing_can_observe_it(monkeypatch):
    from torch.utils._python_dispatch import TorchDispatchMode

    from resnet_fast import ops

    torch.manual_seed(0)
    x = torch.randn(2, 8, 9, 7).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(12, 8, 3, 3) / 8, torch.randn(12)
    args = (None, [1, 1], [1, 1], [1, 1], 1, True)
    ref = torch.nn.functional.conv2d(x.double(), w.double(), b.double(), 1, 1).relu()
    direct = ops.conv2d_bias_act(x, w, b, *args)
    assert torch.equal(direct, torch.ops.resnet_fast.conv2d_bias_act(x, w, b, *args))
    assert rel_err(direct, ref) < 1e-5

    seen = []

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Log():
        ops.conv2d_bias_act(x, w, b, *args)
    assert any("resnet_fast.conv2d_bias_act" in s for s in seen)  # a mode sees the op

    def direct_body(*a):
        raise AssertionError("direct call")

    monkeypatch.setattr(ops, "_conv2d_bias_act_impl", direct_body)  # the dispatcher keeps the registered one
    with pytest.raises(AssertionError, match="direct call"):
        ops.conv2d_bias_act(x, w, b, *args)
    for needs_grad in (w.clone().requires_grad_(), b.clone().requires_grad_()):
        call = (x, needs_grad, b) if needs_grad.dim() == 4 else (x, w, needs_grad)
        assert rel_err(ops.conv2d_bias_act(*call, *args), ref) < 1e-5  # through torch.ops


def test_public_conv_function_under_fx_tracing_and_vmap():
    import warnings

    from resnet_fast import ops

    torch.manual_seed(0)
    w, b = torch.randn(12, 8, 3, 3) / 8, torch.randn(12)
    args = (None, [1, 1], [1, 1], [1, 1], 1, True)

    class Conv(nn.Module):
        def forward(self, x):
            return ops.conv2d_bias_act(x, w, b, *args)

    x = torch.randn(2, 8, 9, 7)
    traced = torch.fx.symbolic_trace(Conv())  # a Proxy must not reach a branch
    assert any("conv2d_bias_act" in str(node.target) for node in traced.graph.nodes)
    assert torch.equal(traced(x), Conv()(x))
    xs = torch.randn(3, 2, 8, 9, 7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # vmap's "no batching rule, looping" performance warning
        out = torch.func.vmap(lambda xi: ops.conv2d_bias_act(xi, w, b, *args))(xs)
    for i in range(3):
        ref = torch.nn.functional.conv2d(xs[i].double(), w.double(), b.double(), 1, 1).relu()
        assert rel_err(out[i], ref) < 1e-5
