#!/usr/bin/env bash
# Builds and runs the membench programs with the machine's nvcc (the GPU machine has CUDA
# at /usr/local/cuda): read_bw.cu (read bandwidth by kernel shape) and step_ceiling.cu
# (the 1B decode step's reads as ideal launches in one graph), and on request (WHAT) mlp_fused.cu
# (each layer's MLP in one launch of independent workgroups) and l2_persist.cu (weights held
# in L2 across steps). WHAT picks among them (default: read_bw step_ceiling).
set -euo pipefail
cd "$(dirname "$0")"
out=${OUT:-.}
for p in ${WHAT:-read_bw step_ceiling}; do
    /usr/local/cuda/bin/nvcc -O3 -std=c++17 -arch=sm_90 "$p.cu" -o "$out/$p"
    "$out/$p" | tee "$out/$p.txt"
done
