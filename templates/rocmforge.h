// RocmForge portability header.
//
// Every generated kernel includes this text first. The same kernel source then builds
// with hipcc for AMD GPUs and with nvcc or NVRTC for NVIDIA GPUs. HIP's own NVIDIA
// headers are not used: they do not compile against CUDA 13. Only the few device-side
// names the templates need are mapped here.
//
// Storage types: f32 is `float`, f16 and bf16 are `unsigned short` bit patterns
// converted with the helpers below, i32 is `int`, u32 is `unsigned int`. All arithmetic
// is f32.
#ifndef ROCMFORGE_H
#define ROCMFORGE_H

#if defined(__HIP__) || defined(__HIPCC__) || defined(__HIP_PLATFORM_AMD__) || defined(__HIPCC_RTC__)
#if !defined(__HIPCC_RTC__)
// hiprtc builds these in; including them again redefines their types.
#include <hip/hip_runtime.h>
#include <hip/hip_fp16.h>
#endif
#define RF_SHFL_XOR(v, m, w) __shfl_xor((v), (m), (w))
#define RF_HIP 1
#else
// CUDA (nvcc or NVRTC): no headers at all. The 16-bit conversions are single PTX
// instructions; cuda_fp16.h / cuda_bf16.h would cost NVRTC seconds per module.
#define RF_CUDA 1
#define RF_SHFL_XOR(v, m, w) __shfl_xor_sync(0xffffffffu, (v), (m), (w))
#endif

#define RF_DEVICE __device__ __forceinline__

// A 16-byte aligned group of N elements, loaded and stored as whole 128-bit words.
template <typename T, int N>
struct alignas(16) rf_vec {
    T v[N];
};

#if defined(RF_CUDA)
RF_DEVICE float rf_f16_to_f32(unsigned short u) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(u));
    return f;
}
RF_DEVICE unsigned short rf_f32_to_f16(float f) {
    unsigned short u;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(u) : "f"(f));
    return u;
}
#else
RF_DEVICE float rf_f16_to_f32(unsigned short u) { return __half2float(__ushort_as_half(u)); }
RF_DEVICE unsigned short rf_f32_to_f16(float f) { return __half_as_ushort(__float2half_rn(f)); }
#endif

RF_DEVICE float rf_bf16_to_f32(unsigned short u) { return __uint_as_float(((unsigned int)u) << 16); }
RF_DEVICE unsigned short rf_f32_to_bf16(float f) {
#if defined(RF_CUDA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    unsigned short u;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(u) : "f"(f));
    return u;
#else
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (unsigned short)((u >> 16) | 0x40u);  // NaN stays a quiet NaN
    }
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
    return (unsigned short)(u >> 16);
#endif
}

// Orders shared-memory accesses among the lanes of a warp (a wavefront on AMD, which
// runs in lockstep: only the compiler must not reorder across it).
RF_DEVICE void rf_syncwarp() {
#if defined(RF_CUDA)
    __syncwarp();
#else
    __builtin_amdgcn_wave_barrier();
#endif
}

RF_DEVICE float rf_neg_inf() { return __int_as_float((int)0xff800000u); }
RF_DEVICE float rf_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
RF_DEVICE float rf_silu(float x) { return x / (1.0f + expf(-x)); }
// GELU forms without the cancellation of `1 + erf` / `1 + tanh` for negative x:
// 1 + erf(z) = erfc(-z) and 1 + tanh(y) = 2 / (1 + exp(-2y)).
RF_DEVICE float rf_gelu_erf(float x) { return 0.5f * x * erfcf(-x * 0.70710678118654752f); }
RF_DEVICE float rf_gelu_tanh(float x) {
    return x / (1.0f + expf(-1.5957691216057308f * (x + 0.044715f * x * x * x)));
}

template <int WARP>
RF_DEVICE float rf_warp_sum(float v) {
#pragma unroll
    for (int o = WARP / 2; o > 0; o >>= 1) v += RF_SHFL_XOR(v, o, WARP);
    return v;
}
template <int WARP>
RF_DEVICE float rf_warp_max(float v) {
#pragma unroll
    for (int o = WARP / 2; o > 0; o >>= 1) v = fmaxf(v, RF_SHFL_XOR(v, o, WARP));
    return v;
}
template <int WARP>
RF_DEVICE float rf_warp_min(float v) {
#pragma unroll
    for (int o = WARP / 2; o > 0; o >>= 1) v = fminf(v, RF_SHFL_XOR(v, o, WARP));
    return v;
}

// Reductions over ROW_THREADS threads. When a row spans several warps, `red` is a
// shared array of ROW_THREADS / WARP floats and every thread of the block must call.
#define RF_DEFINE_ROW_REDUCE(NAME, IDENT)                                     \
    template <int ROW_THREADS, int WARP>                                          \
    RF_DEVICE float rf_row_##NAME(float v, float* red) {                          \
        v = rf_warp_##NAME<WARP>(v);                                              \
        if (ROW_THREADS > WARP) {                                                 \
            const int w = threadIdx.x / WARP;                                     \
            const int l = threadIdx.x % WARP;                                     \
            __syncthreads();                                                      \
            if (l == 0) red[w] = v;                                               \
            __syncthreads();                                                      \
            v = (l < ROW_THREADS / WARP) ? red[l] : (IDENT);                      \
            v = rf_warp_##NAME<WARP>(v);                                          \
        }                                                                         \
        return v;                                                                 \
    }
RF_DEFINE_ROW_REDUCE(sum, 0.0f)
RF_DEFINE_ROW_REDUCE(max, rf_neg_inf())
RF_DEFINE_ROW_REDUCE(min, -rf_neg_inf())

// Loads N elements starting at p[c] into g: one aligned vector load when the caller
// proved alignment and the group is whole, element loads with zero fill otherwise.
template <typename T, int N>
RF_DEVICE void rf_load_group(rf_vec<T, N>& g, const T* p, long long c, long long n, bool vec_ok) {
    if (vec_ok && c + N <= n) {
        g = *reinterpret_cast<const rf_vec<T, N>*>(p + c);
    } else {
#pragma unroll
        for (int j = 0; j < N; ++j) g.v[j] = (c + j < n) ? p[c + j] : T(0);
    }
}

// Stores the elements of g that fall before n, as one vector when whole and aligned.
template <typename T, int N>
RF_DEVICE void rf_store_group(const rf_vec<T, N>& g, T* p, long long c, long long n, bool vec_ok) {
    if (vec_ok && c + N <= n) {
        *reinterpret_cast<rf_vec<T, N>*>(p + c) = g;
    } else {
#pragma unroll
        for (int j = 0; j < N; ++j) {
            if (c + j < n) p[c + j] = g.v[j];
        }
    }
}


// ---- Attention helpers ---------------------------------------------------------------

// CDNA matrix cores (gfx90a, gfx94x; wave64): v_mfma_f32_16x16x16{bf16_1k,f16}. For
// D = A B (16 x 16 x 16), lane l holds A[l % 16][4 (l / 16) + i] and B[4 (l / 16) + i][l % 16]
// for i = 0..3, and D[4 (l / 16) + i][l % 16].
#if defined(RF_HIP) && (defined(__gfx90a__) || defined(__gfx940__) || defined(__gfx941__) || defined(__gfx942__))
#define RF_MFMA 1
typedef short rf_short4 __attribute__((ext_vector_type(4)));
typedef _Float16 rf_half4 __attribute__((ext_vector_type(4)));
typedef float rf_float4 __attribute__((ext_vector_type(4)));
// d += a * b for one 16 x 16 x 16 product of 16-bit bit patterns; IS_BF16 picks bf16.
template <bool IS_BF16>
RF_DEVICE void rf_mfma16(rf_float4& d, const rf_short4& a, const rf_short4& b) {
    if (IS_BF16) {
        d = __builtin_amdgcn_mfma_f32_16x16x16bf16_1k(a, b, d, 0, 0, 0);
    } else {
        d = __builtin_amdgcn_mfma_f32_16x16x16f16(__builtin_bit_cast(rf_half4, a), __builtin_bit_cast(rf_half4, b), d, 0, 0, 0);
    }
}
#endif

#if defined(RF_HIP) && (defined(__gfx1100__) || defined(__gfx1101__) || defined(__gfx1102__) || defined(__gfx1103__) || \
    defined(__gfx1150__) || defined(__gfx1151__))
// RDNA3 matrix cores (WMMA, wave32). Operands of one 16 x 16 x 16 product: lane t holds
// row t % 16 of A and column t % 16 of B, 16 elements each, the same in both half-waves;
// the f32 result holds D[2 e + t / 16][t % 16] in element e of lane t.
#define RF_WMMA 1
typedef short rf_short16 __attribute__((ext_vector_type(16)));
typedef _Float16 rf_half16 __attribute__((ext_vector_type(16)));
typedef float rf_float8 __attribute__((ext_vector_type(8)));
// d += a * b for 16-bit bit patterns; IS_BF16 picks bf16.
template <bool IS_BF16>
RF_DEVICE void rf_wmma16(rf_float8& d, const rf_short16& a, const rf_short16& b) {
    if (IS_BF16) {
        d = __builtin_amdgcn_wmma_f32_16x16x16_bf16_w32(a, b, d);
    } else {
        d = __builtin_amdgcn_wmma_f32_16x16x16_f16_w32(__builtin_bit_cast(rf_half16, a), __builtin_bit_cast(rf_half16, b), d);
    }
}
// 16 consecutive 16-bit elements from shared memory at a 16-byte-aligned address (two
// 16-byte loads: rows padded by 8 elements are not 32-byte aligned).
RF_DEVICE rf_short16 rf_lds_short16(const unsigned short* p) {
    struct alignas(16) two {
        rf_vec<unsigned int, 4> lo, hi;
    } t;
    t.lo = reinterpret_cast<const rf_vec<unsigned int, 4>*>(p)[0];
    t.hi = reinterpret_cast<const rf_vec<unsigned int, 4>*>(p)[1];
    return __builtin_bit_cast(rf_short16, t);
}
#endif

RF_DEVICE int rf_mini(int a, int b) { return a < b ? a : b; }
RF_DEVICE long long rf_minll(long long a, long long b) { return a < b ? a : b; }
RF_DEVICE long long rf_maxll(long long a, long long b) { return a > b ? a : b; }

// Copies 16 bytes global -> shared, asynchronously where the target has cp.async
// (sm_80+); `valid == false` writes zeros instead (positions past a sequence).
#if defined(RF_CUDA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
RF_DEVICE unsigned int rf_smem_addr(const void* p) {
    unsigned long long a;
    asm("cvta.to.shared.u64 %0, %1;" : "=l"(a) : "l"(p));
    return (unsigned int)a;
}
#endif
#if defined(RF_CUDA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
// The same copy to a 32-bit shared-space address (from rf_smem_addr once, then plain
// integer offsets: no generic-to-shared conversion per copy).
RF_DEVICE void rf_cp_async16_s(unsigned int s, const void* gmem, bool valid) {
    const int bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes));
}
#endif
RF_DEVICE void rf_cp_async16(void* smem, const void* gmem, bool valid) {
#if defined(RF_CUDA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    rf_cp_async16_s(rf_smem_addr(smem), gmem, valid);
#else
    typedef rf_vec<unsigned int, 4> chunk;
    chunk c;
    if (valid) {
        c = *reinterpret_cast<const chunk*>(gmem);
    } else {
        c.v[0] = c.v[1] = c.v[2] = c.v[3] = 0u;
    }
    *reinterpret_cast<chunk*>(smem) = c;
#endif
}
RF_DEVICE void rf_cp_async_commit() {
#if defined(RF_CUDA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
// Waits until at most N committed groups are still in flight.
template <int N>
RF_DEVICE void rf_cp_async_wait() {
#if defined(RF_CUDA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// A load that bypasses L1, for data another workgroup wrote during this launch.
RF_DEVICE float rf_load_cg(const float* p) {
#if defined(RF_CUDA)
    // Not volatile: independent loads may be scheduled together; the caller's fence
    // and barrier order them after the other workgroups' writes.
    float v;
    asm("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p) : "memory");
    return v;
#else
    return *(const volatile float*)p;
#endif
}

// Two consecutive floats (8-byte aligned) past L1, as rf_load_cg.
RF_DEVICE rf_vec<float, 2> rf_load_cg2(const float* p) {
    rf_vec<float, 2> v;
#if defined(RF_CUDA)
    asm("ld.global.cg.v2.f32 {%0, %1}, [%2];" : "=f"(v.v[0]), "=f"(v.v[1]) : "l"(p) : "memory");
#else
    v.v[0] = ((const volatile float*)p)[0];
    v.v[1] = ((const volatile float*)p)[1];
#endif
    return v;
}

// Four consecutive floats (16-byte aligned) past L1, as rf_load_cg.
RF_DEVICE rf_vec<float, 4> rf_load_cg4(const float* p) {
    rf_vec<float, 4> v;
#if defined(RF_CUDA)
    asm("ld.global.cg.v4.f32 {%0, %1, %2, %3}, [%4];" : "=f"(v.v[0]), "=f"(v.v[1]), "=f"(v.v[2]), "=f"(v.v[3]) : "l"(p) : "memory");
#else
    for (int j = 0; j < 4; ++j) v.v[j] = ((const volatile float*)p)[j];
#endif
    return v;
}

// Data no thread writes during the launch (weights), in whole 16-byte words through
// the read-only data path. Not volatile: loads of several groups issue together.
template <typename V>
RF_DEVICE V rf_load_ro(const V* p) {
    static_assert(sizeof(V) % 16 == 0, "whole 16-byte words");
#if defined(RF_CUDA)
    V v;
    unsigned int* w = reinterpret_cast<unsigned int*>(&v);
    const unsigned int* s = reinterpret_cast<const unsigned int*>(p);
#pragma unroll
    for (int i = 0; i < (int)(sizeof(V) / 16); ++i) {
        asm("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(w[4 * i]), "=r"(w[4 * i + 1]), "=r"(w[4 * i + 2]), "=r"(w[4 * i + 3]) : "l"(s + 4 * i));
    }
    return v;
#else
    return *p;
#endif
}

// Device-wide ordering and a counter for the last-workgroup-combines protocol.
RF_DEVICE void rf_threadfence() {
#if defined(RF_CUDA)
    asm volatile("membar.gl;" ::: "memory");
#else
    __threadfence();
#endif
}
RF_DEVICE unsigned int rf_atomic_add(unsigned int* p, unsigned int v) {
#if defined(RF_CUDA)
    unsigned int old;
    asm volatile("atom.add.u32 %0, [%1], %2;" : "=r"(old) : "l"(p), "r"(v) : "memory");
    return old;
#else
    return atomicAdd(p, v);
#endif
}

#if defined(RF_CUDA)
// Every workgroup of the launch waits here until all have arrived; what any thread
// wrote before it is visible to every thread after it. `bar[0]` counts arrivals (zero
// between barriers: the last arrival resets it), `bar[1]` is the generation, which only
// grows. Every workgroup must be resident at once (the launch is cooperative) and every
// thread of each must call. Thread 0 arrives with acquire-release semantics and waits
// with acquire loads at device scope (which also invalidate the multiprocessor's L1, so
// plain loads after the barrier see other workgroups' writes); the workgroup barriers
// around it extend that ordering to the other threads.
RF_DEVICE void rf_grid_sync(unsigned int* bar) {
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned int gen, old;
        asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(gen) : "l"(bar + 1) : "memory");
        asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;" : "=r"(old) : "l"(bar) : "memory");
        if (old == gridDim.x - 1) {
            asm volatile("st.relaxed.gpu.global.u32 [%0], %1;" ::"l"(bar), "r"(0u) : "memory");
            asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(bar + 1) : "memory");
        } else {
            unsigned int now;
            // (A 64 ns sleep between polls measured the same: 723.5 against 722.9 tok/s.)
            do {
                asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(now) : "l"(bar + 1) : "memory");
            } while (now == gen);
        }
    }
    __syncthreads();
}
#endif

#if defined(RF_CUDA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
// Matrix-core fragments (mma.sync m16n8k16, f32 accumulate) and their loads.
// The _s forms take a 32-bit shared-space address (rf_smem_addr of the base once, then
// integer offsets the compiler folds into the instruction's immediate).
RF_DEVICE void rf_ldmatrix_x4_s(unsigned int (&r)[4], unsigned int s) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}
RF_DEVICE void rf_ldmatrix_x4_trans_s(unsigned int (&r)[4], unsigned int s) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}
RF_DEVICE void rf_ldmatrix_x4(unsigned int (&r)[4], const void* smem) { rf_ldmatrix_x4_s(r, rf_smem_addr(smem)); }
RF_DEVICE void rf_ldmatrix_x4_trans(unsigned int (&r)[4], const void* smem) { rf_ldmatrix_x4_trans_s(r, rf_smem_addr(smem)); }
// d += a * b for one 16x8 tile; IS_BF16 picks bf16 inputs, else f16.
template <bool IS_BF16>
RF_DEVICE void rf_mma16816(float (&d)[4], const unsigned int (&a)[4], unsigned int b0, unsigned int b1) {
    if (IS_BF16) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}
// 2^x in one MUFU instruction (flush-to-zero; 2^-inf = 0), for the softmax.
RF_DEVICE float rf_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
// Two f32 as one register of two 16-bit values, the first in the low half.
template <bool IS_BF16>
RF_DEVICE unsigned int rf_pack2(float lo, float hi) {
    unsigned int r;
    if (IS_BF16) {
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    } else {
        asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    }
    return r;
}
#endif

#if defined(RF_CUDA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// Thread-block clusters (sm_90+): the launch's cluster size and this workgroup's rank in
// it, a barrier over the whole cluster (release/acquire: shared-memory writes before it
// are visible to every workgroup of the cluster after it), and loads from another
// workgroup's shared memory (distributed shared memory) at the address `p` has there.
RF_DEVICE unsigned int rf_cluster_size() {
    unsigned int n;
    asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(n));
    return n;
}
RF_DEVICE unsigned int rf_cluster_rank() {
    unsigned int r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}
RF_DEVICE void rf_cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}
RF_DEVICE float rf_dsmem_load(const float* p, unsigned int rank) {
    unsigned int remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(rf_smem_addr(p)), "r"(rank));
    float v;
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(remote) : "memory");
    return v;
}
RF_DEVICE rf_vec<float, 4> rf_dsmem_load4(const float* p, unsigned int rank) {
    unsigned int remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(rf_smem_addr(p)), "r"(rank));
    rf_vec<float, 4> v;
    asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];" : "=f"(v.v[0]), "=f"(v.v[1]), "=f"(v.v[2]), "=f"(v.v[3]) : "r"(remote) : "memory");
    return v;
}
#endif

// rf-wgmma begin
#if defined(RF_CUDA) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
// Hopper warpgroup matrix instructions (sm_90a; generated by scripts/wgmma/gen_wgmma.py).
// A shared-memory operand is a descriptor: start, leading and stride byte offsets (>> 4)
// and the 128-byte swizzle mode (bits 62-63 = 1). The tiles it describes are stored as
// 64-element (128-byte) rows whose 16-byte chunks are XOR-ed with the row index mod 8,
// in 1024-byte-aligned atoms of 8 rows.
RF_DEVICE unsigned long long rf_wgmma_desc(unsigned int saddr, unsigned int lbo, unsigned int sbo) {
    return (unsigned long long)((saddr & 0x3FFFF) >> 4) | ((unsigned long long)((lbo & 0x3FFFF) >> 4) << 16) |
           ((unsigned long long)((sbo & 0x3FFFF) >> 4) << 32) | (1ull << 62);
}
// d (+)= A B for one warpgroup: A (64 x 16) and B (16 x 128, K-major) from shared memory;
// scale_d 0 overwrites d.
template <bool BF>
RF_DEVICE void rf_wgmma_ss(float (&d)[64], unsigned long long da, unsigned long long db, int scale_d) {
    if (BF) {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                     : "l"(da), "l"(db), "r"(scale_d));
    } else {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                     : "l"(da), "l"(db), "r"(scale_d));
    }
}
// d += A B: A (64 x 16) from registers in the mma.sync m16n8k16 A-fragment layout per
// warp, B (16 x 128) from shared memory, N-major (transposed).
template <bool BF>
RF_DEVICE void rf_wgmma_rs(float (&d)[64], const unsigned int (&a)[4], unsigned long long db) {
    if (BF) {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
    } else {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
    }
}
RF_DEVICE void rf_wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
RF_DEVICE void rf_wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
RF_DEVICE void rf_wgmma_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
// Orders the accumulators after a wait: the asm above writes them asynchronously.
RF_DEVICE void rf_wgmma_fence_regs(float (&d)[64]) {
#pragma unroll
    for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
// Makes this thread's cp.async / st.shared writes visible to the async proxy (wgmma).
RF_DEVICE void rf_fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
#endif
// rf-wgmma end

#endif  // ROCMFORGE_H
