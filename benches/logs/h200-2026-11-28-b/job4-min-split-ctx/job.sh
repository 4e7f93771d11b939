set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
export ROCMFORGE_CACHE_DIR=$(mktemp -d)
s=$OUT/summary.txt
for p in llama3-8b llama3.2-1b; do
  for ms in def 512 1024 def 512 1024; do
    e=""; [ $ms != def ] && e="RF_MIN_SPLIT=$ms"
    r=$(env $e timeout 150 .gpu/bench-ms --preset $p --output json -p 512 -n 128 -b 1,4 --context 8192 -r 3 --gpu-memory-fraction 0.5 2>> $OUT/bench.err | python3 -c 'import json,sys; d=json.load(sys.stdin); print(" ".join("%s=%.1f" % (r["test"], r["tok_s"]) for r in d["results"] if "pp" not in r["test"] and "token by" not in r["test"]))')
    echo "$p min_split $ms: $r" | tee -a $s
  done
done
