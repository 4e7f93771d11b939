#!/usr/bin/env bash
# On the GPU machine: the persistent decode step against the layered decode, one job.
# model_check first (unless SKIP_CHECKS=1), then for each preset the bench with each
# entry of VARIANTS (';'-separated, each "ENV=value ... | bench flags"; default:
# the persistent step with its phase clock, then the layered decode), alternated ROUNDS times.
# Writes summary.txt and logs to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-logs}
mkdir -p "$out"
export ROCMFORGE_CACHE_DIR=${ROCMFORGE_CACHE_DIR:-$(mktemp -d)}
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$out/summary.txt"
if [ -z "${SKIP_CHECKS:-}" ]; then
    timeout ${CHECK_TIMEOUT:-300} .gpu/model_check > "$out/model-check.log" 2>&1; echo "model_check exit $? $(tail -n 1 "$out/model-check.log")" | tee -a "$out/summary.txt"
    grep -E "FAIL|error|persistent" "$out/model-check.log" | head -40 | tee -a "$out/summary.txt"
fi
IFS=';' read -ra variants <<< "${VARIANTS:-|--persistent --step-clock;|}"
for round in $(seq 1 "${ROUNDS:-2}"); do
    for p in ${PRESETS:-llama3.2-1b llama3-8b}; do
        for v in "${variants[@]}"; do
            e=${v%%|*}; f=${v#*|}
            r=$(env $e timeout ${BENCH_TIMEOUT:-240} .gpu/bench --preset "$p" --output json -p ${PROMPTS:-512} -n 128 -b ${BATCHES:-1} --context ${CONTEXT:-0} -r ${REPS:-3} --gpu-memory-fraction 0.3 $f 2>> "$out/bench.err" \
                | python3 -c 'import json,sys; d=json.load(sys.stdin); print("persistent=%s" % d.get("persistent_decode"), " ".join("%s=%.1f(%.3f)" % (r["test"], r["tok_s"], r.get("fraction_of_limit",0)) for r in d["results"]))')
            echo "round $round $p [$v]: $r" | tee -a "$out/summary.txt"
        done
    done
done
