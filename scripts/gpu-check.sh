#!/usr/bin/env bash
# Builds the NVIDIA self-check and the kernel benchmark here, into .gpu/ (git-ignored),
# for a run on the GPU machine. On that machine run:
#   bash scripts/gpu-check.sh run   (writes logs to $OUT, or ./gpu-logs)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-build}" = build ]; then
    mkdir -p .gpu
    cargo build --release -p rocmforge-models --features cuda --example selftest --example model_check --example bench --example generate
    for e in selftest model_check bench generate; do cp target/release/examples/$e .gpu/$e; done
    for b in kernels attention; do
        exe=$(cargo bench -p rocmforge --features cuda --bench "$b" --no-run --message-format=json 2>/dev/null \
            | B="$b" python3 -c 'import os,sys,json
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m["target"]["name"]==os.environ["B"] and m.get("executable"): print(m["executable"])' | tail -n1)
        cp "$exe" ".gpu/bench-$b"
    done
    strip .gpu/selftest .gpu/model_check .gpu/bench .gpu/generate .gpu/bench-kernels .gpu/bench-attention
    ls -la .gpu
else
    out=${OUT:-gpu-logs}
    mkdir -p "$out"
    export ROCMFORGE_CACHE_DIR=$(mktemp -d)
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$out/gpu.txt"
    # cuBLAS (loaded at run time by cudarc) lives with the toolkit.
    export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    set +e
    if [ "${2:-all}" = decode ]; then
        # Decode work (issue 6), short of the full models run: kernel and model checks,
        # decode at batch 1 and 2 per preset (BENCH_ARGS adds flags), and per-kernel
        # times from Nsight Compute (serialized with a flushed L2, so launch gaps are not
        # in them; NCU_SKIP / NCU_COUNT pick the launches).
        # SKIP_SELFTEST=1 skips the DSL self-check; BATCHES and CONTEXT set the bench
        # batches (1,2) and long context (0: none); VARIANTS is a ';'-separated list of
        # extra bench flags, each run per preset after the plain run (an A/B in one job).
        if [ -z "${SKIP_SELFTEST:-}" ]; then
            .gpu/selftest > "$out/selftest.log" 2>&1; echo "selftest exit $?"; tail -n 1 "$out/selftest.log"; grep -iE "fail" "$out/selftest.log" | head -20
        fi
        .gpu/model_check > "$out/model-check.log" 2>&1; echo "model_check exit $?"; grep -E "FAIL|error" "$out/model-check.log" | head; tail -n 1 "$out/model-check.log"
        for p in ${PRESETS:-llama3.2-1b llama3-8b}; do
            IFS=';' read -ra vs <<< ";${VARIANTS:-}"
            for v in "${vs[@]}"; do
                tag=$(echo "$v" | tr -cd 'a-z0-9-')
                f="$out/bench-$p${tag:+-$tag}.json"
                .gpu/bench --preset "$p" --output json -p 512 -n 128 -b ${BATCHES:-1,2} --context ${CONTEXT:-0} -r 5 --gpu-memory-fraction 0.3 ${BENCH_ARGS:-} $v > "$f" 2>> "$out/bench.err"; echo "bench $p $v exit $?"
                python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[1].split("/")[-1], [(r["test"], round(r["tok_s"],1), round(r.get("fraction_of_limit",0),3)) for r in d["results"]])' "$f"
            done
        done
        if [ -n "${NCU_COUNT:-}" ]; then
            NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
            # NCU_KERNELS: a kernel-name regex; NCU_VARIANTS: bench flag sets (';'-separated);
            # NCU_METRICS: the metrics (time and DRAM bytes read by default).
            IFS=';' read -ra nvs <<< ";${NCU_VARIANTS:-}"
            for v in "${nvs[@]}"; do
                tag=$(echo "$v" | tr -cd 'a-z0-9-')
                timeout 300 "$NCU" --clock-control none --metrics ${NCU_METRICS:-gpu__time_duration.sum,dram__bytes_read.sum} --csv ${NCU_KERNELS:+--kernel-name regex:$NCU_KERNELS} \
                    --launch-skip ${NCU_SKIP:-300} --launch-count "$NCU_COUNT" \
                    .gpu/bench --preset llama3.2-1b -p ${NCU_PROMPT:-16} -n 16 -b 1 --context 0 -r 1 --gpu-memory-fraction 0.3 --output json $v > "$out/ncu-1b${tag:+-$tag}.csv" 2> "$out/ncu.err"
                echo "ncu $v exit $?"; tail -n 3 "$out/ncu.err"
            done
        fi
        exit 0
    fi
    if [ "${2:-all}" = models ]; then
        # GPU inference (issue 6): agreement with the CPU, then bench + the HF peer per preset.
        .gpu/model_check > "$out/model-check.log" 2>&1; echo "model_check exit $?"
        # generate on the GPU and on the CPU: the same greedy ids on an f32 fixture.
        for d in cpu cuda:0; do
            .gpu/generate --model tests/fixtures/models/llama --device $d --prompt "The quick brown fox" --max-tokens 24 --ignore-eos --temperature 0 --output json \
                > "$out/generate-${d%%:*}.json" 2>> "$out/model-check.log"
        done
        python3 -c 'import json,sys; a,b=(json.load(open(sys.argv[1]+"/generate-"+d+".json")) for d in ("cpu","cuda")); print("generate cpu vs cuda:0 greedy ids identical:", a["generated_ids"]==b["generated_ids"], b["generated_ids"][:8], b["device"])' "$out" | tee -a "$out/model-check.log"
        grep -E "FAIL|error" "$out/model-check.log" | head -20; tail -n 1 "$out/model-check.log"
        for p in ${PRESETS:-llama3.2-1b llama3-8b qwen2.5-7b}; do
            .gpu/bench --preset "$p" --output json ${BENCH_ARGS:-} > "$out/bench-$p.json" 2>> "$out/bench.err"; echo "bench $p exit $?"
            cat "$out/bench-$p.json"
        done
        tail -n 12 "$out/bench.err"
        if [ -z "${NO_PEER:-}" ]; then
            python3 benches/models_peer.py ${PRESETS:-} > "$out/models-peer.jsonl" 2> "$out/models-peer.err"; echo "peer exit $?"
            cat "$out/models-peer.jsonl"; tail -n 3 "$out/models-peer.err"
        fi
        exit 0
    fi
    .gpu/selftest > "$out/selftest-cold.log" 2>&1; echo "selftest (cold cache) exit $?"
    if [ "${2:-all}" != attention ]; then
        .gpu/selftest > "$out/selftest-warm.log" 2>&1; echo "selftest (warm cache) exit $?"
    fi
    if [ "${2:-all}" != attention ]; then
        .gpu/bench-kernels > "$out/bench.log" 2>&1; echo "bench exit $?"
    fi
    .gpu/bench-attention > "$out/bench-attention.log" 2>&1; echo "attention bench exit $?"
    python3 benches/attention_peer.py > "$out/attention-peer.log" 2>&1; echo "attention peer exit $?"
    grep -E "^(device|seed|modules)" "$out/selftest-cold.log" "$out/selftest-warm.log" 2>/dev/null
    grep -E "FAIL|error" "$out/selftest-cold.log" | head -20
    tail -n 1 "$out/selftest-cold.log" "$out/selftest-warm.log" 2>/dev/null
    cat "$out/bench.log" 2>/dev/null
    cat "$out/bench-attention.log" "$out/attention-peer.log"
    # Register and spill report of the rowwise, rope and swiglu kernels (the cached CUBINs).
    if command -v /usr/local/cuda/bin/cuobjdump >/dev/null; then
        for f in "$ROCMFORGE_CACHE_DIR"/rf_rmsnorm_bf16_b*.cubin "$ROCMFORGE_CACHE_DIR"/rf_add_rmsnorm_bf16_b*.cubin "$ROCMFORGE_CACHE_DIR"/rf_softmax_*_b*.cubin "$ROCMFORGE_CACHE_DIR"/rf_rope_neox_bf16_hd128*.cubin "$ROCMFORGE_CACHE_DIR"/rf_swiglu_bf16*.cubin "$ROCMFORGE_CACHE_DIR"/rf_attention_causal_bf16_hd*.cubin; do
            /usr/local/cuda/bin/cuobjdump -res-usage "$f" 2>&1 | grep -E "Function|REG" | tr '\n' ' ' | sed "s|^|$(basename "$f" | cut -d- -f1): |"; echo
        done > "$out/ptxas.txt"
        cat "$out/ptxas.txt"
    fi
fi
