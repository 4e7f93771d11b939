//! Qwen3 (dense): per-head RMSNorm of q and k before RoPE (`q_norm`, `k_norm`), an explicit
//! `head_dim` that need not be hidden / heads, and an optional `attention_bias`.

use super::Features;
use crate::config::Fields;
use crate::error::Result;

pub(super) fn features(f: &Fields<'_>) -> Result<Features> {
    let bias = f.opt_bool("attention_bias")?.unwrap_or(false);
    Ok(Features { qkv_bias: bias, o_bias: bias, mlp_bias: false, qk_norm: true, tie_default: false })
}
