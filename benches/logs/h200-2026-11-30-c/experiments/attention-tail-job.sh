#!/usr/bin/env bash
# Kept as it ran in jobs 3-5: it lived at scripts/attention-tail-job.sh (its `cd` below
# assumes that place) with attention-tail-v3.patch applied, which adds the
# `--attention-tail` flag it passes; neither is in the committed tree.
#
# The decode attention as the q/k/v product's tail against the split-KV decode kernel, on
# the GPU machine. In order, each part skippable:
# - model_check (SKIP_CHECKS=1 skips), its attention-tail lines and any failure;
# - with PROFILE=1, one decode step under Nsight Compute with the tail and without
#   (scripts/decode-profile.sh of each of PROFILE_BINS, default "bench bench-notail",
#   bench-notail being bench with the tail off; the q/k/v and attention kernels'
#   lines), and the tail kernels' registers and stack (cuobjdump -res-usage of the
#   job's kernel cache);
# - tg128 of PRESETS with `--attention-tail=0` and the default, alternating, ROUNDS
#   rounds (scripts/decode-ab.sh; SKIP_AB=1 skips);
# - where CONTEXTS is set, the long-context decode (`--context N`) of the 1B shape at each
#   N with the tail off, at the default and at 512 positions.
# Writes to $OUT (or ./gpu-logs).
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/gpu-env.sh
if [ -z "${SKIP_CHECKS:-}" ]; then
    .gpu/model_check > "$out/model-check.log" 2>&1; echo "model_check exit $? $(tail -n 1 "$out/model-check.log")" | tee "$out/checks.txt"
    grep -E "FAIL|error|attention tail" "$out/model-check.log" >> "$out/checks.txt"
fi
if [ -n "${PROFILE:-}" ]; then
    printf '#!/bin/sh\nexec "$(dirname "$0")/bench" --attention-tail=0 "$@"\n' > .gpu/bench-notail
    chmod +x .gpu/bench-notail
    for b in ${PROFILE_BINS:-bench bench-notail}; do
        mkdir -p "$out/profile-$b"
        OUT="$out/profile-$b" BIN=$b scripts/decode-profile.sh > /dev/null 2>&1
        rm -f "$out/profile-$b/ncu.csv"
        { echo "== $b"; grep -E "pair|attention|step:" "$out/profile-$b/per-kernel.txt" | tail -n 6; grep tg128 "$out/profile-$b/bench.txt"; } | tee -a "$out/profile.txt"
    done
    # decode-profile.sh compiled into kernel caches of its own (mktemp -d).
    for f in "${TMPDIR:-/tmp}"/tmp.*/*.cubin; do
        /usr/local/cuda/bin/cuobjdump -res-usage "$f" 2>/dev/null | grep -A1 "gemv_pair" >> "$out/res-usage.txt"
    done
fi
if [ -z "${SKIP_AB:-}" ]; then
    SKIP_CHECKS=1 RUNS="${RUNS:-bench --attention-tail=0;bench}" scripts/decode-ab.sh
fi
for n in ${CONTEXTS:-}; do
    for t in 0 256 512; do
        r=$(.gpu/bench --preset llama3.2-1b --output json -p 64 -n 32 -b 1 --context "$n" -r 3 --gpu-memory-fraction 0.3 --attention-tail="$t" 2>> "$out/bench.err" \
            | python3 -c 'import json,sys; d=json.load(sys.stdin); print(" ".join("%s=%.1f" % (r["test"], r["tok_s"]) for r in d["results"]))')
        echo "context $n attention-tail $t: $r" | tee -a "$out/summary.txt"
    done
done
