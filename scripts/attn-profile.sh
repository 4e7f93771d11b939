#!/usr/bin/env bash
# On the GPU machine: the attention benchmark, then Nsight Compute on one prefill launch
# (the first `attention` launch of bench-attention: bf16 B4 H32 S4096 d128 non-causal)
# with per-instruction SASS counters, and the resource usage of the compiled kernels.
# Binaries from `bash scripts/gpu-check.sh build` (or at least .gpu/bench-attention).
#   BINS: the bench binaries to time, alternating (default: bench-attention), ROUNDS times (2)
#   NCU_BIN: the binary profiled (default: bench-attention); NCU=0 skips the profile
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-logs}
mkdir -p "$out"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
cache=$(mktemp -d)
export ROCMFORGE_CACHE_DIR=$cache
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$out/gpu.txt"
for round in $(seq 1 "${ROUNDS:-2}"); do
    for b in ${BINS:-bench-attention}; do
        echo "== $b round $round" >> "$out/bench.log"
        timeout 200 ".gpu/$b" >> "$out/bench.log" 2>&1; echo "$b round $round exit $?"
    done
done
grep -E "^==|d128|d64|batch" "$out/bench.log" | head -60
if [ "${NCU:-1}" != 0 ]; then
    NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
    timeout 400 "$NCU" --set full --import-source no --kernel-name regex:attention --launch-count 1 \
        -o "$out/prefill" -f ".gpu/${NCU_BIN:-bench-attention}" > "$out/ncu.out" 2>&1
    echo "ncu exit $?"; tail -n 3 "$out/ncu.out"
    "$NCU" -i "$out/prefill.ncu-rep" --page details --print-details all > "$out/ncu-details.txt" 2>&1
    "$NCU" -i "$out/prefill.ncu-rep" --page source --print-source sass --csv > "$out/ncu-sass.csv" 2>&1
    ls -la "$out"
    rm -f "$out/prefill.ncu-rep"
fi
# Resource usage (registers, stack, spills) of every cached module's kernels.
CUOBJDUMP=$(command -v cuobjdump || echo /usr/local/cuda/bin/cuobjdump)
for f in $(find "$cache" -type f); do
    "$CUOBJDUMP" -res-usage "$f" 2>/dev/null | grep -A1 -E "Function [a-z_0-9]*attention" >> "$out/res-usage.txt"
done
head -40 "$out/res-usage.txt"
