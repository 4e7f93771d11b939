//! What the GPU model is made of, decided before any device call: the tensors of a config
//! ([`tensor_list`]), where their values come from ([`WeightSource`]: a checkpoint or
//! deterministic [`RandomWeights`]), the layout options ([`GpuOptions`]) and the memory
//! plan ([`plan_memory`]): weights, activations and a KV cache from the free memory.

use rocmforge_dsl::rope::RopeScaling;
use rocmforge_dsl::DType;
use rocmforge_runtime::engine::{argmax_workspace, softmax_mass_parts, topk_staged_workspace, TOPK_MAX};

use crate::arch::Arch;
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::weights::{encode, Checkpoint};

/// Where weights come from: a checkpoint, or deterministic random values (benchmarks).
pub trait WeightSource {
    /// The tensor `name` of `shape` as `dtype` storage bytes.
    fn tensor(&mut self, name: &str, shape: &[usize], dtype: DType) -> Result<Vec<u8>>;
}

impl WeightSource for &Checkpoint {
    fn tensor(&mut self, name: &str, shape: &[usize], dtype: DType) -> Result<Vec<u8>> {
        self.get_as(name, shape, dtype)
    }
}

/// Deterministic random weights: every value is a hash of (seed, tensor name, index), so
/// the same seed gives the same model on any machine and thread count. Linear and
/// embedding weights are uniform with standard deviation 0.02 (HF's init); norm weights
/// are 1 + U(-0.1, 0.1); biases U(-0.02, 0.02).
#[derive(Debug, Clone, Copy)]
pub struct RandomWeights {
    /// The seed.
    pub seed: u64,
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl WeightSource for RandomWeights {
    fn tensor(&mut self, name: &str, shape: &[usize], dtype: DType) -> Result<Vec<u8>> {
        use rayon::prelude::*;
        let n: usize = shape.iter().product();
        let key = name.bytes().fold(splitmix(self.seed), |h, b| splitmix(h ^ u64::from(b)));
        let (center, half_width) = if name.ends_with("norm.weight") {
            (1.0f32, 0.1f32)
        } else if name.ends_with(".bias") {
            (0.0, 0.02)
        } else {
            (0.0, 0.02 * 3f32.sqrt())
        };
        let value = |i: usize| {
            let u = (splitmix(key ^ (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d)) >> 40) as f32 / (1u64 << 24) as f32;
            center + half_width * (2.0 * u - 1.0)
        };
        let size = dtype.size();
        let mut out = Vec::new();
        out.try_reserve_exact(n * size).map_err(|_| ModelError::OutOfMemory { bytes: n * size, what: "random weights" })?;
        out.resize(n * size, 0u8);
        out.par_chunks_mut(size * 4096).enumerate().for_each(|(c, chunk)| {
            let vals: Vec<f32> = (0..chunk.len() / size).map(|j| value(c * 4096 + j)).collect();
            chunk.copy_from_slice(&encode(&vals, dtype));
        });
        Ok(out)
    }
}

/// The tensors a model of this config has, with their shapes, in load order.
pub fn tensor_list(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (h, q, kv, i) = (cfg.hidden, cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.intermediate);
    let mut v = vec![("model.embed_tokens.weight".to_string(), vec![cfg.vocab, h])];
    for l in 0..cfg.layers {
        let p = format!("model.layers.{l}");
        let a = format!("{p}.self_attn");
        let m = format!("{p}.mlp");
        v.push((format!("{p}.input_layernorm.weight"), vec![h]));
        v.push((format!("{a}.q_proj.weight"), vec![q, h]));
        v.push((format!("{a}.k_proj.weight"), vec![kv, h]));
        v.push((format!("{a}.v_proj.weight"), vec![kv, h]));
        v.push((format!("{a}.o_proj.weight"), vec![h, q]));
        if cfg.qkv_bias {
            v.push((format!("{a}.q_proj.bias"), vec![q]));
            v.push((format!("{a}.k_proj.bias"), vec![kv]));
            v.push((format!("{a}.v_proj.bias"), vec![kv]));
        }
        if cfg.o_bias {
            v.push((format!("{a}.o_proj.bias"), vec![h]));
        }
        if cfg.qk_norm {
            v.push((format!("{a}.q_norm.weight"), vec![cfg.head_dim]));
            v.push((format!("{a}.k_norm.weight"), vec![cfg.head_dim]));
        }
        v.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        v.push((format!("{m}.gate_proj.weight"), vec![i, h]));
        v.push((format!("{m}.up_proj.weight"), vec![i, h]));
        v.push((format!("{m}.down_proj.weight"), vec![h, i]));
        if cfg.mlp_bias {
            v.push((format!("{m}.gate_proj.bias"), vec![i]));
            v.push((format!("{m}.up_proj.bias"), vec![i]));
            v.push((format!("{m}.down_proj.bias"), vec![h]));
        }
    }
    v.push(("model.norm.weight".to_string(), vec![h]));
    if !cfg.tie_embeddings {
        v.push(("lm_head.weight".to_string(), vec![cfg.vocab, h]));
    }
    v
}

/// The model shapes of the benchmarks (`bench --preset`), run with [`RandomWeights`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelPreset {
    /// Llama-3-8B: 32 layers, hidden 4096, 32/8 heads of 128, MLP 14336, vocab 128256.
    Llama3_8b,
    /// Llama-3.2-1B: 16 layers, hidden 2048, 32/8 heads of 64, MLP 8192, tied embeddings.
    Llama32_1b,
    /// Qwen2.5-7B: 28 layers, hidden 3584, 28/4 heads of 128, MLP 18944, QKV bias.
    Qwen25_7b,
}

impl ModelPreset {
    /// The shape as a config (what the model's `config.json` would give).
    pub fn config(self) -> ModelConfig {
        let llama3_rope =
            RopeScaling::Llama3 { factor: 32.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192.0 };
        let base = ModelConfig {
            arch: Arch::Llama,
            hidden: 4096,
            intermediate: 14336,
            layers: 32,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            vocab: 128_256,
            eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: RopeScaling::Default,
            max_positions: 8192,
            tie_embeddings: false,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            qk_norm: false,
            windows: vec![None; 32],
            dtype: None,
            bos_token_id: Some(128_000),
            eos_token_ids: vec![128_001],
        };
        match self {
            ModelPreset::Llama3_8b => base,
            ModelPreset::Llama32_1b => ModelConfig {
                hidden: 2048,
                intermediate: 8192,
                layers: 16,
                head_dim: 64,
                rope_scaling: llama3_rope,
                max_positions: 131_072,
                tie_embeddings: true,
                windows: vec![None; 16],
                ..base
            },
            ModelPreset::Qwen25_7b => ModelConfig {
                arch: Arch::Qwen2,
                hidden: 3584,
                intermediate: 18944,
                layers: 28,
                heads: 28,
                kv_heads: 4,
                vocab: 152_064,
                eps: 1e-6,
                rope_theta: 1_000_000.0,
                max_positions: 32_768,
                qkv_bias: true,
                windows: vec![None; 28],
                bos_token_id: None,
                eos_token_ids: vec![151_643],
                ..base
            },
        }
    }
}

/// How the GPU model is laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuOptions {
    /// Weight and activation dtype (f32, f16 or bf16).
    pub dtype: DType,
    /// KV cache tokens per page (16 or 32).
    pub block_size: usize,
    /// Most tokens one forward takes (longer prompts run in chunks of this many).
    pub max_batch_tokens: usize,
    /// Most sequences one forward takes.
    pub max_seqs: usize,
    /// Share of the free device memory the model may use (weights, activations, cache).
    pub gpu_memory_fraction: f32,
    /// Upper bound on KV cache tokens (`None`: as many as the memory allows, up to
    /// `max_seqs` full contexts).
    pub max_kv_tokens: Option<usize>,
    /// Replay decode steps as CUDA graphs (one launch per step instead of one per kernel).
    pub cuda_graphs: bool,
    /// Products of one row (decode of one sequence) run the bandwidth-bound
    /// matrix-vector kernel, with the norms and residual adds fused into it, instead of
    /// cuBLAS (from two rows on cuBLAS is faster).
    pub gemv: bool,
    /// With `gemv`, decode of one sequence: the gate/up product computes the SwiGLU,
    /// and the q/k/v product the rotary embedding and the cache writes, in their
    /// epilogues (one warp per pair of weight rows), instead of separate kernels after
    /// them (not for per-head q/k norms, which need a whole head).
    pub pair_epilogues: bool,
    /// Fold each RMSNorm's weight into the columns of the product after it at load
    /// (`w[r, c] * g[c]`, one rounding to the weights' dtype; not into a head tied to the
    /// embedding, nor, in f16, where the largest magnitudes of the two could multiply past
    /// f16's largest value), so decode's fused norms do not load and multiply it. Prefill's norms then apply a weight of ones.
    pub fold_norms: bool,
    /// With `gemv`, `pair_epilogues` and `cuda_graphs`, decode of one sequence runs every
    /// layer and the LM head in one persistent launch (grid barriers between the phases
    /// instead of kernel boundaries) where the model's shape allows it (no per-head q/k
    /// norms or windows; see `rocmforge_runtime::engine::decode_step_unsupported`).
    /// Off by default: it is slower than the layered decode so far (benches/RESULTS.md).
    pub persistent_decode: bool,
    /// With `persistent_decode`: record the device clock at every grid barrier of each
    /// step (`GpuModel::step_phase_times`, feature `cuda`).
    pub step_clock: bool,
}

impl GpuOptions {
    /// Checks the options on their own, before any device is opened: dtype, page size,
    /// batch limits and memory fraction ([`plan_memory`] checks them too).
    pub fn validate(&self) -> Result<()> {
        if !matches!(self.dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(ModelError::Invalid(format!("GPU weights must be f32, f16 or bf16, not {}", self.dtype)));
        }
        if !(self.block_size == 16 || self.block_size == 32) {
            return Err(ModelError::Invalid(format!("KV page size {} is not supported (16 or 32)", self.block_size)));
        }
        if self.max_batch_tokens == 0 || self.max_seqs == 0 || self.max_seqs > self.max_batch_tokens {
            return Err(ModelError::Invalid(format!(
                "max batch tokens {} and max sequences {} must be positive, with sequences <= tokens",
                self.max_batch_tokens, self.max_seqs
            )));
        }
        if !(self.gpu_memory_fraction > 0.0 && self.gpu_memory_fraction <= 1.0) {
            return Err(ModelError::Invalid(format!("--gpu-memory-fraction {} must be in (0, 1]", self.gpu_memory_fraction)));
        }
        Ok(())
    }
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            dtype: DType::BF16,
            block_size: 16,
            max_batch_tokens: 2048,
            max_seqs: 64,
            gpu_memory_fraction: 0.9,
            max_kv_tokens: None,
            cuda_graphs: true,
            gemv: true,
            pair_epilogues: true,
            fold_norms: true,
            persistent_decode: false,
            step_clock: false,
        }
    }
}

/// Sizes decided before anything is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Weight bytes.
    pub weights: u64,
    /// Activation and staging bytes.
    pub scratch: u64,
    /// KV bytes per token (all layers, K and V).
    pub kv_per_token: u64,
    /// KV cache tokens (a multiple of the page size).
    pub kv_tokens: u64,
    /// Longest context one sequence may reach.
    pub max_context: u64,
}

impl MemoryPlan {
    /// Bytes of the KV cache.
    pub fn kv_bytes(&self) -> u64 {
        self.kv_tokens * self.kv_per_token
    }
}

/// Bytes the device keeps beyond what the plan counts: the split-KV workspace, cuBLAS
/// workspace, module code, and a draw's staging of penalty entries (16 bytes a seen token
/// a sequence).
const RESERVE_BYTES: u64 = 512 << 20;

/// Plans memory for `cfg` under `opts` on a device with `free` bytes free: weights,
/// activations for `max_batch_tokens`, and a KV cache from what is left (at least one
/// chunk's worth). A model that does not fit is [`ModelError::DoesNotFit`], naming the sizes.
pub fn plan_memory(cfg: &ModelConfig, opts: &GpuOptions, free: u64, device: &str) -> Result<MemoryPlan> {
    opts.validate()?;
    let es = opts.dtype.size() as u64;
    let weights: u64 = tensor_list(cfg).iter().map(|(_, s)| s.iter().product::<usize>() as u64 * es).sum();
    let (t, sq) = (opts.max_batch_tokens as u64, opts.max_seqs as u64);
    let (h, q, kv, i, v) = (
        cfg.hidden as u64,
        (cfg.heads * cfg.head_dim) as u64,
        (cfg.kv_heads * cfg.head_dim) as u64,
        cfg.intermediate as u64,
        cfg.vocab as u64,
    );
    let wide = (q + 2 * kv).max(2 * i).max(h);
    // res, normed, proj; qkv; q, attn; gate_up, act; tmp.
    let act = t * es * (3 * h + (q + 2 * kv) + 2 * q + 3 * i + wide);
    let max_blocks = (cfg.max_positions as u64).div_ceil(opts.block_size as u64);
    let staging = 4 * (3 * t + 3 * sq + 1 + sq * max_blocks);
    // logits, last rows, next ids; top-k candidates; softmax normalizers' parts and the
    // staged top-k's workspaces; argmax
    // counters and workspace. (A draw's staging of penalty entries grows at use, inside the
    // reserve.)
    let mass = 8 * sq * softmax_mass_parts(cfg.vocab).0 as u64
        + 8 * topk_staged_workspace(sq as usize, cfg.vocab, TOPK_MAX.min(cfg.vocab)).max(1) as u64;
    let sampling = sq * (v * 4 + h * es + 4) + sq * TOPK_MAX as u64 * 8 + mass + 4 * (sq + argmax_workspace(sq as usize, cfg.vocab) as u64);
    let scratch = act + staging + sampling;
    let kv_per_token = 2 * cfg.layers as u64 * kv * es;
    let budget = (free as f64 * f64::from(opts.gpu_memory_fraction)) as u64;
    let bs = opts.block_size as u64;
    let kv_min = t.div_ceil(bs) * bs * kv_per_token;
    let fixed = weights + scratch + RESERVE_BYTES;
    if fixed + kv_min > budget {
        return Err(ModelError::DoesNotFit {
            device: device.to_string(),
            weights,
            scratch,
            kv_min,
            budget,
            fraction: opts.gpu_memory_fraction,
            free,
        });
    }
    let cap = opts.max_kv_tokens.map_or(sq * cfg.max_positions as u64, |c| c as u64).max(t);
    let kv_tokens = ((budget - fixed) / kv_per_token).min(cap) / bs * bs;
    let kv_tokens = kv_tokens.min(i32::MAX as u64 / bs * bs);
    Ok(MemoryPlan { weights, scratch, kv_per_token, kv_tokens, max_context: kv_tokens.min(cfg.max_positions as u64) })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn cfg_8b() -> ModelConfig {
        ModelPreset::Llama3_8b.config()
    }

    #[test]
    fn memory_plan_fits_8b_with_8k_context_on_80gb_and_refuses_8gb() {
        let cfg = cfg_8b();
        let opts = GpuOptions::default();
        let p = plan_memory(&cfg, &opts, 79 << 30, "H100").unwrap();
        assert_eq!(p.weights, 16_060_522_496, "Llama-3-8B bf16 weight bytes");
        assert_eq!(p.kv_per_token, 2 * 32 * 8 * 128 * 2);
        assert!(p.max_context >= 8192 && p.kv_tokens >= 8192, "{p:?}");
        let budget = (79u64 << 30) as f64 * 0.9;
        assert!((p.weights + p.scratch + p.kv_bytes()) as f64 <= budget);
        assert_eq!(p.kv_tokens % 16, 0);
        match plan_memory(&cfg, &opts, 8 << 30, "small GPU") {
            Err(ModelError::DoesNotFit { weights, device, .. }) => {
                assert_eq!(weights, p.weights);
                assert_eq!(device, "small GPU");
            }
            other => panic!("expected DoesNotFit, got {other:?}"),
        }
        let capped = plan_memory(&cfg, &GpuOptions { max_kv_tokens: Some(10_007), ..opts }, 79 << 30, "H100").unwrap();
        assert_eq!(capped.kv_tokens, 10_000, "capped, then whole pages");
        for bad in [
            GpuOptions { gpu_memory_fraction: 0.0, ..opts },
            GpuOptions { gpu_memory_fraction: 1.5, ..opts },
            GpuOptions { block_size: 8, ..opts },
            GpuOptions { max_seqs: 0, ..opts },
            GpuOptions { dtype: DType::I32, ..opts },
        ] {
            assert!(matches!(plan_memory(&cfg, &bad, 79 << 30, "H100"), Err(ModelError::Invalid(_))), "{bad:?}");
            // The same checks without a model or a device (what `bench` runs first).
            assert!(matches!(bad.validate(), Err(ModelError::Invalid(_))), "{bad:?}");
        }
        opts.validate().unwrap();
    }

    #[test]
    fn tensor_list_matches_the_parameter_count() {
        let cfg = cfg_8b();
        let n: usize = tensor_list(&cfg).iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        assert_eq!(n, cfg.parameter_count());
    }

    #[test]
    fn random_weights_are_deterministic_and_scaled() {
        let mut a = RandomWeights { seed: 7 };
        let x = a.tensor("model.layers.0.mlp.up_proj.weight", &[64, 64], DType::F32).unwrap();
        let y = a.tensor("model.layers.0.mlp.up_proj.weight", &[64, 64], DType::F32).unwrap();
        let z = a.tensor("model.layers.1.mlp.up_proj.weight", &[64, 64], DType::F32).unwrap();
        assert_eq!(x, y);
        assert_ne!(x, z);
        let v: Vec<f32> = x.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let std = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
        assert!((std - 0.02).abs() < 0.002, "std {std}");
        let n = a.tensor("model.norm.weight", &[64], DType::BF16).unwrap();
        assert_eq!(n.len(), 128);
    }
}
