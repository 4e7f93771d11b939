#!/usr/bin/env bash
# On the GPU machine: cold and warm model loads (kernel compiles) of each binary in
# BINS (default "bench-base bench"), each cold run on its own empty kernel cache, then
# model_check on the last binary's cache. Writes summary.txt and logs to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-logs}
mkdir -p "$out"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/summary.txt"
echo "cores: $(nproc)" | tee -a "$out/summary.txt"
for round in $(seq 1 "${ROUNDS:-1}"); do
    for b in ${BINS:-bench-base bench}; do
        export ROCMFORGE_CACHE_DIR=$(mktemp -d)
        for state in cold warm; do
            t0=$(date +%s%N)
            .gpu/$b --preset ${PRESET:-llama3.2-1b} -p 512 -n 32 -r 1 --gpu-memory-fraction 0.3 > "$out/$b-$round-$state.out" 2> "$out/$b-$round-$state.err"
            rc=$?
            t1=$(date +%s%N)
            echo "round $round $b $state: exit $rc, wall $(( (t1 - t0) / 1000000 )) ms; $(grep -o 'loaded in [0-9.]* s' "$out/$b-$round-$state.err"); $(grep -h 'kernels at load' "$out/$b-$round-$state.err")" | tee -a "$out/summary.txt"
        done
    done
done
if [ -z "${SKIP_CHECKS:-}" ]; then
    timeout 300 .gpu/model_check > "$out/model-check.log" 2>&1; echo "model_check exit $? $(tail -n 1 "$out/model-check.log")" | tee -a "$out/summary.txt"
    grep -E "FAIL|error" "$out/model-check.log" | head -20 | tee -a "$out/summary.txt"
fi
