set -u
export ROCMFORGE_CACHE_DIR=$(mktemp -d)
for p in llama3.2-1b llama3-8b; do PRESET=$p OUT=$OUT timeout 200 bash scripts/decode-timeline.sh 2>&1 | tail -30; done
ls $OUT
