//! Qwen2 and Qwen2.5: a bias on the q/k/v projections (not on o_proj), tied embeddings in
//! the small sizes, and a sliding window only where `use_sliding_window` asks for it.

use super::Features;
use crate::config::Fields;
use crate::error::Result;

pub(super) fn features(_: &Fields<'_>) -> Result<Features> {
    Ok(Features { qkv_bias: true, o_bias: false, mlp_bias: false, qk_norm: false, tie_default: false })
}
