#!/usr/bin/env bash
# The ideal layered 1B step (`scripts/membench/mlp_fused.cu once`: the committed row layout,
# the attention slots, two MLP launches) kernel by kernel under Nsight Compute, with the same
# metrics as scripts/decode-profile.sh, so the real step's kernels can be set against the
# ideal ones. On the GPU machine (CUDA at /usr/local/cuda). Writes $OUT/ceiling-ncu.csv and
# $OUT/ceiling-kernels.txt (the last replay's kernels, then the mean a layer by place).
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/gpu-env.sh
/usr/local/cuda/bin/nvcc -O3 -std=c++17 -arch=sm_90 scripts/membench/mlp_fused.cu -o "$out/mlp_fused" || exit 1
"$ncu" --csv --print-units base --cache-control none --clock-control none \
    --metrics gpu__time_duration.sum,dram__bytes_read.sum,launch__grid_size,launch__registers_per_thread \
    "$out/mlp_fused" once > "$out/ceiling-ncu.csv" 2> "$out/ceiling-ncu.err"
echo "ncu exit $?"
rm -f "$out/mlp_fused"
PYTHONPATH=scripts python3 - "$out/ceiling-ncu.csv" > "$out/ceiling-kernels.txt" <<'PY'
import sys, collections
from ncu_kernels import kernels
ks = kernels(sys.argv[1])
step = ks[-83:]  # the last replay: gather slot, 16 x (q/k/v, attention slot, o, gate/up, down), LM head, argmax slot
places = ["q/k/v (2 warps a row)", "attention slot", "o (2 warps a row)", "gate/up (1 warp a row)", "down (2 warps a row)"]
agg = collections.OrderedDict((p, [0, 0.0, 0.0]) for p in ["gather slot"] + places + ["LM head (1 warp a row)", "argmax slot"])
for i, k in enumerate(step):
    p = "gather slot" if i == 0 else "LM head (1 warp a row)" if i == 81 else "argmax slot" if i == 82 else places[(i - 1) % 5]
    t, b = k.get("gpu__time_duration.sum", 0) / 1e3, k.get("dram__bytes_read.sum", 0)
    agg[p][0] += 1; agg[p][1] += t; agg[p][2] += b
    print("%-28s grid %6d regs %3d %8.2f us %9.3f MB" % (p, k.get("launch__grid_size", 0), k.get("launch__registers_per_thread", 0), t, b / 1e6))
tot = sum(a[1] for a in agg.values())
print("\nstep: %d kernels, %.1f us of kernel time" % (len(step), tot))
for p, (c, t, b) in agg.items():
    print("%-28s x%3d  %7.2f us each  %8.1f us  %8.1f MB" % (p, c, t / max(c, 1), t, b / 1e6))
PY
tail -n 9 "$out/ceiling-kernels.txt"
