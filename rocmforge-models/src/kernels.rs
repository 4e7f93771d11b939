//! The standard kernel library, declared with `#[gpu_kernel]`.
//!
//! Each declaration expands to a launcher module (`kernels::rmsnorm::plan`, ...) and is
//! compiled ahead of time by `build.rs` where a compiler is present.

use rocmforge_macros::gpu_kernel;

/// SwiGLU: `silu(gate) * up` (Llama, Mistral, Qwen MLPs).
#[gpu_kernel(elementwise(dtype = [f32, f16, bf16]))]
pub fn swiglu(gate: &[T], up: &[T], out: &mut [T]) {
    *out = silu(gate) * up;
}

/// GeGLU with the tanh GELU (Gemma's MLP): `gelu_tanh(gate) * up`.
#[gpu_kernel(elementwise(dtype = [f32, f16, bf16]))]
pub fn geglu(gate: &[T], up: &[T], out: &mut [T]) {
    *out = gelu_tanh(gate) * up;
}

/// Softmax over each row of `x * scale`, max-subtracted.
#[gpu_kernel(rowwise(dtype = [f32, f16, bf16], block = [128, 256, 512, 1024]))]
pub fn softmax(x: &Rows<T>, out: &mut Rows<T>, scale: f32) {
    let s = x * scale;
    let m = max(s);
    let e = exp(s - m);
    *out = e / sum(e);
}

/// RMSNorm: `x * rsqrt(mean(x^2) + eps) * w`.
#[gpu_kernel(rowwise(dtype = [f32, f16, bf16], block = [128, 256, 512, 1024]))]
pub fn rmsnorm(x: &Rows<T>, w: &[T], out: &mut Rows<T>, eps: f32) {
    *out = x * rsqrt(mean(x * x) + eps) * w;
}

/// Fused residual add + RMSNorm: `res += x; out = rmsnorm(res) * w`, one pass.
#[gpu_kernel(rowwise(dtype = [f32, f16, bf16], block = [128, 256, 512, 1024]))]
pub fn add_rmsnorm(x: &Rows<T>, res: &mut Rows<T>, w: &[T], out: &mut Rows<T>, eps: f32) {
    let h = x + res;
    *res = h;
    *out = h * rsqrt(mean(h * h) + eps) * w;
}

/// Rotary embedding, GPT-NeoX / Llama layout (half split), q and k in place.
#[gpu_kernel(rope(layout = neox, dtype = [f32, f16, bf16], head_dim = [64, 80, 96, 128, 256]))]
pub fn rope_neox(q: &mut Heads<T>, k: &mut Heads<T>, pos: &[i32], inv_freq: &[f32], mscale: f32) {}

/// Rotary embedding, GPT-J layout (interleaved pairs), q and k in place.
#[gpu_kernel(rope(layout = gptj, dtype = [f32, f16, bf16], head_dim = [64, 80, 96, 128, 256]))]
pub fn rope_gptj(q: &mut Heads<T>, k: &mut Heads<T>, pos: &[i32], inv_freq: &[f32], mscale: f32) {}

/// The IR of every standard kernel, for tests, snapshots and the self-check.
pub fn all() -> Result<Vec<&'static rocmforge_runtime::Kernel>, rocmforge_runtime::LaunchError> {
    Ok(vec![
        swiglu::kernel()?,
        geglu::kernel()?,
        softmax::kernel()?,
        rmsnorm::kernel()?,
        add_rmsnorm::kernel()?,
        rope_neox::kernel()?,
        rope_gptj::kernel()?,
    ])
}
