"""The fused Triton convolution against float64 references: every ResNet conv class, every epilogue.

Marker ``interpreter``: CPU tensors under TRITON_INTERPRET=1, small shapes (CI).
Marker ``gpu``: real shapes on CUDA (benchmarks/gpu_suite.sh).
"""
import functools
import itertools
import os

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import torchvision

import resnet_fast
from helpers import float64_reference, randomize_bn, rel_err, tf32_round
from resnet_fast.fused import to_oc_last

# (name, C, OC, kernel, stride, padding, dilation, groups)
SHAPE_CLASSES = [
    ("1x1_s1", 40, 48, 1, 1, 0, 1, 1),
    ("1x1_s2", 40, 36, 1, 2, 0, 1, 1),
    ("3x3_s1", 24, 40, 3, 1, 1, 1, 1),
    ("3x3_s2", 24, 40, 3, 2, 1, 1, 1),
    ("3x3_dilated", 24, 32, 3, 1, 2, 2, 1),
    ("3x3_grouped_g8", 64, 64, 3, 1, 1, 1, 8),  # 8 channels per group: the row walk (3 taps x 8 = 24 of 32)
    ("3x3_grouped_g16_dilated", 64, 48, 3, 1, 2, 2, 16),  # 4 per group: the (kh, kw, c) flat walk
    ("3x3_grouped_s2_g4", 128, 128, 3, 2, 1, 1, 4),  # 32 per group: the per-tap walk
    ("7x7_s2_stem", 3, 64, 7, 2, 3, 1, 1),  # the row walk: 7 taps x 3 channels = 21 of 32
    ("7x7_s2_stem_dilated", 3, 16, 7, 2, 6, 2, 1),
    # Channels a multiple of 64: whole channel blocks, the walks without a channel mask (EVEN_C)
    ("1x1_s1_c64", 64, 40, 1, 1, 0, 1, 1),
    ("3x3_s2_c128", 128, 24, 3, 2, 1, 1, 1),
]


def _case(shape, dtype, residual, relu, device="cpu", n=2, h=13, w=11, seed=0):
    name, c, oc, k, s, p, d, g = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen).to(dtype)
    weight = (torch.randn(oc, c // g, k, k, generator=gen) / (c // g * k * k) ** 0.5).to(dtype)
    bias = torch.randn(oc, generator=gen)
    oh = (h + 2 * p - d * (k - 1) - 1) // s + 1
    ow = (w + 2 * p - d * (k - 1) - 1) // s + 1
    res = torch.randn(n, oc, oh, ow, generator=gen).to(dtype) if residual else None
    # float64 reference on the CPU; for the big GPU shapes on the GPU (cuDNN's float64 path, no TF32).
    dev = lambda t: t.to(device).double()  # noqa: E731
    ref = F.conv2d(dev(x), dev(weight), dev(bias), s, p, d, g)
    if residual:
        ref = ref + dev(res)
    if relu:
        ref = ref.relu()
    to = lambda t: None if t is None else t.to(device).contiguous(memory_format=torch.channels_last)  # noqa: E731
    return to(x), weight.to(device), bias.to(device), to(res), (s, p, d, g), ref


def _torch_same_dtype(x, weight, bias, res, conv_args, relu):
    s, p, d, g = conv_args
    y = F.conv2d(x, weight, bias.to(x.dtype), s, p, d, g)
    if res is not None:
        y = y + res
    return y.relu() if relu else y


def _run_kernel(x, weight, bias, res, conv_args, relu, index_64=None, split_k=None, serial_split=None, tma=None,
                batch_split=None):
    from resnet_fast.kernels import conv as triton_conv

    s, p, d, g = conv_args
    n, _, h, w = x.shape
    oc, _, kh, kw = weight.shape
    oh = (h + 2 * p - d * (kh - 1) - 1) // s + 1
    ow = (w + 2 * p - d * (kw - 1) - 1) // s + 1
    out = torch.full((n, oh, ow, oc), float("nan"), dtype=x.dtype, device=x.device).permute(0, 3, 1, 2)  # poisoned
    y = triton_conv.conv2d_bias_act(x, to_oc_last(weight), bias, res, [s, s], [p, p], [d, d], g, relu, out=out,
                                    index_64=index_64, split_k=split_k, serial_split=serial_split, tma=tma,
                                    batch_split=batch_split)
    assert y.data_ptr() == out.data_ptr()
    return y


@pytest.mark.interpreter
@pytest.mark.parametrize("shape", SHAPE_CLASSES, ids=[s[0] for s in SHAPE_CLASSES])
@pytest.mark.parametrize("residual,relu", list(itertools.product([False, True], [False, True])))
def test_kernel_fp32_every_shape_and_epilogue(shape, residual, relu):
    x, weight, bias, res, conv_args, ref = _case(shape, torch.float32, residual, relu)
    y = _run_kernel(x, weight, bias, res, conv_args, relu)
    assert not torch.isnan(y).any()
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(y, ref) < 1e-5


@pytest.mark.interpreter
@pytest.mark.parametrize("shape", SHAPE_CLASSES, ids=[s[0] for s in SHAPE_CLASSES])
def test_kernel_64bit_offsets_path(shape):
    # The 64-bit offset variant (chosen for activations of 2^31 elements or more) forced on small shapes.
    x, weight, bias, res, conv_args, ref = _case(shape, torch.float32, True, True, seed=11)
    y = _run_kernel(x, weight, bias, res, conv_args, True, index_64=True)
    assert not torch.isnan(y).any()
    assert rel_err(y, ref) < 1e-5


@pytest.mark.interpreter
@pytest.mark.parametrize("serial", [True, False], ids=["serial", "reduce_kernel"])
@pytest.mark.parametrize("shape", SHAPE_CLASSES, ids=[s[0] for s in SHAPE_CLASSES])
def test_kernel_split_k(shape, serial):
    # K split in 3 shares (uneven: the last may be short or empty), partials added with bias,
    # residual and ReLU by the tile's last program or by the second kernel; the single pass's numbers.
    x, weight, bias, res, conv_args, ref = _case(shape, torch.float32, True, True, seed=17, n=1)
    y = _run_kernel(x, weight, bias, res, conv_args, True, split_k=3, serial_split=serial)
    assert not torch.isnan(y).any()
    assert rel_err(y, ref) < 1e-5


@pytest.mark.interpreter
@pytest.mark.parametrize("in_place", [False, True], ids=["out", "in_place"])
@pytest.mark.parametrize("shape", [SHAPE_CLASSES[i] for i in (0, 3, 7, 8)], ids=lambda s: s[0])
def test_batch_split_is_the_one_launch_result(shape, in_place):
    # Two launches on images [0, 2) and [2, 3): one launch's numbers (up to summation order: each
    # launch picks its own K split), written into the caller's buffer (or in place into the
    # residual), stem (its padded copy of x made per launch) and groups included.
    from resnet_fast.kernels import conv as triton_conv

    x, weight, bias, res, conv_args, ref = _case(shape, torch.float32, True, True, seed=43, n=3)
    expected = _run_kernel(x, weight, bias, res, conv_args, True, batch_split=0)
    before = triton_conv.launch_count
    if in_place:
        s, p, d, g = conv_args
        into = res.clone()
        y = triton_conv.conv2d_bias_act(x, to_oc_last(weight), bias, into, [s, s], [p, p], [d, d], g, True, out=into,
                                        batch_split=2)
        assert y.data_ptr() == into.data_ptr()
    else:
        y = _run_kernel(x, weight, bias, res, conv_args, True, batch_split=2)
    assert triton_conv.launch_count - before == 2
    assert rel_err(y, expected) < 1e-6 and rel_err(y, ref) < 1e-5


@pytest.mark.interpreter
@pytest.mark.parametrize("bad", [3, -1, 1.5, True, "2"])
def test_batch_split_out_of_range_is_a_clear_error(bad):
    x, weight, bias, res, conv_args, _ = _case(SHAPE_CLASSES[0], torch.float32, False, True, n=3)
    with pytest.raises(ValueError, match=r"batch_split: expected 0 \(one launch\) or a count of images in \[1, 3\)"):
        _run_kernel(x, weight, bias, res, conv_args, True, batch_split=bad)


def test_wave_split_only_where_the_last_wave_is_at_most_half_full():
    # ResNet-50 on 132 SMs: at batch 256 only layer4's 512-channel convs (7x7 outputs, 196 tiles of
    # 128x256: 1.48 waves) are proposed, as 172 + 84 images; nothing at batch 1 or 16.
    from resnet_fast.kernels import conv as triton_conv

    for batch in (1, 16, 256):
        for c, oc, k, s, p, hw in _resnet50_conv_shapes():
            out_hw = (hw + 2 * p - k) // s + 1
            n1 = triton_conv.wave_split(batch, out_hw * out_hw, oc, c * k * k, 1, 132)
            assert n1 == (172 if batch == 256 and oc == 512 and out_hw == 7 else 0), (batch, c, oc, k, s, hw, n1)
    # Where it proposes one, the first launch's big tiles fill whole waves, and one image more would not.
    cases = [(256, 49, 512, 132), (192, 49, 512, 132), (300, 49, 128, 132), (256, 49, 512, 78), (37, 17 * 13, 300, 20),
             (384, 49, 512, 132), (512, 49, 512, 132)]
    for n, pixels, ocg, sms in cases:
        n1 = triton_conv.wave_split(n, pixels, ocg, 4608, 1, sms)
        bm, bn = (128, 256) if ocg >= 256 else (256, 128)
        tiles = lambda images: -(-images * pixels // bm) * -(-ocg // bn)  # noqa: E731
        whole, rest = divmod(tiles(n), sms)
        assert (n1 > 0) == (0 < whole <= 2 and 0 < 2 * rest <= sms), (n, pixels, ocg, sms)
        if n1:
            assert 0 < n1 < n and tiles(n1) <= whole * sms < tiles(n1 + 1), (n, n1)
    assert triton_conv.wave_split(256, 49, 512, 4608, 2, 132) == 0  # grouped: never
    assert triton_conv.wave_split(256, 49, 64, 4608, 1, 132) == 0  # narrow: never
    assert triton_conv.wave_split(256, 49, 512, 512, 1, 132) == 0  # short K (memory-bound): never


@pytest.mark.interpreter
@pytest.mark.parametrize("shape", [SHAPE_CLASSES[i] for i in (2, 8)], ids=lambda s: s[0])
def test_serial_split_k_64bit_offsets(shape):
    x, weight, bias, res, conv_args, ref = _case(shape, torch.float32, True, True, seed=37, n=1)
    expected = _run_kernel(x, weight, bias, res, conv_args, True, split_k=3, serial_split=False)
    y = _run_kernel(x, weight, bias, res, conv_args, True, split_k=3, serial_split=True, index_64=True)
    assert torch.equal(y, expected) and rel_err(y, ref) < 1e-5


@pytest.fixture
def arrival_order(monkeypatch):
    """Set the order in which the interpreter runs a launch's K shares (program_id(2)): it runs them
    0, 1, ... for each tile, so the last to arrive would always be the last share. ``order(perm)``
    makes the i-th share to run the one numbered perm(i, shares)."""
    from triton.runtime import interpreter

    builder = interpreter.interpreter_builder
    real = type(builder).set_grid_idx

    def order(perm):
        def set_grid_idx(self, x, y, z):
            real(self, x, y, perm(z, self.grid_dim[2]))

        monkeypatch.setattr(type(builder), "set_grid_idx", set_grid_idx)

    return order


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("order", ["in_order", "reversed", "rotated"])
@pytest.mark.parametrize("shape", [SHAPE_CLASSES[i] for i in (0, 3, 5, 8, 10)], ids=lambda s: s[0])
def test_serial_split_k_is_bit_identical_to_the_reduce_kernel(shape, order, dtype, arrival_order):
    """Whichever share of a tile finishes last adds all of them in share order: the result is the
    second kernel's, bit for bit, and every arrival counter is back at zero for the next launch."""
    from resnet_fast.kernels import conv as triton_conv

    x, weight, bias, res, conv_args, ref = _case(shape, dtype, True, True, seed=29, n=1)
    expected = _run_kernel(x, weight, bias, res, conv_args, True, split_k=4, serial_split=False)
    perms = {"in_order": lambda z, n: z, "reversed": lambda z, n: n - 1 - z, "rotated": lambda z, n: (z + 2) % n}
    arrival_order(perms[order])
    launched = []
    real_reduce = triton_conv._splitk_reduce_kernel
    try:
        triton_conv._splitk_reduce_kernel = launched  # indexing a list with a grid fails: not launched
        y = _run_kernel(x, weight, bias, res, conv_args, True, split_k=4, serial_split=True)
    finally:
        triton_conv._splitk_reduce_kernel = real_reduce
    assert torch.equal(y, expected)
    assert rel_err(y.double(), ref) < (1e-5 if dtype == torch.float32 else 1e-2)
    counters = triton_conv._stream_counters[(x.device, 0)]
    assert counters.numel() >= 4096 and not counters.any()


@pytest.mark.interpreter
def test_split_k_in_place_epilogue():
    from resnet_fast.kernels import conv as triton_conv

    x, weight, bias, res, conv_args, ref = _case(SHAPE_CLASSES[2], torch.float32, True, True, seed=19, n=1)
    s, p, d, g = conv_args
    ptr = res.data_ptr()
    triton_conv.conv2d_bias_act(x, to_oc_last(weight), bias, res, [s, s], [p, p], [d, d], g, True, out=res, split_k=4)
    assert res.data_ptr() == ptr and rel_err(res, ref) < 1e-5


def test_capture_counters_hand_out_disjoint_slices():
    from resnet_fast.graphs import CaptureCounters

    arena = CaptureCounters(torch.device("cpu"), size=100)
    a, b = arena.take(57, torch.device("cpu")), arena.take(40, torch.device("cpu"))
    assert a.numel() == 57 and b.numel() == 40 and b.data_ptr() == a.data_ptr() + 60 * 4  # 16-byte aligned
    assert a.data_ptr() % 16 == 0 and b.data_ptr() % 16 == 0
    assert not a.any() and not b.any()
    assert arena.take(1, torch.device("cpu")) is None  # used up: the launcher falls back to torch.zeros
    assert CaptureCounters(torch.device("cpu"), size=8).take(1, torch.device("meta")) is None


def test_choose_split_k():
    from resnet_fast.kernels.conv import choose_split_k

    # (m, ocg, groups, cg, kh, kw, flat_k, gemm_1x1) of ResNet-50 convs on a 132-SM GPU
    assert choose_split_k(49, 512, 1, 512, 3, 3, False, False, 132) == 8      # layer4 3x3, batch 1
    assert choose_split_k(49, 512, 1, 2048, 1, 1, False, True, 132) == 8     # layer4 1x1 2048->512
    assert choose_split_k(49, 2048, 1, 512, 1, 1, False, True, 132) == 1     # 8 K steps: too short
    assert choose_split_k(196, 256, 1, 256, 3, 3, False, False, 132) == 8    # layer3 3x3, batch 1
    assert choose_split_k(3136, 64, 1, 64, 3, 3, False, False, 132) == 1     # layer1 3x3, batch 1: 9 steps
    assert choose_split_k(784, 128, 1, 128, 3, 3, False, False, 132) == 4    # layer2 3x3, batch 1: 26 tiles
    assert choose_split_k(16 * 49, 512, 1, 512, 3, 3, False, False, 132) == 1  # layer4 3x3, batch 16: 104 tiles
    assert choose_split_k(64 * 49, 512, 1, 512, 3, 3, False, False, 132) == 1
    assert choose_split_k(49, 512, 1, 512, 3, 3, False, False, 0) == 1        # CPU: never


@pytest.mark.interpreter
@pytest.mark.parametrize("shape", SHAPE_CLASSES, ids=[s[0] for s in SHAPE_CLASSES])
def test_kernel_fp16_within_twice_torch_error(shape):
    x, weight, bias, res, conv_args, ref = _case(shape, torch.float16, True, True, seed=3)
    y = _run_kernel(x, weight, bias, res, conv_args, True)
    assert y.dtype == torch.float16
    torch_err = rel_err(_torch_same_dtype(x, weight, bias, res, conv_args, True), ref)
    assert rel_err(y, ref) <= 2 * torch_err, (rel_err(y, ref), torch_err)


# 1x1 stride-1 shapes for the TMA kernel: tails in M, K (not a multiple of its 32-channel step, and
# a K shorter than one step) and N, 16-byte rows in fp16 (channel counts multiples of 8).
TMA_SHAPES = [("1x1_tails", 40, 48, 1, 1, 0, 1, 1), ("1x1_short_k", 24, 72, 1, 1, 0, 1, 1),
              ("1x1_c64", 64, 40, 1, 1, 0, 1, 1)]


@pytest.mark.interpreter
@pytest.mark.parametrize("shape", TMA_SHAPES, ids=lambda s: s[0])
@pytest.mark.parametrize("residual,relu", [(True, True), (False, True), (True, False), (False, False)])
def test_tma_kernel_within_twice_torch_error(shape, residual, relu):
    x, weight, bias, res, conv_args, ref = _case(shape, torch.float16, residual, relu, seed=47)
    from resnet_fast.kernels import conv as triton_conv

    before = triton_conv.launch_count
    y = _run_kernel(x, weight, bias, res, conv_args, relu, tma=True)
    assert triton_conv.launch_count == before + 1
    assert not torch.isnan(y).any() and y.is_contiguous(memory_format=torch.channels_last)
    torch_err = rel_err(_torch_same_dtype(x, weight, bias, res, conv_args, relu), ref)
    assert rel_err(y, ref) <= 2 * torch_err, (rel_err(y, ref), torch_err)


@pytest.mark.interpreter
def test_tma_kernel_in_place_epilogue():
    from resnet_fast.kernels import conv as triton_conv

    x, weight, bias, res, conv_args, ref = _case(TMA_SHAPES[0], torch.float16, True, True, seed=53)
    expected = _run_kernel(x, weight, bias, res, conv_args, True, tma=False)
    ptr = res.data_ptr()
    triton_conv.conv2d_bias_act(x, to_oc_last(weight), bias, res, [1, 1], [0, 0], [1, 1], 1, True, out=res, tma=True)
    assert res.data_ptr() == ptr and rel_err(res.double(), expected.double()) < 2e-3


# Stems for the space-to-depth path: (name, channels, out channels, kernel, padding, n, h, w). Odd and
# even sizes (the rearranged input's last row/column half outside x), 1-4 channels, the 8x8 kernel
# (no zero tap row), a padding other than 3.
S2D_STEMS = [("rgb_7x7_odd", 3, 64, 7, 3, 2, 13, 11), ("rgb_7x7_even", 3, 96, 7, 3, 1, 16, 18),
             ("gray_8x8", 1, 64, 8, 2, 2, 9, 10), ("rgba_7x7_pad1", 4, 72, 7, 1, 1, 15, 12)]


@pytest.mark.interpreter
@pytest.mark.parametrize("stem", S2D_STEMS, ids=lambda t: t[0])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("residual,in_place", [(False, False), (True, False), (True, True)])
def test_space_to_depth_stem_within_twice_torch_error(stem, dtype, residual, in_place):
    """The stem as a 4x4 stride-1 conv on its input rearranged to 16 channels (s2d forced): against
    the float64 reference, with the rearranged conv tuned to the 64-deep row walk (one kernel row of
    4 x 16 channels per K step), and one conv launch counted (the rearranging kernels are not convs)."""
    from resnet_fast.kernels import conv as triton_conv

    name, c, oc, k, p, n, h, w = stem
    x, weight, bias, res, conv_args, ref = _case((name, c, oc, k, 2, p, 1, 1), dtype, residual, True, n=n, h=h, w=w,
                                                 seed=67)
    torch_err = rel_err(_torch_same_dtype(x, weight, bias, res, conv_args, True), ref)
    out = res if in_place else None
    before = triton_conv.launch_count
    y = triton_conv.conv2d_bias_act(x, to_oc_last(weight), bias, res, [2, 2], [p, p], [1, 1], 1, True, out=out, s2d=True)
    assert triton_conv.launch_count == before + 1
    assert (y.data_ptr() == res.data_ptr()) if in_place else y.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(y, ref) <= 2 * torch_err + 1e-6, (rel_err(y, ref), torch_err)
    inner = [cfg for key, cfg in triton_conv._chosen_configs.items() if key[2:5] == (16, 4, 4)]
    assert inner and all(cfg["BLOCK_K"] == 64 for cfg in inner)


def _s2d_nonfinite_case(device, dtype, value, where, padding, h, w):
    """A stem case with one non-finite input pixel, through space-to-depth; returns (y, expected), the
    expected from a direct float64 conv on the CPU."""
    x, weight, bias, res, conv_args, _ = _case(("stem", 3, 64, 7, 2, padding, 1, 1), dtype, False, True, device=device,
                                               n=2, h=h, w=w, seed=79)
    x[0, :, where[0], where[1]] = value
    from resnet_fast.kernels import conv as triton_conv

    y = triton_conv.conv2d_bias_act(x, to_oc_last(weight), bias, None, [2, 2], [padding, padding], [1, 1], 1, True,
                                    s2d=True)
    expected = _torch_same_dtype(x.cpu().double(), weight.cpu().double(), bias.cpu().double(), None, conv_args, True)
    return y, expected.to(y.device)


# (value, pixel, padding, h, w): a NaN inside; an inf in a row and a column that only the 8x8 window
# past the 7x7 kernel reaches (padding 0, 16x16: outputs read rows 2 oh .. 2 oh + 6, never 15).
_S2D_NONFINITE = [(float("nan"), (3, 4), 3, 13, 11), (float("inf"), (15, 5), 0, 16, 16),
                  (float("-inf"), (6, 15), 0, 16, 16)]


@pytest.mark.interpreter
@pytest.mark.parametrize("value,where,padding,h,w", _S2D_NONFINITE)
def test_space_to_depth_stem_spreads_nan_and_inf_like_torch(value, where, padding, h, w):
    """The taps past the 7x7 kernel have zero weights, but 0 x NaN and 0 x inf are NaN: the kernel
    zeroes their input, so a non-finite pixel reaches exactly the outputs it reaches in torch."""
    y, expected = _s2d_nonfinite_case("cpu", torch.float32, value, where, padding, h, w)
    assert torch.isnan(expected).any() == (padding == 3)  # the infs lie outside every real window
    assert torch.equal(torch.isnan(y), torch.isnan(expected)) and torch.equal(torch.isinf(y), torch.isinf(expected))


def test_space_to_depth_only_for_stems():
    from resnet_fast.kernels import conv as triton_conv

    fits = triton_conv.s2d_fits
    assert fits(3, 64, 1, 7, 7, [2, 2], [1, 1]) and fits(1, 64, 1, 8, 8, (2, 2), (1, 1))
    assert fits(4, 96, 1, 7, 8, [2, 2], [1, 1])
    assert not fits(8, 64, 1, 7, 7, [2, 2], [1, 1])  # 8 channels: 32 after the rearrangement
    assert not fits(3, 32, 1, 7, 7, [2, 2], [1, 1])  # narrow outputs: the flat walk's narrow tiles
    assert not fits(3, 64, 3, 7, 7, [2, 2], [1, 1]) and not fits(3, 64, 1, 7, 7, [1, 1], [1, 1])
    assert not fits(3, 64, 1, 7, 7, [2, 2], [2, 2]) and not fits(3, 64, 1, 5, 5, [2, 2], [1, 1])
    assert not fits(3, 64, 1, 3, 3, [2, 2], [1, 1])


@pytest.mark.interpreter
def test_space_to_depth_forced_where_it_cannot_run_is_refused():
    from resnet_fast.kernels import conv as triton_conv

    x, weight, bias, res, conv_args, ref = _case(SHAPE_CLASSES[3], torch.float16, False, True)  # a 3x3 stride 2
    with pytest.raises(ValueError, match="only a stem conv runs space-to-depth"):
        triton_conv.conv2d_bias_act(x, to_oc_last(weight), bias, None, [2, 2], [1, 1], [1, 1], 1, True, s2d=True)
    x, weight, bias, res, conv_args, ref = _case(S2D_STEMS[0][:4] + (2, 3, 1, 1), torch.float16, False, True)
    with pytest.raises(ValueError, match="cannot also force"):
        triton_conv.conv2d_bias_act(x, to_oc_last(weight), bias, None, [2, 2], [3, 3], [1, 1], 1, True, s2d=True,
                                    split_k=2)


@pytest.mark.interpreter
@pytest.mark.parametrize("per_sm", [0, 1, 3])
@pytest.mark.parametrize("in_place", [False, True])
def test_tma_kernel_one_tile_per_program_and_persistent(per_sm, in_place):
    """Both forms of the TMA kernel with an explicit config: one program per tile (PER_SM 0), and
    persistent programs that each walk several tiles, the flattened loop's epilogue on its own tile
    counter (here INTERPRETER_SMS x PER_SM programs for 2 x 13 x 11 = 286 rows and 48 channels,
    i.e. 18 x 3 tiles of 16 x 16). Tails in M, K and N; in place too (y is the residual)."""
    from resnet_fast.kernels import conv1x1_tma as T

    x, weight, bias, res, conv_args, ref = _case(TMA_SHAPES[0], torch.float16, True, True, seed=61)
    config = T._config(16, 16, 16, 4, 1, per_sm).all_kwargs()
    tiles = 18 * 3
    programs = T.launch_grid(x, res, config)[0]
    assert programs == (tiles if per_sm == 0 else T.INTERPRETER_SMS * per_sm)
    y = res.clone() if in_place else torch.full_like(res, float("nan"))
    T.launch(x, to_oc_last(weight), bias, y if in_place else res, y, True, config)
    torch_err = rel_err(_torch_same_dtype(x, weight, bias, res, conv_args, True), ref)
    assert rel_err(y, ref) <= 2 * torch_err + 1e-6


def test_tma_persistent_configs_can_be_turned_off():
    # What gpu_suite's canary gate sets when a persistent config fails on the GPU (read at import;
    # outside the interpreter, whose one config is persistent on purpose).
    script = ("from resnet_fast.kernels import conv1x1_tma as T; c = T.tma_configs(); "
              "print(len(c), sum(1 for x in c if x.kwargs['PER_SM']))")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "RESNET_FAST_AUTOTUNE")}
    counts = {}
    for value in ("1", "0"):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                             env={**env, "RESNET_FAST_TMA_PERSISTENT": value}, check=True).stdout.split()
        counts[value] = tuple(map(int, out))
    assert counts["1"][1] == 2 and counts["0"] == (counts["1"][0] - 2, 0)


def test_space_to_depth_stem_is_opt_in():
    # It lost its first GPU timing (H100, session 12): the launcher times it only under RESNET_FAST_S2D=1
    # (read at import; outside the interpreter, where it is never timed).
    script = "from resnet_fast.kernels import conv as C; print(C._s2d_auto)"
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "RESNET_FAST_AUTOTUNE", "RESNET_FAST_S2D")}
    seen = {}
    for value in (None, "0", "1"):
        run_env = env if value is None else {**env, "RESNET_FAST_S2D": value}
        seen[value] = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                                     env=run_env, check=True).stdout.strip()
    assert seen == {None: "False", "0": "False", "1": "True"}


def test_tma_programs_per_launch():
    # One program per tile, or PER_SM per SM and never more than the tiles (CPU tensors count as
    # INTERPRETER_SMS SMs).
    from resnet_fast.kernels import conv1x1_tma as T

    x = torch.empty(1)
    assert T.programs(x, 500, 0) == 500
    assert T.programs(x, 500, 2) == 2 * T.INTERPRETER_SMS
    assert T.programs(x, 3, 2) == 3 and T.programs(x, 1, 3) == 1


@pytest.mark.interpreter
def test_wave_split_launches_tune_both_kernels_for_their_exact_m(monkeypatch):
    # A wave split's launch (part=True) tunes for its exact M, the TMA kernel too: with the bucket, the
    # first launch at layer4 (8428 rows) would take the whole batch's (12544) tuning, both in 16384.
    from resnet_fast.kernels import conv as triton_conv
    from resnet_fast.kernels import conv1x1_tma

    monkeypatch.setattr(triton_conv, "_chosen_configs", {})
    monkeypatch.setattr(triton_conv, "_tma_forced", {})
    x, weight, bias, res, conv_args, ref = _case(TMA_SHAPES[0], torch.float16, True, True, n=2, h=7, w=5, seed=59)
    tuner, buckets = conv1x1_tma._conv1x1_tma_kernel, []
    run = tuner.run
    monkeypatch.setattr(tuner, "run", lambda *args, **kwargs: (buckets.append(args[8]), run(*args, **kwargs))[1])
    for tma in (False, True):
        y = triton_conv.conv2d_bias_act(x, to_oc_last(weight), bias, res, [1, 1], [0, 0], [1, 1], 1, True, tma=tma,
                                        part=True)
        assert rel_err(y, ref) < 2e-3
    # The tuning keys' M: 2 x 7 x 5 = 70 rows, not their bucket (128).
    assert buckets == [70] and [key[0] for key in triton_conv._chosen_configs] == [70]
    assert [key[0] for key in triton_conv._tma_forced] == [70]


def test_tma_kernel_takes_only_what_the_copy_engine_can_read():
    from resnet_fast.kernels import conv1x1_tma as T

    def case(c=64, oc=64, dtype=torch.float16, groups=1, gemm=True, offset=0):
        x = torch.randn(1, c, 4, 4).to(dtype).contiguous(memory_format=torch.channels_last)
        flat = torch.empty(oc * c + offset, dtype=dtype)
        w = flat[offset:].view(c, oc).t()[:, :, None, None]  # output channels innermost, maybe misaligned
        y = torch.empty(1, oc, 4, 4, dtype=dtype).contiguous(memory_format=torch.channels_last)
        return T.fits(x, w, y, None, groups, gemm)

    assert case() and case(dtype=torch.bfloat16) and case(c=24, oc=72)
    assert not case(dtype=torch.float32)  # fp32 operands are rounded to TF32 in registers
    assert not case(c=20)  # 40-byte rows: not a multiple of 16
    assert not case(oc=36)
    assert not case(groups=2) and not case(gemm=False)
    assert not case(offset=1)  # base not 16-byte aligned


@pytest.mark.interpreter
def test_tma_forced_where_it_cannot_run_is_refused():
    x, weight, bias, res, conv_args, ref = _case(SHAPE_CLASSES[2], torch.float16, False, True)  # a 3x3
    with pytest.raises(ValueError, match="cannot take the TMA kernel"):
        _run_kernel(x, weight, bias, res, conv_args, True, tma=True)


@pytest.mark.interpreter
@pytest.mark.parametrize("tma_ms,expect_tma", [(1.0, True), (3.0, False), (1.95, False)])
def test_decide_tma_keeps_the_faster_kernel(monkeypatch, tma_ms, expect_tma):
    """The first call of a layer shape times the TMA kernel against the general one (on a GPU; here
    with made-up timings) and keeps the TMA config only if it is clearly faster (by TMA_MARGIN: 1.95
    against 2.0 is a tie); y is right either way."""
    from resnet_fast.kernels import conv as triton_conv

    x, weight, bias, res, conv_args, ref = _case(TMA_SHAPES[0], torch.float16, True, True, seed=59)
    y = torch.full(res.shape, float("nan"), dtype=res.dtype).contiguous(memory_format=torch.channels_last)
    w = to_oc_last(weight)
    general_runs = []

    def general():
        general_runs.append(1)
        triton_conv.conv2d_bias_act(x, w, bias, res, [1, 1], [0, 0], [1, 1], 1, True, out=y, tma=False)

    timings = iter([tma_ms, 2.0])
    choice = triton_conv._decide_tma(general, x, w, bias, res, y, True, bench=lambda fn: (fn(), next(timings))[1])
    assert (choice is not False) == expect_tma
    if expect_tma:
        assert choice["BLOCK_M"] == 32  # the interpreter's one config
    assert len(general_runs) == 1 and not torch.isnan(y).any()
    torch_err = rel_err(_torch_same_dtype(x, weight, bias, res, conv_args, True), ref)
    assert rel_err(y, ref) <= 2 * torch_err


@pytest.mark.interpreter
def test_decide_tma_falls_back_and_warns_when_the_kernel_fails(monkeypatch):
    from resnet_fast.kernels import conv as triton_conv
    from resnet_fast.kernels import conv1x1_tma

    def broken(*args, **kwargs):
        raise RuntimeError("no TMA here")

    monkeypatch.setattr(conv1x1_tma, "launch", broken)
    monkeypatch.setattr(triton_conv, "_tma_auto", True)
    ran = []
    with pytest.warns(UserWarning, match="TMA 1x1 conv kernel failed"):
        assert triton_conv._decide_tma(lambda: ran.append(1), None, None, None, None, None, True) is False
    assert ran == [1] and triton_conv._tma_auto is False


@pytest.mark.interpreter
def test_op_forced_triton_on_cpu_nchw_input_and_int64_offsets_path():
    x, weight, bias, res, conv_args, ref = _case(SHAPE_CLASSES[3], torch.float32, True, True, seed=5)
    s, p, d, g = conv_args
    with resnet_fast.use_backend("triton"):
        # NCHW inputs and a plain OIHW weight: the op converts, the result is still right.
        y = resnet_fast.ops.conv2d_bias_act(x.contiguous(), weight, bias, res.contiguous(), [s, s], [p, p], [d, d], g, True)
    assert rel_err(y, ref) < 1e-5


def test_which_convs_pad_their_input_channels():
    from resnet_fast.kernels.conv import pads_channels

    # (cg, groups, kernel width, dilation): only the undilated 3-channel stem, 5 to 8 taps wide
    assert pads_channels(3, 1, 7, 1) and pads_channels(3, 1, 5, 1)
    assert not pads_channels(3, 1, 7, 2)   # dilated: the row is not one contiguous run
    assert not pads_channels(3, 1, 3, 1)   # 3 taps: 12 of 32 K, the flat walk does it in one step
    assert not pads_channels(3, 1, 9, 1)   # 36 > 32: the row does not fit one K step
    assert not pads_channels(4, 1, 7, 1) and not pads_channels(1, 1, 7, 1)
    assert not pads_channels(3, 2, 7, 1)


@pytest.mark.interpreter
@pytest.mark.parametrize("nchw", [True, False])
def test_stem_input_padded_to_four_channels(monkeypatch, nchw):
    # The stem reads a zero-padded 4-channel copy of x (8-byte vector loads on the GPU), the weight
    # keeps its 3 channels (the padding rows of B are masked). An infinite input pixel must reach
    # exactly the outputs whose 7x7 window covers it: the padding channel multiplies nothing.
    from resnet_fast.kernels import conv as triton_conv

    padded = []
    real = triton_conv._pad_channels
    monkeypatch.setattr(triton_conv, "_pad_channels", lambda x: padded.append(tuple(x.shape)) or real(x))
    shape = ("stem", 3, 24, 7, 2, 3, 1, 1)
    x, weight, bias, _, conv_args, _ = _case(shape, torch.float32, False, True, n=2, h=19, w=17, seed=23)
    x = x.contiguous() if nchw else x
    x[1, 2, 9, 6] = float("inf")
    ref = F.conv2d(x.double(), weight.double(), bias.double(), 2, 3).relu()
    y = _run_kernel(x, weight, bias, None, conv_args, True)
    assert padded == [(2, 3, 19, 17)]
    assert torch.equal(torch.isfinite(y), torch.isfinite(ref)) and not torch.isfinite(ref[1]).all()
    assert torch.isfinite(ref[0]).all()
    finite = torch.isfinite(ref)
    assert rel_err(y[finite], ref[finite]) < 1e-5


def _count_launches(fn):
    from resnet_fast.kernels import conv as triton_conv

    before = triton_conv.launch_count
    out = fn()
    return out, triton_conv.launch_count - before


@pytest.mark.interpreter
@pytest.mark.parametrize("name,convs", [("resnet18", 20), ("resnet50", 53)])
def test_whole_model_through_triton_kernels(name, convs):
    torch.manual_seed(1)
    tv = randomize_bn(getattr(torchvision.models, name)(num_classes=10), 2).eval()
    fast = resnet_fast.from_torchvision(tv)
    x = torch.randn(1, 3, 37, 45)
    ref = float64_reference(tv, x)
    from resnet_fast.kernels import pool

    pools = pool.launch_count
    with resnet_fast.use_backend("triton"), torch.no_grad():
        out, launches = _count_launches(lambda: fast(x))
    # (launches count both the functional op and the in-place epilogue op)
    assert launches == convs  # every conv, stem included, and no silent fallback
    assert pool.launch_count == pools  # the stem's max-pool stays PyTorch's unless opted in
    assert rel_err(out, ref) < 1e-4


# ---------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _resnet50_conv_shapes():
    """Every distinct conv of ResNet-50 at 224x224: (C, OC, k, stride, padding, H)."""
    m = torchvision.models.resnet50()
    shapes, hooks = [], []
    for mod in m.modules():
        if isinstance(mod, torch.nn.Conv2d):
            hooks.append(mod.register_forward_hook(
                lambda mod, i, o: shapes.append((mod.in_channels, mod.out_channels, mod.kernel_size[0], mod.stride[0], mod.padding[0], i[0].shape[-1]))
            ))
    with torch.no_grad():
        m(torch.randn(1, 3, 224, 224))
    return sorted(set(shapes), key=shapes.index)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("batch", [1, 64])
def test_gpu_every_resnet50_conv(dtype, batch):
    from resnet_fast.kernels import conv as triton_conv

    for c, oc, k, s, p, hw in _resnet50_conv_shapes():
        shape = ("r50", c, oc, k, s, p, 1, 1)
        x, weight, bias, res, conv_args, ref = _case(shape, dtype, False, True, device="cuda", n=batch, h=hw, w=hw)
        y = _run_kernel(x, weight, bias, res, conv_args, True)
        torch_err = rel_err(_torch_same_dtype(x, weight, bias, res, conv_args, True), ref)
        where = ((c, oc, k, s, hw), rel_err(y, ref), torch_err)
        if dtype == torch.float32 and triton_conv.cudnn_conv_allows_tf32():
            # TF32 allowed: the kernel rounds its operands to TF32, then accumulates in fp32. Checked
            # tightly against a float64 conv of the rounded operands, and against the exact result
            # with the error such a conv has, since cuDNN may pick a full-fp32 algorithm on some
            # shapes (then 2x its error would demand more than TF32 can give).
            sp, pp, dd, gg = conv_args
            rounded = F.conv2d(tf32_round(x).double(), tf32_round(weight).double(), bias.double(), sp, pp, dd, gg).relu()
            # 5e-5: the tensor cores' own fp32 accumulation (truncating adds) over K = 4608 alone
            # reaches ~1e-5; a kernel that truncated its operands instead of rounding them is ~6e-4.
            assert rel_err(y, rounded) < 5e-5, where
            torch_err = max(torch_err, rel_err(rounded, ref))
        assert rel_err(y, ref) <= 2 * torch_err + 1e-6, where


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gpu_space_to_depth_stem(monkeypatch, dtype):
    """ResNet-50's stem at batch 32 (and an odd size) through space-to-depth, the 4-channel path and the
    automatic choice between them (timed on the first call), each against the float64 reference and
    PyTorch's own error (fp32 with TF32 where cuDNN may use it, as above)."""
    from resnet_fast.kernels import conv as triton_conv

    monkeypatch.setattr(triton_conv, "_s2d_auto", True)
    monkeypatch.setattr(triton_conv, "_s2d_choice", {})

    for n, hw in ((32, 224), (3, 97)):
        x, weight, bias, res, conv_args, ref = _case(("stem", 3, 64, 7, 2, 3, 1, 1), dtype, False, True, device="cuda",
                                                     n=n, h=hw, w=hw + 2, seed=73)
        y = triton_conv.conv2d_bias_act(x, to_oc_last(weight), bias, None, [2, 2], [3, 3], [1, 1], 1, True, s2d=True)
        torch_err = rel_err(_torch_same_dtype(x, weight, bias, res, conv_args, True), ref)
        if dtype == torch.float32 and triton_conv.cudnn_conv_allows_tf32():
            rounded = F.conv2d(tf32_round(x).double(), tf32_round(weight).double(), bias.double(), 2, 3).relu()
            torch_err = max(torch_err, rel_err(rounded, ref))
        assert rel_err(y, ref) <= 2 * torch_err + 1e-6, (n, hw, rel_err(y, ref), torch_err)
        for way in (False, None, None):  # the 4-channel path, then the automatic choice: decided, then kept
            y = triton_conv.conv2d_bias_act(x, to_oc_last(weight), bias, None, [2, 2], [3, 3], [1, 1], 1, True, s2d=way)
            assert rel_err(y, ref) <= 2 * torch_err + 1e-6, (n, hw, way)
    assert len(triton_conv._s2d_choice) == 1  # batch 3 at 97x99 is below S2D_MIN_M: never timed


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_tma_kernel_every_resnet50_1x1(dtype):
    """The TMA kernel forced on every 1x1 stride-1 conv of ResNet-50 at batch 64, with the residual
    epilogue, in place as the blocks run it, and against PyTorch's own error."""
    from resnet_fast.kernels import conv as triton_conv
    from resnet_fast.kernels import conv1x1_tma

    if not conv1x1_tma.available(torch.empty(0, device="cuda")):
        pytest.skip("no TMA on this GPU / Triton")
    for c, oc, k, s, p, hw in _resnet50_conv_shapes():
        if k != 1 or s != 1:
            continue
        shape = ("r50", c, oc, 1, 1, 0, 1, 1)
        x, weight, bias, res, conv_args, ref = _case(shape, dtype, True, True, device="cuda", n=64, h=hw, w=hw, seed=61)
        torch_err = rel_err(_torch_same_dtype(x, weight, bias, res, conv_args, True), ref)
        y = _run_kernel(x, weight, bias, res, conv_args, True, tma=True)
        assert rel_err(y, ref) <= 2 * torch_err + 1e-6, ((c, oc, hw), rel_err(y, ref), torch_err)
        triton_conv.conv2d_bias_act(x, to_oc_last(weight), bias, res, [1, 1], [0, 0], [1, 1], 1, True, out=res, tma=True)
        assert torch.equal(res, y), (c, oc, hw)  # in place: the same numbers


def _graph_replays_right(call_into, res, ref, bound, replays):
    """``call_into(into)`` (a conv written in place into a copy of the residual) captured in a CUDA
    graph and replayed, the residual restored before each replay: the result is right every time."""
    into = res.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call_into(into)
    for _ in range(replays):
        into.copy_(res)
        graph.replay()
        torch.cuda.synchronize()
        assert rel_err(into, ref) <= bound


@pytest.mark.gpu
@pytest.mark.parametrize("tma_wins", [True, False])
def test_gpu_tma_choice_is_read_by_the_next_process(monkeypatch, tmp_path, tma_wins):
    """The TMA-or-general decision, timed once (made-up timings) and saved (kernels/decisions.py): a
    new process launches the chosen kernel without timing, and without tuning the general kernel
    where TMA won; right either way."""
    from resnet_fast.kernels import conv as triton_conv
    from resnet_fast.kernels import conv1x1_tma
    from resnet_fast.kernels import decisions

    if not conv1x1_tma.available(torch.empty(0, device="cuda")):
        pytest.skip("no TMA on this GPU / Triton")
    store = decisions.DecisionStore(directory=str(tmp_path), enabled=True)
    monkeypatch.setattr(decisions, "store", store)
    monkeypatch.setattr(triton_conv, "_tma_auto", True)
    for name in ("_tma_choice", "_plans", "_chosen_configs"):
        monkeypatch.setattr(triton_conv, name, {})
    timings = iter([1.0, 2.0] if tma_wins else [2.0, 1.0])  # TMA first, then the general kernel
    monkeypatch.setattr(triton_conv, "_quick_bench", lambda fn, quantiles=None: (fn(), next(timings))[1])
    shape = ("r50", 256, 64, 1, 1, 0, 1, 1)
    x, weight, bias, res, conv_args, ref = _case(shape, torch.bfloat16, True, True, device="cuda", n=8, h=56, w=56, seed=69)
    bound = 2 * rel_err(_torch_same_dtype(x, weight, bias, res, conv_args, True), ref) + 1e-6
    w = to_oc_last(weight)
    assert rel_err(triton_conv.conv2d_bias_act(x, w, bias, res, [1, 1], [0, 0], [1, 1], 1, True), ref) <= bound
    (decided,) = triton_conv._tma_choice.values()
    assert bool(decided) == tma_wins and next(timings, None) is None
    # A new process.
    store.forget()
    for name in ("_tma_choice", "_plans", "_chosen_configs"):
        monkeypatch.setattr(triton_conv, name, {})
    monkeypatch.setattr(triton_conv, "_quick_bench", lambda fn, quantiles=None: pytest.fail("timed again"))
    for _ in range(2):
        assert rel_err(triton_conv.conv2d_bias_act(x, w, bias, res, [1, 1], [0, 0], [1, 1], 1, True), ref) <= bound
    assert list(triton_conv._tma_choice.values()) == [decided]
    assert bool(triton_conv._chosen_configs) != tma_wins  # the general kernel tuned only where it runs

@pytest.mark.gpu
@pytest.mark.parametrize("tma_wins", [True, False])
def test_gpu_tma_auto_choice_gives_the_right_result(monkeypatch, tma_wins):
    """The default path on a GPU: the first call of a big 1x1 layer tunes both kernels, times them
    (timings made up here, to force each outcome) and keeps the faster; later calls, eager and
    captured in a CUDA graph, launch it directly. Every call is right, and nothing fails over."""
    import warnings

    from resnet_fast.kernels import conv as triton_conv
    from resnet_fast.kernels import conv1x1_tma

    if not conv1x1_tma.available(torch.empty(0, device="cuda")):
        pytest.skip("no TMA on this GPU / Triton")
    monkeypatch.setattr(triton_conv, "_tma_auto", True)
    monkeypatch.setattr(triton_conv, "_tma_choice", {})
    timings = iter([1.0, 2.0] if tma_wins else [2.0, 1.0])  # _decide_tma times TMA first, then the general one
    monkeypatch.setattr(triton_conv, "_quick_bench", lambda fn, quantiles=None: (fn(), next(timings))[1])
    shape = ("r50", 256, 64, 1, 1, 0, 1, 1)
    x, weight, bias, res, conv_args, ref = _case(shape, torch.bfloat16, True, True, device="cuda", n=8, h=56, w=56, seed=67)
    torch_err = rel_err(_torch_same_dtype(x, weight, bias, res, conv_args, True), ref)
    w = to_oc_last(weight)
    with warnings.catch_warnings():
        # A TMA failure would warn and fall back: fail instead (only on that warning: others, such
        # as the parallel compile's, are not this test's business).
        warnings.filterwarnings("error", message="resnet_fast: the TMA")
        for _ in range(2):
            into = res.clone()
            triton_conv.conv2d_bias_act(x, w, bias, into, [1, 1], [0, 0], [1, 1], 1, True, out=into)
            assert rel_err(into, ref) <= 2 * torch_err + 1e-6
    assert triton_conv._tma_auto and len(triton_conv._tma_choice) == 1
    assert bool(next(iter(triton_conv._tma_choice.values()))) == tma_wins
    _graph_replays_right(lambda into: triton_conv.conv2d_bias_act(x, w, bias, into, [1, 1], [0, 0], [1, 1], 1, True,
                                                                  out=into), res, ref, 2 * torch_err + 1e-6, 3)


@pytest.mark.gpu
@pytest.mark.parametrize("won", [True, False], ids=["two_launches", "one_launch"])
def test_gpu_wave_split_at_layer4_batch_256(monkeypatch, won):
    """layer4.1.conv2 at batch 256, bf16: the shape ``wave_split`` proposes (172 + 84 images). Forced,
    the two launches give one launch's numbers exactly (one config: RESNET_FAST_AUTOTUNE=0 in the
    suite); by default, with made-up timings for each outcome, every call is right, in place, eager
    and replayed from a CUDA graph."""
    from resnet_fast.kernels import conv as triton_conv

    monkeypatch.setattr(triton_conv, "_split_auto", True)
    monkeypatch.setattr(triton_conv, "_split_choice", {})
    monkeypatch.setattr(triton_conv, "_sm_count", lambda device: 132)
    timings = iter([2.0, 1.0] if won else [1.0, 1.0])  # one launch first, then the two
    monkeypatch.setattr(triton_conv, "_quick_bench", lambda fn, quantiles=None: (fn(), next(timings))[1])
    shape = ("r50", 512, 512, 3, 1, 1, 1, 1)
    x, weight, bias, res, conv_args, ref = _case(shape, torch.bfloat16, True, True, device="cuda", n=256, h=7, w=7, seed=71)
    assert triton_conv.wave_split(256, 49, 512, 4608, 1, 132) == 172
    one = _run_kernel(x, weight, bias, res, conv_args, True, batch_split=0)
    two = _run_kernel(x, weight, bias, res, conv_args, True, batch_split=172)
    if os.environ.get("RESNET_FAST_AUTOTUNE") == "0":
        assert torch.equal(one, two)
    torch_err = rel_err(_torch_same_dtype(x, weight, bias, res, conv_args, True), ref)
    assert rel_err(two, ref) <= 2 * torch_err + 1e-6
    w = to_oc_last(weight)
    for _ in range(3):  # decides (timed), then the plan it made
        into = res.clone()
        triton_conv.conv2d_bias_act(x, w, bias, into, [1, 1], [1, 1], [1, 1], 1, True, out=into)
        assert rel_err(into, ref) <= 2 * torch_err + 1e-6
    assert list(triton_conv._split_choice.values()) == [172 if won else 0]
    _graph_replays_right(lambda into: triton_conv.conv2d_bias_act(x, w, bias, into, [1, 1], [1, 1], [1, 1], 1, True,
                                                                  out=into), res, ref, 2 * torch_err + 1e-6, 2)


@pytest.mark.gpu
@pytest.mark.parametrize("in_place", [False, True])
def test_gpu_tma_kernel_every_tuned_config_with_tails(in_place):
    """Each config the autotuner may pick, on a shape with tails in M, K and N (ResNet-50's channel
    counts have none), so the copy engine's zero fill and store clipping run on the hardware. 52650
    rows: 412 row tiles of 128, more than the persistent configs' programs, so each of those walks
    several tiles."""
    from resnet_fast.kernels import conv1x1_tma

    if not conv1x1_tma.available(torch.empty(0, device="cuda")):
        pytest.skip("no TMA on this GPU / Triton")
    shape = ("tails", 72, 40, 1, 1, 0, 1, 1)
    x, weight, bias, res, conv_args, ref = _case(shape, torch.bfloat16, True, True, device="cuda", n=3, h=150, w=117,
                                                 seed=71)
    torch_err = rel_err(_torch_same_dtype(x, weight, bias, res, conv_args, True), ref)
    w = to_oc_last(weight)
    for config in conv1x1_tma.hopper_tma_configs() + [conv1x1_tma.untuned_tma_config()]:
        kw = config.all_kwargs()
        if kw["PER_SM"]:
            assert conv1x1_tma.launch_grid(x, res, kw)[0] < 412, str(config)
        y = res.clone() if in_place else torch.full_like(res, float("nan"))
        conv1x1_tma.launch(x, w, bias, y if in_place else res, y, True, config.all_kwargs())
        assert rel_err(y, ref) <= 2 * torch_err + 1e-6, str(config)


@pytest.mark.gpu
@pytest.mark.parametrize("c,oc", [(64, 16), (16, 64)])  # the input, then the output, past 2^31 elements
def test_gpu_past_2_31_elements(c, oc):
    # 1x1 conv over a 5800x5800 image: one tensor has more than 2^31 elements, so the launcher picks
    # 64-bit offsets. Checked on the last rows (a 1x1 stride-1 conv maps rows to rows), where 32-bit
    # offsets would have wrapped.
    h = w = 5800
    assert max(c, oc) * h * w >= 2**31
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(1, h, w, c, device="cuda", dtype=torch.bfloat16, generator=gen).permute(0, 3, 1, 2)
    weight = (torch.randn(oc, c, 1, 1, device="cuda", generator=gen) / c**0.5).to(torch.bfloat16)
    bias = torch.randn(oc, device="cuda", generator=gen)
    from resnet_fast.kernels import conv as triton_conv

    y = triton_conv.conv2d_bias_act(x, to_oc_last(weight), bias, None, [1, 1], [0, 0], [1, 1], 1, True)
    tail = slice(h - 3, h)
    ref = F.conv2d(x[:, :, tail].double(), weight.double(), bias.double()).relu()
    assert rel_err(y[:, :, tail], ref) < 1e-2
    del x, y
    torch.cuda.empty_cache()


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                                  "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"])
def test_gpu_whole_model(name):
    torch.manual_seed(0)
    tv = randomize_bn(getattr(torchvision.models, name)(), 1).eval()
    fast = resnet_fast.from_torchvision(tv).cuda()
    x = torch.randn(4, 3, 97, 131)
    ref = float64_reference(tv, x)
    with torch.no_grad():
        out, launches = _count_launches(lambda: fast(x.cuda()))
        tv16 = tv.cuda().to(torch.bfloat16)
        torch_err = rel_err(tv16(x.cuda().bfloat16()), ref)
        out16 = fast.to(torch.bfloat16)(x.cuda().bfloat16())
    assert launches == sum(isinstance(m, torch.nn.Conv2d) for m in tv.modules())
    assert rel_err(out, ref) < 5e-3  # fp32 under TF32, as cuDNN's default
    assert rel_err(out16, ref) <= 2 * torch_err


@pytest.mark.gpu
def test_gpu_autocast_runs_bf16():
    """An fp32 model under autocast(cuda, bf16): bf16 output, every conv through the Triton kernels,
    error against float64 at most twice torchvision's own under the same autocast; a channels_last
    input gives the very same result as NCHW (the stem reads either layout)."""
    torch.manual_seed(0)
    tv = randomize_bn(torchvision.models.resnet50(), 1).eval()
    fast = resnet_fast.from_torchvision(tv).cuda()
    x = torch.randn(2, 3, 64, 72)
    ref = float64_reference(tv, x)
    tv = tv.cuda()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        out, launches = _count_launches(lambda: fast(x.cuda()))
        out_cl = fast(x.cuda().contiguous(memory_format=torch.channels_last))
        torch_err = rel_err(tv(x.cuda()), ref)
    assert out.dtype == torch.bfloat16
    assert launches == sum(isinstance(m, torch.nn.Conv2d) for m in tv.modules())
    assert rel_err(out, ref) <= 2 * torch_err, (rel_err(out, ref), torch_err)
    assert torch.equal(out_cl, out)


# The epilogues that apply the ReLU: the conv kernel, its K split with the shares added in the kernel
# or by the reduce kernel, and the 1x1 TMA kernel. (shape index, split_k, serial_split, tma)
_RELU_PATHS = {"conv": (2, None, None, None), "split_serial": (2, 4, True, None), "split_reduce": (2, 4, False, None),
               "tma_1x1": (10, None, None, True)}


def _relu_nan_case(path, dtype, device):
    """A case with NaN in x, run through one epilogue; returns (y, expected) with expected from a
    direct float64 conv on the CPU (a cuDNN FFT or Winograd algorithm could spread the NaN over tiles)."""
    shape_index, split_k, serial, tma = _RELU_PATHS[path]
    x, weight, bias, res, conv_args, _ = _case(SHAPE_CLASSES[shape_index], dtype, True, True, device=device, seed=31)
    x[0, :, 3, 4] = float("nan")
    y = _run_kernel(x, weight, bias, res, conv_args, True, split_k=split_k, serial_split=serial, tma=tma)
    cpu64 = [t.cpu().double() if t is not None else None for t in (x, weight, bias, res)]
    expected = _torch_same_dtype(*cpu64, conv_args, True).to(y.device)
    assert torch.isnan(expected).any()
    return y, expected


@pytest.mark.interpreter
@pytest.mark.parametrize("path", list(_RELU_PATHS))
def test_relu_keeps_nan_like_torch(path):
    # torch.relu keeps NaN; a plain max turns it into 0 (Triton 3.8's interpreter does too). (The TMA
    # kernel takes 16-bit data only; the interpreter's fp16 dot is exact enough, its bf16 one is not.)
    y, expected = _relu_nan_case(path, torch.float16 if path == "tma_1x1" else torch.float32, "cpu")
    assert torch.equal(torch.isnan(y), torch.isnan(expected))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("path", list(_RELU_PATHS))
def test_gpu_relu_keeps_nan_like_torch(path, dtype):
    # Compiled, the ReLU is max.NaN; for 16-bit outputs ptxas folds it into the conversion (F2FP.RELU).
    if path == "tma_1x1":
        from resnet_fast.kernels import conv1x1_tma

        if not conv1x1_tma.available(torch.empty(0, device="cuda")):
            pytest.skip("no TMA on this GPU")
    y, expected = _relu_nan_case(path, dtype, "cuda")
    assert torch.equal(torch.isnan(y), torch.isnan(expected))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("value,where,padding,h,w", _S2D_NONFINITE)
def test_gpu_space_to_depth_stem_spreads_nan_and_inf_like_torch(dtype, value, where, padding, h, w):
    y, expected = _s2d_nonfinite_case("cuda", dtype, value, where, padding, h, w)
    assert torch.equal(torch.isnan(y), torch.isnan(expected)) and torch.equal(torch.isinf(y), torch.isinf(expected))


# Batch-1 ResNet-50 convs that split (choose_split_k on 132 SMs): layer4 3x3 and 2048->512, layer3 3x3.
_SPLIT_SHAPES = [("layer4_3x3", 512, 512, 3, 1, 1, 1, 1, 7), ("layer4_1x1", 2048, 512, 1, 1, 0, 1, 1, 7),
                 ("layer3_3x3", 256, 256, 3, 1, 1, 1, 1, 14)]


def _on_two_streams(works):
    """Run the callables alternately on two side streams (after the current stream's work, before
    its next), wait for all of it, and return their results."""
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    for st in streams:
        st.wait_stream(torch.cuda.current_stream())
    results = []
    for i, work in enumerate(works):
        with torch.cuda.stream(streams[i % 2]):
            results.append(work())
    for st in streams:
        torch.cuda.current_stream().wait_stream(st)
    torch.cuda.synchronize()
    return results


@pytest.mark.gpu
@pytest.mark.parametrize("shape", _SPLIT_SHAPES, ids=lambda s: s[0])
def test_gpu_serial_split_k_is_the_reduce_kernel_bit_for_bit_every_launch(shape):
    """The inter-program handshake (partials stored, barrier, acq_rel atomic, last program adds) has
    no CPU test: 64 launches queued back to back on one stream and 16 alternating between two
    streams must each give the two-kernel result exactly, and leave every counter at zero."""
    from resnet_fast.kernels import conv as triton_conv

    hw = shape[-1]
    x, weight, bias, res, conv_args, ref = _case(shape[:-1], torch.bfloat16, True, True, device="cuda", n=1, h=hw,
                                                 w=hw, seed=41)
    expected = _run_kernel(x, weight, bias, res, conv_args, True, split_k=8, serial_split=False)
    outs = [_run_kernel(x, weight, bias, res, conv_args, True, split_k=8, serial_split=True) for _ in range(64)]
    outs += _on_two_streams([lambda: _run_kernel(x, weight, bias, res, conv_args, True, split_k=8, serial_split=True)]
                            * 16)
    # In place (out is the residual, as the blocks' last conv runs): 16 launches over fresh copies.
    s, p, d, g = conv_args
    w_oc_last = to_oc_last(weight)
    for _ in range(16):
        into = res.clone()
        triton_conv.conv2d_bias_act(x, w_oc_last, bias, into, [s, s], [p, p], [d, d], g, True, out=into, split_k=8,
                                    serial_split=True)
        outs.append(into)
    torch.cuda.synchronize()
    bad = [i for i, y in enumerate(outs) if not torch.equal(y, expected)]
    assert not bad, f"launches {bad[:10]} differ from the reduce kernel's result"
    for key, counters in triton_conv._stream_counters.items():
        assert not counters.any(), key
    assert rel_err(expected.double(), ref) < 1e-2


@pytest.mark.gpu
def test_gpu_serial_split_k_in_cuda_graphs():
    """A capture by torch.cuda.graph gets zeroed counters of its own (a memset node, so this cannot
    see a missing reset: the tests above and below do); two graphs replayed at the same time on two
    streams must not share any."""
    shape = _SPLIT_SHAPES[0]
    x, weight, bias, res, conv_args, ref = _case(shape[:-1], torch.bfloat16, True, True, device="cuda", n=1, h=7,
                                                 w=7, seed=43)
    expected = _run_kernel(x, weight, bias, res, conv_args, True, split_k=8, serial_split=False)
    _run_kernel(x, weight, bias, res, conv_args, True, split_k=8, serial_split=True)  # tuned before capture
    graphs, outs = [], []
    for _ in range(2):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            outs.append(_run_kernel(x, weight, bias, res, conv_args, True, split_k=8, serial_split=True))
        graphs.append(g)
    for rep in range(20):
        _on_two_streams([g.replay for g in graphs])
        assert all(torch.equal(y, expected) for y in outs), f"replay {rep}"


@pytest.mark.gpu
def test_gpu_cuda_graph_counters_are_its_own_and_stay_zero():
    """resnet_fast.cuda_graph hands each split conv a slice of counters it allocated before capture
    (no memset node); two captured models replayed concurrently match eager, counters back at 0.
    resnet18 at batch 1 splits most 3x3s of layers 2-4, among them the projection blocks' second
    convs, which write over the residual (ResNet-50's graph is test_cuda_graph's)."""
    torch.manual_seed(0)
    model = randomize_bn(resnet_fast.resnet18(), 1).eval().cuda().to(torch.bfloat16)
    x = torch.randn(1, 3, 224, 224, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        expected = model(x)
    runs = [resnet_fast.cuda_graph(model, x), resnet_fast.cuda_graph(model, x)]
    assert all(r._counters.used > 0 for r in runs)  # the split convs took slices (no memset nodes)
    counters = [r._counters.buffer for r in runs]
    for _ in range(10):
        _on_two_streams([lambda r=r: (r.static_input.copy_(x), r.graph.replay()) for r in runs])
        for r in runs:
            assert rel_err(r.static_output, expected) < 1e-2
    assert not any(c.any() for c in counters)


@pytest.mark.interpreter
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_inplace_epilogue_op(backend):
    shape = ("1x1_s1", 40, 48, 1, 1, 0, 1, 1)
    x, weight, bias, res, conv_args, ref = _case(shape, torch.float32, True, True, seed=8)
    s, p, d, g = conv_args
    ptr = res.data_ptr()
    w = to_oc_last(weight) if backend == "triton" else weight.contiguous(memory_format=torch.channels_last)
    with resnet_fast.use_backend(backend):
        torch.ops.resnet_fast.conv2d_bias_act_add_(res, x, w, bias, [s, s], [p, p], [d, d], g, True)
    assert res.data_ptr() == ptr
    assert rel_err(res, ref) < 1e-5
    with pytest.raises(RuntimeError, match="dense channels_last"):
        torch.ops.resnet_fast.conv2d_bias_act_add_(res.contiguous(), x, w, bias, [s, s], [p, p], [d, d], g, True)


@pytest.mark.interpreter
@pytest.mark.parametrize("shape", [SHAPE_CLASSES[0], SHAPE_CLASSES[10], SHAPE_CLASSES[2]], ids=lambda s: s[0])
def test_fp16_residual_loaded_before_the_k_loop(shape):
    # 16-bit data with K of at most 256 loads the residual tile ahead of the K loop; in place (out is
    # the residual, as in every block's last conv) each element is still read before it is written.
    from resnet_fast.kernels import conv as triton_conv

    name, c, oc, k, s, p, d, g = shape
    assert triton_conv.early_residual(True, 1, k, k, c // g, 2) == (k * k * c // g <= 256)
    assert not triton_conv.early_residual(True, 1, k, k, c // g, 4)  # fp32: never (it spills)
    assert not triton_conv.early_residual(True, 2, k, k, c // g, 2)  # split K: the reduction adds it
    x, weight, bias, res, conv_args, ref = _case(shape, torch.float16, True, True, seed=9)
    torch_err = rel_err(_torch_same_dtype(x, weight, bias, res, conv_args, True), ref)
    ptr = res.data_ptr()
    triton_conv.conv2d_bias_act(x, to_oc_last(weight), bias, res, [s, s], [p, p], [d, d], g, True, out=res)
    assert res.data_ptr() == ptr
    assert rel_err(res, ref) <= 2 * torch_err, (rel_err(res, ref), torch_err)


@pytest.mark.interpreter
def test_forced_triton_rejects_float64_clearly():
    x, weight, bias, res, conv_args, ref = _case(SHAPE_CLASSES[0], torch.float64, False, True)
    with resnet_fast.use_backend("triton"), pytest.raises(TypeError, match="expected float32, float16 or bfloat16, got torch.float64"):
        resnet_fast.ops.conv2d_bias_act(x, weight, bias, None, [1, 1], [0, 0], [1, 1], 1, True)


@pytest.mark.interpreter
def test_parallel_precompile_failure_falls_back(monkeypatch):
    # The thread-pool precompile is an optimisation: if Triton refuses it, the launch still runs
    # (serial compiles) and says so once.
    from resnet_fast.kernels import conv as triton_conv

    class Refuses:
        def __init__(self, executor):
            raise RuntimeError("no async compile here")

    monkeypatch.setattr(triton_conv, "INTERPRET", False)  # take the GPU branch of _precompile
    monkeypatch.setattr(triton_conv, "_precompile_failed", False)
    monkeypatch.setattr(triton_conv, "_chosen_configs", {})
    monkeypatch.setattr(triton_conv.triton, "AsyncCompileMode", Refuses, raising=False)
    x, weight, bias, res, conv_args, ref = _case(SHAPE_CLASSES[0], torch.float32, True, True, seed=13)
    with pytest.warns(UserWarning, match="parallel Triton compile unavailable"):
        y = _run_kernel(x, weight, bias, res, conv_args, True)
    assert triton_conv._precompile_failed
    assert rel_err(y, ref) < 1e-5


@pytest.mark.interpreter
def test_parallel_precompile_compile_error_leaves_no_async_mode_behind(monkeypatch):
    # A compile that fails inside the mode: Triton 3.6's AsyncCompileMode.__exit__ raises before it
    # clears the thread's active mode, which would route every later compile through a dead pool.
    from triton.runtime import _async_compile

    from resnet_fast.kernels import conv as triton_conv

    class FailsInside(_async_compile.AsyncCompileMode):
        def __exit__(self, *exc):
            raise RuntimeError("ptxas died")  # and, as 3.6 does then, leaves active_mode set

    monkeypatch.setattr(triton_conv, "INTERPRET", False)
    monkeypatch.setattr(triton_conv, "_precompile_failed", False)
    monkeypatch.setattr(triton_conv, "_chosen_configs", {})
    monkeypatch.setattr(triton_conv.triton, "AsyncCompileMode", FailsInside)
    monkeypatch.setattr(triton_conv._conv2d_bias_act_kernel, "warmup", lambda *a, **k: None)
    x, weight, bias, res, conv_args, ref = _case(SHAPE_CLASSES[0], torch.float32, True, True, seed=41)
    with pytest.warns(UserWarning, match="parallel Triton compile unavailable.*ptxas died"):
        y = _run_kernel(x, weight, bias, res, conv_args, True)
    assert _async_compile.active_mode.get() is None
    assert rel_err(y, ref) < 1e-5


def test_tf32_rule_follows_pytorch_new_and_legacy_flags():
    from resnet_fast.kernels.conv import cudnn_conv_allows_tf32

    cudnn = torch.backends.cudnn
    if not hasattr(getattr(cudnn, "conv", None), "fp32_precision"):
        pytest.skip("this PyTorch has only the legacy allow_tf32 flag")
    saved = cudnn.conv.fp32_precision, cudnn.fp32_precision, torch.backends.fp32_precision
    try:
        assert cudnn_conv_allows_tf32() == (saved[0] != "ieee")
        cudnn.conv.fp32_precision = "ieee"  # new API on conv only: legacy allow_tf32 now raises
        assert cudnn_conv_allows_tf32() is False
        cudnn.conv.fp32_precision = "tf32"
        assert cudnn_conv_allows_tf32() is True
        cudnn.allow_tf32 = False  # legacy API: conv's level becomes "none", and so is every level above
        assert cudnn_conv_allows_tf32() is False
        assert cudnn_conv_allows_tf32() is torch._C._get_cudnn_allow_tf32()
        cudnn.allow_tf32 = True
        assert cudnn_conv_allows_tf32() is True
        cudnn.conv.fp32_precision = "none"
        cudnn.fp32_precision = "ieee"  # conv inherits the cuDNN level
        assert cudnn_conv_allows_tf32() is False
        cudnn.fp32_precision = "tf32"
        assert cudnn_conv_allows_tf32() is True
    finally:
        cudnn.conv.fp32_precision, cudnn.fp32_precision, torch.backends.fp32_precision = saved


@pytest.mark.interpreter
@pytest.mark.parametrize("split_k,serial", [(1, False), (2, False), (2, True)])
def test_autotuning_an_in_place_epilogue_adds_the_residual_once(monkeypatch, split_k, serial):
    """Autotuning runs every candidate config many times on the launch's own arguments. For the
    in-place epilogue (out is the residual) each run would add the residual again: the first forward
    of every new layer shape would be wrong. Real tuning (several configs, timed) on the CPU here."""
    import triton

    from resnet_fast.kernels import conv as triton_conv

    tuner = triton_conv._conv2d_bias_act_kernel
    configs = [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}, num_warps=4, num_stages=1),
               triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4, num_stages=1)]
    runs = []

    def cpu_bench(fn, quantiles=None):
        for _ in range(3):
            fn()
        runs.append(1)
        return [float(len(runs))] * 3  # the first config timed wins

    monkeypatch.setattr(tuner, "configs", configs)
    monkeypatch.setattr(tuner, "early_config_prune", None)
    monkeypatch.setattr(tuner, "_do_bench", cpu_bench, raising=False)
    monkeypatch.setattr(tuner, "do_bench", cpu_bench, raising=False)
    monkeypatch.setattr(tuner, "cache_results", False, raising=False)
    monkeypatch.setattr(tuner, "cache", {})
    monkeypatch.setattr(triton_conv, "_chosen_configs", {})
    x, weight, bias, res, conv_args, ref = _case(SHAPE_CLASSES[2], torch.float32, True, True, seed=23, n=1)
    s, p, d, g = conv_args
    ptr = res.data_ptr()
    for call in range(2):  # the tuning call, then the direct launch of the chosen config
        out = res if call == 0 else res2
        triton_conv.conv2d_bias_act(x, to_oc_last(weight), bias, out, [s, s], [p, p], [d, d], g, True, out=out,
                                    split_k=split_k, serial_split=serial)
        assert out.data_ptr() == (ptr if call == 0 else out.data_ptr())
        assert rel_err(out, ref) < 1e-5, f"call {call}"
        if call == 0:
            assert len(runs) == 2  # both configs were timed
            res2 = _case(SHAPE_CLASSES[2], torch.float32, True, True, seed=23, n=1)[3]


def _gpu_configs_for(shape):
    """The GPU configs the prune keeps for this shape class, plus the untuned one (all shapes)."""
    from resnet_fast.kernels import conv as K

    name, c, oc, k, s, p, d, g = shape
    cg = c // g
    flat_k = not (k == 1 and s == 1 and p == 0) and cg < 32
    kept = [K.untuned_config()]
    # As if the problem were small or large (M, output channels), with and without a residual, in
    # fp32 and bf16 (whose tiles are larger): the tile sizes a real layer of this class could get, run
    # here on a small one (edges masked) in fp32 (the interpreter's bf16 dot is not exact).
    for m_bucket, ocg, residual, dtype in itertools.product([512, 1 << 20], [oc // g, 256], [False, True],
                                                            [torch.float32, torch.bfloat16]):
        named = {"M_BUCKET": m_bucket, "OCg": ocg, "Cg": cg, "FLAT_K": flat_k, "x_ptr": torch.empty(0, dtype=dtype)}
        kept += K._prune(K.hopper_configs(), named, KH=k, KW=k, FLAT_K=flat_k, HAS_RESIDUAL=residual,
                         EVEN_C=K.even_c(cg, flat_k))
    by_name = {K.config_name(cfg): cfg for cfg in kept}
    return [by_name[n] for n in sorted(by_name)]


class _Forced(dict):
    """Stands in for the launcher's tuned-config table: every key maps to one config."""

    def __init__(self, config):
        super().__init__()
        self.kwargs = config.all_kwargs()

    def get(self, key, default=None):
        return self.kwargs


# Plus a 1x1 GEMM with K past 128, where the deep-pipeline and 128x256 / 256x128 tiles are kept.
_TILE_SHAPES = SHAPE_CLASSES + [("1x1_s1_c192", 192, 40, 1, 1, 0, 1, 1), ("1x1_s1_c160", 160, 24, 1, 1, 0, 1, 1)]


@pytest.mark.interpreter
@pytest.mark.parametrize("shape", _TILE_SHAPES, ids=[s[0] for s in _TILE_SHAPES])
def test_every_gpu_tile_config_is_correct(monkeypatch, shape):
    # The interpreter's own runs use one 32x32x32 tile; on a GPU the autotuner picks from
    # hopper_configs() (16 to 256 rows, K steps of 32 or 64, 16 to 256 columns) and the GPU tests use
    # untuned_config() for every shape (its 64-wide K step runs the stem's row walk at 28 of 64).
    # Each tile a GPU could run for this shape class, forced, against the float64 reference.
    from resnet_fast.kernels import conv as triton_conv

    x, weight, bias, res, conv_args, ref = _case(shape, torch.float32, True, True, seed=31, n=2, h=9, w=10)
    for config in _gpu_configs_for(shape):
        monkeypatch.setattr(triton_conv, "_chosen_configs", _Forced(config))
        y = _run_kernel(x, weight, bias, res, conv_args, True)
        assert rel_err(y, ref) < 1e-5, triton_conv.config_name(config)


def test_three_stage_128x64_tile_only_for_narrow_short_k_walks():
    # 72 KB instead of 96: three CTAs per SM, for layer1's 3x3 (64 -> 64 channels, K = 576) and
    # nothing wider, shorter, longer or flat-K.
    from resnet_fast.kernels import conv as K

    def kept(cg, ocg, k, flat_k=False, dtype=torch.bfloat16, gemm_1x1=False):
        named = {"M_BUCKET": 1 << 20, "OCg": ocg, "Cg": cg, "FLAT_K": flat_k, "x_ptr": torch.empty(0, dtype=dtype)}
        cfgs = K._prune(K.hopper_configs(), named, KH=k, KW=k, FLAT_K=flat_k, HAS_RESIDUAL=False, GEMM_1X1=gemm_1x1,
                        EVEN_C=K.even_c(cg, flat_k))
        return any(K.config_name(c) == "128x64x64 w4 s3" for c in cfgs)

    assert kept(64, 64, 3) and kept(32, 64, 3) and kept(1024, 64, 1, gemm_1x1=True)
    assert not kept(64, 128, 3)  # wider: the 128x128 and 128x64 s4 tiles cover it
    assert not kept(256, 64, 1, gemm_1x1=True)  # K of 4 steps: the two-stage configs
    assert not kept(128, 64, 3)  # K = 1152
    assert not kept(3, 64, 7, flat_k=True)  # the stem's flat walk
    assert not kept(64, 64, 3, dtype=torch.float32)  # fp32: a 128-row 4-warp tile with 3 stages spills


def test_128_deep_k_steps_only_for_long_k_in_whole_128_channel_blocks():
    import triton

    from resnet_fast.kernels import conv as K

    deep = [c for c in K.hopper_configs() if c.kwargs["BLOCK_K"] == 128]
    assert deep

    def kept(cg, k, dtype=torch.bfloat16, m=1 << 20, split_k=1, gemm_1x1=False):
        named = {"M_BUCKET": m, "OCg": 512, "Cg": cg, "FLAT_K": False, "x_ptr": torch.empty(0, dtype=dtype)}
        cfgs = K._prune(K.hopper_configs(), named, KH=k, KW=k, FLAT_K=False, HAS_RESIDUAL=False, GEMM_1X1=gemm_1x1,
                        EVEN_C=K.even_c(cg, False), SPLIT_K=split_k)
        return any(c.kwargs["BLOCK_K"] == 128 for c in cfgs)

    assert kept(512, 3) and kept(128, 3) and kept(1024, 1, gemm_1x1=True)  # 36, 9 and 8 steps of 128
    assert not kept(512, 1, gemm_1x1=True)  # 4 steps: nothing to gain
    assert not kept(192, 3)  # whole 64-channel blocks only: the 128-deep walk would need its mask
    assert not kept(512, 3, dtype=torch.float32)  # 384 KB of pipeline buffers
    assert not kept(512, 3, m=1024, split_k=2)  # K shares (layer2 at batch 1), though the tile fits M
    assert K.even_c(192, False) == 64 and K.even_c(256, False) == 128 and K.even_c(96, False) == 0
    assert K.even_c(256, True) == 0
    assert isinstance(deep[0], triton.Config)


@pytest.mark.interpreter
@pytest.mark.parametrize("shape", [("3x3_s1_c192", 192, 20, 3, 1, 1, 1, 1), ("1x1_s1_c192_deep", 192, 24, 1, 1, 0, 1, 1)],
                         ids=["3x3_c192", "1x1_c192"])
def test_a_128_deep_step_on_64_channel_blocks_keeps_its_channel_mask(monkeypatch, shape):
    # The prune never gives these shapes a 128-deep K step; forced anyway (EVEN_C is 64: whole
    # 64-channel blocks), the kernel masks the last block's channels itself instead of reading past them.
    import triton

    from resnet_fast.kernels import conv as triton_conv

    config = triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 128, "GROUP_M": 4}, num_warps=4, num_stages=1)
    x, weight, bias, res, conv_args, ref = _case(shape, torch.float32, True, True, seed=37, n=2, h=7, w=6)
    monkeypatch.setattr(triton_conv, "_chosen_configs", _Forced(config))
    y = _run_kernel(x, weight, bias, res, conv_args, True)
    assert rel_err(y, ref) < 1e-5


@pytest.mark.interpreter
def test_untuned_layer_during_graph_capture_is_refused_clearly(monkeypatch):
    """Tuning synchronises the device, which invalidates a CUDA graph capture: a layer shape met for
    the first time during capture gets an error that says what to do; a tuned one launches."""
    from resnet_fast.kernels import conv as triton_conv

    monkeypatch.setattr(triton_conv, "_chosen_configs", {})
    x, weight, bias, res, conv_args, ref = _case(SHAPE_CLASSES[0], torch.float32, False, True, seed=29)
    monkeypatch.setattr(triton_conv, "_capturing", lambda t: True)
    with pytest.raises(RuntimeError, match="not tuned yet.*run the model once on inputs of this shape before capturing"):
        _run_kernel(x, weight, bias, res, conv_args, True)
    monkeypatch.setattr(triton_conv, "_capturing", lambda t: False)
    _run_kernel(x, weight, bias, res, conv_args, True)  # tunes
    monkeypatch.setattr(triton_conv, "_capturing", lambda t: True)
    assert rel_err(_run_kernel(x, weight, bias, res, conv_args, True), ref) < 1e-5


@pytest.mark.interpreter
def test_strided_bias_is_read_by_channel():
    x, weight, bias, res, conv_args, ref = _case(SHAPE_CLASSES[0], torch.float32, False, True, seed=37)
    spread = torch.zeros(2 * bias.numel())
    spread[::2] = bias
    y = _run_kernel(x, weight, spread[::2], res, conv_args, True)
    assert rel_err(y, ref) < 1e-5


@pytest.mark.interpreter
def test_stride_and_dilation_are_tuned_apart(monkeypatch):
    """A stride-2 3x3 and the stride-1 3x3s after it (layer2-4 of ResNet-50) have the same M, C and OC
    but a different gather: each gets its own tuning, in the launcher's memo and the autotuner's key."""
    from resnet_fast.kernels import conv as triton_conv

    monkeypatch.setattr(triton_conv, "_chosen_configs", {})
    assert {"stride_h", "stride_w", "dil_h", "dil_w"} <= set(triton_conv._conv2d_bias_act_kernel.keys)
    cases = [  # (shape, h, w): each gives a 5x5 output of 16 channels from 16 channels
        (("s2", 16, 16, 3, 2, 1, 1, 1), 10, 10),
        (("s1", 16, 16, 3, 1, 1, 1, 1), 5, 5),
        (("d2", 16, 16, 3, 1, 2, 2, 1), 5, 5),
    ]
    for i, (shape, h, w) in enumerate(cases):
        x, weight, bias, res, conv_args, ref = _case(shape, torch.float32, False, True, n=1, h=h, w=w, seed=80 + i)
        assert rel_err(_run_kernel(x, weight, bias, res, conv_args, True), ref) < 1e-5
        assert len(triton_conv._chosen_configs) == i + 1, shape


@pytest.mark.interpreter
def test_what_the_kernel_cannot_take_runs_pytorch_conv():
    """Past 2^24 rows (padding included) the halo check's far-below-zero sentinel would come back into
    range, and past 65535 groups the grid cannot launch: the op runs PyTorch's conv there (right,
    finite), the launcher called directly refuses with the reason, and no Triton kernel runs."""
    from resnet_fast.kernels import conv as triton_conv

    tall = triton_conv.MAX_SPATIAL + 64
    x = torch.randn(1, 1, tall, 1)
    x[0, 0, triton_conv.MAX_SPATIAL + 5, 0] = float("inf")  # a row no output window covers
    weight = torch.randn(1, 1, 3, 1)
    bias = torch.randn(1)
    stride = [1 << 23, 1]
    ref = F.conv2d(x.double(), weight.double(), bias.double(), stride)
    groups = triton_conv.MAX_GROUPS + 1
    gx = torch.randn(1, groups, 2, 2).contiguous(memory_format=torch.channels_last)
    gw, gb = torch.randn(groups, 1, 1, 1), torch.randn(groups)
    gref = F.conv2d(gx.double(), gw.double(), gb.double(), groups=groups).relu()
    before = triton_conv.launch_count
    with resnet_fast.use_backend("triton"):
        y = torch.ops.resnet_fast.conv2d_bias_act(x, weight, bias, None, stride, [0, 0], [1, 1], 1, False)
        gy = torch.ops.resnet_fast.conv2d_bias_act(gx, gw, gb, None, [1, 1], [0, 0], [1, 1], groups, True)
    assert torch.isfinite(y).all() and rel_err(y, ref) < 1e-6
    assert rel_err(gy, gref) < 1e-6
    assert triton_conv.launch_count == before
    with pytest.raises(ValueError, match=r"spatial size with padding up to 16777216 per side, got 16777280x1"):
        triton_conv.conv2d_bias_act(x, to_oc_last(weight), bias, None, stride, [0, 0], [1, 1], 1, False)
    with pytest.raises(ValueError, match="at most 65535 groups, got 65536"):
        triton_conv.conv2d_bias_act(gx, to_oc_last(gw), gb, None, [1, 1], [0, 0], [1, 1], groups, True)


def test_64_bit_offsets_where_any_indexed_tensor_needs_them():
    """The weight counts too: a 16384 -> 16384 3x3 conv on a 3x3 image has small activations but a
    2.4e9-element weight, whose tap offsets (kh * swh) pass 2^31."""
    from resnet_fast.kernels import conv as triton_conv

    x = torch.empty(1, 16384, 3, 3, device="meta")
    y = torch.empty(1, 16384, 3, 3, device="meta")
    assert triton_conv.needs_index_64(x, torch.empty(16384, 16384, 3, 3, device="meta"), y, 1)
    assert not triton_conv.needs_index_64(x, torch.empty(64, 16384, 3, 3, device="meta"), y, 1)
    big = torch.empty(1, 1 << 16, 1 << 8, 1 << 7, device="meta")  # 2^31 elements
    assert triton_conv.needs_index_64(big, torch.empty(1, 1 << 16, 1, 1, device="meta"), y, 1)
    y = torch.empty(1, 1 << 16, 64, 64, device="meta")  # 2^28 elements: the workspace of 8 shares has 2^31
    assert triton_conv.needs_index_64(x, torch.empty(64, 16384, 3, 3, device="meta"), y, 8)
    assert not triton_conv.needs_index_64(x, torch.empty(64, 16384, 3, 3, device="meta"), y, 4)
