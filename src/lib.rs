//! RocmForge: fused GPU kernels for LLM inference from Rust.
//!
//! This root crate re-exports the workspace: [`dsl`] (kernel IR, codegen, interpreter,
//! build helper), [`gpu_kernel`] (the declaration macro), [`runtime`] (launch plans and
//! devices) and [`models`] (the standard kernel library and transformer inference).

pub use rocmforge_dsl as dsl;
pub use rocmforge_macros::gpu_kernel;
pub use rocmforge_models as models;
pub use rocmforge_runtime as runtime;
