#!/usr/bin/env bash
# On the GPU machine: Nsight Compute times of the greedy decode step's small kernels and
# products (advance, gather, argmax, the q/k/v pairs, o/down and the LM head), median over
# about three steps of a 40-token pipelined decode (chains included), for each binary of
# RUNS (';'-separated entries "binary [VAR=value ...]", default "bench-base;bench").
set -uo pipefail
source scripts/gpu-env.sh
IFS=';' read -ra runs <<< "${RUNS:-bench-base;bench}"
for v in "${runs[@]}"; do
  read -r bin e <<< "$v"
  env $e "$ncu" --csv --print-units base --cache-control none --clock-control none \
    --kernel-name regex:"advance|gather|pair1|argmax|greedy|gemv1" --launch-skip 200 --launch-count 150 \
    --metrics gpu__time_duration.sum,launch__grid_size,launch__registers_per_thread \
    .gpu/$bin --preset llama3.2-1b -p "" -n 40 -b "" --context 0 -r 1 --gpu-memory-fraction 0.3 > "$out/ncu-$bin.csv" 2>/dev/null
  echo "== $v"
  python3 - "$out/ncu-$bin.csv" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"'))]
head, rows = rows[0], rows[1:]
ix = {k: i for i, k in enumerate(head)}
agg = collections.OrderedDict()
for r in rows:
    name = r[ix["Kernel Name"]][:40]
    m = r[ix["Metric Name"]]; v = float(r[ix["Metric Value"]].replace(",", ""))
    a = agg.setdefault((name, m), [])
    a.append(v)
for (n, m), v in agg.items():
    v = sorted(v)
    print("%-40s %-28s n %3d median %10.1f min %10.1f max %10.1f" % (n, m, len(v), v[len(v)//2], v[0], v[-1]))
PY
done
