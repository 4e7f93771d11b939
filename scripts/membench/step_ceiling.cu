// The ceiling of a layered decode step on the GPU machine (nvcc -O3 -arch=sm_90
// step_ceiling.cu -o step_ceiling): the Llama-3.2-1B decode step's weight reads as ideal
// streaming kernels, one launch per product as the layered decode has them, captured in
// one CUDA graph, against the same bytes in one launch. No arithmetic beyond a dot with x
// and no epilogue: whatever the real step adds is on top of these figures.
//  - "products": per layer q/k/v (3072 x 2048), o (2048 x 2048), gate/up (16384 x 2048),
//    down (2048 x 8192), then the LM head (128256 x 2048): one warp a row, four 16-byte
//    loads in flight a lane, a workgroup of 4 warps per 4 rows (the committed gemv's shape);
//  - "+ attention slots": the same with a near-empty launch after each q/k/v product and
//    two more per step (the embedding gather and the argmax): 83 launches, as the step;
//  - "flat, per product": each product as a grid-stride flat read of its bytes instead;
//  - "one launch": all 2.47 GB in one grid-stride flat read (a step with no boundaries);
//  - "split S/S/S/S/S": S warps a row per product (q/k/v, o, gate/up, down, LM head);
//  - "PDL, ...": the best row layout (2/2/1/2/1) launched as programmatic dependents
//    (`griddepcontrol`), with the first round of weights loaded into registers, asked into
//    L2 or copied into shared memory (cp.async) before the wait, or nothing, and the
//    dependents triggered at the start, after the loads, or at exit.
// Each weight has its own memory (2.47 GB in all), so nothing is served from L2 across
// launches. Prints the step's time (median of 50 graph replays) and the fraction of the
// limit (the weight bytes over the device-to-device copy rate measured here, read+write,
// as `bench` computes it). Run: scripts/membench/run.sh on the GPU machine.
#include "step_kernels.cuh"

// S warps per row (split over k, summed through shared memory), U loads in flight a
// lane, 128-thread workgroups (4 / S rows each; S 8: 256 threads, one row). P: programmatic
// dependent launch (0: none; 1: the first round of weights loaded, then
// `griddepcontrol.wait` before x is read, dependents launched as the workgroups exit; 2:
// the same, dependents triggered once the workgroup's loads are done; 3: triggered at the
// start; 4: no weights before the wait, triggered at the start; 5: no weights before the
// wait, triggered once the loads are done; 6: the first round prefetched into L2 before
// the wait, triggered at the start; 7: the same with the warp's whole part of the row;
// 8: the first round copied into shared memory with cp.async before the wait).
template <int S, int U, int P>
__global__ void __launch_bounds__(S == 8 ? 256 : 128) split(const uint4* __restrict__ w, const uint4* __restrict__ x, long long n, int groups, float* out) {
    constexpr int RPB = S == 8 ? 1 : 4 / S;
    __shared__ float part[8];
    if (P == 3 || P == 4 || P >= 6) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    __shared__ uint4 stage[P == 8 ? (S == 8 ? 8 : 4) * U * 32 : 1];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const long long r = (long long)blockIdx.x * RPB + warp / S;
    const int per = groups / S;
    const int g0 = (warp % S) * per;
    float acc = 0.f;
    if (P == 8) {
        // The first round copied into shared memory (cp.async) before the wait: the loads
        // are in flight across it, but no registers are held.
        const uint4* wr = w + r * groups + g0;
        const bool first = r < n && lane + (U - 1) * 32 < per;
        if (first) {
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const unsigned dst = (unsigned)__cvta_generic_to_shared(&stage[warp * U * 32 + lane + u * 32]);
                asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(wr + lane + u * 32) : "memory");
            }
        }
        asm volatile("cp.async.commit_group;" ::: "memory");
        asm volatile("griddepcontrol.wait;" ::: "memory");
        if (r < n) {
            const uint4* xr = x + g0;
            int g = lane;
            if (first) {
                asm volatile("cp.async.wait_all;" ::: "memory");
#pragma unroll
                for (int u = 0; u < U; ++u) acc += dot8(stage[warp * U * 32 + lane + u * 32], xr[g + u * 32]);
                g += U * 32;
            }
            for (; g + (U - 1) * 32 < per; g += U * 32) {
                uint4 v[U];
#pragma unroll
                for (int u = 0; u < U; ++u) v[u] = wr[g + u * 32];
#pragma unroll
                for (int u = 0; u < U; ++u) acc += dot8(v[u], xr[g + u * 32]);
            }
            for (; g < per; g += 32) acc += dot8(wr[g], xr[g]);
        }
    } else if (P >= 6 && P < 8 && r < n) {
        // Into L2 before the wait, no registers held: the first round (6) or the warp's
        // whole part of the row (7), one 128-byte line a lane at a time.
        const char* seg = reinterpret_cast<const char*>(w + r * groups + g0);
        const int bytes = P == 6 ? (per < U * 32 ? per : U * 32) * 16 : per * 16;
        for (int b = lane * 128; b < bytes; b += 32 * 128) asm volatile("prefetch.global.L2 [%0];" ::"l"(seg + b));
    }
    if (P >= 4 && P < 8) asm volatile("griddepcontrol.wait;" ::: "memory");
    if (P > 0 && P < 4) {
        uint4 v[U];
        const bool first = r < n && lane + (U - 1) * 32 < per;
        const uint4* wr = w + r * groups + g0;
        if (first) {
#pragma unroll
            for (int u = 0; u < U; ++u) v[u] = wr[lane + u * 32];
        }
        asm volatile("griddepcontrol.wait;" ::: "memory");
        if (r < n) {
            const uint4* xr = x + g0;
            int g = lane;
            if (first) {
#pragma unroll
                for (int u = 0; u < U; ++u) acc += dot8(v[u], xr[g + u * 32]);
                g += U * 32;
            }
            for (; g + (U - 1) * 32 < per; g += U * 32) {
#pragma unroll
                for (int u = 0; u < U; ++u) v[u] = wr[g + u * 32];
#pragma unroll
                for (int u = 0; u < U; ++u) acc += dot8(v[u], xr[g + u * 32]);
            }
            for (; g < per; g += 32) acc += dot8(wr[g], xr[g]);
        }
    } else if (P != 8 && r < n) {
        const uint4* wr = w + r * groups + g0;
        const uint4* xr = x + g0;
        int g = lane;
        for (; g + (U - 1) * 32 < per; g += U * 32) {
            uint4 v[U];
#pragma unroll
            for (int u = 0; u < U; ++u) v[u] = wr[g + u * 32];
#pragma unroll
            for (int u = 0; u < U; ++u) acc += dot8(v[u], xr[g + u * 32]);
        }
        for (; g < per; g += 32) acc += dot8(wr[g], xr[g]);
    }
    if (P == 2 || P == 5) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    join_row<S>(acc, part, warp, lane, r, n, out);
}

// Launches kernel `k` as a programmatic dependent of the launch queued before it on `st`.
template <typename... P, typename... A>
void launch_dependent(void (*k)(P...), unsigned grid, unsigned block, cudaStream_t st, A... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(grid);
    cfg.blockDim = dim3(block);
    cfg.stream = st;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at;
    cfg.numAttrs = 1;
    cudaLaunchKernelEx(&cfg, k, args...);
}

template <int S, int U, int P = 0>
void launch_split(const uint4* w, const uint4* x, long long n, int groups, float* out, cudaStream_t st) {
    constexpr int RPB = S == 8 ? 1 : 4 / S;
    const unsigned grid = (unsigned)((n + RPB - 1) / RPB);
    if (P == 0) {
        split<S, U, 0><<<grid, S == 8 ? 256 : 128, 0, st>>>(w, x, n, groups, out);
        return;
    }
    launch_dependent(split<S, U, P>, grid, S == 8 ? 256 : 128, st, w, x, n, groups, out);
}

void launch_split(int s, int u, const uint4* w, const uint4* x, long long n, int groups, float* out, cudaStream_t st) {
    if (u == 4) {
        if (s == 1) launch_split<1, 4>(w, x, n, groups, out, st);
        if (s == 2) launch_split<2, 4>(w, x, n, groups, out, st);
        if (s == 4) launch_split<4, 4>(w, x, n, groups, out, st);
        if (s == 8) launch_split<8, 4>(w, x, n, groups, out, st);
    } else {
        if (s == 1) launch_split<1, 8>(w, x, n, groups, out, st);
        if (s == 2) launch_split<2, 8>(w, x, n, groups, out, st);
        if (s == 4) launch_split<4, 8>(w, x, n, groups, out, st);
        if (s == 8) launch_split<8, 8>(w, x, n, groups, out, st);
    }
}

// Programmatic dependent launches: S 1 or 2, variant P (1-8, see `split`).
template <int P>
void launch_pdl(int s, const uint4* w, const uint4* x, long long n, int groups, float* out, cudaStream_t st) {
    if (s == 1) launch_split<1, 4, P>(w, x, n, groups, out, st);
    if (s == 2) launch_split<2, 4, P>(w, x, n, groups, out, st);
}

void launch_pdl(int s, int p, const uint4* w, const uint4* x, long long n, int groups, float* out, cudaStream_t st) {
    void (*const by_p[])(int, const uint4*, const uint4*, long long, int, float*, cudaStream_t) = {
        nullptr, launch_pdl<1>, launch_pdl<2>, launch_pdl<3>, launch_pdl<4>, launch_pdl<5>, launch_pdl<6>, launch_pdl<7>, launch_pdl<8>};
    if (p >= 1 && p <= 8) by_p[p](s, w, x, n, groups, out, st);
}

// Grid-stride 16-byte reads, four in flight a thread.
__global__ void __launch_bounds__(256) flat(const uint4* __restrict__ p, long long n, float* out) {
    float acc = 0.f;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (; i < n; i += 4 * stride) {
        uint4 v[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) v[u] = i + u * stride < n ? p[i + u * stride] : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int u = 0; u < 4; ++u) acc += __uint_as_float(v[u].x ^ v[u].y ^ v[u].z ^ v[u].w);
    }
    if (acc == 1.2345f) out[0] = acc;
}

// The same, launched as a programmatic dependent: triggers, waits, then writes.
__global__ void __launch_bounds__(128) tiny_pdl(float* out) {
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    asm volatile("griddepcontrol.wait;" ::: "memory");
    if (threadIdx.x == 0) out[blockIdx.x] = 1.0f;
}

void launch_tiny_pdl(unsigned grid, float* out, cudaStream_t st) {
    launch_dependent(tiny_pdl, grid, 128, st, out);
}

int main() {
    int sms;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    StepWeights sw;
    if (make_step_weights(sw, false)) return 1;
    const std::vector<Mat>& mats = sw.mats;
    const long long total = sw.bytes;
    float* out = sw.out;
    const uint4* x = sw.x;
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    // Median of 50 runs after 5 warm-ups.
    auto time_it = [&](auto f) { return median_ms(st, 5, 50, f); };
    const double limit_us = step_limit_us(sw, st);
    auto graph_of = [&](auto body) { return ::graph_of(st, body); };
    auto report = [&](const char* what, int launches, cudaGraphExec_t e) {
        float ms = time_it([&] { cudaGraphLaunch(e, st); });
        printf("%-28s %3d launches: %7.1f us a step, %.3f of the limit (%.1f tok/s)\n", what, launches, ms * 1e3, limit_us / (ms * 1e3), 1e3 / ms);
    };
    auto products = [&](bool slots) {
        int launches = 0;
        if (slots) { tiny<<<1, 128, 0, st>>>(out); ++launches; }
        for (size_t i = 0; i < mats.size(); ++i) {
            const Mat& m = mats[i];
            launch_product<1>(m.w, x, m.n, m.k / 8, out, st);
            ++launches;
            if (slots && i % 4 == 0 && i + 1 < mats.size()) { tiny<<<32, 128, 0, st>>>(out); ++launches; }
        }
        if (slots) { tiny<<<64, 128, 0, st>>>(out); ++launches; }
        return launches;
    };
    int n1 = 0, n2 = 0, n3 = 0;
    cudaGraphExec_t g1 = graph_of([&] { n1 = products(false); });
    cudaGraphExec_t g2 = graph_of([&] { n2 = products(true); });
    cudaGraphExec_t g3 = graph_of([&] {
        for (auto& m : mats) {
            flat<<<sms * 8, 256, 0, st>>>(m.w, m.n * m.k / 8, out);
            ++n3;
        }
    });
    cudaGraphExec_t g4 = graph_of([&] { flat<<<sms * 8, 256, 0, st>>>(mats[0].w, total / 16, out); });
    for (int round = 0; round < 2; ++round) {
        report("products", n1, g1);
        report("products + attention slots", n2, g2);
        report("flat, per product", n3, g3);
        report("one launch", 1, g4);
    }
    // Warps per row chosen per product: `s[i]` for the i-th product of a layer (q/k/v, o,
    // gate/up, down) and the LM head, U loads in flight a lane.
    struct Cfg { int s[5]; int u; };
    const Cfg cfgs[] = {
        {{1, 1, 1, 1, 1}, 4}, {{1, 1, 1, 1, 1}, 8},
        {{2, 4, 1, 4, 1}, 4}, {{2, 4, 1, 4, 1}, 8},
        {{2, 2, 1, 2, 1}, 4}, {{4, 4, 1, 4, 1}, 4},
        {{2, 4, 1, 8, 1}, 4}, {{2, 4, 2, 4, 1}, 4},
        {{4, 8, 1, 8, 1}, 4}, {{2, 4, 1, 4, 2}, 4},
    };
    for (int round = 0; round < 2; ++round) {
        for (const Cfg& c : cfgs) {
            cudaGraphExec_t g = graph_of([&] {
                for (size_t i = 0; i < mats.size(); ++i) {
                    const Mat& m = mats[i];
                    const int s = i + 1 == mats.size() ? c.s[4] : c.s[i % 4];
                    launch_split(s, c.u, m.w, x, m.n, m.k / 8, out, st);
                }
            });
            char name[64];
            snprintf(name, sizeof name, "split %d/%d/%d/%d/%d U%d", c.s[0], c.s[1], c.s[2], c.s[3], c.s[4], c.u);
            report(name, (int)mats.size(), g);
        }
    }
    // Programmatic dependent launch on the best row layout (2/2/1/2/1, U4): each product
    // loads its first round of weights before it waits on the previous one.
    const char* pdl_name[] = {"", "PDL, exit trigger", "PDL, trigger after loads", "PDL, trigger at start", "PDL, wait first, trigger at start", "PDL, wait first, trigger after loads", "PDL, L2 first round, start", "PDL, L2 whole part, start", "PDL, cp.async first round, start"};
    for (int round = 0; round < 2; ++round) {
        for (int p = 1; p <= 8; ++p) {
            cudaGraphExec_t g = graph_of([&] {
                for (size_t i = 0; i < mats.size(); ++i) {
                    const Mat& m = mats[i];
                    const int s = i + 1 == mats.size() ? 1 : (i % 4 == 2 ? 1 : 2);
                    launch_pdl(s, p, m.w, x, m.n, m.k / 8, out, st);
                }
            });
            report(pdl_name[p], (int)mats.size(), g);
        }
        for (int p : {3, 4, 6, 8}) {
            int launches = 0;
            cudaGraphExec_t g = graph_of([&] {
                launch_tiny_pdl(1, out, st);
                ++launches;
                for (size_t i = 0; i < mats.size(); ++i) {
                    const Mat& m = mats[i];
                    const int s = i + 1 == mats.size() ? 1 : (i % 4 == 2 ? 1 : 2);
                    launch_pdl(s, p, m.w, x, m.n, m.k / 8, out, st);
                    ++launches;
                    if (i % 4 == 0 && i + 1 < mats.size()) { launch_tiny_pdl(32, out, st); ++launches; }
                }
                launch_tiny_pdl(64, out, st);
                ++launches;
            });
            char name[64];
            snprintf(name, sizeof name, "%s + slots", p == 3 ? "PDL start" : p == 4 ? "PDL wait first, start" : p == 6 ? "PDL L2 first round" : "PDL cp.async first round");
            report(name, launches, g);
        }
        report("split 2/2/1/2/1 U4 (base)", n1, graph_of([&] {
            for (size_t i = 0; i < mats.size(); ++i) {
                const Mat& m = mats[i];
                const int s = i + 1 == mats.size() ? 1 : (i % 4 == 2 ? 1 : 2);
                launch_split(s, 4, m.w, x, m.n, m.k / 8, out, st);
            }
        }));
    }
    CK(cudaGetLastError());
    CK(cudaStreamSynchronize(st));
    return 0;
}
