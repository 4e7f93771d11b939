// What the membench programs share: includes, the status check, the timing loop, and the
// bf16 dot of a 16-byte weight group with one of x.
#pragma once
#include <cstdio>
#include <cstdint>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>
#include <cuda_bf16.h>

// Returns 1 from main on a failed CUDA call, naming it.
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); return 1; } } while (0)

// Eight bf16 weights against eight bf16 x values, summed in f32.
__device__ float dot8(uint4 w, uint4 x) {
    const __nv_bfloat162* a = reinterpret_cast<const __nv_bfloat162*>(&w);
    const __nv_bfloat162* b = reinterpret_cast<const __nv_bfloat162*>(&x);
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        float2 fa = __bfloat1622float2(a[j]), fb = __bfloat1622float2(b[j]);
        s += fa.x * fb.x + fa.y * fb.y;
    }
    return s;
}

// The median time of `runs` calls of f() on stream `st` (milliseconds, CUDA events around
// each call), after `warm` calls that are not counted.
template <typename F>
float median_ms(cudaStream_t st, int warm, int runs, F f) {
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    std::vector<float> t;
    for (int i = 0; i < warm + runs; ++i) {
        cudaEventRecord(a, st);
        f();
        cudaEventRecord(b, st);
        cudaEventSynchronize(b);
        float ms;
        cudaEventElapsedTime(&ms, a, b);
        if (i >= warm) t.push_back(ms);
    }
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}
