#!/usr/bin/env python3
"""Writes a random-weight Llama checkpoint (Python's standard library only) for measuring
the CPU path's memory and speed: `generate --output json` reports peak_rss_bytes next to
weight_bytes, and prefill_tok_s / decode_tok_s. Reuses the llama fixture's tokenizer
(vocab 512).

    python3 scripts/make_random_checkpoint.py DEST [hidden] [layers] [f32|bf16|f16]

Defaults: hidden 2048, 4 layers, f32. The matrices are one block of 65 536 random normal
values (std 0.02, seed 0) repeated, which is enough for timing and memory figures.
"""
import json
import os
import random
import shutil
import struct
import sys

dest = sys.argv[1]
hidden = int(sys.argv[2]) if len(sys.argv) > 2 else 2048
layers = int(sys.argv[3]) if len(sys.argv) > 3 else 4
dtype = sys.argv[4] if len(sys.argv) > 4 else "f32"
if dtype not in ("f32", "bf16", "f16"):
    sys.exit(f"dtype must be f32, bf16 or f16, not {dtype}")
heads, kv_heads, inter, vocab = hidden // 128, hidden // 256, hidden * 11 // 4, 512
hd = hidden // heads
BLOCK = 65536
rng = random.Random(0)
block_vals = [rng.gauss(0.0, 0.02) for _ in range(BLOCK)]


def encode(vals):
    f32 = struct.pack(f"<{len(vals)}f", *vals)
    if dtype == "f32":
        return f32
    if dtype == "f16":
        return struct.pack(f"<{len(vals)}e", *vals)
    # bf16: the high half of each f32, rounded to nearest even.
    out = bytearray()
    for (u,) in struct.iter_unpack("<I", f32):
        u += 0x7FFF + ((u >> 16) & 1)
        out += struct.pack("<H", (u >> 16) & 0xFFFF)
    return bytes(out)


block = encode(block_vals)
one = encode([1.0])
size = len(one)


def matrix(*shape):
    n = 1
    for d in shape:
        n *= d
    reps, rest = divmod(n, BLOCK)
    return block * reps + block[: rest * size]


tensors = {"model.embed_tokens.weight": ([vocab, hidden], matrix(vocab, hidden)),
           "model.norm.weight": ([hidden], one * hidden), "lm_head.weight": ([vocab, hidden], matrix(vocab, hidden))}
for l in range(layers):
    p = f"model.layers.{l}"
    tensors[f"{p}.input_layernorm.weight"] = ([hidden], one * hidden)
    tensors[f"{p}.post_attention_layernorm.weight"] = ([hidden], one * hidden)
    for name, shape in [("self_attn.q_proj", [heads * hd, hidden]), ("self_attn.k_proj", [kv_heads * hd, hidden]),
                        ("self_attn.v_proj", [kv_heads * hd, hidden]), ("self_attn.o_proj", [hidden, heads * hd]),
                        ("mlp.gate_proj", [inter, hidden]), ("mlp.up_proj", [inter, hidden]), ("mlp.down_proj", [hidden, inter])]:
        tensors[f"{p}.{name}.weight"] = (shape, matrix(*shape))

st_dtype = {"f32": "F32", "bf16": "BF16", "f16": "F16"}[dtype]
header, offset = {}, 0
for name, (shape, data) in tensors.items():
    header[name] = {"dtype": st_dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
    offset += len(data)
head = json.dumps(header, separators=(",", ":")).encode()
head += b" " * (-len(head) % 8)  # the data section starts 8-byte aligned
os.makedirs(dest, exist_ok=True)
tmp = os.path.join(dest, "model.safetensors.partial")
with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(head)))
    f.write(head)
    for _, data in tensors.values():
        f.write(data)
os.replace(tmp, os.path.join(dest, "model.safetensors"))
torch_dtype = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}[dtype]
cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden, "intermediate_size": inter,
       "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads, "vocab_size": vocab,
       "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 2048, "torch_dtype": torch_dtype,
       "tie_word_embeddings": False, "hidden_act": "silu", "bos_token_id": 0, "eos_token_id": 1}
with open(os.path.join(dest, "config.json"), "w") as f:
    json.dump(cfg, f, indent=2)
here = os.path.dirname(os.path.abspath(__file__))
shutil.copy(os.path.join(here, "..", "tests", "fixtures", "models", "llama", "tokenizer.json"), dest)
print(dest, offset, "bytes of weights")
