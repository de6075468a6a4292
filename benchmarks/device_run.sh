#!/usr/bin/env bash
# The command for a lent GPU machine (the device tool's `run`): gpu_suite.sh into a scratch folder,
# then at most 8 files into $OUT, which is all the tool brings back: summary.md (with the targets
# table), the four JSON results, the plot, and every log in one tarball.
#
#   run: bash benchmarks/device_run.sh            (timeout_s ~ 470: the suite caps itself at 400 s)
#
# Extra arguments go to gpu_suite.sh; step budgets through its environment variables.
# Then, at once (the machine goes back after ~30 s idle), the second command: bash benchmarks/device_check.sh
set -u
: "${OUT:?set OUT to the folder the device tool brings back}"
W=${SUITE_DIR:-/tmp/gpu_suite}
rm -rf "$W"
export PYTHONUNBUFFERED=1
bash "$(dirname "$0")/gpu_suite.sh" "$W" "$@"
for f in summary.md model-bf16.json host-bf16.json kernels-bf16.json model-fp16.json model-bf16.png; do
  [ -f "$W/$f" ] && cp "$W/$f" "$OUT/"
done
tar czf "$OUT/gpu_suite_logs.tgz" -C "$(dirname "$W")" "$(basename "$W")"
ls -l "$OUT"
