// What the membench step programs (step_ceiling.cu, mlp_fused.cu, l2_persist.cu) share:
// the Llama-3.2-1B step's weights, each in its own memory, the limit they set at the copy
// rate measured on the machine, the committed products' row shape, a near-empty stand-in
// launch, and graph capture.
#pragma once
#include "common.cuh"

// Row r's sum: a lane's partial `acc` summed over the warp, then over the row's S warps
// (adjacent; one float a warp in `part`, shared), stored by the row's first lane. Every
// thread of the workgroup calls it.
template <int S>
__device__ void join_row(float acc, float* part, int warp, int lane, long long r, long long n, float* out) {
#pragma unroll
    for (int o = 16; o; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (S == 1) {
        if (lane == 0 && r < n) out[r] = acc;
        return;
    }
    if (lane == 0) part[warp] = acc;
    __syncthreads();
    if (warp % S == 0 && lane == 0 && r < n) {
        float t = 0.f;
        for (int j = 0; j < S; ++j) t += part[warp + j];
        out[r] = t;
    }
}

// S warps a row (split over k, summed through shared memory), four loads in flight a
// lane, 128-thread workgroups (4 / S rows each); the committed products' shape.
template <int S>
__global__ void __launch_bounds__(128) product(const uint4* __restrict__ w, const uint4* __restrict__ x, long long n, int groups, float* out) {
    constexpr int RPB = 4 / S;
    __shared__ float part[4];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const long long r = (long long)blockIdx.x * RPB + warp / S;
    const int per = groups / S;
    const int g0 = (warp % S) * per;
    float acc = 0.f;
    if (r < n) {
        const uint4* wr = w + r * groups + g0;
        const uint4* xr = x + g0;
        int g = lane;
        for (; g + 96 < per; g += 128) {
            uint4 v[4];
#pragma unroll
            for (int u = 0; u < 4; ++u) v[u] = wr[g + u * 32];
#pragma unroll
            for (int u = 0; u < 4; ++u) acc += dot8(v[u], xr[g + u * 32]);
        }
        for (; g < per; g += 32) acc += dot8(wr[g], xr[g]);
    }
    join_row<S>(acc, part, warp, lane, r, n, out);
}

template <int S>
void launch_product(const uint4* w, const uint4* x, long long n, int groups, float* out, cudaStream_t st) {
    product<S><<<(unsigned)((n + 4 / S - 1) / (4 / S)), 128, 0, st>>>(w, x, n, groups, out);
}

// A near-empty launch (a stand-in for a launch that reads almost nothing).
__global__ void __launch_bounds__(128) tiny(float* out) {
    if (threadIdx.x == 0) out[blockIdx.x] = 1.0f;
}

struct Mat {
    const uint4* w;
    long long n;
    int k;
};


// `body`'s launches on `st` captured into one graph, instantiated.
template <typename F>
cudaGraphExec_t graph_of(cudaStream_t st, F body) {
    cudaGraph_t g;
    cudaGraphExec_t e;
    cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal);
    body();
    cudaStreamEndCapture(st, &g);
    cudaGraphInstantiate(&e, g, 0);
    return e;
}

// The step's weights in launch order: per layer q/k/v (3072 x 2048), o (2048 x 2048),
// gate/up (16384 x 2048), down (2048 x 8192) and, with `down_t`, the down weights again
// transposed (8192 x 2048; the same bytes, not counted in `bytes`); then the LM head
// (128256 x 2048). `per_layer` matrices a layer. Every byte is 0x01; x (8192 bf16) zero.
struct StepWeights {
    static constexpr int layers = 16, h = 2048, qkv = 3072, inter = 8192;
    static constexpr long long vocab = 128256;
    std::vector<Mat> mats;
    int per_layer = 4;
    long long bytes = 0;  // the weight bytes a step reads
    char* base = nullptr;
    uint4* x = nullptr;
    float* out = nullptr;  // scratch for the products' outputs
    float* acc = nullptr;  // an f32 vector of h, zero
    const Mat& head() const { return mats.back(); }
};

// Allocates and fills `s`; 0 on success (CK reports a failed call and returns 1).
inline int make_step_weights(StepWeights& s, bool down_t) {
    using W = StepWeights;
    std::vector<std::pair<long long, int>> shapes;  // (rows, k)
    s.per_layer = down_t ? 5 : 4;
    for (int l = 0; l < W::layers; ++l) {
        shapes.push_back({W::qkv, W::h});
        shapes.push_back({W::h, W::h});
        shapes.push_back({2ll * W::inter, W::h});
        shapes.push_back({W::h, W::inter});
        if (down_t) shapes.push_back({W::inter, W::h});
    }
    shapes.push_back({W::vocab, W::h});
    long long alloc = 0;
    for (size_t i = 0; i < shapes.size(); ++i) {
        const long long b = shapes[i].first * shapes[i].second * 2;
        alloc += b;
        if (!(down_t && i % 5 == 4 && i + 1 < shapes.size())) s.bytes += b;
    }
    CK(cudaMalloc(&s.base, alloc + (1 << 20)));
    CK(cudaMemset(s.base, 1, alloc + (1 << 20)));
    CK(cudaMalloc(&s.out, 1 << 22));
    CK(cudaMalloc(&s.acc, W::h * 4));
    CK(cudaMemset(s.acc, 0, W::h * 4));
    CK(cudaMalloc(&s.x, W::inter * 2));
    CK(cudaMemset(s.x, 0, W::inter * 2));
    long long off = 0;
    for (auto& sh : shapes) {
        s.mats.push_back({reinterpret_cast<const uint4*>(s.base + off), sh.first, sh.second});
        off += sh.first * sh.second * 2;
    }
    return 0;
}

// The step's limit in microseconds: its weight bytes over the device-to-device copy rate
// (bytes read + written, 1 GiB, as `bench` measures it) on `st`; prints both.
inline double step_limit_us(const StepWeights& s, cudaStream_t st) {
    const long long cb = 1ll << 30;
    const float copy_ms = median_ms(st, 5, 50, [&] { cudaMemcpyAsync(s.base + cb / 2, s.base, cb / 2, cudaMemcpyDeviceToDevice, st); });
    const double copy_gbs = cb / copy_ms / 1e6;
    const double limit_us = s.bytes / (copy_gbs * 1e3);
    printf("weights %.3f GB, copy %.0f GB/s -> limit %.1f us a step (%.1f tok/s)\n", s.bytes / 1e9, copy_gbs, limit_us, 1e6 / limit_us);
    return limit_us;
}
