"""PyTorch peer of benches/attention.rs: scaled_dot_product_attention with its flash and
cuDNN backends on the same shapes, timed the same way (CUDA events around each call,
median of 200 after 10 warm-up calls). Run in the same job as the Rust benchmark.

Prefill: bf16 B4 H32 S4096 d128 causal / not, d64 H64; TFLOP/s with FlashAttention's
count (4 B H S^2 d, halved when causal). Decode: one query token, KV 4096, 32/8 heads
(GQA through enable_gqa), d128, batch 1 and 16; GB/s of K/V read + q/out.
"""
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def bench(fn, iters=200, warmup=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for a, b in ev:
        a.record()
        fn()
        b.record()
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in ev)


def main():
    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name()} torch {torch.__version__}")
    print("prefill (TFLOP/s)")
    for b, h, s, d, causal in [(4, 32, 4096, 128, False), (4, 32, 4096, 128, True), (4, 64, 4096, 64, False)]:
        q, k, v = (torch.randn(b, h, s, d, device=dev, dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * b * h * s * s * d / (2 if causal else 1)
        for name, backend in [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)]:
            try:
                with sdpa_kernel(backend):
                    ms = bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
                print(f"  bf16 B{b} H{h} S{s} d{d} {'causal' if causal else 'non-causal':<10} {name:<6} {ms * 1e3:9.1f} us {flops / ms / 1e9:7.0f} TFLOP/s")
            except RuntimeError as e:
                print(f"  {name}: unavailable ({str(e).splitlines()[0]})")
    print("decode (GB/s)")
    for dt in [torch.bfloat16, torch.float16]:
        for b in [1, 16]:
            h, kvh, d, kv = 32, 8, 128, 4096
            q = torch.randn(b, h, 1, d, device=dev, dtype=dt)
            k = torch.randn(b, kvh, kv, d, device=dev, dtype=dt)
            v = torch.randn(b, kvh, kv, d, device=dev, dtype=dt)
            nbytes = (k.numel() + v.numel() + 2 * q.numel()) * q.element_size()
            ms = bench(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
            print(f"  {str(dt).split('.')[-1]} batch {b:<3} default backend {ms * 1e3:9.1f} us {nbytes / ms / 1e6:7.0f} GB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
