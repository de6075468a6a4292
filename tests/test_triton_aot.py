"""The Triton kernel compiles for Hopper (sm_90) with every config the autotuner keeps, and the code
is the kind that can be fast: ptxas and cuobjdump run here (they ship with Triton), no GPU needed.
Catches what the interpreter cannot: lowering, register/shared-memory limits, spills, and a kernel
that silently lost its warpgroup MMAs or its asynchronous-copy pipeline."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)

EXTRA = r"""
from resnet_fast.kernels import conv as K
assert not K.INTERPRET
extra = [("fp16", 3, True, False, True, True, "tf32"),     # grouped (flat K) with residual
         ("fp32", 3, False, False, False, True, "tf32"),
         ("fp32", 1, False, True, True, True, "ieee")]
for spec in extra:
    K.aot_compile(*spec, config=K._configs()[0])
# split K, the shares added by each tile's last program: the handshake is the one the kernel's
# comment promises (every partial stored, a barrier, one thread's acq_rel atomic at GPU scope, the
# result shared behind a barrier, the other shares read past L1)
import re
cfg = [c for c in K._configs() if c.kwargs["BLOCK_M"] == 64][0]
ptx = K.aot_compile("bf16", 3, False, False, True, True, "tf32", config=cfg, channels=512, out_channels=512,
                    split_k=8, serial_split=True).asm["ptx"]
assert ptx.count("atom.global") == 1, ptx.count("atom.global")
before, after = ptx.split("atom.global.gpu.acq_rel.add", 1)
assert "bar.sync" in before.rsplit("st.global", 1)[1], "no barrier between the partial stores and the atomic"
pred = re.search(r"@(%p\d+)\s*$", before).group(1)
assert re.search(r"setp\.eq\.[bsu]32\s+" + re.escape(pred) + r", %r\d+, 0;", ptx), "the atomic is not one thread's"
shared = after.split("bar.sync", 1)
assert len(shared) == 2 and "st.shared" in shared[0] and "ld.global.cg" in shared[1]
# the split-K reduction
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
fn = K._splitk_reduce_kernel
sig = {"ws_ptr": "*fp32", "b_ptr": "*fp32", "r_ptr": "*bf16", "y_ptr": "*bf16", "total": "i32", "OC": "i32",
       "SPLIT_K": "constexpr", "HAS_RESIDUAL": "constexpr", "RELU": "constexpr", "BLOCK": "constexpr"}
consts = {(fn.arg_names.index(k),): v for k, v in dict(SPLIT_K=8, HAS_RESIDUAL=True, RELU=True, BLOCK=1024).items()}
triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
# the stem's max-pool, both offset widths
from resnet_fast.kernels import pool as P
fn = P._max_pool2d_nhwc_kernel
for index_64 in (False, True):
    sig = {"x_ptr": "*bf16", "y_ptr": "*bf16", "P": "i32", "H": "i32", "W": "i32", "C": "i32", "OH": "i32", "OW": "i32"}
    values = dict(KH=3, KW=3, SH=2, SW=2, PH=1, PW=1, DH=1, DW=1, BLOCK_P=64, BLOCK_C=64, INDEX_64=index_64)
    sig.update({k: "constexpr" for k in values})
    consts = {(fn.arg_names.index(k),): v for k, v in values.items()}
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    assert k.metadata.shared >= 0
# the stem's 4-channel padding copy (NCHW bf16 in)
fn = K._pad_channels_kernel
sig = {"x_ptr": "*bf16", "y_ptr": "*bf16", "P": "i32", "C": "i32", "H": "i32", "W": "i32",
       "sxn": "i32", "sxc": "i32", "sxh": "i32", "sxw": "constexpr", "CP": "constexpr", "BLOCK": "constexpr"}
consts = {(fn.arg_names.index(k),): v for k, v in dict(sxw=1, CP=4, BLOCK=256).items()}
triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
print("COMPILED", len(extra) + 4)
"""


# Longest K-loop body (instructions per thread per K step) each spec may compile to on sm_90: what
# Triton 3.6 and 3.8 give after the session-3 walks (benchmarks/NOTES.md), plus ~15%.
LOOP_CEILING = {
    "conv3_1x1_residual": 155, "conv1_1x1": 155, "conv1_1x1_wide": 160, "3x3": 215, "3x3_c256": 220,
    "1x1_s2_projection": 215, "stem_7x7": 200, "3x3_grouped_g32": 180, "3x3_c512_batch1_split8": 195,
    # serial split K: the longest loop is the shares' reduction (two 64x128 fp32 tiles per step,
    # 270 instructions), the K loop is the split8 spec's
    "3x3_c512_batch1_split8_serial": 300, "1x1_c2048_batch1_split8_serial": 300, "1x1_c1024_batch1_split4_serial": 300,
    "3x3_fp32_tf32": 700, "conv3_1x1_residual_fp32_tf32": 600, "3x3_grouped_widened": 160,
    # the space-to-depth stem: a K step is one kernel row of 4 x 16 channels, its input zeroed in
    # registers under the 7x7 kernel's missing taps (session 11, Triton 3.6: 256-396)
    "stem_s2d_4x4": 460,
}
# Specs whose K loop has a constant trip count and compiles to straight-line code (the stem: one K
# step per kernel row, 7 rows): a ceiling on the whole kernel instead. Session 4: 1072 / 1216
# (Triton 3.6 / 3.8) after padding the stem's input to 4 channels; the 140 / 173-instruction loop
# before it ran 7 times, ~1600 instructions per tile.
# Session 9, (n, oh, ow) from two unsigned divisions: 1008-1040 / 1176-1184.
# ResNeXt 8 channels per group (3 kernel rows, aligned 16-byte runs): 608 / 616.
UNROLLED_CEILING = {"stem_7x7": 1400, "3x3_grouped_8ch": 720}


def _env():
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def _skip_without_ptxas(proc):
    if proc.returncode != 0 and ("ptxas" in proc.stderr or "cuobjdump" in proc.stderr) and "not found" in proc.stderr:
        pytest.skip("this Triton install has no ptxas/cuobjdump")


def test_kernel_sass_for_sm90_every_kept_config(tmp_path):
    pytest.importorskip("triton")
    out = tmp_path / "sass.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "sass_report.py"), "--json", str(out)],
                          capture_output=True, text=True, env=_env(), timeout=1500)
    _skip_without_ptxas(proc)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert len(report["rows"]) >= 6
    for name, rows in report["rows"].items():
        flat_k, gemm_1x1 = report["specs"][name][2], report["specs"][name][3]
        assert rows, name
        for row in rows:
            where = f"{name} {row['BLOCK']} w{row['warps']} s{row['stages']}: {row}"
            # No spill traffic. (ptxas can reserve an 8-byte frame for a PTX local depot that no
            # instruction touches: seen on Triton 3.8 for the split-K specialisation, harmless.)
            assert row["LDL"] == 0 and row["STL"] == 0 and int(row["stack"]) <= 8, "spills: " + where
            # The ReLU keeps NaN (torch.relu does): max.NaN (alone or folded into the bf16/fp16
            # conversion), never a plain float max (which returns 0 for NaN).
            # (A K split whose shares a second kernel adds leaves the epilogue to that kernel.)
            spec = report["specs"][name]
            epilogue_here = len(spec) <= 10 or spec[10] == 1 or (len(spec) > 11 and spec[11])
            assert row["FMNMX"] == 0 and (row["relu_ops"] > 0) == (bool(spec[5]) and epilogue_here), "relu: " + where
            # Issue slots per K step (the loop body, per thread): regressions such as a runtime
            # integer division per k (the stem's loop was 612-654 instructions) fail here.
            if row["loop_instrs"] == 0:
                assert name in UNROLLED_CEILING and row["instrs"] <= UNROLLED_CEILING[name], f"no K loop: {where}"
            else:
                assert row["loop_instrs"] <= LOOP_CEILING[name], f"K loop of {row['loop_instrs']} instructions: {where}"
            if row["BLOCK"].startswith("16x"):
                assert row["HMMA"] > 0, where  # warpgroup MMA needs 64 rows
            else:
                assert row["HGMMA"] > 0 and row["HMMA"] == 0, "no warpgroup MMA: " + where
            if not flat_k:
                # Channel-block walks read 16-byte runs: they must be pipelined with cp.async.
                assert row["LDGSTS"] > 0, "not pipelined: " + where
            if flat_k and report["specs"][name][7] // report["specs"][name][9] in (3, 4, 8):
                # Few channels per group: the stem (padded to 4) and ResNeXt's groups of 4 and 8
                # read aligned per-pixel runs as vectors, so A is pipelined too (session 4: 0 -> 10-12
                # LDGSTS for the grouped convs, registers 121 -> 48).
                assert row["LDGSTS"] >= 8, "grouped / stem input not pipelined: " + where
            if name == "stem_7x7":
                # Input padded to 4 channels: A comes in 8-byte asynchronous copies, not 2-byte LDGs
                # (the 4 LDGSTS before padding were the weight's).
                assert row["LDGSTS"] >= 32, "stem input not pipelined: " + where
            if name == "stem_s2d_4x4":
                # 16 channels a pixel, 16-byte aligned: every asynchronous copy (A and B) 16 bytes wide.
                wide = int(row["128-bit loads"].split("/")[0])
                assert row["LDGSTS"] >= 16 and wide >= row["LDGSTS"], "space-to-depth stem not in 16-byte copies: " + where
        if gemm_1x1 and len(report["specs"][name]) <= 10:  # batch 256 (the split specs are batch 1)
            assert any(int(r["BLOCK"].split("x")[0]) >= 128 for r in rows), name


def test_kernel_compiles_for_sm90_other_dtypes():
    pytest.importorskip("triton")
    proc = subprocess.run([sys.executable, "-c", EXTRA], capture_output=True, text=True, env=_env(), timeout=600, cwd=ROOT)
    _skip_without_ptxas(proc)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "COMPILED 7" in proc.stdout


TMA = r"""
import json, sys
sys.path.insert(0, "benchmarks")
import sass_report as S
from resnet_fast.kernels import conv1x1_tma as T
rows = [{"config": str(config), "residual": residual, **S.kernel_stats(T.aot_compile(dtype, config, residual))}
        for config in T.hopper_tma_configs() + [T.untuned_tma_config()] for residual in (True, False)
        for dtype in ("bf16", "fp16")]
print("ROWS" + json.dumps(rows))
"""


def _script_rows(script: str, timeout: int):
    """Run a compile script in a fresh interpreter (TRITON_INTERPRET unset) and return its ROWS."""
    pytest.importorskip("triton")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(), timeout=timeout,
                          cwd=ROOT)
    _skip_without_ptxas(proc)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.split("ROWS", 1)[1])


def test_tma_kernel_compiles_for_sm90_every_config():
    # The 1x1 TMA kernel: tiles come in through the copy engine (UTMALDG, not cp.async), leave by a
    # TMA store, feed warpgroup MMAs, and no config spills.
    rows = _script_rows(TMA, 600)
    assert len(rows) == 40  # (9 configs + the untuned one) x residual or not x bf16, fp16
    for row in rows:
        assert row["UTMALDG"] > 0 and row["UTMASTG"] > 0 and row["HGMMA"] > 0 and row["LDGSTS"] == 0, row
        assert row["LDL"] == 0 and row["STL"] == 0, row
        assert row["FMNMX"] == 0 and row["relu_ops"] > 0, row  # the ReLU keeps NaN


PERSISTENT = r"""
import json
from resnet_fast.kernels import conv1x1_tma as T
rows = []
for config in T.hopper_tma_configs():
    if not config.kwargs["PER_SM"]:
        continue
    for residual in (True, False):
        ir = T.aot_compile("bf16", config, residual).asm["ttgir"].splitlines()
        # The last loop is the pipelined one (the first serves K == 0, where nothing is pipelined).
        start = max(i for i, line in enumerate(ir) if "scf.for" in line)
        indent = len(ir[start]) - len(ir[start].lstrip())
        end = next(i for i in range(start + 1, len(ir)) if ir[i].startswith(" " * indent + "}"))
        body = ir[start + 1:end]
        a_copy = [i for i, line in enumerate(body) if "async_tma_copy_global_to_local %a_desc" in line]
        store = [i for i, line in enumerate(body) if "async_tma_copy_local_to_global %y_desc" in line]
        rows.append({"config": str(config), "residual": residual, "nested_for": any("scf.for" in l for l in body),
                     "a_copy_before_store": bool(a_copy and store and a_copy[0] < store[0])})
print("ROWS" + json.dumps(rows))
"""


def test_persistent_tma_configs_overlap_the_next_tile_with_the_epilogue():
    # The persistent configs' reason to exist: Triton flattens the tile loop and the K loop into one
    # software pipeline (tl.range(..., flatten=True)), so the copies of the next step (across a tile
    # boundary too) are issued before this tile's epilogue (bias, residual, TMA store) runs. Without
    # the flattening, the loop would hold a nested K loop and the epilogue would wait for nothing new.
    rows = _script_rows(PERSISTENT, 600)
    assert len(rows) == 4  # the two persistent configs, with and without the residual
    for row in rows:
        assert not row["nested_for"] and row["a_copy_before_store"], row


UNTUNED = r"""
import json, sys
sys.path.insert(0, "benchmarks")
import sass_report as S
from resnet_fast.kernels import conv as K
rows = {name: S.report(spec, K.untuned_config(), 90) for name, spec in S.SPECS.items()}
print("ROWS" + json.dumps(rows))
"""


def test_untuned_config_compiles_for_every_spec():
    # The GPU tests run every shape with one config (RESNET_FAST_AUTOTUNE=0), which the prune never
    # sees: its 64-wide K step takes the stem's padded row walk at 28 of 64 and the grouped walks.
    rows = _script_rows(UNTUNED, 900)
    assert len(rows) >= 10 and "stem_7x7" in rows and "3x3_grouped_g32" in rows
    for name, row in rows.items():
        assert row["HGMMA"] > 0 and row["LDL"] == 0 and row["STL"] == 0, f"{name}: {row}"

