set -u
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
export ROCMFORGE_CACHE_DIR=$(mktemp -d)
s=$OUT/summary.txt
find / -name nsys -type f 2>/dev/null | head -5 | tee -a $s
BENCH_ONLY=combine .gpu/bench-attention 2>&1 | tail -5 | tee -a $s
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
for hd in 64 128; do
  BENCH_ONLY=combine timeout 200 $NCU --set full --import-source no --kernel-name regex:hd${hd}_b128_decode_mma --launch-skip 20 --launch-count 1 -o $OUT/dec$hd -f .gpu/bench-attention > $OUT/ncu$hd.out 2>&1
  echo "ncu $hd exit $?" | tee -a $s
  $NCU -i $OUT/dec$hd.ncu-rep --page details --print-details all > $OUT/dec$hd-details.txt 2>&1
  $NCU -i $OUT/dec$hd.ncu-rep --page source --print-source sass --csv > $OUT/dec$hd-sass.csv 2>&1
  grep -E "Duration|Registers|Grid Size|Cluster|Warp Cycles Per Issued|Stall|Achieved Occ|Elapsed Cycles" $OUT/dec$hd-details.txt | head -40 | tee -a $s
done
cd $OUT && gzip -f *sass.csv && rm -f *.ncu-rep && ls
