//! The RocmForge runtime: launch planning with checked grid math (this crate's part of
//! the DSL issue), and the host types the generated launchers use.
//!
//! Device backends (HIP, CUDA), RAII memory, streams and the module cache come with the
//! runtime issue; until then a launcher's product is a [`LaunchPlan`] and the host path
//! runs the IR interpreter ([`rocmforge_dsl::interp`]).

pub mod plan;

#[cfg(feature = "cuda")]
pub mod cuda;

pub use plan::{plan, plan_spec, Arg, ArgValue, DeviceLimits, LaunchError, LaunchPlan, TensorArg, TensorDesc};
pub use rocmforge_dsl as dsl;
pub use rocmforge_dsl::args::ArgError;
pub use rocmforge_dsl::interp::{HostArg, HostTensor};
pub use rocmforge_dsl::{DType, Kernel, Spec};

/// Parses a launcher's embedded declaration (used by the code `#[gpu_kernel]` emits).
pub fn parse_kernel_str(attr: &str, item: &str) -> Result<Kernel, String> {
    rocmforge_dsl::parse::parse_str(attr, item).map_err(|e| e.to_string())
}
