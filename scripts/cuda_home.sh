#!/usr/bin/env bash
# Prints the CUDA toolkit directory that `nvcc` really runs from (nothing if there is none).
# nvcc on PATH may be a wrapper script (`exec /usr/local/cuda-13.0/bin/nvcc "$@"`), so follow it.
set -u
nvcc=$(command -v nvcc 2>/dev/null) || { [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda; exit 0; }
nvcc=$(readlink -f "$nvcc")
if head -c 2 "$nvcc" | grep -q '#!'; then
  target=$(grep -oE '/[^ "]*/bin/nvcc' "$nvcc" | head -n 1)
  [ -n "$target" ] && nvcc=$(readlink -f "$target")
fi
dirname "$(dirname "$nvcc")"
