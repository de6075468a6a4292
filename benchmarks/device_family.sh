#!/usr/bin/env bash
# A second command for a lent GPU machine, after device_run.sh on the same warm machine (instead of
# device_check.sh, where the kernels did not change since its last clean run): the rest of the ResNet
# family, which the suite never times. resnet_fast claims to be the faster drop-in for every
# torchvision ResNet, and the family brings conv shapes resnet50 has not: ResNeXt's grouped 3x3s
# (32 and 64 groups), the wide ResNets' 2x-wide 3x3s, BasicBlock's 1x1 stride-2 shortcuts.
#
#   run: bash benchmarks/device_family.sh            (timeout_s ~ 290: it caps itself at FAMILY_BUDGET, 260 s)
#   bash benchmarks/device_family.sh OUTDIR [--dry-run]
#
# Per model (bf16, batch FAMILY_BATCHES, default 256): torchvision NCHW and channels_last against
# resnet_fast eager, in one process, rows saved one by one (models in FAMILY_MODELS order, the ones
# with new conv shapes first: a run cut short keeps those), T_FAMILY (190 s) at most. Then, in what
# time is left, resnext50_32x4d's grouped 3x3s one by one (bench_kernels --grouped-only: the fused
# kernel against cuDNN's grouped conv + separate epilogue and cuDNN's fused grouped conv). Writes
# family-bf16.json, kernels-resnext50.json, the step logs and family-summary.md (printed last: the
# verdict, every model at or above torchvision channels_last, and both tables), 7 files at most.
# Each new conv shape tunes on its first call (~2-5 s), so the budget goes mostly to tuning.
set -u
. "$(dirname "$0")/steps.sh"
second_command_init device_family family-steps.tsv "${FAMILY_BUDGET:-260}" "$@"
MODELS=${FAMILY_MODELS:-resnext50_32x4d,resnet18,wide_resnet50_2,resnet101,resnet34,resnext101_32x8d,resnet152,wide_resnet101_2,resnext101_64x4d}

install_if_cold
# The markdown tables go outside OUT (the device tool brings back 8 files at most): the summary has them.
MD=$(mktemp -d)
step family "${T_FAMILY:-190}" $PY benchmarks/bench_model.py --device cuda --models "$MODELS" --batch-sizes "${FAMILY_BATCHES:-256}" \
  --dtype bfloat16 --skip-providers resnet_fast_torch_backend,resnet_fast_graph --iters 10 --warmup 3 --budget 1 \
  --json "$OUT/family-bf16.json" --markdown "$MD/family-bf16.md"
# What is left, but ~15 s for the summary below.
LEFT=$(( DEADLINE - $(date +%s) - 15 ))
step kernels_resnext "$LEFT" $PY benchmarks/bench_kernels.py --device cuda --dtype bfloat16 --batch 256 --only conv \
  --model resnext50_32x4d --grouped-only --iters 10 --budget 1 --rounds 2 --json "$OUT/kernels-resnext50.json" \
  --markdown "$MD/kernels-resnext50.md"
{
  summary_head device_family
  if [ "$DRY" = 0 ]; then
    $PY benchmarks/targets.py --family "$OUT/family-bf16.json" 2>&1
    echo
    cat "$MD/family-bf16.md" 2>/dev/null
    echo
    cat "$MD/kernels-resnext50.md" 2>/dev/null
    echo
    grep -h -E "Traceback|Error|failed" "$OUT/family.log" "$OUT/kernels_resnext.log" 2>/dev/null | head -n 20
  fi
} > "$OUT/family-summary.md"
rm -rf "$MD"
cat "$OUT/family-summary.md"
