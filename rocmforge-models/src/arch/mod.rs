//! The supported architectures. Each file says how its checkpoints differ from the shared
//! decoder layer of [`crate::transformer`]; the forward itself is common.

mod llama;
mod mistral;
mod qwen2;
mod qwen3;

use crate::config::Fields;
use crate::error::Result;

/// A supported architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2, 3 and 3.1+.
    Llama,
    /// Mistral.
    Mistral,
    /// Qwen2 and Qwen2.5.
    Qwen2,
    /// Qwen3 (dense).
    Qwen3,
}

/// What an architecture adds to the shared decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features {
    /// Bias on q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    /// Bias on the MLP projections.
    pub mlp_bias: bool,
    /// Per-head RMSNorm of q and k.
    pub qk_norm: bool,
    /// `tie_word_embeddings` when the config omits it.
    pub tie_default: bool,
}

impl Arch {
    /// Every supported architecture.
    pub const ALL: [Arch; 4] = [Arch::Llama, Arch::Mistral, Arch::Qwen2, Arch::Qwen3];

    /// The transformers class name.
    pub fn class_name(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Mistral => "MistralForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Qwen3 => "Qwen3ForCausalLM",
        }
    }

    /// From a class name (`architectures[0]`) or a `model_type`.
    pub fn from_name(name: &str) -> Option<Arch> {
        match name {
            "LlamaForCausalLM" | "llama" => Some(Arch::Llama),
            "MistralForCausalLM" | "mistral" => Some(Arch::Mistral),
            "Qwen2ForCausalLM" | "qwen2" => Some(Arch::Qwen2),
            "Qwen3ForCausalLM" | "qwen3" => Some(Arch::Qwen3),
            _ => None,
        }
    }

    /// Whether `sliding_window` applies to every layer when `layer_types` is absent.
    pub(crate) fn window_in_all_layers(self) -> bool {
        matches!(self, Arch::Mistral)
    }
}

/// The architecture's features as this config sets them.
pub(crate) fn features(arch: Arch, f: &Fields<'_>) -> Result<Features> {
    match arch {
        Arch::Llama => llama::features(f),
        Arch::Mistral => mistral::features(f),
        Arch::Qwen2 => qwen2::features(f),
        Arch::Qwen3 => qwen3::features(f),
    }
}
