"""Direct launches (kernels/launch.py): a conv call that repeats an earlier call's launch properties
reuses its compiled kernel, grid and scalar arguments instead of going through JITFunction.run.

On the CPU the "compiled kernel" is Triton's interpreter behind the same launcher call signature, so
these tests check what the launcher builds (argument order, buffers, the residual, the stem's
padded copy, K-split workspaces and counters, in-place outputs) against float64 references; the
GPU test runs the real compiled kernels.
"""
import inspect

import pytest
import torch
import torch.nn.functional as F

from helpers import rel_err
from resnet_fast.fused import to_oc_last

# (C, OC, kernel, stride, padding, N, H, W, residual, in_place)
CASES = [
    (40, 48, 1, 1, 0, 2, 9, 7, True, False),  # 1x1 GEMM walk, residual
    (40, 48, 1, 1, 0, 2, 9, 7, True, True),  # the block epilogue written into the residual
    (24, 40, 3, 2, 1, 2, 11, 9, False, False),  # per-tap walk, stride 2
    (3, 16, 7, 2, 3, 1, 17, 15, False, False),  # the stem: padded to 4 channels first
    (256, 32, 3, 1, 1, 1, 3, 3, False, False),  # small M, long K: split K (with 132 SMs)
]


@pytest.fixture
def interpreted_direct(monkeypatch):
    """Direct launches on CPU tensors, the launcher routed to the interpreter."""
    from resnet_fast.kernels import conv as triton_conv
    from resnet_fast.kernels import launch as direct

    seen = {}

    class Interpreted(direct.Direct):
        """Pointers reach the launcher as integers, as on the GPU; the interpreter needs the tensors
        back (the seven pointer parameters come first)."""

        def pointer(self, t):
            seen[t.data_ptr()] = t
            return super().pointer(t)

        @classmethod
        def of(cls, kernel, grid):
            from resnet_fast.kernels import conv1x1_tma

            def launcher(g0, g1, g2, stream, function, metadata, launch_metadata, enter, leave, *values):
                assert stream == 0 and launch_metadata is None
                general = triton_conv._conv2d_bias_act_kernel.fn
                # The stem's helpers (_launch_small): two tensors, the scalars, the constexprs last.
                small = {len(f.arg_names): f for f in (triton_conv._pad_channels_kernel,
                                                       triton_conv._space_to_depth_kernel, triton_conv._s2d_weight_kernel)}
                if len(values) == len(general.arg_names):
                    assert all(isinstance(v, int) for v in values[:7]), "pointers are passed as integers"
                    general[(g0, g1, g2)](*[seen[v] for v in values[:7]], *values[7:])
                elif len(values) in small:
                    f = small[len(values)]
                    assert all(isinstance(v, int) for v in values[:2]), "pointers are passed as integers"
                    params = inspect.signature(f.fn).parameters
                    const = [n for n in f.arg_names if "constexpr" in str(params[n].annotation)]
                    runtime = [v for n, v in zip(f.arg_names[2:], values[2:]) if n not in const]
                    f[(g0, g1, g2)](seen[values[0]], seen[values[1]], *runtime,
                                    **{n: v for n, v in zip(f.arg_names, values) if n in const})
                else:  # the TMA kernel: four descriptors, then the bias pointer
                    assert isinstance(values[4], int)
                    conv1x1_tma._conv1x1_tma_kernel.fn[(g0, g1, g2)](*values[:4], seen[values[4]], *values[5:])

            return cls(kernel, launcher, "function", "metadata", tuple(grid))

    monkeypatch.setattr(direct, "ENABLED", True)
    monkeypatch.setattr(direct, "Direct", Interpreted)
    monkeypatch.setattr(direct, "_raw_stream", lambda device: 0)
    monkeypatch.setattr(triton_conv, "_direct_ok", lambda x: True)
    monkeypatch.setattr(triton_conv, "_plans", {})
    monkeypatch.setattr(triton_conv, "_chosen_configs", {})  # each test's first call tunes
    monkeypatch.setattr(triton_conv, "_tma_forced", {})
    monkeypatch.setattr(triton_conv, "_tma_choice", {})
    monkeypatch.setattr(triton_conv, "_split_choice", {})
    monkeypatch.setattr(triton_conv, "_split_report", {})
    monkeypatch.setattr(triton_conv, "_s2d_choice", {})
    monkeypatch.setattr(triton_conv, "_s2d_report", {})
    monkeypatch.setattr(triton_conv, "_small_plans", {})
    monkeypatch.setattr(triton_conv, "_from_disk", set())
    monkeypatch.setattr(triton_conv, "_sm_count", lambda device: 132)
    return triton_conv, direct


def _inputs(c, oc, k, s, p, n, h, w, residual, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen)
    weight = torch.randn(oc, c, k, k, generator=gen) / (c * k * k) ** 0.5
    bias = torch.randn(oc, generator=gen)
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    res = torch.randn(n, oc, oh, ow, generator=gen) if residual else None
    ref = F.conv2d(x.double(), weight.double(), bias.double(), s, p)
    if residual:
        ref = ref + res.double()
    ref = ref.relu()
    cl = lambda t: None if t is None else t.contiguous(memory_format=torch.channels_last)  # noqa: E731
    return cl(x), to_oc_last(weight), bias, cl(res), ref


@pytest.mark.interpreter
@pytest.mark.parametrize("case", CASES, ids=["1x1_res", "1x1_in_place", "3x3_s2", "stem", "split_k"])
def test_repeated_calls_launch_directly_and_stay_right(interpreted_direct, case):
    triton_conv, direct = interpreted_direct
    c, oc, k, s, p, n, h, w, residual, in_place = case
    if c == 256:
        assert triton_conv.choose_split_k(n * h * w, oc, 1, c, k, k, False, False, 132) > 1
    directs = []
    for call in range(4):  # 1: tunes, 2: launches through Triton and keeps the plan, 3-4: direct
        x, weight, bias, res, ref = _inputs(c, oc, k, s, p, n, h, w, residual, seed=call)
        before = direct.launch_count
        out = res if in_place else None
        y = triton_conv.conv2d_bias_act(x, weight, bias, res, [s, s], [p, p], [1, 1], 1, True, out=out)
        directs.append(direct.launch_count - before)
        if in_place:
            assert y.data_ptr() == res.data_ptr()
        assert y.stride() == (y.shape[1] * y.shape[2] * y.shape[3], 1, y.shape[3] * y.shape[1], y.shape[1])
        assert rel_err(y, ref) < 1e-5, call
    # The stem (3 channels) pads x to 4 channels first, a second kernel, launched directly from its
    # second call on.
    assert directs == ([0, 1, 2, 2] if c == 3 else [0, 0, 1, 1])
    assert len(triton_conv._plans) == 1 and len(triton_conv._small_plans) == (c == 3)


@pytest.mark.interpreter
def test_what_a_plan_does_not_cover_goes_through_triton(interpreted_direct):
    triton_conv, direct = interpreted_direct
    c, oc, k, s, p, n, h, w = 40, 48, 1, 1, 0, 2, 9, 7
    x, weight, bias, _, ref = _inputs(c, oc, k, s, p, n, h, w, False, seed=0)

    def launches(x, **kwargs):
        before = direct.launch_count
        y = triton_conv.conv2d_bias_act(x, weight, bias, None, [1, 1], [0, 0], [1, 1], 1, True, **kwargs)
        assert rel_err(y, ref) < 1e-5
        return direct.launch_count - before

    launches(x)
    launches(x)
    assert launches(x) == 1
    # A pointer off 16-byte alignment: Triton would specialise differently.
    storage = torch.empty(x.numel() + 1)
    shifted = storage[1:].view(n, h, w, c).permute(0, 3, 1, 2).copy_(x)
    assert shifted.data_ptr() % 16 and launches(shifted) == 0
    # Another layout of x (copied by the launcher first), forced options, another tuning state.
    assert launches(x.contiguous()) == 0
    assert launches(x, index_64=True) == 0 and launches(x, split_k=2) == 0
    # Forcing the general kernel is a launch of its own (its own plan), then direct too.
    assert [launches(x, tma=False) for _ in range(3)] == [0, 1, 1]
    triton_conv._chosen_configs, saved = {}, triton_conv._chosen_configs
    try:
        assert launches(x) == 0
    finally:
        triton_conv._chosen_configs = saved
    assert launches(x) == 1


@pytest.mark.interpreter
@pytest.mark.parametrize("residual", [False, True])
def test_forced_tma_kernel_launches_directly(interpreted_direct, residual):
    triton_conv, direct = interpreted_direct
    c, oc, n, h, w = 32, 48, 2, 9, 7  # 16-bit data, rows a multiple of 16 bytes
    directs = []
    for seed in range(3):
        x, weight, bias, res, ref = _inputs(c, oc, 1, 1, 0, n, h, w, residual, seed=seed)
        x, weight = x.half(), weight.half()
        res = None if res is None else res.half()
        before = direct.launch_count
        y = triton_conv.conv2d_bias_act(x, weight, bias, res, [1, 1], [0, 0], [1, 1], 1, True, tma=True)
        directs.append(direct.launch_count - before)
        assert rel_err(y, ref) < 5e-3, seed
    assert directs == [0, 0, 1]  # tunes, launches with its config and keeps the plan, direct


@pytest.mark.interpreter
def test_arg_values_follow_the_kernel_order():
    from resnet_fast.kernels import conv as triton_conv
    from resnet_fast.kernels import launch as direct

    names = triton_conv._conv2d_bias_act_kernel.fn.arg_names
    values = direct.arg_values(triton_conv._conv2d_bias_act_kernel.fn, (1, 2), {n: n for n in names[2:]})
    assert values == (1, 2) + tuple(names[2:])
    assert direct.arg_values(triton_conv._conv2d_bias_act_kernel.fn, (1, 2), {}) is None


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_direct_launches_match_triton_launches(dtype):
    """Every ResNet-50 conv class on the GPU, batch 1 (split K) and 32 (TMA 1x1 where it wins):
    the direct launch gives exactly what the launch through Triton gave on the same inputs."""
    from resnet_fast.kernels import conv as triton_conv
    from resnet_fast.kernels import launch as direct

    assert direct.ENABLED, "direct launches are off on this machine"
    for c, oc, k, s, p, n, h, w, residual, in_place in CASES + [(1024, 256, 1, 1, 0, 32, 14, 14, True, True),
                                                                   (512, 512, 3, 1, 1, 1, 7, 7, False, False)]:
        x, weight, bias, res, ref = _inputs(c, oc, k, s, p, n, h, w, residual, seed=1)
        x, weight, bias = x.cuda().to(dtype), weight.cuda().to(dtype), bias.cuda()
        res = None if res is None else res.cuda().to(dtype)

        def call():
            r = None if res is None else res.clone()
            return triton_conv.conv2d_bias_act(x, weight, bias, r, [s, s], [p, p], [1, 1], 1, True,
                                               out=r if in_place else None)

        call()  # tunes, or already tuned
        second = call()  # through Triton, keeps the plan (or already direct)
        before = direct.launch_count
        third = call()
        torch.cuda.synchronize()
        assert direct.launch_count == before + (2 if c == 3 else 1), (c, oc, k)  # (the stem pads x first)
        assert torch.equal(second, third), (c, oc, k)
        assert rel_err(third.double().cpu(), ref) < (2e-2 if dtype == torch.bfloat16 else 5e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("in_place", [False, True])
def test_gpu_direct_launch_of_the_tma_kernel(monkeypatch, in_place):
    """The 1x1 TMA kernel (the tests run RESNET_FAST_AUTOTUNE=0, which keeps it off): made to win
    its timing, then launched directly with fresh descriptors on new tensors."""
    from resnet_fast.kernels import conv as triton_conv
    from resnet_fast.kernels import conv1x1_tma
    from resnet_fast.kernels import launch as direct

    if not conv1x1_tma.available(torch.empty(1, device="cuda")):
        pytest.skip("no TMA on this GPU")
    monkeypatch.setattr(triton_conv, "_tma_auto", True)
    monkeypatch.setattr(triton_conv, "_tma_choice", {})
    timings = iter([1.0, 2.0])  # the TMA kernel first, then the general one
    monkeypatch.setattr(triton_conv, "_quick_bench", lambda fn, quantiles=None: (fn(), next(timings))[1])
    c, oc, n, h, w = 256, 1024, 64, 14, 14
    directs = []
    for seed in range(3):
        x, weight, bias, res, ref = _inputs(c, oc, 1, 1, 0, n, h, w, True, seed=seed)
        x, weight, bias, res = x.cuda().bfloat16(), weight.cuda().bfloat16(), bias.cuda(), res.cuda().bfloat16()
        before = direct.launch_count
        y = triton_conv.conv2d_bias_act(x, weight, bias, res, [1, 1], [0, 0], [1, 1], 1, True,
                                        out=res if in_place else None)
        torch.cuda.synchronize()
        directs.append(direct.launch_count - before)
        assert rel_err(y.double().cpu(), ref) < 2e-2, seed
    assert list(triton_conv._tma_choice.values()) != [False]
    assert directs == [0, 0, 1]


def _planned_call(triton_conv):
    """A 1x1 conv called twice (tuned, then planned): ``(call, ref)``, the next call launching directly."""
    x, weight, bias, _, ref = _inputs(40, 48, 1, 1, 0, 2, 9, 7, False, seed=0)

    def call():
        return triton_conv.conv2d_bias_act(x, weight, bias, None, [1, 1], [0, 0], [1, 1], 1, True)

    call()
    call()
    return call, ref


def _planned_call_whose_launcher_raises(triton_conv, error):
    """``_planned_call`` with its plan's compiled launcher replaced by one that raises ``error``."""
    call, ref = _planned_call(triton_conv)
    (plan,) = triton_conv._plans.values()

    def launcher(*args):
        raise error

    plan.direct.launcher = launcher
    return call, ref


@pytest.mark.interpreter
def test_a_direct_launch_that_raises_turns_them_off_and_the_call_still_runs(interpreted_direct, monkeypatch):
    triton_conv, direct = interpreted_direct
    call, ref = _planned_call_whose_launcher_raises(triton_conv, TypeError("launch() takes 14 positional arguments"))
    monkeypatch.setattr(direct, "failure", None)
    with pytest.warns(UserWarning, match="direct Triton launches failed"):
        y = call()
    assert rel_err(y, ref) < 1e-5
    assert direct.ENABLED is False and "TypeError" in direct.failure and not triton_conv._plans


@pytest.mark.interpreter
def test_out_of_memory_in_a_direct_launch_is_not_blamed_on_it(interpreted_direct, monkeypatch):
    triton_conv, direct = interpreted_direct
    call, _ = _planned_call(triton_conv)

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(torch, "empty_strided", oom)
    with pytest.raises(torch.OutOfMemoryError):
        call()
    assert direct.ENABLED and triton_conv._plans


@pytest.mark.interpreter
def test_other_errors_in_a_direct_launch_propagate_and_keep_it_on(interpreted_direct):
    triton_conv, direct = interpreted_direct
    call, _ = _planned_call_whose_launcher_raises(
        triton_conv, RuntimeError("CUDA error: an illegal memory access was encountered"))
    with pytest.raises(RuntimeError, match="illegal memory access"):
        call()
    assert direct.ENABLED and triton_conv._plans


@pytest.mark.interpreter
def test_a_plan_follows_the_tuning_tables_and_the_tma_switch(interpreted_direct, monkeypatch):
    triton_conv, direct = interpreted_direct
    x, weight, bias, _, _ = _inputs(32, 48, 1, 1, 0, 2, 9, 7, False, seed=0)
    x, weight = x.half(), weight.half()

    def call():
        before = direct.launch_count
        triton_conv.conv2d_bias_act(x, weight, bias, None, [1, 1], [0, 0], [1, 1], 1, True, tma=True)
        return direct.launch_count - before

    assert [call() for _ in range(3)] == [0, 0, 1]
    (plan,) = triton_conv._plans.values()
    assert plan.current()
    monkeypatch.setattr(triton_conv, "_tma_choice", {})  # a fresh table: the plan is not used with it
    assert not plan.current() and call() == 0
    monkeypatch.setenv("RESNET_FAST_TMA", "0")  # read on every call: neither the plan nor the kernel
    with pytest.raises(ValueError, match="cannot take the TMA kernel"):
        call()


def _timed_then_planned(interpreted_direct, monkeypatch, shape, won, in_place):
    """Four calls of a conv whose launcher times a default against an alternative on its first call,
    with made-up timings (the default first: 2 against 1 where the alternative should win, a tie
    where not). Each right, in place too; both ways timed once. Returns each call's direct launches
    and conv launch count."""
    triton_conv, direct = interpreted_direct
    c, oc, k, s, p, n, h, w = shape
    timings = iter([2.0, 1.0] if won else [1.0, 1.0])
    monkeypatch.setattr(triton_conv, "_quick_bench", lambda fn, quantiles=None: (fn(), next(timings))[1])
    directs, counts = [], []
    for call in range(4):
        x, weight, bias, res, ref = _inputs(c, oc, k, s, p, n, h, w, True, seed=call)
        before, counted = direct.launch_count, triton_conv.launch_count
        y = triton_conv.conv2d_bias_act(x, weight, bias, res, [s, s], [p, p], [1, 1], 1, True,
                                        out=res if in_place else None)
        directs.append(direct.launch_count - before)
        counts.append(triton_conv.launch_count - counted)
        assert rel_err(y, ref) < 1e-5, call
        assert y.data_ptr() == res.data_ptr() if in_place else y.data_ptr() != res.data_ptr()
    assert next(timings, None) is None  # both ways timed once, on the first call only
    return directs, counts


@pytest.mark.interpreter
@pytest.mark.parametrize("in_place", [False, True], ids=["out", "in_place"])
@pytest.mark.parametrize("won", [True, False], ids=["two_launches", "one_launch"])
def test_wave_split_decided_by_timing_then_launched_directly(interpreted_direct, monkeypatch, won, in_place):
    """The default path where ``wave_split`` proposes two launches (made to here, on a small shape, with
    made-up timings for each outcome): the first call times one launch against two and keeps the
    winner; later calls take its plan, two direct launches where it won. Every call is right, in place
    too (the decision's repeated runs must not add the residual more than once)."""
    triton_conv, direct = interpreted_direct
    c, oc, k, s, p, n, h, w = 40, 24, 3, 1, 1, 3, 7, 5  # 40 channels: the per-tap walk (the flat one never splits)
    monkeypatch.setattr(triton_conv, "_split_auto", True)
    monkeypatch.setattr(triton_conv, "wave_split", lambda n, pixels, ocg, k, groups, sms: 2)
    directs, counts = _timed_then_planned(interpreted_direct, monkeypatch, (c, oc, k, s, p, n, h, w), won, in_place)
    (choice,) = triton_conv._split_choice.values()
    assert choice == (2 if won else 0)
    if won:
        # Call 2 takes each launch's plan (made while timing; in place, whose plans differ, it makes
        # them) and keeps the split's own.
        assert directs[1:] == ([0, 2, 2] if in_place else [2, 2, 2]) and counts[1:] == [2, 2, 2]
        assert [getattr(plan, "kind", None) for plan in triton_conv._plans.values()].count("split") == 1
    else:
        assert directs[1:] == [0, 1, 1] and counts[1:] == [1, 1, 1]
    chosen, _ = triton_conv.tuning_state()
    (report,) = [v for key, v in chosen.items() if key.startswith("wave split")]
    assert report.startswith("two launches" if won else "one launch") and "[0, 2) + [2, N)" in report


@pytest.mark.interpreter
def test_a_wave_split_that_fails_falls_back_to_one_launch(interpreted_direct, monkeypatch):
    """Two launches are an optimisation: if they raise while being decided, the call still returns
    one launch's (right) result, in place too, with one warning, and no conv splits again."""
    triton_conv, direct = interpreted_direct
    c, oc, k, s, p, n, h, w = 40, 24, 3, 1, 1, 3, 7, 5
    monkeypatch.setattr(triton_conv, "_split_auto", True)
    monkeypatch.setattr(triton_conv, "wave_split", lambda n, pixels, ocg, k, groups, sms: 2)
    launch = triton_conv._split_launch

    def broken(n1, x, weight, bias, residual, y, conv):
        launch(n1, x, weight, bias, residual, y, conv)
        y.fill_(float("nan"))  # as if a launch had written garbage before failing
        raise RuntimeError("made-up failure")

    monkeypatch.setattr(triton_conv, "_split_launch", broken)
    x, weight, bias, res, ref = _inputs(c, oc, k, s, p, n, h, w, True, seed=3)
    with pytest.warns(UserWarning, match="wave split's two launches failed"):
        y = triton_conv.conv2d_bias_act(x, weight, bias, res, [s, s], [p, p], [1, 1], 1, True, out=res)
    assert y.data_ptr() == res.data_ptr() and rel_err(y, ref) < 1e-5
    assert list(triton_conv._split_choice.values()) == [0] and not triton_conv._split_auto
    x, weight, bias, res, ref = _inputs(c, oc, k, s, p, n, h, w, True, seed=4)
    assert rel_err(triton_conv.conv2d_bias_act(x, weight, bias, res, [s, s], [p, p], [1, 1], 1, True), ref) < 1e-5


def _new_process(triton_conv, folder, monkeypatch):
    """What a new process starts with: no decisions, plans or reports in memory; a fresh store on the
    same folder. Returns the store."""
    from resnet_fast.kernels import decisions

    for name in ("_plans", "_split_choice", "_split_report", "_s2d_choice", "_s2d_report", "_small_plans"):
        monkeypatch.setattr(triton_conv, name, {})
    monkeypatch.setattr(triton_conv, "_from_disk", set())
    store = decisions.DecisionStore(directory=str(folder), enabled=True)
    monkeypatch.setattr(decisions, "store", store)
    monkeypatch.setattr(triton_conv, "_quick_bench", lambda fn, quantiles=None: pytest.fail("timed again"))
    return store


def _decision_case(triton_conv, monkeypatch, kind):
    """A conv made to take the wave split's or the stem's first-call decision in the interpreter:
    (shape, the choices dict's name)."""
    if kind == "split":
        monkeypatch.setattr(triton_conv, "_split_auto", True)
        monkeypatch.setattr(triton_conv, "wave_split", lambda n, pixels, ocg, k, groups, sms: 2)
        return (40, 24, 3, 1, 1, 3, 7, 5), "_split_choice"
    monkeypatch.setattr(triton_conv, "_s2d_auto", True)
    monkeypatch.setattr(triton_conv, "S2D_MIN_M", 0)
    return (3, 64, 7, 2, 3, 2, 11, 9), "_s2d_choice"


@pytest.mark.interpreter
@pytest.mark.parametrize("kind", ["split", "s2d"])
@pytest.mark.parametrize("won", [True, False], ids=["alternative", "default"])
def test_a_first_call_decision_is_read_by_the_next_process(interpreted_direct, monkeypatch, tmp_path, kind, won):
    """A wave split's or a stem's decision, timed once (made-up timings), is saved
    (kernels/decisions.py); a new process reads it instead of timing, runs the same path, right,
    and says where the decision came from."""
    from resnet_fast.kernels import decisions

    triton_conv, direct = interpreted_direct
    monkeypatch.setattr(decisions, "store", decisions.DecisionStore(directory=str(tmp_path), enabled=True))
    shape, choices = _decision_case(triton_conv, monkeypatch, kind)
    expected, counted = ((2 if won else 0), (2 if won else 1)) if kind == "split" else (won, 1)
    _timed_then_planned(interpreted_direct, monkeypatch, shape, won, False)
    (key,) = getattr(triton_conv, choices)
    assert [p.name.startswith("decisions-") and p.suffix for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [".json"]

    _new_process(triton_conv, tmp_path, monkeypatch)
    c, oc, k, s, p, n, h, w = shape
    for seed in range(2):
        x, weight, bias, res, ref = _inputs(c, oc, k, s, p, n, h, w, True, seed=seed)  # as _timed_then_planned
        counted_before = triton_conv.launch_count
        y = triton_conv.conv2d_bias_act(x, weight, bias, res, [s, s], [p, p], [1, 1], 1, True)
        assert rel_err(y, ref) < 1e-5 and triton_conv.launch_count - counted_before == counted
    choice = getattr(triton_conv, choices)[key]
    assert choice == expected and type(choice) is type(expected)
    chosen, _ = triton_conv.tuning_state()
    (report,) = [v for name, v in chosen.items() if name.startswith("wave split" if kind == "split" else "stem")]
    assert report.endswith("(decided by an earlier process: kernels/decisions.py)")


@pytest.mark.interpreter
def test_a_stored_decision_this_process_would_not_make_is_timed_again(interpreted_direct, monkeypatch, tmp_path):
    # A split of 2 images on file, where this process proposes 1: not taken on trust, timed anew.
    from resnet_fast.kernels import decisions

    triton_conv, direct = interpreted_direct
    monkeypatch.setattr(decisions, "store", decisions.DecisionStore(directory=str(tmp_path), enabled=True))
    shape, _ = _decision_case(triton_conv, monkeypatch, "split")
    _timed_then_planned(interpreted_direct, monkeypatch, shape, True, False)
    _new_process(triton_conv, tmp_path, monkeypatch)
    monkeypatch.setattr(triton_conv, "wave_split", lambda n, pixels, ocg, k, groups, sms: 1)
    timings = iter([1.0, 1.0])  # a tie: one launch
    monkeypatch.setattr(triton_conv, "_quick_bench", lambda fn, quantiles=None: (fn(), next(timings))[1])
    x, weight, bias, res, ref = _inputs(*shape, True, seed=5)
    assert rel_err(triton_conv.conv2d_bias_act(x, weight, bias, res, [1, 1], [1, 1], [1, 1], 1, True), ref) < 1e-5
    assert next(timings, None) is None and list(triton_conv._split_choice.values()) == [0]
    fresh = decisions.DecisionStore(directory=str(tmp_path), enabled=True)
    assert list(fresh._table(torch.device("cpu")).values()) == [0]  # the new decision replaced the old


@pytest.mark.interpreter
@pytest.mark.parametrize("in_place", [False, True], ids=["out", "in_place"])
@pytest.mark.parametrize("kind", ["split", "s2d"])
def test_a_stored_decision_that_fails_here_falls_back(interpreted_direct, monkeypatch, tmp_path, kind, in_place):
    """An earlier process's decision for the alternative (two launches, space-to-depth) whose first run
    here raises (as a compile error would): the call still returns the default path's right result
    (in place too: the failed run wrote half of y first), with one warning; the alternative is off for
    the process, and the process saves no more decisions (they would be made without it)."""
    from resnet_fast.kernels import decisions

    triton_conv, direct = interpreted_direct
    monkeypatch.setattr(decisions, "store", decisions.DecisionStore(directory=str(tmp_path), enabled=True))
    shape, choices = _decision_case(triton_conv, monkeypatch, kind)
    _timed_then_planned(interpreted_direct, monkeypatch, shape, True, False)
    store = _new_process(triton_conv, tmp_path, monkeypatch)
    name = "_split_launch" if kind == "split" else "_s2d_conv"
    original = getattr(triton_conv, name)

    def broken(*args):
        original(*args)  # y written (half of it for a split), then:
        args[-2 if kind == "split" else -1].fill_(float("nan"))
        raise RuntimeError("made-up compile error")

    monkeypatch.setattr(triton_conv, name, broken)
    c, oc, k, s, p, n, h, w = shape
    x, weight, bias, res, ref = _inputs(c, oc, k, s, p, n, h, w, True, seed=8)
    what = "wave split's two launches failed" if kind == "split" else "space-to-depth stem failed"
    with pytest.warns(UserWarning, match=what):
        y = triton_conv.conv2d_bias_act(x, weight, bias, res, [s, s], [p, p], [1, 1], 1, True,
                                        out=res if in_place else None)
    assert rel_err(y, ref) < 1e-5 and (y.data_ptr() == res.data_ptr()) == in_place
    assert list(getattr(triton_conv, choices).values()) == [0 if kind == "split" else False]
    assert not (triton_conv._split_auto if kind == "split" else triton_conv._s2d_auto)
    store.put("split", ("another",), torch.device("cpu"), 0)  # frozen: not written
    fresh = decisions.DecisionStore(directory=str(tmp_path), enabled=True)
    assert fresh.get("split", ("another",), torch.device("cpu")) is decisions.MISSING
    x, weight, bias, res, ref = _inputs(c, oc, k, s, p, n, h, w, True, seed=9)
    assert rel_err(triton_conv.conv2d_bias_act(x, weight, bias, res, [s, s], [p, p], [1, 1], 1, True), ref) < 1e-5


@pytest.mark.interpreter
@pytest.mark.parametrize("fails", [False, True], ids=["launched", "fails_here"])
def test_a_stored_tma_choice_is_launched_or_falls_back(interpreted_direct, monkeypatch, tmp_path, fails):
    """The TMA kernel's win (made-up timings, fp16: the interpreter's TMA path is right in fp16) saved;
    a new process launches it from the file, without tuning the general kernel, and says so in its
    report. If that first launch raises, the general kernel's right result comes back, with one
    warning, the TMA kernel off for the process and no more decisions saved."""
    from resnet_fast.kernels import conv1x1_tma
    from resnet_fast.kernels import decisions

    triton_conv, direct = interpreted_direct
    monkeypatch.setattr(decisions, "store", decisions.DecisionStore(directory=str(tmp_path), enabled=True))
    monkeypatch.setattr(triton_conv, "_tma_by_default", lambda m: True)
    monkeypatch.setattr(triton_conv, "_tma_auto", True)
    monkeypatch.setattr(triton_conv, "_tma_failure", None)
    monkeypatch.setattr(triton_conv, "_tma_report", {})
    timings = iter([1.0, 2.0])  # the TMA kernel first: it wins
    monkeypatch.setattr(triton_conv, "_quick_bench", lambda fn, quantiles=None: (fn(), next(timings))[1])
    c, oc, n, h, w = 32, 48, 2, 9, 7

    def call(seed, in_place):
        x, weight, bias, res, ref = _inputs(c, oc, 1, 1, 0, n, h, w, True, seed=seed)
        x, weight, res = x.half(), weight.half(), res.half()
        y = triton_conv.conv2d_bias_act(x, weight, bias, res, [1, 1], [0, 0], [1, 1], 1, True,
                                        out=res if in_place else None)
        assert rel_err(y.double(), ref) < 3e-3, seed
        return y

    call(0, False)
    (key, decided), = triton_conv._tma_choice.items()
    assert decided and next(timings, None) is None

    store = _new_process(triton_conv, tmp_path, monkeypatch)
    for name in ("_tma_choice", "_chosen_configs", "_tma_report"):
        monkeypatch.setattr(triton_conv, name, {})
    if fails:
        monkeypatch.setattr(conv1x1_tma, "launch", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("made-up")))
        with pytest.warns(UserWarning, match="the TMA 1x1 conv kernel failed"):
            call(1, True)
        assert triton_conv._tma_choice == {key: False} and not triton_conv._tma_auto and triton_conv._tma_failure
        store.put("split", ("another",), torch.device("cpu"), 0)  # frozen
        assert decisions.DecisionStore(directory=str(tmp_path), enabled=True).get(
            "split", ("another",), torch.device("cpu")) is decisions.MISSING
        call(2, False)
    else:
        for seed in (1, 2, 3):
            call(seed, seed == 2)
        assert triton_conv._tma_choice == {key: decided} and not triton_conv._chosen_configs
        chosen, _ = triton_conv.tuning_state()
        (report,) = [v for name, v in chosen.items() if name.startswith("tma ")]
        assert report.startswith("TMA kernel ") and report.endswith("(decided by an earlier process: kernels/decisions.py)")

@pytest.mark.interpreter
def test_a_failed_timing_saves_nothing(interpreted_direct, monkeypatch, tmp_path):
    # The alternative raised while being timed: off for the process, and its "one launch" is not a
    # decision for any other process.
    from resnet_fast.kernels import decisions

    triton_conv, direct = interpreted_direct
    monkeypatch.setattr(decisions, "store", decisions.DecisionStore(directory=str(tmp_path), enabled=True))
    shape, _ = _decision_case(triton_conv, monkeypatch, "split")
    monkeypatch.setattr(triton_conv, "_split_launch", lambda *args: (_ for _ in ()).throw(RuntimeError("made-up")))
    c, oc, k, s, p, n, h, w = shape
    x, weight, bias, res, ref = _inputs(c, oc, k, s, p, n, h, w, True, seed=3)
    with pytest.warns(UserWarning, match="wave split's two launches failed"):
        assert rel_err(triton_conv.conv2d_bias_act(x, weight, bias, res, [s, s], [p, p], [1, 1], 1, True), ref) < 1e-5
    assert list(triton_conv._split_choice.values()) == [0]
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".json"]

@pytest.mark.interpreter
@pytest.mark.parametrize("in_place", [False, True], ids=["out", "in_place"])
@pytest.mark.parametrize("won", [True, False], ids=["space_to_depth", "four_channels"])
def test_stem_path_decided_by_timing_then_launched_directly(interpreted_direct, monkeypatch, won, in_place):
    """The stem's default path (made to apply here: the interpreter never times): the first call times
    the 4-channel path against space-to-depth (made-up timings for each outcome) and keeps the winner;
    later calls run it through a plan: space-to-depth as its two rearranging kernels and the stride-1
    conv, all launched directly; the 4-channel path as the pad kernel and the conv. Right every time,
    in place too."""
    triton_conv, direct = interpreted_direct
    c, oc, k, s, p, n, h, w = 3, 64, 7, 2, 3, 2, 11, 9
    monkeypatch.setattr(triton_conv, "_s2d_auto", True)
    monkeypatch.setattr(triton_conv, "S2D_MIN_M", 0)
    directs, counts = _timed_then_planned(interpreted_direct, monkeypatch, (c, oc, k, s, p, n, h, w), won, in_place)
    assert list(triton_conv._s2d_choice.values()) == [won]
    assert counts == [1, 1, 1, 1]
    if won:
        assert directs[2:] == [3, 3] and [getattr(pl, "kind", None) for pl in triton_conv._plans.values()].count("s2d") == 1
    else:
        assert directs[2:] == [2, 2] and "s2d" not in [getattr(pl, "kind", None) for pl in triton_conv._plans.values()]
    chosen, _ = triton_conv.tuning_state()
    (report,) = [v for key, v in chosen.items() if key.startswith("stem")]
    assert report.startswith("space-to-depth:" if won else "4-channel path:")


@pytest.mark.interpreter
@pytest.mark.parametrize("relu", [True, False])
def test_each_stem_path_keeps_its_own_plan(interpreted_direct, monkeypatch, relu):
    """Once the timing kept space-to-depth, the automatic calls run it (through its plan), and calls
    that force either path run that path, each through its own plan; with and without the ReLU."""
    triton_conv, direct = interpreted_direct
    monkeypatch.setattr(triton_conv, "_s2d_auto", True)
    monkeypatch.setattr(triton_conv, "S2D_MIN_M", 0)
    timings = iter([2.0, 1.0])  # space-to-depth wins
    monkeypatch.setattr(triton_conv, "_quick_bench", lambda fn, quantiles=None: (fn(), next(timings))[1])
    runs = []
    s2d_conv = triton_conv._s2d_conv
    monkeypatch.setattr(triton_conv, "_s2d_conv", lambda *args: (runs.append(1), s2d_conv(*args))[1])
    x, weight, bias, _, _ = _inputs(3, 64, 7, 2, 3, 2, 11, 9, False, seed=6)
    ref = F.conv2d(x.double(), weight.double(), bias.double(), 2, 3)
    ref = ref.relu() if relu else ref
    for way, uses_s2d in [(None, True)] * 3 + [(False, False)] * 3 + [(True, True)] * 3 + [(None, True)]:
        before = len(runs)
        y = triton_conv.conv2d_bias_act(x, weight, bias, None, [2, 2], [3, 3], [1, 1], 1, relu, s2d=way)
        assert rel_err(y, ref) < 1e-5, way
        assert (len(runs) > before) == uses_s2d, way
    kinds = [getattr(plan, "kind", None) for plan in triton_conv._plans.values()]
    assert kinds.count("s2d") == 2  # the automatic calls' plan and the forced ones'


@pytest.mark.interpreter
def test_a_small_kernels_plan_is_kept_per_pointer_alignment(interpreted_direct):
    # Triton compiles a kernel per 16-byte alignment of its pointers: an x one element off a 16-byte
    # boundary must not take the aligned call's direct launch.
    triton_conv, direct = interpreted_direct
    base = torch.randn(2 * 3 * 9 * 11 + 1)
    for offset in (0, 1, 0, 1):
        x = base[offset:offset + 2 * 3 * 9 * 11].view(2, 9, 11, 3).permute(0, 3, 1, 2)
        y = triton_conv._pad_channels(x)
        assert torch.equal(y[:, :3], x) and not y[:, 3].any()
    assert len(triton_conv._small_plans) == 2


@pytest.mark.interpreter
def test_a_space_to_depth_stem_that_fails_falls_back_to_four_channels(interpreted_direct, monkeypatch):
    triton_conv, direct = interpreted_direct
    monkeypatch.setattr(triton_conv, "_s2d_auto", True)
    monkeypatch.setattr(triton_conv, "S2D_MIN_M", 0)

    def broken(x, weight, bias, residual, padding, relu, y):
        y.fill_(float("nan"))
        raise RuntimeError("made-up failure")

    monkeypatch.setattr(triton_conv, "_s2d_conv", broken)
    x, weight, bias, res, ref = _inputs(3, 64, 7, 2, 3, 2, 11, 9, True, seed=5)
    with pytest.warns(UserWarning, match="space-to-depth stem failed"):
        y = triton_conv.conv2d_bias_act(x, weight, bias, res, [2, 2], [3, 3], [1, 1], 1, True, out=res)
    assert y.data_ptr() == res.data_ptr() and rel_err(y, ref) < 1e-5
    assert list(triton_conv._s2d_choice.values()) == [False] and not triton_conv._s2d_auto


@pytest.mark.interpreter
def test_a_wave_split_stays_where_it_was_decided(interpreted_direct, monkeypatch):
    """Two launches only for the calls they were decided for: one launch forced, other options forced,
    the split switched off, a fresh decision table; each launch tuned for its exact M; and during CUDA
    graph capture an undecided shape is a clear error (timing would break the capture)."""
    triton_conv, direct = interpreted_direct
    c, oc, k, s, p, n, h, w = 40, 24, 3, 1, 1, 3, 7, 5
    monkeypatch.setattr(triton_conv, "_split_auto", True)
    monkeypatch.setattr(triton_conv, "wave_split", lambda n, pixels, ocg, k, groups, sms: 2)
    timings = []
    monkeypatch.setattr(triton_conv, "_quick_bench", lambda fn, quantiles=None: (fn(), timings.pop(0))[1])
    x, weight, bias, _, ref = _inputs(c, oc, k, s, p, n, h, w, False, seed=5)

    def launches(**kwargs):
        before = triton_conv.launch_count
        y = triton_conv.conv2d_bias_act(x, weight, bias, None, [s, s], [p, p], [1, 1], 1, True, **kwargs)
        assert rel_err(y, ref) < 1e-5, kwargs
        return triton_conv.launch_count - before

    timings[:] = [2.0, 1.0]  # two launches win
    assert [launches() for _ in range(3)] == [2, 2, 2] and not timings
    # Capturing with every launch tuned, but the choice not made (a fresh table): refused, untimed.
    choices, capturing = triton_conv._split_choice, triton_conv._capturing
    monkeypatch.setattr(triton_conv, "_split_choice", {})
    monkeypatch.setattr(triton_conv, "_capturing", lambda x: True)
    with pytest.raises(RuntimeError, match="not tuned yet"):
        launches()
    monkeypatch.setattr(triton_conv, "_capturing", capturing)
    monkeypatch.setattr(triton_conv, "_split_choice", choices)
    # Each launch tuned for its exact M (2 and 1 images of 7x5 pixels: 70, 35), one launch for 105's bucket.
    assert {key[0] for key in triton_conv._chosen_configs} == {128, 70, 35}
    # One launch forced (with out=None, as the auto calls): its own plan, one launch, every time.
    assert [launches(batch_split=0) for _ in range(3)] == [1, 1, 1]
    assert launches() == 2
    # Another option forced: not split, and split_k is honoured (the reduce kernel runs).
    reduced, reduce = [], triton_conv._splitk_reduce
    monkeypatch.setattr(triton_conv, "_splitk_reduce", lambda *a: (reduced.append(1), reduce(*a))[1])
    assert launches(split_k=2, serial_split=False) == 1 and reduced == [1]
    with pytest.raises(ValueError, match="two launches cannot also force"):
        launches(batch_split=2, split_k=2)
    # The split switched off, then a fresh decision table: no plan of the split is reused.
    monkeypatch.setattr(triton_conv, "_split_auto", False)
    assert [launches() for _ in range(2)] == [1, 1]
    monkeypatch.setattr(triton_conv, "_split_auto", True)
    assert launches() == 2
    monkeypatch.setattr(triton_conv, "_split_choice", {})
    timings[:] = [1.0, 1.0]  # this time one launch is kept
    assert [launches() for _ in range(3)] == [1, 1, 1] and not timings


@pytest.fixture
def planned_op(interpreted_direct, monkeypatch):
    """The op's body with the Triton backend and direct launches: ``(impl, inplace_impl, direct)``.
    From a conv's third call on, the body takes the plan before its own checks (run_planned)."""
    import resnet_fast
    from resnet_fast import ops

    triton_conv, direct = interpreted_direct
    monkeypatch.setattr(ops, "_run_planned", None)  # set again by the first Triton call below
    resnet_fast.set_backend("triton")
    return ops._conv2d_bias_act_impl, ops._conv2d_bias_act_add_impl, direct


@pytest.mark.interpreter
def test_the_op_body_takes_a_plan_before_its_checks_and_stays_right(planned_op):
    from resnet_fast import ops

    impl, inplace_impl, direct = planned_op
    directs, hits = [], []
    for seed in range(4):
        x, weight, bias, res, ref = _inputs(40, 48, 1, 1, 0, 2, 9, 7, True, seed=seed)
        before = direct.launch_count
        if ops._run_planned is not None and not hasattr(ops._run_planned, "hits"):
            planned = ops._run_planned

            def counting(*args, **kwargs):
                y = planned(*args, **kwargs)
                hits.append(y is not None)
                return y

            counting.hits = True
            ops._run_planned = counting
        assert rel_err(impl(x, weight, bias, res, [1, 1], [0, 0], [1, 1], 1, True), ref) < 1e-5
        inplace_impl(res, x, weight, bias, [1, 1], [0, 0], [1, 1], 1, True)
        assert rel_err(res, ref) < 1e-5
        directs.append(direct.launch_count - before)
    assert directs == [0, 1, 2, 2]  # (the in-place call's first is the functional call's second shape)
    # The functional op's calls 3 and 4 took their plan in the op body itself (run_planned), before
    # its checks: its key must be the one the launcher stored the plan under.
    assert hits == [False, True, True, True, True], hits


@pytest.mark.interpreter
def test_a_planned_call_still_refuses_what_the_checks_refuse(planned_op):
    """What a plan's key does not hold: the backend (forced to torch afterwards), the in-place op's
    overlap of x and residual; and bad arguments never match a plan."""
    import resnet_fast

    impl, inplace_impl, direct = planned_op
    x, weight, bias, res, ref = _inputs(40, 48, 1, 1, 0, 2, 9, 7, True, seed=0)
    for _ in range(3):
        inplace_impl(res.clone(), x, weight, bias, [1, 1], [0, 0], [1, 1], 1, True)
        impl(x, weight, bias, res, [1, 1], [0, 0], [1, 1], 1, True)
    with pytest.raises(RuntimeError, match=r"expected bias of shape \[48\]"):
        impl(x, weight, bias[:40], res, [1, 1], [0, 0], [1, 1], 1, True)
    # another device type with the same index (-1: the CPU and meta alike) is another plan
    with pytest.raises(RuntimeError, match="must be on one device"):
        impl(x, weight, bias.to("meta"), res, [1, 1], [0, 0], [1, 1], 1, True)
    # x and residual sharing memory, with the shapes, strides and dtypes of the planned calls
    storage = torch.empty(max(x.numel(), res.numel()) + 64)
    x_alias = storage[:x.numel()].view(2, 9, 7, 40).permute(0, 3, 1, 2)
    r_alias = storage[:res.numel()].view(2, 9, 7, 48).permute(0, 3, 1, 2)
    assert x_alias.stride() == x.stride() and r_alias.stride() == res.stride()
    with pytest.raises(RuntimeError, match="residual overlaps x in memory"):
        inplace_impl(r_alias, x_alias, weight, bias, [1, 1], [0, 0], [1, 1], 1, True)
    resnet_fast.set_backend("torch")
    before = direct.launch_count
    assert rel_err(impl(x, weight, bias, res, [1, 1], [0, 0], [1, 1], 1, True), ref) < 1e-5
    assert direct.launch_count == before  # PyTorch's conv ran, not the plan
