# What gpu_suite.sh, device_check.sh and device_family.sh share (sourced, not run): their
# environment, the time-bounded step runner, the second commands' set-up, the steps table.

# suite_env OUTDIR: the repository root as working directory; OUT, the absolute OUTDIR (created); PY,
# the interpreter that holds torch (the lent machines have python3 and may have no plain python);
# the bare checkout importable (the package maps kernels/ itself when it is not installed); CUDA
# code built for sm_90 only.
suite_env() {
  mkdir -p "$1"
  OUT=$(cd "$1" && pwd)  # a relative OUTDIR is the caller's, resolved before the cd below
  ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  cd "$ROOT" || exit 1
  PY=${PYTHON:-$(command -v python3 || command -v python)}
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  export PYTHONUNBUFFERED=1
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
}

# step needs OUT (the log folder), STATUS (a TSV the summary reads), DEADLINE (epoch seconds: the
# whole run's budget) and DRY (1: only list the steps). SKIP_STEPS="a b" leaves the named steps out.

step() {  # step NAME TIMEOUT_S COMMAND...   (the limit is also capped by what is left before DEADLINE)
  local name=$1 limit=$2
  shift 2
  case " ${SKIP_STEPS:-} " in
    *" $name "*)
      printf '%s\t%s\t%s\t%s\n' "$name" "skipped (SKIP_STEPS)" "0" "$*" >> "$STATUS"
      return 0 ;;
  esac
  local left=$(( DEADLINE - $(date +%s) ))
  [ "$DRY" = 0 ] && [ "$left" -lt "$limit" ] && limit=$left
  if [ "$DRY" = 0 ] && [ "$limit" -le 5 ]; then
    printf '%s\t%s\t%s\t%s\n' "$name" "skipped (budget spent)" "0" "$*" >> "$STATUS"
    return 0
  fi
  if [ "$DRY" = 1 ]; then
    printf '%-14s %4ss  %s\n' "$name" "$limit" "$*"
    printf '%s\t%s\t%s\t%s\n' "$name" "dry-run" "0" "$*" >> "$STATUS"
    return 0
  fi
  local t0=$(date +%s)
  echo "== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  tail -n 3 "$OUT/$name.log"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$dt" "$*" >> "$STATUS"
  return 0
}

# tma_canary_gate (after the tma_canary step; needs OUT and STATUS): where the canary failed, export
# what turns the failed kind of TMA config off for every later step, and say so in no-tma.log (the
# summary prints it). Its log tells the kinds apart: "one-tile configs: ok" comes before the
# persistent configs run, so a persistent config that hung or faulted leaves that line behind.
tma_canary_gate() {
  local rc
  rc=$(awk -F'\t' '$1 == "tma_canary" {print $2}' "$STATUS")
  case "$rc" in
    0|skipped*|"") return 0 ;;
  esac
  if grep -q "^one-tile configs: ok" "$OUT/tma_canary.log" 2>/dev/null; then
    export RESNET_FAST_TMA_PERSISTENT=0
    echo "tma_canary exit $rc: a persistent TMA config failed; later steps run with RESNET_FAST_TMA_PERSISTENT=0" | tee "$OUT/no-tma.log"
  else
    export RESNET_FAST_TMA=0
    echo "tma_canary exit $rc: a one-tile TMA config failed; later steps run with RESNET_FAST_TMA=0" | tee "$OUT/no-tma.log"
  fi
}

# second_command_init NAME STATUS_FILE BUDGET_S "$@": a second command's set-up on a lent machine
# (device_check.sh, device_family.sh): OUTDIR from its first argument or $OUT, --dry-run anywhere
# (DRY), suite_env, an empty STATUS, START and DEADLINE (BUDGET_S from now).
second_command_init() {
  local name=$1 status=$2 budget=$3
  shift 3
  OUTDIR=${1:-${OUT:-}}
  [ "$OUTDIR" = "--dry-run" ] && OUTDIR=${OUT:-/tmp/$name}
  [ -n "$OUTDIR" ] || { echo "usage: $name.sh OUTDIR [--dry-run] (or set OUT)" >&2; exit 2; }
  DRY=0
  local a
  for a in "$@"; do [ "$a" = "--dry-run" ] && DRY=1; done
  suite_env "$OUTDIR"
  STATUS="$OUT/$status"
  : > "$STATUS"
  START=$(date +%s)
  DEADLINE=$(( START + budget ))
}

# install_if_cold: on a fresh machine (the suite's one went back) or in a dry run, the install step,
# as the suite runs it; still no extension: RESNET_FAST_EXTENSION=none for every later step (no JIT
# build in each). Sets COLD.
install_if_cold() {
  COLD=0
  if [ "$DRY" = 1 ] || ! ls "$ROOT"/resnet_fast/_C*.so > /dev/null 2>&1; then
    COLD=1
    step install "${T_INSTALL:-75}" $PY -m pip install --no-deps --no-build-isolation -e .
    [ "$DRY" = 0 ] && ! ls "$ROOT"/resnet_fast/_C*.so > /dev/null 2>&1 && export RESNET_FAST_EXTENSION=none
  fi
  return 0
}

# steps_table WIDTH: STATUS as a markdown table, each command cut at WIDTH characters.
steps_table() {
  echo "| step | exit | seconds | command |"
  echo "|---|---|---|---|"
  local name rc dt cmd
  while IFS=$'\t' read -r name rc dt cmd; do
    echo "| $name | $rc | $dt | \`${cmd:0:$1}\` |"
  done < "$STATUS"
}

# summary_head NAME [NOTE]: a second command's summary header: title, total time, commit (and NOTE),
# the steps table, and on a real run the cold-machine line.
summary_head() {
  echo "# $1 $( [ "$DRY" = 1 ] && echo '(dry run)' ) $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "Total: $(( $(date +%s) - START )) s at $(git rev-parse --short HEAD 2>/dev/null)${2:+. $2}"
  echo
  steps_table 140
  if [ "$DRY" = 0 ]; then
    echo
    [ "$COLD" = 1 ] && echo "COLD MACHINE: the extension was built here, Triton compiled and tuned from scratch." && echo
  fi
  return 0
}
