#!/usr/bin/env bash
# The decode products in larger workgroups (ROCMFORGE_GEMV_BLOCK, 128 to 512 threads), one job:
# model_check at 512, then decode A/Bs of the sizes (scripts/decode-ab.sh).
set -uo pipefail
cd "$(dirname "$0")/../../.."
root=${OUT:-./gpu-logs}
mkdir -p "$root/check"
( OUT="$root/check"; . scripts/gpu-env.sh
  ROCMFORGE_GEMV_BLOCK=${CHECK_BLOCK:-512} .gpu/model_check > "$out/model-check.log" 2>&1
  echo "model_check exit $? $(tail -n 1 "$out/model-check.log")" | tee "$root/check.txt" )
OUT="$root/ab1" SKIP_CHECKS=1 ROUNDS=${ROUNDS:-2} PRESETS=${PRESETS:-llama3.2-1b} RUNS="${RUNS1}" bash scripts/decode-ab.sh
[ -n "${RUNS2:-}" ] && OUT="$root/ab2" SKIP_CHECKS=1 ROUNDS=1 PRESETS=llama3-8b RUNS="${RUNS2}" bash scripts/decode-ab.sh
exit 0
