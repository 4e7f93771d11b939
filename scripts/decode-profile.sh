#!/usr/bin/env bash
# Per-kernel times of decode steps under Nsight Compute (on the GPU machine): each kernel of
# the captured step is replayed alone, clocks and caches left as they are, so the sum of the
# kernel times against the step's measured time shows what the gaps between kernels cost.
# BIN (default bench), PRESET (llama3.2-1b), N (decode tokens, 4). Writes $OUT/ncu.csv,
# $OUT/per-kernel.txt (one decode step, kernel by kernel) and $OUT/bench.txt (the timing run).
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/gpu-env.sh
bin=.gpu/${BIN:-bench}
preset=${PRESET:-llama3.2-1b}
"$bin" --preset "$preset" -p 512 -n 128 -b "" --context 0 -r 3 --gpu-memory-fraction 0.3 > "$out/bench.txt" 2>&1
"$ncu" --csv --print-units base --cache-control none --clock-control none \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,launch__grid_size,launch__block_size,launch__registers_per_thread,launch__waves_per_multiprocessor \
    "$bin" --preset "$preset" -p 8 -n "${N:-4}" -b "" --context 0 -r 1 --gpu-memory-fraction 0.3 > "$out/ncu.csv" 2> "$out/ncu.err"
echo "ncu exit $?"
PYTHONPATH=scripts python3 - "$out/ncu.csv" > "$out/per-kernel.txt" <<'PY'
import sys, collections
from ncu_kernels import kernels
ks = kernels(sys.argv[1])
# The last decode step: from the last embedding gather to the end.
starts = [i for i, k in enumerate(ks) if "gather" in k["name"]]
step = ks[starts[-2]:starts[-1]] if len(starts) > 1 else ks
tot_t = tot_b = 0
agg = collections.OrderedDict()
for k in step:
    t = k.get("gpu__time_duration.sum", 0) / 1e3
    b = k.get("dram__bytes_read.sum", 0)
    tot_t += t; tot_b += b
    a = agg.setdefault(k["name"][:60], [0, 0.0, 0.0])
    a[0] += 1; a[1] += t; a[2] += b
    print("%-60s grid %6d block %4d regs %3d waves %5.2f  %8.2f us  %9.3f MB  %7.1f GB/s" % (k["name"][:60], k.get("launch__grid_size", 0), k.get("launch__block_size", 0), k.get("launch__registers_per_thread", 0), k.get("launch__waves_per_multiprocessor", 0), t, b / 1e6, b / t / 1e3 if t else 0))
print("\nstep: %d kernels, %.1f us of kernel time, %.1f MB read (%.0f GB/s over kernel time)" % (len(step), tot_t, tot_b / 1e6, tot_b / tot_t / 1e3))
for n, (c, t, b) in agg.items():
    print("%-60s x%3d  %8.1f us  %8.1f MB  %7.1f GB/s" % (n, c, t, b / 1e6, b / t / 1e3))
PY
tail -n 20 "$out/per-kernel.txt"
grep -E "tg128" "$out/bench.txt"
