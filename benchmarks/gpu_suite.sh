#!/usr/bin/env bash
# One prepared run for a lent GPU machine (one NVIDIA GPU, torch and Triton preinstalled, no
# network): install, build the extension, GPU tests, kernel and model benchmarks. Every step is
# time-bounded (well under 8 minutes in all); everything is logged under OUTDIR and summary.md is
# printed last. Results that matter go to benchmarks/results/ in a commit.
#
#   bash benchmarks/gpu_suite.sh OUTDIR            # run
#   bash benchmarks/gpu_suite.sh OUTDIR --dry-run  # list the steps (works on a CPU machine)
#
# Step budgets (seconds) can be changed with T_INSTALL, T_TMA_CANARY, T_HOST, T_TESTS, T_MODEL_BF16, T_KERNELS, T_PROFILE, T_MODEL_FP16;
# SUITE_BUDGET (default 400) caps the whole run: with the machine's start-up it leaves a lent
# session's 15 minutes room for a shorter second run.
set -u
OUTDIR=${1:?usage: gpu_suite.sh OUTDIR [--dry-run]}
DRY=0
[ "${2:-}" = "--dry-run" ] && DRY=1
. "$(dirname "$0")/steps.sh"
suite_env "$OUTDIR"
SUMMARY="$OUT/summary.md"
STATUS="$OUT/steps.tsv"
: > "$STATUS"
START=$(date +%s)

DEADLINE=$(( $(date +%s) + ${SUITE_BUDGET:-400} ))

step install      "${T_INSTALL:-75}"    $PY -m pip install --no-deps --no-build-isolation -e .
# No compiled extension (the install step failed or ran out of time): every later Python process would
# try a JIT build of its CPU part (30-60 s each, serialised on a lock file that a killed build leaves
# behind); use the PyTorch add_relu instead and say so. (A file test: importing would start that build.)
if [ "$DRY" = 0 ] && ! ls "$ROOT"/resnet_fast/_C*.so > /dev/null 2>&1; then
  export RESNET_FAST_EXTENSION=none
  echo "no compiled extension: later steps run with RESNET_FAST_EXTENSION=none" | tee "$OUT/no-extension.log"
fi
step extension    20                    $PY -c "import resnet_fast, torch; from resnet_fast import _extension; print('extension:', _extension.status()); print('cuda add_relu kernel:', _extension.has_cuda_kernels())"
step device       10                    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv,noheader
# Every config of the 1x1 TMA kernel once, checked, before the model step tunes them all: a config
# that is wrong, faults or hangs on the hardware turns off what failed for the later steps (the
# persistent configs, or the TMA kernel), instead of costing the headline numbers.
step tma_canary   "${T_TMA_CANARY:-60}"  $PY benchmarks/tma_canary.py --device cuda
[ "$DRY" = 0 ] && tma_canary_gate
# The headline first: the whole model, every provider, torch.compile included (default mode:
# max-autotune compiles for minutes per batch size; COMPILE_MODE=max-autotune where time allows).
# Batch 256 first, torch.compile in a pass of its own after every other provider of every batch size
# (what a compile leaves running in the process slowed later timings: session 12), rows saved one by
# one: the headline numbers survive a step that runs out of time.
step model_bf16   "${T_MODEL_BF16:-170}" $PY benchmarks/bench_model.py --device cuda --models resnet50 --batch-sizes 256,1,16 --dtype bfloat16 --compile --compile-mode "${COMPILE_MODE:-default}" --iters 30 --budget 3 --json "$OUT/model-bf16.json" --markdown "$OUT/model-bf16.md" --plot "$OUT/model-bf16.png"
# Host time of the eager forward at small batch (launch-bound), direct Triton launches on and off in
# one process, and a cProfile of what is left (kernels are compiled and tuned by now).
step host         "${T_HOST:-40}"       $PY benchmarks/host_overhead.py --device cuda --dtype bfloat16 --batch-sizes 1,16 --json "$OUT/host-bf16.json" --markdown "$OUT/host-bf16.md"
# Autotune timings and compiled kernels are on disk by now (Triton's cache): the per-conv step
# re-times only what the model did not use (and the 1x1 TMA kernel, whose tuning Triton does not cache).
step kernels      "${T_KERNELS:-70}"    $PY benchmarks/bench_kernels.py --device cuda --dtype bfloat16 --batch 256 --iters 20 --budget 2 --json "$OUT/kernels-bf16.json" --markdown "$OUT/kernels-bf16.md"
# The GPU tests after the acceptance numbers (the model rows carry their own error against
# torchvision). Correctness with one Triton config (RESNET_FAST_AUTOTUNE=0): no time spent compiling every config.
# -v streams one line per test, so a step cut short still says what passed (benchmarks/targets.py).
# With pytest-xdist (in the lent machines' image) four workers share the GPU: the Triton compiles of
# the many (shape, dtype) specialisations run in parallel.
XDIST=""
[ "$DRY" = 0 ] && $PY -c "import xdist" 2>/dev/null && XDIST="-n ${TEST_WORKERS:-4}"
step tests        "${T_TESTS:-110}"     env RESNET_FAST_AUTOTUNE=0 $PY -m pytest -m gpu -v -ra --durations=20 -p no:cacheprovider $XDIST tests
# Kernel by kernel through one eager forward (torch.profiler): at batch 1 the launch-order list says
# which convs the CUDA graph's replay time goes to; at 256, the conv/pooling split. At batch 1 also the
# graph replay with split-K shares added in the conv (the default) against separate reduce kernels.
step profile      "${T_PROFILE:-50}"    $PY benchmarks/profile_model.py --device cuda --model resnet50 --batch-sizes 1,256 --dtype bfloat16 --json "$OUT/profile-bf16.json" --markdown "$OUT/profile-bf16.md"
# fp16: the same providers and batch sizes, torch.compile included.
step model_fp16   "${T_MODEL_FP16:-150}" $PY benchmarks/bench_model.py --device cuda --models resnet50 --batch-sizes 256,1,16 --dtype float16 --compile --compile-mode "${COMPILE_MODE:-default}" --iters 20 --budget 2 --json "$OUT/model-fp16.json" --markdown "$OUT/model-fp16.md"
{
  echo "# gpu_suite $( [ "$DRY" = 1 ] && echo '(dry run)' ) $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "Total: $(( $(date +%s) - START )) s. Command: \`bash benchmarks/gpu_suite.sh $*\` at $(git rev-parse --short HEAD 2>/dev/null)"
  echo
  steps_table 120
  echo
  if [ "$DRY" = 0 ]; then
    echo "Device: $(cat "$OUT/device.log" 2>/dev/null | head -n 1)"
    echo
    grep -h "^extension:\|^cuda add_relu" "$OUT/extension.log" 2>/dev/null
    cat "$OUT/no-extension.log" 2>/dev/null
    cat "$OUT/no-tma.log" 2>/dev/null
    echo
    echo "Tests: $(grep -E '(passed|failed|error)' "$OUT/tests.log" 2>/dev/null | tail -n 1)"
    echo
    grep -E '^(FAILED|ERROR) ' "$OUT/tests.log" 2>/dev/null | head -n 20
    # The thread-pool precompile has never run on a GPU before: say if it fell back.
    grep -h "parallel Triton compile unavailable" "$OUT"/*.log 2>/dev/null | head -n 2
    echo
    # The launcher's first-call decisions the steps saved (kernels/decisions.py): what later processes ran.
    echo "Decisions on disk: $($PY -c 'from resnet_fast.kernels import decisions; print(decisions.describe())' 2>&1 | head -n 5)"
    echo
    echo "## Targets"
    echo
    $PY benchmarks/targets.py "$OUT" 2>&1
    echo
    for f in model-bf16 host-bf16 kernels-bf16 model-fp16 profile-bf16; do
      [ -f "$OUT/$f.md" ] && { cat "$OUT/$f.md"; echo; }
    done
  fi
} > "$SUMMARY"
cat "$SUMMARY"
