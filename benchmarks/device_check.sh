#!/usr/bin/env bash
# The second command for a lent GPU machine, after device_run.sh on the same warm machine: what
# the suite's timings and result checks cannot see.
#   - compute-sanitizer memcheck over every kernel path (benchmarks/memcheck_workload.py): every
#     Triton conv walk with every config the autotuner tries, split-K counters and workspace, the
#     TMA kernel's tails, the extension's vector tails, the pool; then a ResNet-50 batch-1 forward
#     and its CUDA graph. Each result is also checked against float64.
#   - Nsight Compute on one tuned ResNet-50 bf16 batch-256 forward: per kernel, DRAM and SM
#     throughput as % of peak, registers, occupancy (ncu-b256.md).
#   - racecheck (shared-memory hazards) on the quick conv cases, last: informational.
#
#   run: bash benchmarks/device_check.sh            (timeout_s ~ 290: it caps itself at CHECK_BUDGET, 260 s,
#                                                     what its steps add up to on a warm machine)
#   bash benchmarks/device_check.sh OUTDIR [--dry-run]
#
# Writes into OUTDIR (default $OUT, which the device tool brings back; 8 files at most, so never more
# than 8 here): one log per step, ncu-b256.csv, check-steps.tsv, check-summary.md (printed last, with
# the ncu table). Step budgets: T_INSTALL, T_MEMCHECK, T_NCU,
# T_MEMCHECK_MODEL, T_RACECHECK. The device tool gives a machine back after ~30 s idle: issue this
# right after device_run.sh returns, or it starts a fresh machine (minutes, and a cold Triton cache).
set -u
. "$(dirname "$0")/steps.sh"
second_command_init device_check check-steps.tsv "${CHECK_BUDGET:-260}" "$@"

find_tool() {  # on PATH, else where CUDA and Nsight Compute install it
  command -v "$1" 2>/dev/null && return 0
  ls -d /usr/local/cuda/bin/"$1" /usr/local/cuda-*/bin/"$1" /usr/local/cuda*/compute-sanitizer/"$1" \
        /opt/nvidia/nsight-compute/*/"$1" 2>/dev/null | head -n 1
}
# Not found: the bare name, so the step fails with exit 127 and "No such file or directory" in its log.
SAN=$(find_tool compute-sanitizer); SAN=${SAN:-compute-sanitizer}
NCU=$(find_tool ncu); NCU=${NCU:-ncu}

# On a fresh machine (the suite's one went back): build the extension first, as the suite does.
install_if_cold

WORKLOAD="$PY benchmarks/memcheck_workload.py --device cuda"
# API errors off: CUDA libraries probe entry points (cuGetProcAddress) and count as errors otherwise;
# every device-side finding still sets exit 99. Padding between allocations, so that an overrun lands
# in no other tensor. Only the Python process: not Triton's ptxas children.
SAN_COMMON="--report-api-errors no --error-exitcode 99 --target-processes application-only"
MEMCHECK="$SAN --tool memcheck $SAN_COMMON --padding 512 --print-limit 50"

# Each tensor its own allocation (no caching allocator), so an access past a tensor's end is one
# memcheck sees; autotuning on and its disk cache off, so every candidate config of each case runs.
step memcheck_convs "${T_MEMCHECK:-110}" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 RESNET_FAST_AUTOTUNE_CACHE=0 \
  $MEMCHECK $WORKLOAD --sections add_relu,convs,pool
# One forward after warm-up (tuned configs from the suite's Triton cache on a warm machine).
step ncu_b256 "${T_NCU:-60}" $NCU --clock-control none --profile-from-start off --print-units base \
  --section SpeedOfLight --section LaunchStats --section Occupancy --csv --page details \
  --log-file "$OUT/ncu-b256.csv" $PY benchmarks/ncu_forward.py --batch 256 --dtype bfloat16
# Graph capture needs PyTorch's caching allocator (its native backend: under cudaMallocAsync the
# activations a capture allocates are not yet mapped, and Triton's launcher refuses their pointers,
# session 7), so memcheck sees pooled blocks here: the convs section above is the strict one.
step memcheck_model "${T_MEMCHECK_MODEL:-60}" $MEMCHECK $WORKLOAD --sections model --graph
# Last and informational: racecheck may flag the asynchronous copies' shared-memory handoffs.
step racecheck "${T_RACECHECK:-30}" env RESNET_FAST_AUTOTUNE=0 \
  $SAN --tool racecheck $SAN_COMMON --print-limit 20 $WORKLOAD --sections convs --quick

{
  summary_head device_check "compute-sanitizer: \`$SAN\`; ncu: \`$NCU\`"
  if [ "$DRY" = 0 ]; then
    echo "Exit 99: the sanitizer found errors; 1: a wrong result or a Python error; 124/137: out of time; 127: tool missing."
    echo "memcheck has reported false errors at wgmma instructions, and racecheck flags asynchronous-copy handoffs: read those before believing them."
    echo
    while IFS=$'\t' read -r name rc dt cmd; do
      [ -f "$OUT/$name.log" ] || continue
      echo "### $name (exit $rc)"
      echo
      echo '```'
      grep -h -E "ERROR SUMMARY|RACECHECK SUMMARY|^=========  *[A-Z]|^========= [A-Z]|Traceback|Error:|^FAIL|memcheck_workload:" "$OUT/$name.log" | head -n 30
      [ "$rc" != 0 ] && { echo "-- last lines:"; tail -n 5 "$OUT/$name.log"; }
      echo '```'
      echo
    done < "$STATUS"
    if [ -f "$OUT/ncu-b256.csv" ]; then
      echo "### Nsight Compute, resnet50 bf16 batch 256, one forward"
      echo
      $PY benchmarks/ncu_forward.py --summarize "$OUT/ncu-b256.csv" 2>&1 | head -n 90
    fi
  fi
} > "$OUT/check-summary.md"
cat "$OUT/check-summary.md"
