"""The benchmark scripts run (smoke sizes) and the GPU suite lists its steps on a CPU machine."""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_suite_dry_run(tmp_path):
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_suite.sh"), str(tmp_path / "out"), "--dry-run"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    steps = [line.split()[0] for line in proc.stdout.splitlines() if line and not line.startswith(("#", "|", "Total"))]
    for name in ("install", "extension", "device", "tests", "kernels", "model_bf16", "host", "profile", "model_fp16"):
        assert name in steps, proc.stdout
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "dry run" in summary and "| tests | dry-run |" in summary
    assert "pytest -m gpu" in proc.stdout and "--compile" in proc.stdout
    for step in ("model_bf16", "model_fp16"):  # issue 5: batch 1, 16 and 256, each dtype, torch.compile beside
        line = next(line for line in proc.stdout.splitlines() if line.startswith(step))
        assert "--batch-sizes 256,1,16" in line and "--compile" in line, line


@pytest.mark.parametrize("rc,log,expect", [
    ("0", "every config: ok", ""),
    ("skipped (budget spent)", "", ""),
    ("3", "ok   a\none-tile configs: ok\nFAIL b p1", "RESNET_FAST_TMA_PERSISTENT=0"),
    ("124", "ok   a\none-tile configs: ok\nok   b p1", "RESNET_FAST_TMA_PERSISTENT=0"),  # hung in a persistent one
    ("1", "FAIL a", "RESNET_FAST_TMA=0"),
    ("139", "", "RESNET_FAST_TMA=0"),  # crashed before any line
])
def test_tma_canary_gate_turns_off_what_failed(tmp_path, rc, log, expect):
    (tmp_path / "steps.tsv").write_text(f"device\t0\t0\tnvidia-smi\ntma_canary\t{rc}\t12\tpython canary\n")
    (tmp_path / "tma_canary.log").write_text(log + "\n")
    script = (f". {os.path.join(ROOT, 'benchmarks', 'steps.sh')}; OUT={tmp_path}; STATUS={tmp_path}/steps.tsv; "
              "unset RESNET_FAST_TMA RESNET_FAST_TMA_PERSISTENT; tma_canary_gate > /dev/null; "
              'echo "TMA=${RESNET_FAST_TMA-} PERSISTENT=${RESNET_FAST_TMA_PERSISTENT-}"')
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.strip()
    want = {"": "TMA= PERSISTENT=", "RESNET_FAST_TMA=0": "TMA=0 PERSISTENT=",
            "RESNET_FAST_TMA_PERSISTENT=0": "TMA= PERSISTENT=0"}[expect]
    assert out == want
    assert (tmp_path / "no-tma.log").exists() == bool(expect)


def test_tma_canary_in_the_interpreter():
    # Both kinds of config (one tile per program, persistent) on a small case; the marker line between.
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "tma_canary.py"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines.index("one-tile configs: ok") == 2 and len([l for l in lines if l.startswith("ok  ")]) == 6
    assert lines[-1] == "every config: ok"


def test_bench_model_smoke(tmp_path):
    out = tmp_path / "m.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_model.py"), "--device", "cpu",
                           "--models", "resnet18", "--batch-sizes", "1", "--size", "64", "--quick",
                           "--json", str(out), "--markdown", str(tmp_path / "m.md"), "--plot", str(tmp_path / "m.png")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["device"] == "cpu" and data["torch"]
    providers = {r["provider"] for r in data["rows"]}
    assert {"torchvision", "torchvision_cl", "resnet_fast"} <= providers
    for r in data["rows"]:
        assert r["median_ms"] > 0 and r["max_rel_err_vs_torchvision"] < 1e-4
        for field in ("provider", "model", "batch_size", "dtype", "device", "p20_ms", "p80_ms", "images_per_s", "speedup_vs_torchvision"):
            assert field in r
    assert (tmp_path / "m.png").stat().st_size > 1000


def test_bench_model_times_torch_compile_after_every_other_provider_of_every_batch(tmp_path):
    out = tmp_path / "c.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_model.py"), "--device", "cpu",
                           "--models", "resnet18", "--batch-sizes", "1,2", "--size", "32", "--quick", "--compile",
                           "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    # Listed per batch size, torch.compile last ...
    names = ["torchvision", "torchvision_cl", "resnet_fast", "torch_compile"]
    assert [(r["batch_size"], r["provider"]) for r in rows] == [(b, n) for b in (1, 2) for n in names]
    # ... but timed after every other provider of both batch sizes: what a compile leaves running
    # must not slow the eager rows.
    eager = [r["timed_order"] for r in rows if r["provider"] != "torch_compile"]
    compiled = [r for r in rows if r["provider"] == "torch_compile"]
    assert sorted(eager) == list(range(6)) and sorted(r["timed_order"] for r in compiled) == [6, 7]
    for r in compiled:
        base = next(b for b in rows if b["provider"] == "torchvision" and b["batch_size"] == r["batch_size"])
        assert r["compile_s"] > 0 and r["max_rel_err_vs_torchvision"] < 1e-4
        assert r["speedup_vs_torchvision"] == pytest.approx(base["median_ms"] / r["median_ms"])
    assert all(r["compile_s"] is None for r in rows if r["provider"] != "torch_compile")


def test_bench_model_skips_providers_but_never_the_baseline(tmp_path):
    out = tmp_path / "s.json"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_model.py"), "--device", "cpu", "--models", "resnet18",
           "--batch-sizes", "1", "--size", "32", "--quick", "--json", str(out)]
    proc = subprocess.run(cmd + ["--skip-providers", "torchvision_cl"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["provider"] for r in json.loads(out.read_text())["rows"]] == ["torchvision", "resnet_fast"]
    proc = subprocess.run(cmd + ["--skip-providers", "torchvision"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "--skip-providers: expected some of" in proc.stderr


def test_profile_model_smoke(tmp_path):
    out = tmp_path / "p.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "profile_model.py"), "--device", "cpu",
                           "--model", "resnet18", "--batch-sizes", "1,2", "--size", "48", "--iters", "2",
                           "--sequence-up-to", "1", "--json", str(out), "--markdown", str(tmp_path / "p.md")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = [r for r in data["rows"] if r["batch_size"] == 1]
    by_name = {r["name"]: r for r in rows}
    # resnet18: 20 convs, 12 plain (stem, first conv of each block, 3 projections) and 8 with the residual
    assert by_name["resnet_fast::conv2d_bias_act"]["calls_per_forward"] == 12
    assert by_name["resnet_fast::conv2d_bias_act_add_"]["calls_per_forward"] == 8
    assert abs(sum(r["share"] for r in rows) - 1) < 1e-6
    forward = data["forwards"]["1"]
    assert 0 < forward["busy_us"] and len(forward["sequence"]) == sum(r["calls_per_forward"] for r in rows)
    assert "one forward in launch order" in (tmp_path / "p.md").read_text()


def _bench_kernels_cpu(out, *args):
    """Run bench_kernels.py on the CPU at batch 1 with a JSON output; returns the parsed JSON."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_kernels.py"), "--device", "cpu",
                           "--batch", "1", "--json", str(out), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_bench_kernels_smoke(tmp_path):
    data = _bench_kernels_cpu(tmp_path / "k.json", "--only", "add_relu", "--iters", "3", "--budget", "0.5")
    assert data["copy_gbps"] > 0
    assert {r["provider"] for r in data["rows"]} == {"torch add_+relu_", "resnet_fast add_relu_"}
    assert all(r["copy_same_size_gbps"] > 0 for r in data["rows"])


def test_bench_kernels_max_pool_smoke(tmp_path):
    data = _bench_kernels_cpu(tmp_path / "k.json", "--only", "max_pool", "--iters", "2", "--budget", "0.2")
    rows = data["rows"]
    assert {r["provider"] for r in rows} == {"torch max_pool2d", "resnet_fast max_pool2d"}
    assert all(r["max_rel_err"] == 0 and r["gbps"] > 0 for r in rows)


def test_python_m_resnet_fast_smoke():
    proc = subprocess.run([sys.executable, "-m", "resnet_fast", "--batch-size", "1", "--size", "64", "--iters", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for needle in ("CUDA", "Triton", "extension resnet_fast._C", "compiled", "backend", "resnet_fast", "max rel. error", "speedup"):
        assert needle in out, out


def test_device_run_brings_back_at_most_eight_files(tmp_path):
    out = tmp_path / "OUT"
    out.mkdir()
    env = {**os.environ, "OUT": str(out), "SUITE_DIR": str(tmp_path / "suite")}
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "device_run.sh"), "--dry-run"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    files = sorted(p.name for p in out.iterdir())
    assert "summary.md" in files and "gpu_suite_logs.tgz" in files and len(files) <= 8, files


def _bench_module(name):
    """A module of benchmarks/ (they import each other as top-level modules)."""
    import importlib

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def _targets(outdir):
    targets = _bench_module("targets")
    return {key: (m, v) for key, _, m, v in targets.evaluate(str(outdir))}


def test_targets_verdicts(tmp_path):
    # Made-up numbers in the bench scripts' row format: one target met, one missed, for each kind.
    conv = lambda shape, prov, ms, err=0.004: {"kernel": "conv2d_bias_act", "shape": shape, "provider": prov,  # noqa: E731
                                               "median_ms": ms, "max_rel_err": err}
    kernels = {"copy_gbps": 3000.0, "rows": [
        {"kernel": "add_relu_", "shape": "a", "provider": "resnet_fast add_relu_", "gbps": 2850.0, "fraction_of_peak": 0.95},
        {"kernel": "add_relu_", "shape": "b", "provider": "resnet_fast add_relu_", "gbps": 2400.0, "fraction_of_peak": 0.80,
         "copy_same_size_gbps": 2600.0},
        conv("s1", "torch conv + separate bias/add/relu", 2.0), conv("s1", "resnet_fast fused", 1.0),
        conv("s2", "torch conv + separate bias/add/relu", 1.0), conv("s2", "resnet_fast fused", 1.25, 0.013)]}
    model = {"rows": [
        {"provider": "torchvision_cl", "model": "resnet50", "batch_size": 256, "median_ms": 30.0, "max_rel_err_vs_torchvision": 0.5},
        {"provider": "resnet_fast", "model": "resnet50", "batch_size": 256, "median_ms": 14.0, "max_rel_err_vs_torchvision": 0.03},
        {"provider": "resnet_fast_graph", "model": "resnet50", "batch_size": 1, "median_ms": 0.75,
         "max_rel_err_vs_torchvision": 0.8}]}
    (tmp_path / "kernels-bf16.json").write_text(json.dumps(kernels))
    (tmp_path / "model-bf16.json").write_text(json.dumps(model))
    (tmp_path / "tests.log").write_text("...\n==== 3 failed, 54 passed in 80.1s ====\n")
    got = _targets(tmp_path)
    assert got["add_relu_bandwidth"][1] == "NOT met" and "80%" in got["add_relu_bandwidth"][0]
    assert "a copy of one tensor of that size: 2600 GB/s" in got["add_relu_bandwidth"][0]
    assert got["conv_vs_unfused"][1] == "NOT met" and "1/2 shapes" in got["conv_vs_unfused"][0] and "0.80x" in got["conv_vs_unfused"][0]
    assert got["model_2x"][1] == "met" and "2.14x" in got["model_2x"][0]
    assert "kernels alone" not in got["conv_vs_unfused"][0]  # no graph_ms column: nothing said
    assert "back to back" not in got["conv_vs_unfused"][0]
    for row, graph, queued in zip(kernels["rows"][2:], [1.9, 0.9, 1.0, 0.8], [2.0, 2.5, 1.0, 1.1]):
        row["graph_ms"] = graph
        row["back_to_back_ms"] = queued
    (tmp_path / "kernels-bf16.json").write_text(json.dumps(kernels))
    conv_row = _targets(tmp_path)["conv_vs_unfused"]
    assert conv_row[1] == "NOT met" and "kernels alone (graph replay) 2/2, worst 1.25x" in conv_row[0]  # informational
    assert "queued back to back 0/2, worst 0.80x" in conv_row[0]
    assert got["graph_latency"] == ("0.750 ms", "NOT met")
    model["rows"][2].update(median_ms=0.45, sync_ms=0.65)  # fast on the GPU, slow to call: the caller's latency decides
    (tmp_path / "model-bf16.json").write_text(json.dumps(model))
    assert _targets(tmp_path)["graph_latency"] == ("0.650 ms called alone, 0.450 ms per queued replay", "NOT met")
    model["rows"][2].update(sync_ms=0.52)
    (tmp_path / "model-bf16.json").write_text(json.dumps(model))
    assert _targets(tmp_path)["graph_latency"][1] == "met"
    assert got["gpu_tests"][1] == "NOT met"
    assert got["conv_agreement"] == ("norm-wise worst 1.30e-02 (s2)", "met")
    # a wrong graph replay fails; torchvision's own providers are not resnet_fast's to answer for
    assert got["model_agreement"] == ("worst 8.00e-01 (resnet_fast_graph b1)", "NOT met")
    # pytest killed by the step's time limit: the -v lines still count.
    (tmp_path / "tests.log").write_text("tests/test_a.py::t1 PASSED [ 1%]\ntests/test_a.py::t2 PASSED [ 2%]\n")
    assert _targets(tmp_path)["gpu_tests"] == ("cut off after 2 passed", "not measured")
    (tmp_path / "tests.log").write_text("tests/test_a.py::t1 PASSED [ 1%]\ntests/test_a.py::t2 FAILED [ 2%]\n")
    assert _targets(tmp_path)["gpu_tests"][1] == "NOT met"
    (tmp_path / "tests.log").write_text("[gw1] [ 16%] PASSED tests/test_a.py::t1 \n[gw0] [ 33%] PASSED tests/test_a.py::t2 \n")
    assert _targets(tmp_path)["gpu_tests"] == ("cut off after 2 passed", "not measured")  # pytest-xdist's -v lines
    # Nothing measured: every verdict says so instead of passing.
    empty = _targets(tmp_path / "nothing")
    assert all(v == "not measured" for _, v in empty.values())


def test_targets_report_each_wave_split(tmp_path):
    targets = _bench_module("targets")
    shape = "layer4.1.conv2 512->512 k3 s1 7x7 n256"
    runs = [{"n": 256, "m": 12544, "part": False, "split_k": 1, "best": "128x128x64 w8 s3", "config_ms": {"a": 0.104, "b": 0.111}},
            {"n": 172, "m": 8428, "part": True, "split_k": 1, "best": "128x256x64 w8 s3", "config_ms": {"a": 0.056}},
            {"n": 84, "m": 4116, "part": True, "split_k": 1, "best": "128x128x64 w8 s4", "config_ms": None}]
    kernels = {"rows": [
        {"kernel": "conv2d_bias_act", "shape": shape, "provider": "resnet_fast fused", "median_ms": 0.0932,
         "wave_split": "two launches: images [0, 172) + [172, N) 0.093 ms against 0.104 ms for one launch", "tuning_runs": runs},
        {"kernel": "conv2d_bias_act", "shape": shape, "provider": "resnet_fast launcher, one launch forced", "median_ms": 0.1041},
        {"kernel": "conv2d_bias_act", "shape": "other", "provider": "resnet_fast fused", "median_ms": 0.05, "wave_split": None}]}
    (tmp_path / "kernels-bf16.json").write_text(json.dumps(kernels))
    text = targets.wave_splits(str(tmp_path))
    (line,) = [ln for ln in text.splitlines() if ln.startswith("- ")]
    assert line.startswith(f"- {shape}: two launches") and "Bench median 93.2 us (one launch forced: 104.1 us)" in line
    assert ("one launch: 128x128x64 w8 s3 104.0 us; launch of 172 images: 128x256x64 w8 s3 56.0 us; "
            "launch of 84 images: 128x128x64 w8 s4") in line
    assert targets.wave_splits(str(tmp_path / "nothing")) == ""


def test_targets_partial_runs_and_crashed_shapes_are_not_passes(tmp_path):
    """A kernels step cut short passes nothing on the shapes it reached; a shape whose fused kernel
    raised (an error row) fails; one wrong tile shows in the element-wise error though not in the norm."""
    conv = lambda shape, prov, ms, err=0.004, abs_err=0.01: {  # noqa: E731
        "kernel": "conv2d_bias_act", "shape": shape, "provider": prov, "median_ms": ms, "max_rel_err": err, "max_abs_err": abs_err}
    base = "torch conv + separate bias/add/relu"
    rows = [conv("s1", base, 2.0), conv("s1", "resnet_fast fused", 1.0), conv("s2", base, 2.0), conv("s2", "resnet_fast fused", 1.0),
            {"kernel": "add_relu_", "shape": "a", "provider": "resnet_fast add_relu_", "gbps": 2900.0, "fraction_of_peak": 0.97}]
    kernels = {"copy_gbps": 3000.0, "planned": {"add_relu": 4, "conv_shapes": 24}, "rows": rows}
    (tmp_path / "kernels-bf16.json").write_text(json.dumps(kernels))
    got = _targets(tmp_path)
    assert got["conv_vs_unfused"][1] == "not measured" and "(partial: 2/24)" in got["conv_vs_unfused"][0]
    assert got["add_relu_bandwidth"][1] == "not measured" and "(partial: 1/4)" in got["add_relu_bandwidth"][0]
    assert got["conv_agreement"][1] == "not measured"
    kernels["rows"] = rows + [conv("s3", base, 1.0)]  # cut short while the fused kernel tuned on s3
    (tmp_path / "kernels-bf16.json").write_text(json.dumps(kernels))
    got = _targets(tmp_path)
    assert got["conv_vs_unfused"][1] == "not measured" and "failed" not in got["conv_vs_unfused"][0]
    error = {"kernel": "conv2d_bias_act", "shape": "s3", "provider": "resnet_fast fused", "error": "RuntimeError: boom"}
    kernels["rows"] = rows + [conv("s3", base, 1.0), error]  # the fused kernel raised on s3
    (tmp_path / "kernels-bf16.json").write_text(json.dumps(kernels))
    got = _targets(tmp_path)
    assert got["conv_vs_unfused"][1] == "NOT met" and "fused kernel failed on 1 (s3)" in got["conv_vs_unfused"][0]
    kernels["rows"] = rows[:3] + [conv("s2", "resnet_fast fused", 1.0, 0.012, 0.4)]  # one bad tile: norm-wise fine
    (tmp_path / "kernels-bf16.json").write_text(json.dumps(kernels))
    got = _targets(tmp_path)
    assert got["conv_agreement"][1] == "NOT met" and "element-wise worst 4.00e-01 (s2)" in got["conv_agreement"][0]


def test_bench_kernels_conv_smoke(tmp_path):
    # The per-conv benchmark's loop over every distinct ResNet-50 conv (the GPU run adds cuDNN's fused
    # ops and the Triton tuning data to the same rows).
    data = _bench_kernels_cpu(tmp_path / "k.json", "--only", "conv", "--iters", "2", "--budget", "0.1")
    fused = [r for r in data["rows"] if r["provider"] == "resnet_fast fused"]
    assert len(fused) >= 15 and data["matmul_tflops"] > 0
    assert all(r["max_rel_err"] < 1e-4 and r["max_abs_err"] < 1e-3 and r["tflops"] > 0 for r in fused)
    assert data["planned"] == {"add_relu": 0, "conv_shapes": len({r["shape"] for r in data["rows"]})}


def test_bench_kernels_takes_any_family_models_convs(tmp_path):
    # ResNeXt's grouped 3x3s (timed against grouped cuDNN convs), BasicBlock's residual on conv2.
    kernels = _bench_module("bench_kernels")
    basic = {row[0]: row for row in kernels.model_convs("resnet18")}
    assert basic["layer1.0.conv2"][7] and not basic["layer1.0.conv1"][7] and not basic["layer2.0.downsample.0"][8]
    bottleneck = {row[0]: row for row in kernels.model_convs("resnet50")}
    assert bottleneck["layer1.0.conv3"][7] and not bottleneck["layer1.0.conv2"][7] and len(bottleneck) == 24
    data = _bench_kernels_cpu(tmp_path / "k.json", "--only", "conv", "--model", "resnext50_32x4d", "--iters", "1",
                              "--budget", "0.05")
    grouped = [r for r in data["rows"] if r["provider"] == "resnet_fast fused" and " g32" in r["shape"]]
    assert data["model"] == "resnext50_32x4d" and len(grouped) >= 4, [r["shape"] for r in data["rows"]]
    assert data["planned"]["conv_shapes"] > len(grouped)
    only = _bench_kernels_cpu(tmp_path / "g.json", "--only", "conv", "--model", "resnext50_32x4d", "--grouped-only",
                              "--iters", "1", "--budget", "0.05")
    shapes = {r["shape"] for r in only["rows"]}
    assert shapes == {r["shape"] for r in grouped} and only["planned"]["conv_shapes"] == len(shapes)
    assert all(r["max_rel_err"] < 1e-4 for r in data["rows"] if "max_rel_err" in r)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_kernels.py"), "--device", "cpu",
                           "--only", "conv", "--model", "alexnet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--model: expected one of resnet18" in proc.stderr

def test_device_check_dry_run_lists_its_steps(tmp_path):
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "device_check.sh"), str(tmp_path / "out"), "--dry-run"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    steps = [line.split()[0] for line in proc.stdout.splitlines() if line and not line.startswith(("#", "|", "Total"))]
    assert steps == ["install", "memcheck_convs", "ncu_b256", "memcheck_model", "racecheck"], proc.stdout
    assert "--tool memcheck --report-api-errors no --error-exitcode 99" in proc.stdout and "--profile-from-start off" in proc.stdout
    assert "| racecheck | dry-run |" in (tmp_path / "out" / "check-summary.md").read_text()


def test_device_family_dry_run_lists_its_steps(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "device_family.sh"), str(out), "--dry-run"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "FAMILY_MODELS": "resnet18,resnext50_32x4d"})
    assert proc.returncode == 0, proc.stderr
    steps = [line.split()[0] for line in proc.stdout.splitlines() if line and not line.startswith(("#", "|", "Total"))]
    assert steps == ["install", "family", "kernels_resnext"], proc.stdout
    assert "--model resnext50_32x4d --grouped-only" in proc.stdout
    assert "--models resnet18,resnext50_32x4d --batch-sizes 256 --dtype bfloat16" in proc.stdout
    assert "| family | dry-run |" in (out / "family-summary.md").read_text()
    assert len(list(out.iterdir())) <= 8  # what the device tool brings back


def test_family_target(tmp_path):
    row = lambda prov, model, ms, err=0.0: {"provider": prov, "model": model, "batch_size": 256, "median_ms": ms,  # noqa: E731
                                           "max_rel_err_vs_torchvision": err}
    cmd = "python3 bench_model.py --models resnet18,resnext50_32x4d,resnet152 --batch-sizes 256"
    path = tmp_path / "f.json"
    rows = [row("torchvision_cl", "resnet18", 10.0), row("resnet_fast", "resnet18", 5.0, 0.004),
            row("torchvision_cl", "resnext50_32x4d", 20.0), row("resnet_fast", "resnext50_32x4d", 25.0, 0.005)]
    targets = _bench_module("targets")
    path.write_text(json.dumps({"command": cmd, "rows": rows}))
    ((_, _, measured, verdict),) = targets.family(str(path))
    assert verdict == "NOT met" and "worst 0.80x (resnext50_32x4d b256)" in measured and "(partial: 2/3)" in measured
    rows[3]["median_ms"] = 15.0
    path.write_text(json.dumps({"command": cmd, "rows": rows}))
    ((_, _, measured, verdict),) = targets.family(str(path))
    assert verdict == "not measured" and "resnet18 b256 2.00x" in measured  # resnet152 never ran
    rows += [row("torchvision_cl", "resnet152", 30.0), row("resnet_fast", "resnet152", 12.0, 0.2)]
    path.write_text(json.dumps({"command": cmd, "rows": rows}))
    assert targets.family(str(path))[0][3] == "NOT met"  # fast but wrong
    rows[-1]["max_rel_err_vs_torchvision"] = 0.006
    path.write_text(json.dumps({"command": cmd, "rows": rows}))
    assert targets.family(str(path))[0][3] == "met"
    assert targets.family(str(tmp_path / "missing.json"))[0][3] == "not measured"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "targets.py"), "--family", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "| met |" in proc.stdout, proc.stderr
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "targets.py")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "expected a gpu_suite output folder or --family JSON, got neither" in proc.stderr

def test_memcheck_workload_runs_every_section_in_the_interpreter():
    """The workload device_check.sh runs under compute-sanitizer, on the CPU (Triton interpreter,
    small cases): it must run, and its checks must pass, before a GPU session spends time on it."""
    env = dict(os.environ, TRITON_INTERPRET="1", RESNET_FAST_BACKEND="triton")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "memcheck_workload.py"), "--device", "cpu",
                           "--quick", "--sections", "add_relu,convs,pool"], capture_output=True, text=True, timeout=600,
                          env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert not [line for line in lines if line.startswith("FAIL")]
    for case in ("add_relu_ torch.bfloat16 n=4097 offset=1", "conv 3x3 split 4 (in the kernel)", "conv 1x1 TMA kernel",
                 "max_pool2d 13x11"):
        assert any(line.startswith("ok") and case in line for line in lines), (case, proc.stdout[-3000:])
    assert "memcheck_workload: 0 wrong results" in lines[-1]


def test_memcheck_workload_reports_a_wrong_result():
    """Its checks can fail: with the pool kernel made wrong (every output + 1) the run prints a FAIL
    line and exits 1."""
    program = "\n".join([
        "import runpy, sys",
        "import resnet_fast.kernels.pool as pool",
        "real = pool.max_pool2d",
        "pool.max_pool2d = lambda *a, **k: real(*a, **k).add_(1)",
        "sys.argv = ['memcheck_workload.py', '--device', 'cpu', '--quick', '--sections', 'pool']",
        f"runpy.run_path({os.path.join(ROOT, 'benchmarks', 'memcheck_workload.py')!r}, run_name='__main__')",
    ])
    env = dict(os.environ, TRITON_INTERPRET="1", RESNET_FAST_BACKEND="triton", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "FAIL max_pool2d 13x11" in proc.stdout and "memcheck_workload: 1 wrong results" in proc.stdout


def test_ncu_summary_reads_the_details_csv(tmp_path):
    csv_text = "\n".join([
        "==PROF== Connected to process 1",
        '"ID","Kernel Name","Grid Size","Block Size","Section Name","Metric Name","Metric Unit","Metric Value"',
        '"0","_conv2d_bias_act_kernel","(392, 1, 1)","(128, 1, 1)","SOL","Duration","ns","1,500,000"',
        '"0","_conv2d_bias_act_kernel","(392, 1, 1)","(128, 1, 1)","SOL","DRAM Throughput","%","71.5"',
        '"0","_conv2d_bias_act_kernel","(392, 1, 1)","(128, 1, 1)","SOL","Rule","","a description\nover two lines"',
        '"1","_max_pool2d_nhwc_kernel","(99, 1, 1)","(256, 1, 1)","SOL","Compute (SM) Throughput","%","N/A"',
        '"0","_conv2d_bias_act_kernel","(392, 1, 1)","(128, 1, 1)","Launch","Registers Per Thread","register/thread","168"',
        '"1","_max_pool2d_nhwc_kernel","(99, 1, 1)","(256, 1, 1)","SOL","Duration","ns","500,000"',
        '"1","_max_pool2d_nhwc_kernel","(99, 1, 1)","(256, 1, 1)","Occupancy","Achieved Occupancy","%","88.2"',
        '"1","_max_pool2d_nhwc_kernel","(99, 1, 1)","(256, 1, 1)","SOL","Elapsed Cycles","cycle","9"',
    ]) + "\n"
    (tmp_path / "n.csv").write_text(csv_text)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "ncu_forward.py"), "--summarize",
                           str(tmp_path / "n.csv"), "--markdown", str(tmp_path / "n.md")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "n.md").read_text()
    assert table.startswith("2 kernels, 2000.0 us of kernel time")
    assert "| 0 | `_conv2d_bias_act_kernel` | (392, 1, 1) | 1500.0 | 75.0% | 72 | nan | 168 | nan |" in table
    assert "| 1 | `_max_pool2d_nhwc_kernel` | (99, 1, 1) | 500.0 | 25.0% | nan | nan | nan | 88 |" in table


def test_ncu_summary_says_why_there_are_no_kernels(tmp_path):
    (tmp_path / "n.csv").write_text("==PROF== Connected to process 1\n==ERROR== ERR_NVGPUCTRPERM - no permission\n")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "ncu_forward.py"), "--summarize",
                           str(tmp_path / "n.csv")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("0 kernels") and "==ERROR== ERR_NVGPUCTRPERM" in proc.stdout


def test_gpu_timing_is_triton_do_bench(monkeypatch):
    # DESIGN.md section 6: GPU rows are do_bench medians. No GPU here: do_bench and the sync are
    # stand-ins; what is checked is what time_fn asks of them and makes of their answer.
    import triton.testing

    common = _bench_module("common")
    asked = {}

    def fake_do_bench(fn, warmup, rep, return_mode):
        asked.update(warmup=warmup, rep=rep, return_mode=return_mode)
        for _ in range(5):
            fn()
        return [3.0, 1.0, 2.0, 4.0, 5.0]

    monkeypatch.setattr(triton.testing, "do_bench", fake_do_bench)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    seen = []
    got = common.time_fn(lambda i: seen.append(i), "cuda", iters=10, warmup=2, budget_s=0.5)
    assert got == {"median_ms": 3.0, "p20_ms": 2.0, "p80_ms": 4.0, "n": 5}
    assert asked["return_mode"] == "all" and 20.0 <= asked["rep"] <= 500.0
    assert seen == list(range(8))  # warm-up, the estimate, then do_bench's calls: each a new rotation index


def test_gpu_timing_lets_the_timed_calls_own_error_through(monkeypatch):
    # A provider that raises TypeError is not mistaken for a Triton without return_mode="all" (and timed again).
    import triton.testing

    common = _bench_module("common")
    benches = []

    def fake_do_bench(fn, warmup, rep, return_mode=None, quantiles=None):
        benches.append(return_mode)
        fn()

    monkeypatch.setattr(triton.testing, "do_bench", fake_do_bench)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    calls = []

    def provider(i):
        calls.append(i)
        if i >= 2:  # past the warm-up and the estimate
            raise TypeError("bad provider")

    with pytest.raises(TypeError, match="bad provider"):
        common.time_fn(provider, "cuda", iters=10, warmup=1, budget_s=0.5)
    assert benches == ["all"]


def test_timing_rounds_interleave_providers_and_take_the_median_round(monkeypatch):
    # A disturbance during one round must not decide a provider's figure, no provider always runs
    # first, and a provider whose timing raises gets its error back, once, while the others go on.
    common = _bench_module("common")
    order = []
    round_ms = {"a": [1.0, 9.0, 2.0], "b": [5.0, 4.0, 50.0]}

    def fake_time_fn(fn, device, iters, warmup, budget_s=10.0):
        name = fn(0)
        order.append(name)
        if name == "bad":
            raise RuntimeError("provider failed")
        ms = round_ms[name][sum(1 for o in order if o == name) - 1]
        return {"median_ms": ms, "p20_ms": ms - 0.5, "p80_ms": ms + 0.5, "n": 7}

    monkeypatch.setattr(common, "time_fn", fake_time_fn)
    got = common.time_rounds({"a": lambda i: "a", "bad": lambda i: "bad", "b": lambda i: "b"}, "cuda", 10, 2, rounds=3)
    assert order == ["a", "bad", "b", "b", "a", "b", "a"]  # each round starts one provider later; "bad" timed once
    assert got["a"] == {"median_ms": 2.0, "p20_ms": 1.5, "p80_ms": 2.5, "n": 21, "round_ms": [1.0, 9.0, 2.0]}
    assert got["b"]["median_ms"] == 5.0 and got["b"]["round_ms"] == [5.0, 4.0, 50.0]
    assert isinstance(got["bad"], RuntimeError) and "provider failed" in str(got["bad"])
    assert common.time_rounds({}, "cuda", 10, 2, rounds=3) == {}
