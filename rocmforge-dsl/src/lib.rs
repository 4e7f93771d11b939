//! The compiler half of RocmForge: `#[gpu_kernel]` declarations to specialized HIP C++.
//!
//! - [`parse`]: syn to the typed, validated [`ir::Kernel`] (errors spanned).
//! - [`spec`]: specializations and the one symbol-naming function.
//! - [`codegen`]: HIP C++ from the tera templates in `templates/`.
//! - [`args`]: argument checking shared by the launcher and the interpreter.
//! - [`interp`]: the CPU interpreter, the reference semantics.
//! - [`attn`]: attention modifiers: their C++ and the visible band they imply.
//! - [`rope`]: rotary frequency tables (default, linear, llama3, YaRN).
//! - [`build`]: the build.rs helper (hipcc / nvcc ahead of time).

pub mod args;
pub mod attn;
pub mod build;
pub mod codegen;
pub mod dtype;
pub mod interp;
pub mod ir;
pub mod parse;
pub mod rope;
pub mod spec;

pub use dtype::DType;
pub use ir::Kernel;
pub use spec::{launch_symbol, symbol_name, Spec};
