#!/usr/bin/env python3
# A CPU emulation of the MFMA attention prefill's lane algebra (templates/attention.hip.tera, the
# `RF_MFMA` branch), written while no AMD GPU was available: it replays the kernel's fragment
# indexing (S^T = K Q^T, O^T = V^T P^T, row statistics per lane % 16) over the documented
# v_mfma_f32_16x16x16 operand layout and compares with a direct softmax(QK^T)V. It checks
# the index algebra only (f64, no 16-bit rounding), not the hardware; keep it in step with
# the template. Standard library only: python3 scripts/mfma-lane-check.py
import math, random

from attn_lane_ref import check, max_error
random.seed(1)
def mfma(acc, a, b):
    # a, b: per lane lists of 4; acc: per lane list of 4 -> D = A B + C
    A = [[0.0]*16 for _ in range(16)]; B = [[0.0]*16 for _ in range(16)]
    for l in range(64):
        for i in range(4):
            A[l%16][4*(l//16)+i] = a[l][i]; B[4*(l//16)+i][l%16] = b[l][i]
    out = [list(x) for x in acc]
    for l in range(64):
        for i in range(4):
            r, c = 4*(l//16)+i, l%16
            out[l][i] += sum(A[r][k]*B[k][c] for k in range(16))
    return out
def run(D, q_len, kv_len, causal):
    BQ, BKV = 64, 32; MT, NT, DT = BQ//32, BKV//16, D//16
    Q = [[random.uniform(-1,1) for _ in range(D)] for _ in range(q_len)]
    K = [[random.uniform(-1,1) for _ in range(D)] for _ in range(kv_len)]
    V = [[random.uniform(-1,1) for _ in range(D)] for _ in range(kv_len)]
    scale = 1/math.sqrt(D); out = [[0.0]*D for _ in range(q_len)]
    for row0 in range(0, q_len, BQ):
        qp_first = kv_len - q_len + row0
        q_s = [Q[row0+r] if row0+r < q_len else [0.0]*D for r in range(BQ)]
        for wave in range(2):
            o = [[[[0.0]*4 for _ in range(64)] for _ in range(DT)] for _ in range(MT)]
            m_r = [[-math.inf]*64 for _ in range(MT)]; l_r = [[0.0]*64 for _ in range(MT)]
            for kv0 in range(0, kv_len, BKV):
                k_s = [K[kv0+r] if kv0+r < kv_len else [0.0]*D for r in range(BKV)]
                v_s = [V[kv0+r] if kv0+r < kv_len else [0.0]*D for r in range(BKV)]
                for mt in range(MT):
                    s = []
                    for nt in range(NT):
                        acc = [[0.0]*4 for _ in range(64)]
                        for ks in range(D//16):
                            a = [[k_s[nt*16 + l%16][ks*16 + 4*(l//16) + i] for i in range(4)] for l in range(64)]
                            b = [[q_s[wave*32 + mt*16 + l%16][ks*16 + 4*(l//16) + i] for i in range(4)] for l in range(64)]
                            acc = mfma(acc, a, b)
                        s.append(acc)
                    p = [[[0.0]*4 for _ in range(64)] for _ in range(NT)]
                    alpha = [0.0]*64; mnew = [0.0]*64; muse=[0.0]*64
                    mx = [-math.inf]*64
                    for l in range(64):
                        q_pos = qp_first + wave*32 + mt*16 + l%16
                        for nt in range(NT):
                            for e in range(4):
                                kv_pos = kv0 + nt*16 + 4*(l//16) + e
                                x = s[nt][l][e]*scale
                                if not (kv_pos < kv_len and (not causal or kv_pos <= q_pos)): x = -math.inf
                                s[nt][l][e] = x; mx[l] = max(mx[l], x)
                    for l in range(64):  # shfl_xor 16, 32
                        grp = [mx[(l%16) + 16*j] for j in range(4)]
                        m_new = max(m_r[mt][l], max(grp)); m_use = 0.0 if m_new == -math.inf else m_new
                        a_ = 0.0 if m_r[mt][l] == -math.inf else math.exp(m_r[mt][l]-m_use)
                        m_r[mt][l] = m_new; ssum = 0.0
                        for nt in range(NT):
                            for e in range(4):
                                pe = math.exp(s[nt][l][e]-m_use) if s[nt][l][e] != -math.inf else 0.0
                                ssum += pe; p[nt][l][e] = pe
                        l_r[mt][l] = l_r[mt][l]*a_ + ssum
                        for dt in range(DT): o[mt][dt][l] = [x*a_ for x in o[mt][dt][l]]
                    for dt in range(DT):
                        for nt in range(NT):
                            va = [[v_s[nt*16 + 4*(l//16) + e][dt*16 + l%16] for e in range(4)] for l in range(64)]
                            o[mt][dt] = mfma(o[mt][dt], va, [p[nt][l] for l in range(64)])
            for mt in range(MT):
                for l in range(64):
                    lsum = sum(l_r[mt][(l%16)+16*j] for j in range(4)); inv = 1/lsum if lsum > 0 else 0.0
                    row = row0 + wave*32 + mt*16 + l%16
                    if row < q_len:
                        for dt in range(DT):
                            for e in range(4): out[row][dt*16 + 4*(l//16) + e] = o[mt][dt][l][e]*inv
    return max_error(Q, K, V, out, causal)


check(run)
