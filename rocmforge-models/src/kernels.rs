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

/// Adds a bias over the columns of every row (QKV and MLP biases after a GEMM).
#[gpu_kernel(rowwise(dtype = [f32, f16, bf16], block = [128, 256, 512, 1024]))]
pub fn add_bias(x: &Rows<T>, b: &[T], out: &mut Rows<T>) {
    *out = x + b;
}

/// Fused residual add + RMSNorm: `res += x; out = rmsnorm(res) * w`, one pass.
#[gpu_kernel(rowwise(dtype = [f32, f16, bf16], block = [128, 256, 512, 1024]))]
pub fn add_rmsnorm(x: &Rows<T>, res: &mut Rows<T>, w: &[T], out: &mut Rows<T>, eps: f32) {
    let h = x + res;
    *res = h;
    *out = h * rsqrt(mean(h * h) + eps) * w;
}

/// Rotary embedding, GPT-NeoX / Llama layout (half split), q and k in place.
#[gpu_kernel(rope(layout = neox, dtype = [f32, f16, bf16], head_dim = [16, 32, 64, 80, 96, 128, 256]))]
pub fn rope_neox(q: &mut Heads<T>, k: &mut Heads<T>, pos: &[i32], inv_freq: &[f32], mscale: f32) {}

/// Rotary embedding, GPT-J layout (interleaved pairs), q and k in place.
#[gpu_kernel(rope(layout = gptj, dtype = [f32, f16, bf16], head_dim = [64, 80, 96, 128, 256]))]
pub fn rope_gptj(q: &mut Heads<T>, k: &mut Heads<T>, pos: &[i32], inv_freq: &[f32], mscale: f32) {}

/// Scaled dot-product attention, every position visible (encoders, cross-attention).
#[gpu_kernel(attention(dtype = [f32, f16, bf16], head_dim = [64, 80, 96, 128, 256]))]
pub fn attention(q: &Heads<T>, k: &Heads<T>, v: &Heads<T>, out: &mut Heads<T>, scale: f32) {}

/// Causal attention (decoder self-attention): a query sees its position and earlier ones.
/// Head dims 16 and 32 serve small models (and the test fixtures).
#[gpu_kernel(attention(dtype = [f32, f16, bf16], head_dim = [16, 32, 64, 80, 96, 128, 256]))]
pub fn attention_causal(q: &Heads<T>, k: &Heads<T>, v: &Heads<T>, out: &mut Heads<T>, scale: f32) {
    mask!(kv_pos <= q_pos);
}

/// Causal attention over a sliding window of `window` positions (Mistral, Qwen2 layers).
#[gpu_kernel(attention(dtype = [f32, f16, bf16], head_dim = [16, 32, 64, 128]))]
pub fn attention_window(q: &Heads<T>, k: &Heads<T>, v: &Heads<T>, out: &mut Heads<T>, scale: f32, window: i32) {
    mask!(kv_pos <= q_pos && q_pos - kv_pos < window);
}

/// Causal attention with a logit soft cap `cap * tanh(score / cap)` (Gemma 2).
#[gpu_kernel(attention(dtype = [f16, bf16], head_dim = [128, 256]))]
pub fn attention_softcap(q: &Heads<T>, k: &Heads<T>, v: &Heads<T>, out: &mut Heads<T>, scale: f32, cap: f32) {
    score!(cap * tanh(score / cap));
    mask!(kv_pos <= q_pos);
}

/// Causal attention with ALiBi: head `h` subtracts `2^(alibi_exp * (h + 1)) * distance`
/// (`alibi_exp = -8 / heads` for a power-of-two head count, as in BLOOM and MPT).
#[gpu_kernel(attention(dtype = [f16, bf16], head_dim = [64, 128]))]
pub fn attention_alibi(q: &Heads<T>, k: &Heads<T>, v: &Heads<T>, out: &mut Heads<T>, scale: f32, alibi_exp: f32) {
    let slope = pow(2.0, alibi_exp * ((head + 1) as f32));
    score!(score - slope * ((q_pos - kv_pos) as f32));
    mask!(kv_pos <= q_pos);
}

/// Matrix-vector product for decode: `out = x w^T` on a few rows of `x` (a linear layer).
#[gpu_kernel(gemv(dtype = [f32, f16, bf16]))]
pub fn linear(x: &Rows<T>, w: &Rows<T>, out: &mut Rows<T>) {
    *out = dot(w, x);
}

/// A projection added into the residual stream in place: `res += x w^T` (the attention
/// output and MLP down projections).
#[gpu_kernel(gemv(dtype = [f32, f16, bf16]))]
pub fn linear_residual(x: &Rows<T>, w: &Rows<T>, res: &mut Rows<T>) {
    *res = res + dot(w, x);
}

/// RMSNorm fused into a product: `out = (rmsnorm(x) * g) w^T`, the norm's scale applied
/// after the product (a layer's input norm and QKV projection).
#[gpu_kernel(gemv(dtype = [f32, f16, bf16]))]
pub fn rmsnorm_linear(x: &Rows<T>, g: &[T], w: &Rows<T>, out: &mut Rows<T>, eps: f32) {
    *out = dot(w, x * g) * rsqrt(mean(x * x) + eps);
}

/// The final norm and the LM head, logits in f32.
#[gpu_kernel(gemv(dtype = [f32, f16, bf16]))]
pub fn lm_head(x: &Rows<T>, g: &[T], w: &Rows<T>, logits: &mut Rows<f32>, eps: f32) {
    *logits = dot(w, x * g) * rsqrt(mean(x * x) + eps);
}

/// The SwiGLU MLP's gate and up products and its activation in one pass:
/// `out = silu(x w_gate^T) * (x w_up^T)`; neither product is stored.
#[gpu_kernel(gemv(dtype = [f32, f16, bf16]))]
pub fn gate_up_swiglu(x: &Rows<T>, w_gate: &Rows<T>, w_up: &Rows<T>, out: &mut Rows<T>) {
    *out = silu(dot(w_gate, x)) * dot(w_up, x);
}

/// The MLP of one decode step up to its down projection: the input RMSNorm, the gate
/// and up products and SwiGLU, in one pass over the weights. The norm's scale `s`
/// multiplies each product (`dot(w, x * g) * s` is the product of the normed row).
#[gpu_kernel(gemv(dtype = [f32, f16, bf16]))]
pub fn mlp_gate_up(x: &Rows<T>, g: &[T], w_gate: &Rows<T>, w_up: &Rows<T>, out: &mut Rows<T>, eps: f32) {
    let s = rsqrt(mean(x * x) + eps);
    let y = x * g;
    *out = silu(dot(w_gate, y) * s) * (dot(w_up, y) * s);
}

/// `mlp_gate_up` with the norm's weight folded into the gate and up rows
/// (`w[j, c] * g[c]`, as the GPU loader stores them, [`scale_columns`]): the same
/// products, without loading `g` or multiplying by it.
#[gpu_kernel(gemv(dtype = [f32, f16, bf16]))]
pub fn mlp_gate_up_folded(x: &Rows<T>, w_gate: &Rows<T>, w_up: &Rows<T>, out: &mut Rows<T>, eps: f32) {
    let s = rsqrt(mean(x * x) + eps);
    *out = silu(dot(w_gate, x) * s) * (dot(w_up, x) * s);
}

/// Scales every column of a matrix in place, `w[r, c] *= g[c]`: folds an RMSNorm's
/// weight into the product after it (`(x * g) w^T = x (w * g)^T`), once, at load.
#[gpu_kernel(rowwise(dtype = [f32, f16, bf16], block = [128, 256, 512, 1024]))]
pub fn scale_columns(w: &mut Rows<T>, g: &[T]) {
    *w = w * g;
}

/// The IR of every standard kernel, for tests, snapshots and the self-check.
pub fn all() -> Result<Vec<&'static rocmforge_runtime::Kernel>, rocmforge_runtime::LaunchError> {
    Ok(vec![
        swiglu::kernel()?,
        geglu::kernel()?,
        softmax::kernel()?,
        rmsnorm::kernel()?,
        add_rmsnorm::kernel()?,
        add_bias::kernel()?,
        rope_neox::kernel()?,
        rope_gptj::kernel()?,
        attention::kernel()?,
        attention_causal::kernel()?,
        attention_window::kernel()?,
        attention_softcap::kernel()?,
        attention_alibi::kernel()?,
        linear::kernel()?,
        linear_residual::kernel()?,
        rmsnorm_linear::kernel()?,
        lm_head::kernel()?,
        gate_up_swiglu::kernel()?,
        mlp_gate_up::kernel()?,
        mlp_gate_up_folded::kernel()?,
        scale_columns::kernel()?,
    ])
}
