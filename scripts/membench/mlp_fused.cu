// The ceiling of a decode MLP in one launch (nvcc -O3 -arch=sm_90 mlp_fused.cu): the
// Llama-3.2-1B step's weight reads as ideal streaming kernels (see step_ceiling.cu), with
// each layer's gate/up product, SwiGLU and down product either as the committed two
// launches or as one launch of independent workgroups:
//  - workgroup j takes S intermediate units: gate rows [jS, jS+S) and the same up rows
//    (one warp a row, the row's eight 16-byte loads a lane in flight), SwiGLU into shared
//    memory, then its slice of the down weights, and adds its partial outputs into an f32
//    accumulator with atomics (`red.global.add`); no workgroup waits on another;
//  - the down slice either as the checkpoint stores it (h rows of `inter`: S columns of
//    each row, 2S bytes) or transposed (`inter` rows of h: S contiguous rows);
//  - its loads issued after SwiGLU, or into registers before the gate/up rows.
// The committed layout runs q/k/v and o at two warps a row, gate/up at one, down at two,
// the LM head at one; "+ slots" adds a near-empty launch in each attention's place and two
// more per step (gather, argmax), as the real step has. Prints the median of 50 graph
// replays and the fraction of the limit (weight bytes over the copy rate measured here).
// Run: WHAT=mlp_fused scripts/membench/run.sh on the GPU machine.
#include <string>
#include "step_kernels.cuh"

// The MLP of one layer in one launch (h = 2048: 256 groups of 8 a row). `wgu`: gate rows
// then up rows (2 inter x h); `wd`: the down weights, h x inter, or inter x h when TRANS.
// NT threads; PRE: the down slice's loads issued before the gate/up rows.
template <int S, int NT, bool TRANS, bool PRE>
__global__ void __launch_bounds__(NT) mlp(const uint4* __restrict__ wgu, const uint4* __restrict__ wd, const uint4* __restrict__ x, int inter, float* __restrict__ acc) {
    constexpr int HG = 256;  // 16-byte groups of a row of h
    constexpr int NW = NT / 32;
    constexpr int RW = (2 * S + NW - 1) / NW;  // gate/up rows a warp
    // Down loads a thread: TRANS, S rows of HG groups; else h rows of S / 8 groups.
    constexpr int DL = TRANS ? S * HG / NT : 2048 * (S / 8) / NT;
    static_assert(DL >= 1, "the slice must give every thread a load");
    static_assert(!TRANS || NT % HG == 0, "transposed: a whole number of rows a pass");
    __shared__ uint4 xs[HG];
    __shared__ float gu[2 * S];
    __shared__ float act[S];
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int j = blockIdx.x;
    // This thread's down loads: TRANS, group g = tid % HG of rows r0 + k * (NT / HG);
    // else row-group pairs q = tid + k * NT (row q / (S / 8), column group q % (S / 8)).
    auto down_ptr = [&](int k) -> const uint4* {
        if (TRANS) {
            const int r = tid / HG + k * (NT / HG);
            return wd + ((long long)j * S + r) * HG + tid % HG;
        }
        const int q = tid + k * NT;
        return wd + (long long)(q / (S / 8)) * (inter / 8) + (long long)j * (S / 8) + q % (S / 8);
    };
    uint4 dv[PRE ? DL : 1];
    if (PRE) {
#pragma unroll
        for (int k = 0; k < DL; ++k) dv[k] = down_ptr(k)[0];
    }
    for (int i = tid; i < HG; i += NT) xs[i] = x[i];
    __syncthreads();
    // Gate/up rows: warp w takes rows w, w + NW, ... of the 2S (first S gate, then up).
    for (int i = 0; i < RW; ++i) {
        const int rr = warp + i * NW;
        if (rr >= 2 * S) break;
        const long long row = rr < S ? (long long)j * S + rr : (long long)inter + (long long)j * S + rr - S;
        const uint4* wr = wgu + row * HG;
        uint4 v[8];
#pragma unroll
        for (int u = 0; u < 8; ++u) v[u] = wr[lane + u * 32];
        float a = 0.f;
#pragma unroll
        for (int u = 0; u < 8; ++u) a += dot8(v[u], xs[lane + u * 32]);
#pragma unroll
        for (int o = 16; o; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
        if (lane == 0) gu[rr] = a;
    }
    __syncthreads();
    if (tid < S) {
        const float g = gu[tid], u = gu[S + tid];
        act[tid] = g / (1.f + __expf(-g)) * u;
    }
    __syncthreads();
    if (TRANS) {
        // Eight outputs a thread (its group), summed over its rows, added with two
        // vector atomics.
        float o8[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int k = 0; k < DL; ++k) {
            const uint4 w = PRE ? dv[k] : down_ptr(k)[0];
            const int r = tid / HG + k * (NT / HG);
            const float a = act[r];
            const __nv_bfloat162* p = reinterpret_cast<const __nv_bfloat162*>(&w);
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float2 f = __bfloat1622float2(p[e]);
                o8[2 * e] += a * f.x;
                o8[2 * e + 1] += a * f.y;
            }
        }
        float4* dst = reinterpret_cast<float4*>(acc + (tid % HG) * 8);
        atomicAdd(dst, make_float4(o8[0], o8[1], o8[2], o8[3]));
        atomicAdd(dst + 1, make_float4(o8[4], o8[5], o8[6], o8[7]));
    } else {
        // One 16-byte group of a row a load: its dot with act, the row's S / 8 groups
        // summed across neighbouring lanes, one atomic a row.
        constexpr int GPR = S / 8;
#pragma unroll
        for (int k = 0; k < DL; ++k) {
            const int q = tid + k * NT;
            const uint4 w = PRE ? dv[k] : down_ptr(k)[0];
            const int cg = q % GPR;
            const __nv_bfloat162* p = reinterpret_cast<const __nv_bfloat162*>(&w);
            float s = 0.f;
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float2 f = __bfloat1622float2(p[e]);
                s += act[cg * 8 + 2 * e] * f.x + act[cg * 8 + 2 * e + 1] * f.y;
            }
#pragma unroll
            for (int o = GPR / 2; o; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            if (cg == 0) atomicAdd(acc + q / GPR, s);
        }
    }
}

// The committed two launches of a layer's MLP (gate/up at one warp a row, down at two).
void launch_two(const Mat& gu, const Mat& d, const Mat&, const uint4* x, float* out, cudaStream_t st) {
    launch_product<1>(gu.w, x, gu.n, gu.k / 8, out, st);
    launch_product<2>(d.w, x, d.n, d.k / 8, out, st);
}

// One launch of `mlp` for a layer: `d` the down weights as stored, `dt` transposed.
template <int S, int NT, bool TRANS, bool PRE>
void launch_mlp(const Mat& gu, const Mat& d, const Mat& dt, const uint4* x, float* acc, cudaStream_t st) {
    mlp<S, NT, TRANS, PRE><<<StepWeights::inter / S, NT, 0, st>>>(gu.w, TRANS ? dt.w : d.w, x, StepWeights::inter, acc);
}

int main(int argc, char** argv) {
    // `once`: only the committed step (two MLP launches), replayed three times, for a
    // kernel-by-kernel profile under Nsight Compute.
    const bool once = argc > 1 && std::string(argv[1]) == "once";
    StepWeights w;
    if (make_step_weights(w, true)) return 1;
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    const double limit_us = step_limit_us(w, st);
    // `whole`: a whole step, against the step's limit; else the MLPs alone, time only.
    auto report = [&](const char* what, int launches, cudaGraphExec_t e, bool whole) {
        const float ms = median_ms(st, 5, 50, [&] { cudaGraphLaunch(e, st); });
        if (whole) {
            printf("%-48s %3d launches: %7.1f us, %.3f of the limit (%.1f tok/s)\n", what, launches, ms * 1e3, limit_us / (ms * 1e3), 1e3 / ms);
        } else {
            printf("%-48s %3d launches: %7.1f us\n", what, launches, ms * 1e3);
        }
    };
    using MlpFn = void (*)(const Mat&, const Mat&, const Mat&, const uint4*, float*, cudaStream_t);
    struct Variant {
        const char* name;
        MlpFn f;
    };
    const Variant variants[] = {
        {"two launches (gate/up 1 warp, down 2)", launch_two},
        {"one: S16 256t as stored, after", launch_mlp<16, 256, false, false>},
        {"one: S16 256t as stored, before", launch_mlp<16, 256, false, true>},
        {"one: S16 256t transposed, after", launch_mlp<16, 256, true, false>},
        {"one: S16 256t transposed, before", launch_mlp<16, 256, true, true>},
        {"one: S8 256t transposed, before", launch_mlp<8, 256, true, true>},
        {"one: S32 512t transposed, after", launch_mlp<32, 512, true, false>},
        {"one: S32 512t transposed, before", launch_mlp<32, 512, true, true>},
        {"one: S32 256t as stored, after", launch_mlp<32, 256, false, false>},
    };
    const int L = w.per_layer;
    for (int round = 0; round < (once ? 1 : 2); ++round) {
        for (const Variant& v : variants) {
            if (once && v.f != launch_two) break;
            const bool two = v.f == launch_two;
            float* dst = two ? w.out : w.acc;
            // The MLP alone, 16 layers.
            int n = 0;
            cudaGraphExec_t g = graph_of(st, [&] {
                for (int l = 0; l < StepWeights::layers; ++l) {
                    v.f(w.mats[L * l + 2], w.mats[L * l + 3], w.mats[L * l + 4], w.x, dst, st);
                    n += two ? 2 : 1;
                }
            });
            char name[96];
            snprintf(name, sizeof name, "MLP only, %s", v.name);
            if (!once) report(name, n, g, false);
            // The whole step with the attention slots.
            n = 0;
            g = graph_of(st, [&] {
                tiny<<<1, 128, 0, st>>>(w.out);
                ++n;
                for (int l = 0; l < StepWeights::layers; ++l) {
                    const Mat& q = w.mats[L * l];
                    const Mat& o = w.mats[L * l + 1];
                    launch_product<2>(q.w, w.x, q.n, q.k / 8, w.out, st);
                    tiny<<<32, 128, 0, st>>>(w.out);
                    launch_product<2>(o.w, w.x, o.n, o.k / 8, w.out, st);
                    v.f(w.mats[L * l + 2], w.mats[L * l + 3], w.mats[L * l + 4], w.x, dst, st);
                    n += two ? 5 : 4;
                }
                launch_product<1>(w.head().w, w.x, w.head().n, w.head().k / 8, w.out, st);
                tiny<<<64, 128, 0, st>>>(w.out);
                n += 2;
            });
            snprintf(name, sizeof name, "step + slots, %s", v.name);
            if (once) {
                for (int i = 0; i < 3; ++i) CK(cudaGraphLaunch(g, st));
                CK(cudaStreamSynchronize(st));
            } else {
                report(name, n, g, true);
            }
        }
    }
    CK(cudaGetLastError());
    CK(cudaStreamSynchronize(st));
    return 0;
}
