# Sourced by the GPU-machine scripts (from the repository root): `out` is $OUT (or
# ./gpu-logs), created; a fresh, empty kernel cache for the job; the CUDA libraries on the
# loader's path; `ncu`, Nsight Compute's command line where the machine has one.
out=${OUT:-gpu-logs}
mkdir -p "$out"
export ROCMFORGE_CACHE_DIR=$(mktemp -d)
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -n 1 || true)
