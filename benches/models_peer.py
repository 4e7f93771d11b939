"""HF transformers peer of the `bench` example: the same preset shapes with random bf16
weights on the GPU, timed the same way. Run in the same job as `bench`.

pp N: one forward over N prompt tokens (torch.no_grad, synchronized), tokens/s.
tg N: model.generate from a one-token prompt, N new tokens (greedy, min_new_tokens=N,
dynamic cache, eager), tokens/s. Median of 3 runs after one warm-up.

Usage: python3 benches/models_peer.py [preset ...]   (default: all three)
Prints one JSON line per preset.
"""
import json
import statistics
import sys
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

PRESETS = {
    "llama3-8b": lambda: LlamaConfig(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0,
        max_position_embeddings=8192, tie_word_embeddings=False),
    "llama3.2-1b": lambda: LlamaConfig(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0,
        max_position_embeddings=131072, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192}),
    "qwen2.5-7b": lambda: Qwen2Config(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, vocab_size=152064, rms_norm_eps=1e-6, rope_theta=1000000.0,
        max_position_embeddings=32768, tie_word_embeddings=False),
}


def timed(fn, reps=3):
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main():
    names = sys.argv[1:] or list(PRESETS)
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__} transformers {transformers.__version__}", flush=True)
    for name in names:
        cfg = PRESETS[name]()
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16)
        model.eval()
        res = {"preset": name, "engine": "hf-transformers", "dtype": "bf16"}
        gen = torch.Generator(device="cuda").manual_seed(1)
        with torch.no_grad():
            for n in (512, 2048):
                ids = torch.randint(0, cfg.vocab_size, (1, n), device="cuda", generator=gen)
                s = timed(lambda: model(ids, use_cache=False, logits_to_keep=1))
                res[f"pp{n}"] = n / s
            ids = torch.randint(0, cfg.vocab_size, (1, 1), device="cuda", generator=gen)
            n = 128
            s = timed(lambda: model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                             attention_mask=torch.ones_like(ids), pad_token_id=0))
            res[f"tg{n}"] = n / s
        res["memory_allocated_bytes"] = torch.cuda.max_memory_allocated()
        print(json.dumps(res), flush=True)
        del model
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


if __name__ == "__main__":
    main()
