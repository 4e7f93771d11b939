#!/usr/bin/env bash
# The matrix-core decode with 64-row K/V tiles and two stages at head_dim <= 64
# (RF_DEC_TILE=64), one job: the attention self-check and model_check with it, then
# decode A/Bs at batch 1, 16 and 64 (scripts/decode-ab.sh).
set -uo pipefail
cd "$(dirname "$0")/../../.."
root=${OUT:-./gpu-logs}
mkdir -p "$root/check"
( OUT="$root/check"; . scripts/gpu-env.sh
  RF_DEC_TILE=64 ROCMFORGE_SELFTEST_ONLY=attention timeout 150 .gpu/selftest > "$out/selftest-attention.log" 2>&1
  echo "selftest (attention) exit $? $(tail -n 1 "$out/selftest-attention.log")" | tee "$root/check.txt"
  grep -E "FAIL|error|rows wrong" "$out/selftest-attention.log" | head -20 | tee -a "$root/check.txt"
  RF_DEC_TILE=64 .gpu/model_check > "$out/model-check.log" 2>&1
  echo "model_check exit $? $(tail -n 1 "$out/model-check.log")" | tee -a "$root/check.txt" )
OUT="$root/ab1" SKIP_CHECKS=1 ROUNDS=2 PRESETS=llama3.2-1b BATCHES=1,16,64 RUNS="bench-base;bench;bench RF_DEC_TILE=64" bash scripts/decode-ab.sh
exit 0
