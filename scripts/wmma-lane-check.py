#!/usr/bin/env python3
# A CPU emulation of the WMMA attention prefill's lane algebra (templates/attention.hip.tera, the
# `RF_WMMA` branch), written while no AMD GPU was available: it replays the kernel's fragment
# indexing (S^T = K Q^T, O^T = V^T P^T, lane t holding query row t % 16 at positions 2e + t / 16,
# the partner lane t ^ 16 completing P^T) over the documented RDNA3 v_wmma_f32_16x16x16 operand
# layout (A: lane t holds row t % 16; B: lane t holds column t % 16; both half-waves the same;
# D: element e of lane t is D[2e + t / 16][t % 16]) and compares with a direct softmax(QK^T)V.
# It checks the index algebra only (f64, no 16-bit rounding), not the hardware; keep it in step
# with the template. Standard library only: python3 scripts/wmma-lane-check.py
import math, random

from attn_lane_ref import check, max_error
random.seed(2)


def wmma(acc, a, b):
    # a, b: per lane lists of 16 (row / column lane % 16); acc: per lane lists of 8 -> D = A B + C
    for l in range(32):
        # RDNA3 reads each operand from both half-waves: they must agree.
        assert a[l] == a[l ^ 16] and b[l] == b[l ^ 16], "half-waves disagree"
    A = [a[m] for m in range(16)]
    B = [[b[n][k] for n in range(16)] for k in range(16)]
    out = [list(x) for x in acc]
    for l in range(32):
        for e in range(8):
            r, c = 2 * e + l // 16, l % 16
            out[l][e] += sum(A[r][k] * B[k][c] for k in range(16))
    return out


def shfl_xor(vals, mask):
    return [vals[l ^ mask] for l in range(32)]


def run(D, q_len, kv_len, causal):
    BQ, BKV = 64, 32
    NT, DT = BKV // 16, D // 16
    Q = [[random.uniform(-1, 1) for _ in range(D)] for _ in range(q_len)]
    K = [[random.uniform(-1, 1) for _ in range(D)] for _ in range(kv_len)]
    V = [[random.uniform(-1, 1) for _ in range(D)] for _ in range(kv_len)]
    scale = 1 / math.sqrt(D)
    out = [[0.0] * D for _ in range(q_len)]
    for row0 in range(0, q_len, BQ):
        qp_first = kv_len - q_len + row0
        q_s = [Q[row0 + r] if row0 + r < q_len else [0.0] * D for r in range(BQ)]
        for wave in range(4):
            o = [[[0.0] * 8 for _ in range(32)] for _ in range(DT)]
            m_r = [-math.inf] * 32
            l_r = [0.0] * 32
            for kv0 in range(0, kv_len, BKV):
                k_s = [K[kv0 + r] if kv0 + r < kv_len else [0.0] * D for r in range(BKV)]
                v_s = [V[kv0 + r] if kv0 + r < kv_len else [0.0] * D for r in range(BKV)]
                vt_s = [[v_s[r][d] for r in range(BKV)] for d in range(D)]
                s = []
                for nt in range(NT):
                    acc = [[0.0] * 8 for _ in range(32)]
                    for ks in range(D // 16):
                        a = [k_s[nt * 16 + l % 16][ks * 16:ks * 16 + 16] for l in range(32)]
                        b = [q_s[wave * 16 + l % 16][ks * 16:ks * 16 + 16] for l in range(32)]
                        acc = wmma(acc, a, b)
                    s.append(acc)
                mx = [-math.inf] * 32
                for l in range(32):
                    q_pos = qp_first + wave * 16 + l % 16
                    for nt in range(NT):
                        for e in range(8):
                            kv_pos = kv0 + nt * 16 + 2 * e + l // 16
                            x = s[nt][l][e] * scale
                            if not (kv_pos < kv_len and (not causal or kv_pos <= q_pos)):
                                x = -math.inf
                            s[nt][l][e] = x
                            mx[l] = max(mx[l], x)
                partner = shfl_xor(mx, 16)
                mx = [max(mx[l], partner[l]) for l in range(32)]
                alpha, m_use = [0.0] * 32, [0.0] * 32
                for l in range(32):
                    m_new = max(m_r[l], mx[l])
                    m_use[l] = 0.0 if m_new == -math.inf else m_new
                    alpha[l] = 0.0 if m_r[l] == -math.inf else math.exp(m_r[l] - m_use[l])
                    m_r[l] = m_new
                p = [[[0.0] * 16 for _ in range(32)] for _ in range(NT)]
                sums = [0.0] * 32
                for nt in range(NT):
                    for e in range(8):
                        own = [math.exp(s[nt][l][e] - m_use[l]) if s[nt][l][e] != -math.inf else 0.0 for l in range(32)]
                        other = shfl_xor(own, 16)
                        for l in range(32):
                            sums[l] += own[l]
                            hi = l // 16
                            p[nt][l][2 * e] = other[l] if hi else own[l]
                            p[nt][l][2 * e + 1] = own[l] if hi else other[l]
                for l in range(32):
                    l_r[l] = l_r[l] * alpha[l] + sums[l]
                for dt in range(DT):
                    o[dt] = [[x * alpha[l] for x in o[dt][l]] for l in range(32)]
                    for nt in range(NT):
                        va = [vt_s[dt * 16 + l % 16][nt * 16:nt * 16 + 16] for l in range(32)]
                        o[dt] = wmma(o[dt], va, p[nt])
            partner = shfl_xor(l_r, 16)
            for l in range(32):
                lsum = l_r[l] + partner[l]
                inv = 1 / lsum if lsum > 0 else 0.0
                row = row0 + wave * 16 + l % 16
                if row < q_len:
                    for dt in range(DT):
                        for e in range(8):
                            out[row][dt * 16 + 2 * e + l // 16] = o[dt][l][e] * inv
    return max_error(Q, K, V, out, causal)


check(run)
