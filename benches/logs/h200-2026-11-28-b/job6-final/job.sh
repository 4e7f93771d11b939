set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
export ROCMFORGE_CACHE_DIR=$(mktemp -d)
s=$OUT/summary.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee $s
for run in "llama3-8b bench-base" "llama3-8b bench" "llama3.2-1b bench-base" "llama3.2-1b bench" "llama3-8b bench-base" "llama3-8b bench"; do
  read -r p b <<< "$run"
  r=$(timeout 120 .gpu/$b --preset $p --output json -p 512 -n 128 -b 1,4 --context 4096 -r 3 --gpu-memory-fraction 0.5 2>> $OUT/bench.err | python3 -c 'import json,sys; d=json.load(sys.stdin); print("limit %.1f " % d["decode_limit_tok_s"] + " ".join("%s=%.1f(%.3f)" % (r["test"], r["tok_s"], r.get("fraction_of_limit",0)) for r in d["results"] if "token by" not in r["test"] and "pp" not in r["test"]))')
  echo "$p $b: $r" | tee -a $s
done
ROCMFORGE_SELFTEST_ONLY=attention timeout 150 .gpu/selftest > $OUT/selftest-attention.log 2>&1; echo "selftest attention exit $? $(tail -n1 $OUT/selftest-attention.log)" | tee -a $s
grep -E "FAIL|rows wrong" $OUT/selftest-attention.log | head | tee -a $s
timeout 150 .gpu/model_check > $OUT/model-check.log 2>&1; echo "model_check exit $? $(tail -n1 $OUT/model-check.log)" | tee -a $s
for b in bench-attention-base bench-attention; do
  echo "== $b" >> $OUT/bench-attention.log
  BENCH_ONLY=decode timeout 60 .gpu/$b >> $OUT/bench-attention.log 2>&1
  BENCH_ONLY=combine timeout 60 .gpu/$b >> $OUT/bench-attention.log 2>&1
done
grep -E "^==|batch" $OUT/bench-attention.log | tee -a $s
