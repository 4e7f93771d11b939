set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
export ROCMFORGE_CACHE_DIR=$(mktemp -d)
s=$OUT/summary.txt
for ms in def 256 512 1024 100000; do
  e=""; [ $ms != def ] && e="RF_MIN_SPLIT=$ms"
  echo "== min_split $ms" | tee -a $s
  env $e BENCH_ONLY=combine timeout 100 .gpu/bench-attention-ms 2>&1 | grep -E "batch" | tee -a $s
done
for p in llama3.2-1b llama3-8b; do
  for ms in def 512 100000 def; do
    e=""; [ $ms != def ] && e="RF_MIN_SPLIT=$ms"
    r=$(env $e timeout 150 .gpu/bench-ms --preset $p --output json -p 512 -n 128 -b 1 --context 0 -r 3 --gpu-memory-fraction 0.3 2>> $OUT/bench.err | python3 -c 'import json,sys; d=json.load(sys.stdin); print(" ".join("%s=%.1f(%.3f)" % (r["test"], r["tok_s"], r.get("fraction_of_limit",0)) for r in d["results"]))')
    echo "$p min_split $ms: $r" | tee -a $s
  done
done
