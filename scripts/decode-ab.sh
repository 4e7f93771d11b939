#!/usr/bin/env bash
# A/B of decode on the GPU machine, alternating binaries in one job: each entry of RUNS
# (';'-separated; default "bench-base;bench") is a binary in .gpu/ followed by
# environment settings and bench flags, e.g. "bench-base;bench;bench ROCMFORGE_PDL=0;bench --no-pair-epilogues".
# Runs selftest and model_check first unless SKIP_CHECKS=1. Writes to $OUT (or ./gpu-logs):
# summary.txt (one line per run), the checks' logs, and the cubins' SASS where asked (SASS=regex).
# PROMPTS sets the prompt lengths (-p, default 512), BATCHES the batches (1), REPS the repetitions (3).
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/gpu-env.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$out/summary.txt"
if [ -z "${SKIP_CHECKS:-}" ]; then
    .gpu/selftest > "$out/selftest.log" 2>&1; echo "selftest exit $? $(tail -n 1 "$out/selftest.log")" | tee -a "$out/summary.txt"
    grep -E "FAIL" "$out/selftest.log" | head -20 | tee -a "$out/summary.txt"
    .gpu/model_check > "$out/model-check.log" 2>&1; echo "model_check exit $? $(tail -n 1 "$out/model-check.log")" | tee -a "$out/summary.txt"
    grep -E "FAIL|error" "$out/model-check.log" | head -20 | tee -a "$out/summary.txt"
fi
if [ -n "${SASS:-}" ]; then
    for f in "$ROCMFORGE_CACHE_DIR"/*.cubin; do
        # The first 200 lines of each function whose name matches.
        /usr/local/cuda/bin/cuobjdump -sass "$f" 2>/dev/null | awk -v re="$SASS" '/Function :/ { p = ($0 ~ re); c = 0 } p && c++ < 200' >> "$out/sass.txt"
    done
fi
IFS=';' read -ra runs <<< "${RUNS:-bench-base;bench}"
for round in $(seq 1 "${ROUNDS:-2}"); do
    for p in ${PRESETS:-llama3.2-1b llama3-8b}; do
        for v in "${runs[@]}"; do
            read -r bin rest <<< "$v"
            # Words of an entry after the binary: VAR=value settings, or --flags for bench.
            e=""; extra=""
            for word in $rest; do
                case "$word" in --*) extra="$extra $word" ;; *) e="$e $word" ;; esac
            done
            r=$(env $e ".gpu/$bin" $extra --preset "$p" --output json -p ${PROMPTS:-512} -n 128 -b ${BATCHES:-1} --context 0 -r ${REPS:-3} --gpu-memory-fraction 0.3 2>> "$out/bench.err" \
                | python3 -c 'import json,sys; d=json.load(sys.stdin); print(" ".join("%s=%.1f(%.3f)" % (r["test"], r["tok_s"], r.get("fraction_of_limit",0)) for r in d["results"]))')
            echo "round $round $p $v: $r" | tee -a "$out/summary.txt"
        done
    done
done
