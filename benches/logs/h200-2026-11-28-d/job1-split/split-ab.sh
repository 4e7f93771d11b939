#!/usr/bin/env bash
# On the GPU machine: the row split of the matrix-vector kernels, one job. model_check
# with each forced split of CHECK_SPLITS (default "4 2"), then decode-ab.sh's RUNS.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-logs}
mkdir -p "$out"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export ROCMFORGE_CACHE_DIR=$(mktemp -d)
for s in ${CHECK_SPLITS-4 2}; do
    ROCMFORGE_GEMV_SPLIT=$s timeout 300 .gpu/model_check > "$out/model-check-split$s.log" 2>&1
    echo "model_check split $s exit $? $(tail -n 1 "$out/model-check-split$s.log")" | tee -a "$out/checks.txt"
    grep -E "FAIL|error" "$out/model-check-split$s.log" | head -20 | tee -a "$out/checks.txt"
done
SKIP_CHECKS=1 OUT=$out bash scripts/decode-ab.sh
