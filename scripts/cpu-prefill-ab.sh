#!/usr/bin/env bash
# A/B of CPU prefill and decode with `generate`, alternating binaries (this machine, no
# GPU): BINS (space-separated paths, default "/tmp/generate-base /tmp/generate-new"),
# CKPTS (checkpoint directories, e.g. from `scripts/make_random_checkpoint.py DIR 2048 4
# bf16`), ROUNDS (2). Prompts: the sentence below once (`short`, 23 tokens with that
# script's tokenizer), 28 times (`long`, 617) and 68 times (`longer`, 1498); PROMPTS picks
# some of them. TOKENS (16) tokens are generated.
# One line a run: checkpoint, prompt, binary, prompt tokens, prefill and decode tok/s,
# peak RSS, the first generated ids (greedy: equal across binaries when the results are).
set -euo pipefail
sentence="the quick brown fox jumps over the lazy dog"
repeat() { for _ in $(seq "$1"); do printf '%s ' "$sentence"; done; }
for round in $(seq 1 "${ROUNDS:-2}"); do
    for ck in ${CKPTS:?set CKPTS to checkpoint directories}; do
        for p in ${PROMPTS:-short long longer}; do
            case $p in short) prompt=$sentence ;; long) prompt=$(repeat 28) ;; longer) prompt=$(repeat 68) ;; esac
            for bin in ${BINS:-/tmp/generate-base /tmp/generate-new}; do
                "$bin" --model "$ck" --prompt "$prompt" --max-tokens "${TOKENS:-16}" --ignore-eos --temperature 0 --output json 2>/dev/null \
                    | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sys.argv[1], sys.argv[2], sys.argv[3], len(d["prompt_ids"]), "prefill %.1f decode %.1f rss %.2f GB" % (d["prefill_tok_s"], d["decode_tok_s"], d["peak_rss_bytes"] / 1e9), d["generated_ids"][:6])' \
                    "$(basename "$ck")" "$p" "$(basename "$bin")"
            done
        done
    done
done
