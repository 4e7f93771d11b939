//! A tiny Llama-shaped model with deterministic random weights, run on the CPU through
//! the standard kernels' interpreter path. It exists so that `generate` runs anywhere
//! with no checkpoint; its text is meaningless by construction.
//!
//! Shapes: byte vocabulary (256), hidden 256, 2 layers, 4 query heads and 2 KV heads
//! (GQA) of head_dim 64, SwiGLU MLP of 512, tied embeddings, RoPE base 10000.

use rocmforge_dsl::rope::{inv_freq, RopeScaling};
use rocmforge_runtime::{DType, HostArg, HostTensor, LaunchError};

use crate::kernels;

/// Shapes of the demo model.
#[derive(Debug, Clone, Copy)]
pub struct DemoConfig {
    /// Vocabulary (bytes).
    pub vocab: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Transformer layers.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// MLP width.
    pub intermediate: usize,
    /// RMSNorm epsilon.
    pub eps: f32,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig { vocab: 256, hidden: 256, layers: 2, heads: 4, kv_heads: 2, head_dim: 64, intermediate: 512, eps: 1e-5 }
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Vec<f32>,
    wk: Vec<f32>,
    wv: Vec<f32>,
    wo: Vec<f32>,
    mlp_norm: Vec<f32>,
    w_gate: Vec<f32>,
    w_up: Vec<f32>,
    w_down: Vec<f32>,
}

/// The demo model and its KV cache.
#[derive(Debug)]
pub struct DemoModel {
    cfg: DemoConfig,
    embed: Vec<f32>,
    layers: Vec<Layer>,
    final_norm: Vec<f32>,
    inv_freq: Vec<f32>,
    k_cache: Vec<Vec<f32>>,
    v_cache: Vec<Vec<f32>>,
    pos: usize,
}

impl std::fmt::Debug for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Layer")
    }
}

/// splitmix64, for reproducible weights and sampling.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn weights(&mut self, n: usize, fan_in: usize) -> Vec<f32> {
        let s = (3.0 / fan_in as f32).sqrt();
        (0..n).map(|_| (self.next_f32() * 2.0 - 1.0) * s).collect()
    }
}

fn host(d: &[f32], shape: &[usize]) -> Result<HostArg, LaunchError> {
    HostTensor::from_f32(DType::F32, shape, d)
        .map(HostArg::Tensor)
        .ok_or_else(|| LaunchError::Kernel(format!("shape {shape:?} does not hold {} values", d.len())))
}

fn take(args: &[HostArg], i: usize) -> Vec<f32> {
    args[i].tensor().map(HostTensor::to_f32_vec).unwrap_or_default()
}

/// `x [in] @ w [in, out]`.
fn matvec(x: &[f32], w: &[f32], out_dim: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; out_dim];
    for (i, &xi) in x.iter().enumerate() {
        let row = &w[i * out_dim..(i + 1) * out_dim];
        for (yo, &wv) in y.iter_mut().zip(row) {
            *yo += xi * wv;
        }
    }
    y
}

impl DemoModel {
    /// Builds the model from a seed.
    pub fn new(cfg: DemoConfig, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let (h, q, kv, i) = (cfg.hidden, cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.intermediate);
        let layers = (0..cfg.layers)
            .map(|_| Layer {
                attn_norm: (0..h).map(|_| 0.8 + 0.4 * rng.next_f32()).collect(),
                wq: rng.weights(h * q, h),
                wk: rng.weights(h * kv, h),
                wv: rng.weights(h * kv, h),
                wo: rng.weights(q * h, q),
                mlp_norm: (0..h).map(|_| 0.8 + 0.4 * rng.next_f32()).collect(),
                w_gate: rng.weights(h * i, h),
                w_up: rng.weights(h * i, h),
                w_down: rng.weights(i * h, i),
            })
            .collect();
        let (inv_freq, _) = inv_freq(cfg.head_dim, 10_000.0, RopeScaling::Default);
        DemoModel {
            embed: rng.weights(cfg.vocab * h, 1),
            final_norm: (0..h).map(|_| 0.8 + 0.4 * rng.next_f32()).collect(),
            layers,
            inv_freq,
            k_cache: vec![Vec::new(); cfg.layers],
            v_cache: vec![Vec::new(); cfg.layers],
            pos: 0,
            cfg,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &DemoConfig {
        &self.cfg
    }

    fn rmsnorm(&self, x: &[f32], w: &[f32]) -> Result<Vec<f32>, LaunchError> {
        let h = self.cfg.hidden;
        let mut args = vec![host(x, &[1, h])?, host(w, &[h])?, host(&vec![f32::NAN; h], &[1, h])?, HostArg::F32(self.cfg.eps)];
        kernels::rmsnorm::run_host(&mut args)?;
        Ok(take(&args, 2))
    }

    /// Feeds one token at the next position; returns the logits over the vocabulary.
    pub fn forward(&mut self, token: u32) -> Result<Vec<f32>, LaunchError> {
        let c = self.cfg;
        let t = (token as usize).min(c.vocab - 1);
        let mut x = self.embed[t * c.hidden..(t + 1) * c.hidden].to_vec();
        let (hd, group) = (c.head_dim, c.heads / c.kv_heads);
        for li in 0..c.layers {
            let l = &self.layers[li];
            let h = self.rmsnorm(&x, &l.attn_norm)?;
            let q = matvec(&h, &l.wq, c.heads * hd);
            let k = matvec(&h, &l.wk, c.kv_heads * hd);
            let v = matvec(&h, &l.wv, c.kv_heads * hd);
            let mut args = vec![
                host(&q, &[1, c.heads, hd])?,
                host(&k, &[1, c.kv_heads, hd])?,
                HostArg::Tensor(HostTensor::from_i32(&[1], vec![self.pos as i32]).ok_or_else(|| LaunchError::Kernel("pos".into()))?),
                host(&self.inv_freq, &[hd / 2])?,
                HostArg::F32(1.0),
            ];
            kernels::rope_neox::run_host(&mut args)?;
            let (q, k) = (take(&args, 0), take(&args, 1));
            self.k_cache[li].extend_from_slice(&k);
            self.v_cache[li].extend_from_slice(&v);
            let len = self.pos + 1;
            let (kc, vc) = (&self.k_cache[li], &self.v_cache[li]);
            let mut scores = vec![0.0f32; c.heads * len];
            for head in 0..c.heads {
                let kvh = head / group;
                let qh = &q[head * hd..(head + 1) * hd];
                for j in 0..len {
                    let kj = &kc[(j * c.kv_heads + kvh) * hd..(j * c.kv_heads + kvh + 1) * hd];
                    scores[head * len + j] = qh.iter().zip(kj).map(|(a, b)| a * b).sum();
                }
            }
            let mut args = vec![
                host(&scores, &[c.heads, len])?,
                host(&vec![f32::NAN; c.heads * len], &[c.heads, len])?,
                HostArg::F32(1.0 / (hd as f32).sqrt()),
            ];
            kernels::softmax::run_host(&mut args)?;
            let probs = take(&args, 1);
            let mut attn = vec![0.0f32; c.heads * hd];
            for head in 0..c.heads {
                let kvh = head / group;
                for j in 0..len {
                    let p = probs[head * len + j];
                    let vj = &vc[(j * c.kv_heads + kvh) * hd..(j * c.kv_heads + kvh + 1) * hd];
                    for (o, &vv) in attn[head * hd..(head + 1) * hd].iter_mut().zip(vj) {
                        *o += p * vv;
                    }
                }
            }
            let o = matvec(&attn, &l.wo, c.hidden);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let h = self.rmsnorm(&x, &l.mlp_norm)?;
            let gate = matvec(&h, &l.w_gate, c.intermediate);
            let up = matvec(&h, &l.w_up, c.intermediate);
            let mut args = vec![
                host(&gate, &[c.intermediate])?,
                host(&up, &[c.intermediate])?,
                host(&vec![f32::NAN; c.intermediate], &[c.intermediate])?,
            ];
            kernels::swiglu::run_host(&mut args)?;
            let d = matvec(&take(&args, 2), &l.w_down, c.hidden);
            x.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
        }
        self.pos += 1;
        let h = self.rmsnorm(&x, &self.final_norm)?;
        Ok((0..c.vocab).map(|v| h.iter().zip(&self.embed[v * c.hidden..(v + 1) * c.hidden]).map(|(a, b)| a * b).sum()).collect())
    }
}

/// Picks the next token: greedy at temperature 0, else a sample from the softmax.
pub fn sample(logits: &[f32], temperature: f32, rng: &mut Rng) -> u32 {
    let argmax = logits.iter().enumerate().fold((0usize, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0;
    if temperature <= 0.0 {
        return argmax as u32;
    }
    let m = logits[argmax];
    let w: Vec<f32> = logits.iter().map(|&l| ((l - m) / temperature).exp()).collect();
    let total: f32 = w.iter().sum();
    let mut r = rng.next_f32() * total;
    for (i, &wi) in w.iter().enumerate() {
        if r < wi {
            return i as u32;
        }
        r -= wi;
    }
    argmax as u32
}
