# On the GPU machine: model_check, then the persistent decode step (weight rings) and
# the layered decode of the 1B and 8B shapes, one run each, and the step's resources.
source scripts/gpu-env.sh
timeout 300 .gpu/model_check > $out/model-check.log 2>&1; echo "model_check exit $? $(tail -n 1 $out/model-check.log)"
grep -E "persistent" $out/model-check.log | grep -v "not taken" | head -12
for p in llama3.2-1b llama3-8b; do
  for f in "--persistent --step-clock" ""; do
    echo "== $p [$f]"; timeout 150 .gpu/bench --preset $p --output json -p 512 -n 128 -b 1 --context 0 -r 3 --gpu-memory-fraction 0.3 $f 2> $out/bench-$p${f:+-persistent}.err | python3 -c 'import json,sys; d=json.load(sys.stdin); print("persistent=%s" % d.get("persistent_decode"), " ".join("%s=%.1f(%.3f)" % (r["test"], r["tok_s"], r.get("fraction_of_limit",0)) for r in d["results"]))'; grep -E "phases|rror" $out/bench-$p${f:+-persistent}.err
  done
done
for f in $ROCMFORGE_CACHE_DIR/*decode_step*; do cuobjdump -res-usage $f 2>/dev/null | grep -A1 "Function rf_decode_step"; done
