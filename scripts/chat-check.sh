#!/usr/bin/env bash
# GPU job for the warm-up and the GPU chat (run from the repository root on the GPU
# machine, binaries in $BIN, default .gpu/; logs to $OUT):
#   1. model_check (its warm_up check: every decode graph captured before a generation);
#   2. generate on the Llama fixture with a fresh kernel cache each run, prompts of 15 to
#      89 tokens: `generate-base` (the build before, if present) against `generate`, the
#      prefill and decode rates of each (the warm-up keeps first-use loading out);
#      the generations' stderr is appended to generate.txt;
#   3. chat: the same greedy session on the CPU and on cuda:0 (f32 fixtures: the
#      transcripts must be identical), and the turns' cache reuse; then greedy generate
#      on a 16-layer random checkpoint, base against new (the decode rate);
#   4. bench --preset llama3.2-1b: one rep of each test, `bench-base` against `bench` (its
#      warm-ups now have the measured shapes), then `bench -r 3`.
set -uo pipefail
source scripts/gpu-env.sh
bin=${BIN:-.gpu}
fix=tests/fixtures/models
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"

"$bin/model_check" > "$out/model_check.log" 2>&1
echo "model_check exit $?: $(grep -c 'FAIL' "$out/model_check.log") FAIL lines"
grep -E "warm_up|passed," "$out/model_check.log"

# Prompts of 15, 27, 45 and 89 tokens (the fixture's tokenizer): past 16 the vendor BLAS picks product kernels
# the old warm-up (16 tokens) did not load.
fox='the quick brown fox jumps over the lazy dog'
for prompt in "the quick brown fox jumps" "$fox again and" "$fox $fox" "$fox $fox $fox $fox"; do
    for b in generate-base generate; do
        [ -x "$bin/$b" ] || continue
        r=$(ROCMFORGE_CACHE_DIR=$(mktemp -d) "$bin/$b" --device cuda:0 --model "$fix/llama" --prompt "$prompt" \
            --max-tokens 64 --output json 2>>"$out/generate-stderr.txt")
        echo "$b: $(echo "$r" | python3 -c 'import json,sys; j=json.load(sys.stdin); n=len(j["prompt_ids"]); print(n, "prompt tokens, prefill", round(j["prefill_tok_s"]), "tok/s =", round(n/j["prefill_tok_s"]*1e3,2), "ms;", len(j["generated_ids"]), "new, decode", round(j["decode_tok_s"]), "tok/s")')"
    done
done | tee "$out/generate.txt"
cat "$out/generate-stderr.txt" >> "$out/generate.txt" 2>/dev/null; rm -f "$out/generate-stderr.txt"

# The fifth message takes the conversation past the fixtures' 256-token context: refused,
# then /reset starts over.
session='hello there\nand now a longer message, with a question in it?\nhello there\nand one more long message, to run out of context\nthe last one\n/reset\nhello there\n/quit\n'
for m in llama qwen3; do
    printf "$session" | "$bin/chat" --model "$fix/$m" --temperature 0 --max-tokens 24 > "$out/chat-$m-cpu.txt" 2> "$out/chat-$m-cpu.err"
    echo "chat $m cpu exit $?"
    printf "$session" | "$bin/chat" --model "$fix/$m" --device cuda:0 --temperature 0 --max-tokens 24 > "$out/chat-$m-gpu.txt" 2> "$out/chat-$m-gpu.err"
    echo "chat $m gpu exit $?"
    if cmp -s "$out/chat-$m-cpu.txt" "$out/chat-$m-gpu.txt"; then echo "chat $m: cpu and gpu transcripts identical"; else echo "chat $m: transcripts DIFFER"; fi
    grep -E '^\[|error' "$out/chat-$m-gpu.err"
    for f in cpu.txt cpu.err gpu.txt gpu.err; do
        { echo "== chat $m $f"; cat "$out/chat-$m-$f"; } >> "$out/chat.txt"
        rm "$out/chat-$m-$f"
    done
done

# Greedy decode through generate on a larger random checkpoint (hidden 2048, 16 layers,
# f32, the fixture's 512-token vocabulary; scripts/make_random_checkpoint.py), base against
# new, twice each: the decode rate of a 256-token generation.
if python3 scripts/make_random_checkpoint.py /tmp/rc16 2048 16 f32 > /dev/null; then
    for round in 1 2; do
        for b in generate-base generate; do
            [ -x "$bin/$b" ] || continue
            r=$("$bin/$b" --device cuda:0 --model /tmp/rc16 --prompt "$fox" --max-tokens 256 --ignore-eos --temperature 0 \
                --output json 2>>"$out/generate-stderr.txt")
            echo "rc16 $b: $(echo "$r" | python3 -c 'import json,sys; j=json.load(sys.stdin); print(len(j["prompt_ids"]), "prompt tokens,", len(j["generated_ids"]), "new, decode", round(j["decode_tok_s"]), "tok/s")')"
        done
    done | tee -a "$out/generate.txt"
fi
cat "$out/generate-stderr.txt" >> "$out/generate.txt" 2>/dev/null; rm -f "$out/generate-stderr.txt"

[ -x "$bin/bench" ] || exit 0
# One rep each (no median to hide a cold run): `bench-base` (the build before, if present)
# against `bench`, then `bench` with three.
for b in bench-base bench; do
    [ -x "$bin/$b" ] || continue
    echo "== $b -r 1"
    "$bin/$b" --preset llama3.2-1b -p 512,2048 -n 128 -b 4 --context 4096 -r 1 2>&1
    echo "exit $?"
done > "$out/bench-1b.txt"
echo "== bench -r 3" >> "$out/bench-1b.txt"
"$bin/bench" --preset llama3.2-1b -p 512 -n 128 -r 3 >> "$out/bench-1b.txt" 2>&1
grep -E "^==|^exit|pp|tg128 |decode b|ctx" "$out/bench-1b.txt"
