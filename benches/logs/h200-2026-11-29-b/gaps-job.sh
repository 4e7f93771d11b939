#!/usr/bin/env bash
# The pipelined greedy decode's timeline under Nsight Systems: the gaps between each
# step's graph, the argmax after it and the index advance before the next (1B, bf16).
set -uo pipefail
cd "$(dirname "$0")/../../.."
. scripts/gpu-env.sh
nsys=$(command -v nsys || ls /opt/nvidia/nsight-systems/*/bin/nsys /usr/local/cuda/bin/nsys 2>/dev/null | head -n 1 || true)
echo "nsys: ${nsys:-none}" | tee "$out/summary.txt"
[ -z "$nsys" ] && exit 0
.gpu/bench --preset llama3.2-1b -p 512 -n 128 -b '' --context 0 -r 1 > /dev/null 2>&1  # warm the kernel cache
"$nsys" profile -o "$out/tl" --force-overwrite true -t cuda --cuda-graph-trace=node \
    .gpu/bench --preset llama3.2-1b -p 512 -n 128 -b '' --context 0 -r 1 > "$out/bench.log" 2>&1
echo "profile exit $?" | tee -a "$out/summary.txt"
"$nsys" stats -q --report cuda_gpu_trace --format csv -o "$out/trace" "$out/tl.nsys-rep" > /dev/null 2>&1
echo "stats exit $?" | tee -a "$out/summary.txt"
ls "$out" | tee -a "$out/summary.txt"
rm -f "$out/tl.nsys-rep" "$out"/*.sqlite
gzip -f "$out"/trace*.csv
