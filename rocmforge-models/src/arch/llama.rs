//! Llama 2, 3 and 3.1+: the plain decoder layer. `attention_bias` puts a bias on all four
//! attention projections and `mlp_bias` on the MLP's; Llama 3.1's rope scaling comes
//! through the config's `llama3` rope type.

use super::Features;
use crate::config::Fields;
use crate::error::Result;

pub(super) fn features(f: &Fields<'_>) -> Result<Features> {
    let bias = f.opt_bool("attention_bias")?.unwrap_or(false);
    Ok(Features { qkv_bias: bias, o_bias: bias, mlp_bias: f.opt_bool("mlp_bias")?.unwrap_or(false), qk_norm: false, tie_default: false })
}
