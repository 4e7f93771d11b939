// Declarations of the CUDA device built-ins the generated sources use, for a syntax and
// type check by clang without a CUDA install (tests/hipcc.rs,
// `cuda_sources_parse_with_clang`). NVRTC provides these itself; nothing here is
// compiled to code.
#define __global__ __attribute__((global))
#define __device__ __attribute__((device))
#define __shared__ __attribute__((shared))
#define __forceinline__ __attribute__((always_inline))
#define __launch_bounds__(...) __attribute__((launch_bounds(__VA_ARGS__)))
#define __align__(n) __attribute__((aligned(n)))
struct rf_decl_dim3 { unsigned x, y, z; };
extern __device__ const rf_decl_dim3 threadIdx, blockIdx, blockDim, gridDim;
__device__ float expf(float); __device__ float exp2f(float); __device__ float __expf(float); __device__ float logf(float);
__device__ double exp(double);
__device__ float rsqrtf(float); __device__ float sqrtf(float); __device__ void sincosf(float, float*, float*);
__device__ float sinf(float); __device__ float cosf(float); __device__ float tanhf(float); __device__ float powf(float, float);
__device__ float fmaxf(float, float); __device__ float fminf(float, float); __device__ float fabsf(float); __device__ float floorf(float);
__device__ float erfcf(float); __device__ float __fdividef(float, float);
__device__ float __uint_as_float(unsigned); __device__ unsigned __float_as_uint(float);
__device__ float __int_as_float(int); __device__ int __float_as_int(float); __device__ int __float2int_rn(float);
__device__ float __shfl_xor_sync(unsigned, float, int, int = 32);
__device__ int __shfl_sync(unsigned, int, int, int = 32); __device__ unsigned __shfl_sync(unsigned, unsigned, int, int = 32);
__device__ float __shfl_sync(unsigned, float, int, int = 32);
__device__ void __syncthreads(); __device__ void __syncwarp(unsigned = 0xffffffffu);
__device__ int atomicAdd(int*, int); __device__ unsigned atomicAdd(unsigned*, unsigned);
__device__ float fmaf(float, float, float); __device__ int __all_sync(unsigned, int); __device__ int __any_sync(unsigned, int);
__device__ int __clz(int); __device__ unsigned __ballot_sync(unsigned, int); __device__ int __popc(unsigned);
__device__ int __ffs(int); __device__ float __frcp_rn(float); __device__ void __nanosleep(unsigned);
