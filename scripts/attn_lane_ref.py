# Shared by scripts/mfma-lane-check.py and scripts/wmma-lane-check.py: the direct f64
# softmax(Q K^T) V they compare an emulated kernel with, and the cases they run.
import math


def max_error(Q, K, V, out, causal):
    """Largest absolute difference between `out` and softmax(scale Q K^T) V (bottom-right
    aligned causal mask when `causal`), scale 1 / sqrt(head_dim)."""
    q_len, kv_len, D = len(Q), len(K), len(Q[0])
    scale = 1 / math.sqrt(D)
    err = 0.0
    for i in range(q_len):
        q_pos = kv_len - q_len + i
        sc = [sum(Q[i][d] * K[j][d] for d in range(D)) * scale if (not causal or j <= q_pos) else -math.inf for j in range(kv_len)]
        m = max(sc)
        w = [math.exp(x - m) if x != -math.inf else 0 for x in sc]
        z = sum(w)
        for d in range(D):
            ref = sum(w[j] * V[j][d] for j in range(kv_len)) / z
            err = max(err, abs(ref - out[i][d]))
    return err


def check(run):
    """Runs `run(D, q_len, kv_len, causal)` (which returns its max_error) on odd lengths,
    both masks and a partial tail, and exits non-zero past 1e-12."""
    worst = 0.0
    for name, args in [("non-causal D32 q64 kv50", (32, 64, 50, False)), ("causal D32 q40 kv70", (32, 40, 70, True)),
                       ("causal D16 q100 kv100", (16, 100, 100, True))]:
        e = run(*args)
        print(f"{name}: max abs error {e:.2e}")
        worst = max(worst, e)
    if worst > 1e-12:
        raise SystemExit(f"lane algebra disagrees with the reference: {worst:.2e}")
    print("ok")
