//! A tiny Llama-shaped model with deterministic random weights, so that `generate` runs
//! anywhere with no checkpoint; its text is meaningless by construction. It runs through
//! the same forward, KV cache and sampler as loaded checkpoints.
//!
//! Shapes: byte vocabulary (256), hidden 256, 2 layers, 4 query heads and 2 KV heads
//! (GQA) of head_dim 64, SwiGLU MLP of 512, tied embeddings, RoPE base 10000.

use rocmforge_dsl::rope::RopeScaling;

use crate::arch::Arch;
use crate::config::ModelConfig;
use crate::error::Result;
use crate::model::Model;
use crate::sampling::Rng;
use crate::tokenizer::{GenerationDefaults, TextCodec};
use crate::transformer::{LayerWeights, Transformer};
use crate::weights::Weight;

/// The demo model's configuration.
pub fn config() -> ModelConfig {
    ModelConfig {
        arch: Arch::Llama,
        hidden: 256,
        intermediate: 512,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 64,
        vocab: 256,
        eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: RopeScaling::Default,
        max_positions: 4096,
        tie_embeddings: true,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        qk_norm: false,
        windows: vec![None; 2],
        dtype: None,
        bos_token_id: None,
        eos_token_ids: Vec::new(),
    }
}

fn uniform(rng: &mut Rng, shape: &[usize], scale: f32) -> Result<Weight> {
    let n = shape.iter().product();
    Weight::from_vec((0..n).map(|_| (rng.next_f32() * 2.0 - 1.0) * scale).collect(), shape.to_vec())
}

fn norm(rng: &mut Rng, n: usize) -> Result<Weight> {
    Weight::from_vec((0..n).map(|_| 0.8 + 0.4 * rng.next_f32()).collect(), vec![n])
}

/// Builds the demo model from a seed.
pub fn model(seed: u64) -> Result<Model> {
    let cfg = config();
    let mut rng = Rng::new(seed);
    let (h, q, kv, i) = (cfg.hidden, cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.intermediate);
    let fan = |n: usize| (3.0 / n as f32).sqrt();
    let mut layers = Vec::new();
    for _ in 0..cfg.layers {
        layers.push(LayerWeights {
            attn_norm: norm(&mut rng, h)?,
            wq: uniform(&mut rng, &[q, h], fan(h))?,
            wk: uniform(&mut rng, &[kv, h], fan(h))?,
            wv: uniform(&mut rng, &[kv, h], fan(h))?,
            wo: uniform(&mut rng, &[h, q], fan(q))?,
            bq: None,
            bk: None,
            bv: None,
            bo: None,
            q_norm: None,
            k_norm: None,
            mlp_norm: norm(&mut rng, h)?,
            w_gate: uniform(&mut rng, &[i, h], fan(h))?,
            w_up: uniform(&mut rng, &[i, h], fan(h))?,
            w_down: uniform(&mut rng, &[h, i], fan(i))?,
            mlp_bias: None,
        });
    }
    let embed = uniform(&mut rng, &[cfg.vocab, h], 1.0)?;
    let final_norm = norm(&mut rng, h)?;
    let weight_bytes = 4 * cfg.parameter_count();
    Ok(Model {
        transformer: Transformer::new(cfg, embed, layers, final_norm, None)?,
        codec: TextCodec::Bytes,
        chat_template: None,
        defaults: GenerationDefaults::default(),
        dir: None,
        weight_bytes,
    })
}
