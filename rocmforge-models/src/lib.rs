//! The RocmForge standard kernel library and transformer inference.
//!
//! - [`kernels`]: the standard `#[gpu_kernel]` declarations (SwiGLU, softmax, RMSNorm, RoPE, ...).
//! - [`Model`]: a Hugging Face checkpoint directory loaded for generation ([`config`],
//!   [`weights`], [`tokenizer`]), run by the shared decoder of [`transformer`] over the
//!   paged cache of [`kv`], sampled by [`sampling`]; [`arch`] lists the architectures.
//! - [`chat`]: a conversation that keeps its KV cache between turns, on any decoder.
//! - [`demo`]: a built-in tiny model with random weights.
//! - `gpu` (feature `cuda`): the same decoder on an NVIDIA GPU, from the standard
//!   kernels, cuBLAS and the engine kernels, with a paged KV cache in device memory.

pub mod arch;
pub mod chat;
pub mod config;
pub mod demo;
pub mod error;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod kernels;
pub mod kv;
pub mod memory;
pub mod model;
pub mod sampling;
pub mod tokenizer;
pub mod transformer;
pub mod weights;

pub use error::{ModelError, Result};
pub use model::{Finish, GenerateOptions, Generation, LoadOptions, Model};

/// Kernel sources and ahead-of-time code objects built by `build.rs`.
pub mod embedded {
    include!(concat!(env!("OUT_DIR"), "/rocmforge_kernels.rs"));
}
