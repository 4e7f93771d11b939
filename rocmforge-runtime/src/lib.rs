//! The RocmForge runtime: launch planning with checked grid math, devices
//! ([`Device`]: `cpu`, `cuda:N`, `hip:N`), RAII device memory, run-time compilation with
//! an on-disk cache, and launches.
//!
//! - [`mod@plan`]: a launcher's arguments to a checked [`LaunchPlan`].
//! - [`device`]: listing and opening devices; the CPU runs the IR interpreter.
//! - [`engine`]: plans of the inference engine's own operations (vendor GEMM, matrix-vector
//!   products, gather, argmax, top-k, the q/k/v stage).
//! - `cuda` (feature `cuda`): NVIDIA through cudarc, NVRTC to CUBIN.
//! - `hip` (feature `rocm`): AMD through hip-runtime-sys, AOT code objects or hiprtc.

// Implements `plan::TensorArg` for types with `dtype: DType`, `shape: Vec<usize>` and
// `ptr: u64` fields (`plan::TensorDesc`, the CUDA backend's tensor and views). Defined
// before the modules, so that each of them sees it.
macro_rules! impl_tensor_arg {
    ($($t:ty),+ $(,)?) => {$(
        impl $crate::plan::TensorArg for $t {
            fn dtype(&self) -> rocmforge_dsl::DType {
                self.dtype
            }
            fn shape(&self) -> &[usize] {
                &self.shape
            }
            fn device_ptr(&self) -> u64 {
                self.ptr
            }
        }
    )+};
}

pub mod cache;
pub mod device;
pub mod diskcache;
pub mod engine;
pub mod plan;

#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "rocm")]
pub mod hip;

pub use device::{Backend, CpuDevice, Device, DeviceError, DeviceInfo};

pub use plan::{
    plan, plan_attention, plan_attention_with, plan_kv_store, plan_spec, Arg, ArgValue, AttnSeqs, DeviceLimits, KvIndex, LaunchError,
    LaunchPlan, TensorArg, TensorDesc,
};
pub use rocmforge_dsl as dsl;
pub use rocmforge_dsl::args::ArgError;
pub use rocmforge_dsl::interp::{HostArg, HostTensor};
pub use rocmforge_dsl::{DType, Kernel, Spec};

/// Parses a launcher's embedded declaration (used by the code `#[gpu_kernel]` emits).
pub fn parse_kernel_str(attr: &str, item: &str) -> Result<Kernel, String> {
    rocmforge_dsl::parse::parse_str(attr, item).map_err(|e| e.to_string())
}
