#!/usr/bin/env bash
# Builds the NVIDIA self-check and the kernel benchmark here, into .gpu/ (git-ignored),
# for a run on the GPU machine. On that machine run:
#   bash scripts/gpu-check.sh run   (writes logs to $OUT, or ./gpu-logs)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-build}" = build ]; then
    mkdir -p .gpu
    cargo build --release -p rocmforge-models --features cuda --example selftest
    cp target/release/examples/selftest .gpu/selftest
    for b in kernels attention; do
        exe=$(cargo bench -p rocmforge --features cuda --bench "$b" --no-run --message-format=json 2>/dev/null \
            | B="$b" python3 -c 'import os,sys,json
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m["target"]["name"]==os.environ["B"] and m.get("executable"): print(m["executable"])' | tail -n1)
        cp "$exe" ".gpu/bench-$b"
    done
    strip .gpu/selftest .gpu/bench-kernels .gpu/bench-attention
    ls -la .gpu
else
    out=${OUT:-gpu-logs}
    mkdir -p "$out"
    export ROCMFORGE_CACHE_DIR=$(mktemp -d)
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$out/gpu.txt"
    set +e
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
