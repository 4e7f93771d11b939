#!/usr/bin/env bash
# GPU job for the chained greedy decode (run from the repository root on the GPU machine,
# binaries in .gpu/: model_check, generate, bench, bench-base; logs to $OUT):
#   1. model_check (pipelined greedy decode, chains included, against token by token on
#      every fixture and dtype; warm_up capturing every graph and chain);
#   2. greedy generate on the f32 fixtures, 200 tokens, on the CPU and on cuda:0 (the
#      GPU runs chains of steps): the ids should be the same;
#   3. scripts/decode-ab.sh (SKIP_CHECKS=1): bench-base against bench, ROUNDS rounds
#      (default 2) on the 1B and 8B shapes.
set -uo pipefail
source scripts/gpu-env.sh
fix=tests/fixtures/models
.gpu/model_check > "$out/model_check.log" 2>&1
echo "model_check exit $?: $(grep -c 'FAIL' "$out/model_check.log") FAIL lines; $(tail -n 1 "$out/model_check.log")"
grep -E "pipelined|warm_up|FAIL" "$out/model_check.log"
fox='the quick brown fox jumps over the lazy dog'
for m in llama qwen3; do
    for d in cpu cuda:0; do
        .gpu/generate --device $d --model "$fix/$m" --prompt "$fox" --max-tokens 200 --ignore-eos --temperature 0 --output json \
            2>>"$out/generate-stderr.txt" | python3 -c 'import json,sys; print(json.load(sys.stdin)["generated_ids"])' > "$out/gen-$m-$d.txt"
    done
    if cmp -s "$out/gen-$m-cpu.txt" "$out/gen-$m-cuda:0.txt"; then same=identical; else same=DIFFER; fi
    echo "generate $m greedy 200: cpu and cuda:0 ids $same ($(head -c 60 "$out/gen-$m-cpu.txt")...)"
done | tee "$out/generate.txt"
SKIP_CHECKS=1 bash scripts/decode-ab.sh
