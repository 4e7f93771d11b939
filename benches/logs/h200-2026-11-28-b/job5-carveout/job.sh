set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
export ROCMFORGE_CACHE_DIR=$(mktemp -d)
s=$OUT/summary.txt
for p in llama3-8b llama3.2-1b; do
  for e in "RF_MIN_SPLIT=512" "RF_MIN_SPLIT=512 RF_CARVEOUT=100" "RF_CARVEOUT=100" "RF_MIN_SPLIT=512 RF_CARVEOUT=0" "RF_MIN_SPLIT=512"; do
    r=$(env $e timeout 150 .gpu/bench-ms --preset $p --output json -p 512 -n 128 -b 1 --context 8192 -r 3 --gpu-memory-fraction 0.5 2>> $OUT/bench.err | python3 -c 'import json,sys; d=json.load(sys.stdin); print(" ".join("%s=%.1f" % (r["test"], r["tok_s"]) for r in d["results"] if "token by" not in r["test"]))')
    echo "$p $e: $r" | tee -a $s
  done
done
