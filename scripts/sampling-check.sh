#!/usr/bin/env bash
# GPU job for sampling on the GPU (run from the repository root on the GPU machine,
# binaries in $BIN, default .gpu/; logs to $OUT):
#   1. model_check: the penalties and softmax-normalizer kernels against the host, and
#      `GpuModel::sample` against host samplers on the same logits (a random model with a
#      20,000-token vocabulary, three sequences at once, nine settings);
#   2. generate on the f32 fixtures with sampling settings, on the CPU and on cuda:0 with
#      one seed: the generated ids should be the same;
#   3. bench --preset llama3.2-1b --sampling: decode at batch 1 with each sampling
#      setting, the draw on the GPU's candidates against every logit drawn on the host;
#   4. with AB=1 and $BIN/bench-base present: the sampled rows of bench-base and bench,
#      alternated ROUNDS times (default 2), in ab.txt.
set -uo pipefail
source scripts/gpu-env.sh
bin=${BIN:-.gpu}
fix=tests/fixtures/models
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"

"$bin/model_check" > "$out/model_check.log" 2>&1
echo "model_check exit $?: $(grep -c 'FAIL' "$out/model_check.log") FAIL lines"
grep -E "sampl|penalize|softmax_mass|passed," "$out/model_check.log"

fox='the quick brown fox jumps over the lazy dog'
for m in llama qwen3; do
    for flags in "--temperature 0.8 --top-p 0.9 --seed 7" "--temperature 1.0 --seed 3 --repetition-penalty 1.3" \
                 "--temperature 0.7 --top-k 20 --min-p 0.05 --presence-penalty 0.5 --seed 11" "--temperature 0 --frequency-penalty 0.8"; do
        for d in cpu cuda:0; do
            "$bin/generate" --device $d --model "$fix/$m" --prompt "$fox" --max-tokens 48 --ignore-eos $flags --output json \
                2>>"$out/generate-stderr.txt" | python3 -c 'import json,sys; print(json.load(sys.stdin)["generated_ids"])' > "$out/gen-$d.txt"
        done
        if cmp -s "$out/gen-cpu.txt" "$out/gen-cuda:0.txt"; then same=identical; else same=DIFFER; fi
        echo "generate $m [$flags]: cpu and cuda:0 ids $same ($(head -c 60 "$out/gen-cpu.txt")...)"
        rm -f "$out/gen-cpu.txt" "$out/gen-cuda:0.txt"
    done
done | tee "$out/generate.txt"

"$bin/bench" --preset llama3.2-1b -p "" -b "" --context 0 -n 128 -r 3 --sampling --gpu-memory-fraction 0.5 > "$out/bench.txt" 2>&1
echo "bench exit $?"
cat "$out/bench.txt"

if [ -n "${AB:-}" ] && [ -x "$bin/bench-base" ]; then
    for round in $(seq 1 "${ROUNDS:-2}"); do
        for b in bench-base bench; do
            r=$("$bin/$b" --preset llama3.2-1b -p "" -b "" --context 0 -n 128 -r 3 --sampling --gpu-memory-fraction 0.5 --output json 2>>"$out/ab.err" \
                | python3 -c 'import json,sys; d=json.load(sys.stdin); print("; ".join("%s %.1f" % (r["test"], r["tok_s"]) for r in d["results"]))')
            echo "round $round $b: $r" | tee -a "$out/ab.txt"
        done
    done
fi
