// Read bandwidth ceiling on the GPU machine (nvcc -O3 -arch=sm_90 read_bw.cu -o read_bw):
// how fast can a kernel stream bf16 weight rows, against the matrix-vector kernel's shape?
//  - "flat": grid-stride 16-byte loads over the whole buffer, U loads in flight a thread;
//  - "rows": one warp per row of K bf16 (the LM head: 128256 x 2048), U loads in flight
//    a lane, a dot with x and a warp reduction, one workgroup of 4 warps per 4 rows
//    (the committed gemv's shape) or R rows a warp.
// Prints GB/s of reads (median of 20 launches, 1 GiB buffer or the row matrix).
// Run: scripts/membench/run.sh on the GPU machine.
#include "common.cuh"

template <int U>
__global__ void flat(const uint4* __restrict__ p, long long n, float* out) {
    float acc = 0.f;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (; i + (U - 1) * stride < n; i += U * stride) {
        uint4 v[U];
#pragma unroll
        for (int u = 0; u < U; ++u) v[u] = p[i + u * stride];
#pragma unroll
        for (int u = 0; u < U; ++u) acc += __uint_as_float(v[u].x ^ v[u].y ^ v[u].z ^ v[u].w);
    }
    if (acc == 1.2345f) out[0] = acc;
}

// One warp per row (grid-stride over rows), K/8 groups of 16 bytes a row.
template <int U, bool CS>
__global__ void rows(const uint4* __restrict__ w, const uint4* __restrict__ x, long long n, int groups, float* out) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, wpb = blockDim.x / 32;
    for (long long r = (long long)blockIdx.x * wpb + warp; r < n; r += (long long)gridDim.x * wpb) {
        const uint4* wr = w + r * groups;
        float acc = 0.f;
        int g = lane;
        for (; g + (U - 1) * 32 < groups; g += U * 32) {
            uint4 v[U];
#pragma unroll
            for (int u = 0; u < U; ++u) v[u] = CS ? __ldcs(wr + g + u * 32) : wr[g + u * 32];
#pragma unroll
            for (int u = 0; u < U; ++u) acc += dot8(v[u], x[g + u * 32]);
        }
        for (; g < groups; g += 32) acc += dot8(wr[g], x[g]);
#pragma unroll
        for (int o = 16; o; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if (lane == 0) out[r] = acc;
    }
}

// Median of 20 runs after 3 warm-ups, on the default stream.
template <typename F>
float time_it(F f) {
    return median_ms(0, 3, 20, f);
}

int main() {
    int sms;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    const long long bytes = 1ll << 30;
    uint4* buf;
    float* out;
    CK(cudaMalloc(&buf, bytes + (1 << 20)));
    CK(cudaMalloc(&out, 1 << 22));
    CK(cudaMemset(buf, 1, bytes + (1 << 20)));
    const long long n16 = bytes / 16;
    // Copy bandwidth (bytes read + written), as the bench measures it.
    {
        float ms = time_it([&] { cudaMemcpyAsync((char*)buf + bytes / 2, buf, bytes / 2, cudaMemcpyDeviceToDevice); });
        printf("copy (read+write)            %7.0f GB/s\n", bytes / ms / 1e6);
    }
    for (int bpsm : {4, 8, 16, 32}) {
        int grid = sms * bpsm;
        float ms4 = time_it([&] { flat<4><<<grid, 256>>>(buf, n16, out); });
        float ms8 = time_it([&] { flat<8><<<grid, 256>>>(buf, n16, out); });
        printf("flat read, %2d x 256 a SM: U4 %7.0f GB/s, U8 %7.0f GB/s\n", bpsm, bytes / ms4 / 1e6, bytes / ms8 / 1e6);
    }
    // The LM head's shape: 128256 rows of 2048 bf16.
    const long long n = 128256;
    const int k = 2048, groups = k / 8;
    const double mb = (double)n * k * 2;
    uint4* x = buf + n * groups;  // x after the rows (inside the buffer)
    printf("rows of %d bf16, %lld rows (%.0f MB):\n", k, n, mb / 1e6);
    {
        int grid = (int)((n + 3) / 4);
        float a = time_it([&] { rows<4, false><<<grid, 128>>>(buf, x, n, groups, out); });
        float b = time_it([&] { rows<8, false><<<grid, 128>>>(buf, x, n, groups, out); });
        float c = time_it([&] { rows<4, true><<<grid, 128>>>(buf, x, n, groups, out); });
        float d = time_it([&] { rows<8, true><<<grid, 128>>>(buf, x, n, groups, out); });
        printf("  a workgroup per 4 rows: U4 %7.0f, U8 %7.0f, U4 .cs %7.0f, U8 .cs %7.0f GB/s\n", mb / a / 1e6, mb / b / 1e6, mb / c / 1e6, mb / d / 1e6);
    }
    for (int bpsm : {8, 16}) {
        int grid = sms * bpsm;
        float a = time_it([&] { rows<4, false><<<grid, 128>>>(buf, x, n, groups, out); });
        float b = time_it([&] { rows<8, false><<<grid, 128>>>(buf, x, n, groups, out); });
        printf("  %2d workgroups a SM, grid-stride: U4 %7.0f, U8 %7.0f GB/s\n", bpsm, mb / a / 1e6, mb / b / 1e6);
    }
    for (int blk : {256, 512}) {
        int grid = (int)((n + blk / 32 - 1) / (blk / 32));
        float a = time_it([&] { rows<4, false><<<grid, blk>>>(buf, x, n, groups, out); });
        printf("  a workgroup of %d threads per %d rows: U4 %7.0f GB/s\n", blk, blk / 32, mb / a / 1e6);
    }
    // The down projection's shape: 2048 rows of 8192 (33.6 MB): one launch is short, so
    // this includes the launch and ramp (as the decode step pays them).
    {
        const long long n2 = 2048;
        const int g2 = 8192 / 8;
        const double mb2 = (double)n2 * 8192 * 2;
        // A different 33.6 MB window each launch (L2 holds 50 MB).
        int i = 0;
        float a = time_it([&] { rows<4, false><<<(int)(n2 / 4), 128>>>(buf + (i++ % 24) * n2 * g2, x, n2, g2, out); });
        float b = time_it([&] { rows<8, false><<<(int)(n2 / 4), 128>>>(buf + (i++ % 24) * n2 * g2, x, n2, g2, out); });
        printf("down shape (2048 x 8192): U4 %.2f us (%7.0f GB/s), U8 %.2f us (%7.0f GB/s)\n", a * 1e3, mb2 / a / 1e6, b * 1e3, mb2 / b / 1e6);
    }
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    return 0;
}
