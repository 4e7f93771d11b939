// What weights kept in L2 across decode steps would save (nvcc -O3 -arch=sm_90
// l2_persist.cu): the ideal layered Llama-3.2-1B step (step_ceiling.cu's committed row
// layout with the attention slots, 83 launches in one CUDA graph), with part of the L2 set
// aside for persisting lines (`cudaLimitPersistingL2CacheSize`) and an access policy
// window on some of the graph's kernel nodes, so that those bytes stay in L2 from one
// replay to the next:
//  - "LM head": the first X bytes of the LM head's rows;
//  - "small products": the q/k/v and o weights of the first layers, whole, up to X bytes.
// Prints the median of 50 replays against the same graph without windows, and the
// fraction of the limit (weight bytes over the copy rate measured here).
// Run: WHAT=l2_persist scripts/membench/run.sh on the GPU machine.
#include "step_kernels.cuh"

int main() {
    StepWeights w;
    if (make_step_weights(w, false)) return 1;
    const std::vector<Mat>& mats = w.mats;
    float* out = w.out;
    const uint4* x = w.x;
    int max_persist = 0, max_window = 0, l2 = 0;
    CK(cudaDeviceGetAttribute(&max_persist, cudaDevAttrMaxPersistingL2CacheSize, 0));
    CK(cudaDeviceGetAttribute(&max_window, cudaDevAttrMaxAccessPolicyWindowSize, 0));
    CK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0));
    printf("L2 %d MB, at most %d MB persisting, windows up to %d MB\n", l2 >> 20, max_persist >> 20, max_window >> 20);
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    auto time_it = [&](auto f) { return median_ms(st, 5, 50, f); };
    const double limit_us = step_limit_us(w, st);
    // The step; `window(i)` gives the bytes of product i's weights to persist (0: none),
    // set on its kernel node through the stream's attribute while it is captured.
    auto step = [&](auto window) {
        return graph_of(st, [&] {
            tiny<<<1, 128, 0, st>>>(out);
            for (size_t i = 0; i < mats.size(); ++i) {
                const Mat& m = mats[i];
                const long long bytes = window(i);
                cudaStreamAttrValue v = {};
                if (bytes > 0) {
                    v.accessPolicyWindow.base_ptr = const_cast<uint4*>(m.w);
                    v.accessPolicyWindow.num_bytes = (size_t)bytes;
                    v.accessPolicyWindow.hitRatio = 1.0f;
                    v.accessPolicyWindow.hitProp = cudaAccessPropertyPersisting;
                    v.accessPolicyWindow.missProp = cudaAccessPropertyStreaming;
                    cudaStreamSetAttribute(st, cudaStreamAttributeAccessPolicyWindow, &v);
                }
                const int s = i + 1 == mats.size() ? 1 : (i % 4 == 2 ? 1 : 2);
                if (s == 1) launch_product<1>(m.w, x, m.n, m.k / 8, out, st);
                else launch_product<2>(m.w, x, m.n, m.k / 8, out, st);
                if (bytes > 0) {
                    v.accessPolicyWindow.num_bytes = 0;
                    cudaStreamSetAttribute(st, cudaStreamAttributeAccessPolicyWindow, &v);
                }
                if (i % 4 == 0 && i + 1 < mats.size()) tiny<<<32, 128, 0, st>>>(out);
            }
            tiny<<<64, 128, 0, st>>>(out);
        });
    };
    auto report = [&](const char* what, cudaGraphExec_t e) {
        float ms = time_it([&] { cudaGraphLaunch(e, st); });
        printf("%-40s %7.1f us, %.3f of the limit (%.1f tok/s)\n", what, ms * 1e3, limit_us / (ms * 1e3), 1e3 / ms);
    };
    cudaGraphExec_t plain = step([](size_t) { return 0ll; });
    for (int round = 0; round < 2; ++round) {
        for (long long mb : {8ll, 16ll, 24ll, 32ll, 40ll}) {
            const long long set_aside = mb << 20;
            if (set_aside > max_persist) continue;
            CK(cudaDeviceSetLimit(cudaLimitPersistingL2CacheSize, (size_t)set_aside));
            CK(cudaCtxResetPersistingL2Cache());
            report("no windows", plain);
            const long long head_bytes = std::min(set_aside, (long long)max_window);
            cudaGraphExec_t g = step([&](size_t i) { return i + 1 == mats.size() ? head_bytes : 0ll; });
            char name[64];
            snprintf(name, sizeof name, "LM head, %lld MB", mb);
            report(name, g);
            CK(cudaCtxResetPersistingL2Cache());
            // q/k/v and o of the first layers, whole, while they fit.
            long long left = set_aside;
            std::vector<long long> keep(mats.size(), 0);
            for (size_t i = 0; i + 1 < mats.size(); ++i) {
                if (i % 4 > 1) continue;
                const long long b = mats[i].n * mats[i].k * 2;
                if (b > left) break;
                keep[i] = b;
                left -= b;
            }
            g = step([&](size_t i) { return keep[i]; });
            snprintf(name, sizeof name, "small products, %lld MB", mb);
            report(name, g);
            CK(cudaCtxResetPersistingL2Cache());
        }
    }
    CK(cudaGetLastError());
    CK(cudaStreamSynchronize(st));
    return 0;
}
