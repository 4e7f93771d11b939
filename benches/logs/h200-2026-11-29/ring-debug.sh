# On the GPU machine: the ring decode step's failures, one binary at a time.
source scripts/gpu-env.sh
cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null | head -n 1)
for b in bench-l1 bench; do
  echo "== $b 1B"; timeout 100 .gpu/$b --preset llama3.2-1b --output json -p "" -b "" -n 128 -r 2 --context 0 --gpu-memory-fraction 0.3 --persistent --step-clock 2> $out/$b-1b.err | python3 -c 'import json,sys; d=json.load(sys.stdin); print(" ".join("%s=%.1f(%.3f)" % (r["test"], r["tok_s"], r.get("fraction_of_limit",0)) for r in d["results"]))'; grep -E "phases|rror" $out/$b-1b.err
done
echo "== sanitizer $cs"
timeout 300 $cs --tool memcheck --print-limit 5 .gpu/bench --preset llama3.2-1b -p "" -b "" -n 2 -r 1 --context 0 --gpu-memory-fraction 0.3 --persistent > $out/sanitizer.log 2>&1; echo "rc $?"; grep -v "^\s*$" $out/sanitizer.log | head -40
