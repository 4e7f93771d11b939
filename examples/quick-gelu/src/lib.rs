//! A kernel of the user's own: QuickGELU, `x * sigmoid(1.702 x)`, for f32, f16, bf16.
use rocmforge::gpu_kernel;

#[gpu_kernel(elementwise(dtype = [f32, f16, bf16]))]
pub fn quick_gelu(x: &[T], y: &mut [T]) {
    *y = x * sigmoid(1.702 * x);
}

/// The code objects and HIP source built by build.rs.
pub mod aot {
    include!(concat!(env!("OUT_DIR"), "/rocmforge_kernels.rs"));
}
