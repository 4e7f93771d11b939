//! The RocmForge standard kernel library and transformer inference.

pub mod demo;
pub mod kernels;

/// Kernel sources and ahead-of-time code objects built by `build.rs`.
pub mod embedded {
    include!(concat!(env!("OUT_DIR"), "/rocmforge_kernels.rs"));
}
