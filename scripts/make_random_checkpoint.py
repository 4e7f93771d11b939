#!/usr/bin/env python3
"""Writes a random-weight f32 Llama checkpoint (no torch needed: numpy + safetensors) for
measuring the CPU path's memory: `generate --output json` reports peak_rss_bytes next to
weight_bytes. Reuses the llama fixture's tokenizer (vocab 512).

    python3 scripts/make_random_checkpoint.py /tmp/llama-764m [hidden] [layers]
"""
import json
import os
import shutil
import sys

import numpy as np
from safetensors.numpy import save_file

dest = sys.argv[1]
hidden = int(sys.argv[2]) if len(sys.argv) > 2 else 2048
layers = int(sys.argv[3]) if len(sys.argv) > 3 else 4
heads, kv_heads, inter, vocab = hidden // 128, hidden // 256, hidden * 11 // 4, 512
hd = hidden // heads
rng = np.random.default_rng(0)


def w(*shape):
    return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)


t = {"model.embed_tokens.weight": w(vocab, hidden), "model.norm.weight": np.ones(hidden, np.float32), "lm_head.weight": w(vocab, hidden)}
for l in range(layers):
    p = f"model.layers.{l}"
    t[f"{p}.input_layernorm.weight"] = np.ones(hidden, np.float32)
    t[f"{p}.post_attention_layernorm.weight"] = np.ones(hidden, np.float32)
    t[f"{p}.self_attn.q_proj.weight"] = w(heads * hd, hidden)
    t[f"{p}.self_attn.k_proj.weight"] = w(kv_heads * hd, hidden)
    t[f"{p}.self_attn.v_proj.weight"] = w(kv_heads * hd, hidden)
    t[f"{p}.self_attn.o_proj.weight"] = w(hidden, heads * hd)
    t[f"{p}.mlp.gate_proj.weight"] = w(inter, hidden)
    t[f"{p}.mlp.up_proj.weight"] = w(inter, hidden)
    t[f"{p}.mlp.down_proj.weight"] = w(hidden, inter)
os.makedirs(dest, exist_ok=True)
save_file(t, os.path.join(dest, "model.safetensors"))
cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden, "intermediate_size": inter,
       "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads, "vocab_size": vocab,
       "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 2048, "torch_dtype": "float32",
       "tie_word_embeddings": False, "hidden_act": "silu", "bos_token_id": 0, "eos_token_id": 1}
with open(os.path.join(dest, "config.json"), "w") as f:
    json.dump(cfg, f, indent=2)
here = os.path.dirname(os.path.abspath(__file__))
shutil.copy(os.path.join(here, "..", "tests", "fixtures", "models", "llama", "tokenizer.json"), dest)
print(dest, sum(a.nbytes for a in t.values()), "bytes of weights")
