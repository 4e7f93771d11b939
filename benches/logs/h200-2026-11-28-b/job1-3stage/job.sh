set -u
export ROCMFORGE_CACHE_DIR=$(mktemp -d)
export LD_LIBRARY_PATH=/usr/local/cuda/lib64
s=$OUT/summary.txt
(OUT=$OUT/tl timeout 200 bash scripts/decode-timeline.sh) 2>&1 | tail -40 | tee -a $s
ROCMFORGE_SELFTEST_ONLY=attention timeout 150 .gpu/selftest-3st > $OUT/selftest-3st.log 2>&1; echo "selftest-3st exit $? $(tail -n1 $OUT/selftest-3st.log) wgmma: $(grep -c '_wgmma ' $OUT/selftest-3st.log)" | tee -a $s
grep -E "FAIL|rows wrong" $OUT/selftest-3st.log | head | tee -a $s
OUT=$OUT/a NCU=0 ROUNDS=2 BINS="bench-attention bench-attention-3st" timeout 280 bash scripts/attn-profile.sh 2>&1 | tail -40 | tee -a $s
cd $OUT && tar czf job.tgz --exclude=job.tgz * 2>/dev/null; ls
