#!/usr/bin/env bash
# Nsight Compute details (--set full) of single decode kernels of the 1B bench (on the GPU
# machine). KERNELS: space-separated "regex:skip" entries (the launch of that kernel name
# after skipping `skip` of them); PROMPT the prompt length before the decode (8); SOURCE=1 adds
# the per-instruction SASS counters. Writes $OUT/<name>.txt (and <name>-sass.csv.gz).
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/gpu-env.sh
for e in ${KERNELS:-rf_gemv_pair1:100 rf_gemv1_:200}; do
    re=${e%%:*}; skip=${e##*:}
    "$ncu" --set full --cache-control none --clock-control none -k "regex:$re" --launch-skip "$skip" --launch-count 1 \
        .gpu/${BIN:-bench} --preset ${PRESET:-llama3.2-1b} -p ${PROMPT:-8} -n 16 -b "" --context 0 -r 1 --gpu-memory-fraction 0.3 > "$out/$re.txt" 2>&1
    echo "$re: exit $?"
    if [ -n "${SOURCE:-}" ]; then
        # Per-instruction SASS with the stall samples.
        "$ncu" --set full --import-source no --page source --print-source sass --csv --cache-control none --clock-control none \
            -k "regex:$re" --launch-skip "$skip" --launch-count 1 \
            .gpu/${BIN:-bench} --preset ${PRESET:-llama3.2-1b} -p ${PROMPT:-8} -n 16 -b "" --context 0 -r 1 --gpu-memory-fraction 0.3 2>&1 | gzip > "$out/$re-sass.csv.gz"
    fi
done
