#!/usr/bin/env bash
# Builds and runs read_bw.cu with the machine's nvcc (the GPU machine has CUDA at /usr/local/cuda).
set -euo pipefail
cd "$(dirname "$0")"
out=${OUT:-.}
/usr/local/cuda/bin/nvcc -O3 -std=c++17 -arch=sm_90 read_bw.cu -o "$out/read_bw"
"$out/read_bw" | tee "$out/read_bw.txt"
