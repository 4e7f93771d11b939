#!/usr/bin/env bash
# On the GPU machine, one job: the attention self-check (on sm_90 it takes the wgmma
# prefill at head_dim 128), the attention benchmark with PyTorch's SDPA in the same job,
# the model check, and the 1B / 8B bench (pp512, pp2048, tg128). If the attention
# self-check fails, the rest runs with ROCMFORGE_WGMMA=0 (the mma.sync prefill) and says so.
# Binaries: .gpu/selftest, bench-attention, model_check, bench (scripts/gpu-check.sh build).
# Writes to $OUT (or ./gpu-logs): summary.txt and the logs.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-logs}
mkdir -p "$out"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export ROCMFORGE_CACHE_DIR=$(mktemp -d)
s="$out/summary.txt"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$s"
ROCMFORGE_SELFTEST_ONLY=attention timeout 300 .gpu/selftest > "$out/selftest-attention.log" 2>&1
rc=$?
echo "selftest (attention) exit $rc: $(tail -n 1 "$out/selftest-attention.log"); wgmma cases: $(grep -c '_wgmma ' "$out/selftest-attention.log")" | tee -a "$s"
grep -E "FAIL|error|rows wrong" "$out/selftest-attention.log" | head -20 | tee -a "$s"
if [ "$rc" != 0 ]; then
    export ROCMFORGE_WGMMA=0
    echo "wgmma off for the rest" | tee -a "$s"
fi
timeout 200 .gpu/bench-attention > "$out/bench-attention.log" 2>&1
echo "bench-attention exit $?" | tee -a "$s"
grep -E "hd128_b128|B4 H|batch" "$out/bench-attention.log" | grep -v "plan: rf_attn_" | head -24 | tee -a "$s"
PYTHONUNBUFFERED=1 timeout 150 python3 benches/attention_peer.py > "$out/peer.log" 2>&1
grep -E "TFLOP|GB/s" "$out/peer.log" | tee -a "$s"
timeout 200 .gpu/model_check > "$out/model-check.log" 2>&1
echo "model_check exit $?: $(tail -n 1 "$out/model-check.log")" | tee -a "$s"
grep -E "FAIL|error" "$out/model-check.log" | head -10 | tee -a "$s"
for p in ${PRESETS:-llama3.2-1b llama3-8b}; do
    r=$(timeout 240 .gpu/bench --preset "$p" --output json -p 512,2048 -n 128 -b 1 --context 0 -r 3 --gpu-memory-fraction 0.3 2>> "$out/bench.err" \
        | python3 -c 'import json,sys; d=json.load(sys.stdin); print(" ".join("%s=%.1f(%.3f)" % (r["test"], r["tok_s"], r.get("fraction_of_limit",0)) for r in d["results"]))')
    echo "$p: $r" | tee -a "$s"
done
