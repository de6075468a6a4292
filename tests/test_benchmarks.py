"""The benchmark scripts run (smoke sizes) and the GPU suite lists its steps on a CPU machine."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_suite_dry_run(tmp_path):
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_suite.sh"), str(tmp_path / "out"), "--dry-run"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    steps = [line.split()[0] for line in proc.stdout.splitlines() if line and not line.startswith(("#", "|", "Total"))]
    for name in ("install", "extension", "device", "tests", "kernels", "model_bf16", "model_fp16"):
        assert name in steps, proc.stdout
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "dry run" in summary and "| tests | dry-run |" in summary
    assert "pytest -m gpu" in proc.stdout and "--compile" in proc.stdout


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


def test_bench_kernels_smoke(tmp_path):
    out = tmp_path / "k.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_kernels.py"), "--device", "cpu",
                           "--only", "add_relu", "--batch", "1", "--iters", "3", "--budget", "0.5", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["copy_gbps"] > 0
    assert {r["provider"] for r in data["rows"]} == {"torch add_+relu_", "resnet_fast add_relu_"}


def test_python_m_resnet_fast_smoke():
    proc = subprocess.run([sys.executable, "-m", "resnet_fast", "--batch-size", "1", "--size", "64", "--iters", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for needle in ("CUDA", "Triton", "extension resnet_fast._C", "compiled", "backend", "resnet_fast", "max rel. error", "speedup"):
        assert needle in out, out
