//! Devices: listing, opening by name (`cpu`, `cuda:N`, `hip:N`), properties, and the
//! default device (`ROCMFORGE_DEVICE`, else the first GPU, else the CPU).
//!
//! The CPU device runs kernels through the IR interpreter, the reference semantics;
//! the GPU backends are compiled in by the `cuda` and `rocm` features.

#[cfg(any(feature = "cuda", feature = "rocm"))]
use std::sync::Arc;

use rocmforge_dsl::interp::HostArg;
use rocmforge_dsl::Kernel;

use crate::plan::DeviceLimits;

/// A kind of device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// NVIDIA through CUDA (feature `cuda`).
    Cuda,
    /// AMD through HIP (feature `rocm`).
    Hip,
    /// The host, through the interpreter.
    Cpu,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Cuda => "cuda",
            Backend::Hip => "hip",
            Backend::Cpu => "cpu",
        })
    }
}

/// What a device is and can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The name it opens by: `cuda:0`, `hip:1`, `cpu`.
    pub id: String,
    /// Its backend.
    pub backend: Backend,
    /// Product name (`NVIDIA H100 80GB HBM3`, the CPU model).
    pub name: String,
    /// Target arch: `sm_90`, `gfx90a`, or the host's (`x86_64`).
    pub arch: String,
    /// Threads per warp / wavefront (1 on the CPU).
    pub warp_size: u32,
    /// SMs, CUs or CPU threads.
    pub compute_units: u32,
    /// Memory in all, bytes.
    pub memory_total: u64,
    /// Memory free now, bytes.
    pub memory_free: u64,
    /// Launch limits: block, grid, shared memory per block.
    pub limits: DeviceLimits,
}

/// Why a device could not be named or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The name does not parse.
    #[error("bad device name `{name}`: {reason}; devices are named cpu, cuda:N or hip:N")]
    BadName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The backend is not compiled into this build.
    #[error("device `{name}` needs rocmforge-runtime's `{feature}` feature; rebuild with `--features {feature}`")]
    NotCompiled {
        /// The name given.
        name: String,
        /// The feature.
        feature: &'static str,
    },
    /// The device is absent or its driver unusable.
    #[error("device `{name}` is not available: {reason}")]
    Unavailable {
        /// The name given.
        name: String,
        /// The backend's error.
        reason: String,
    },
}

/// An open device.
#[derive(Debug)]
#[non_exhaustive]
pub enum Device {
    /// The host.
    Cpu(CpuDevice),
    /// An NVIDIA GPU.
    #[cfg(feature = "cuda")]
    Cuda(Arc<crate::cuda::CudaDevice>),
    /// An AMD GPU.
    #[cfg(feature = "rocm")]
    Hip(Arc<crate::hip::HipDevice>),
}

/// The host as a device: kernels run through the interpreter.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuDevice;

impl CpuDevice {
    /// Runs `kernel` on host tensors (the launcher's `run_host` does the same).
    pub fn run(&self, kernel: &Kernel, args: &mut [HostArg]) -> Result<(), crate::ArgError> {
        rocmforge_dsl::interp::run(kernel, args)
    }

    /// The host's description.
    pub fn info(&self) -> DeviceInfo {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kb = |key: &str| -> u64 {
            meminfo.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
        };
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let name = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map_or_else(|| "host CPU".to_string(), |s| s.trim().to_string());
        DeviceInfo {
            id: "cpu".into(),
            backend: Backend::Cpu,
            name,
            arch: std::env::consts::ARCH.into(),
            warp_size: 1,
            compute_units: threads,
            memory_total: kb("MemTotal:") * 1024,
            memory_free: kb("MemAvailable:") * 1024,
            limits: DeviceLimits::HOST,
        }
    }
}

/// A parsed device name.
fn parse(name: &str) -> Result<(Backend, usize), DeviceError> {
    let bad = |reason: &str| DeviceError::BadName { name: name.to_string(), reason: reason.to_string() };
    let lower = name.trim().to_ascii_lowercase();
    let (kind, ordinal) = match lower.split_once(':') {
        Some((k, n)) => (k.to_string(), n.parse::<usize>().map_err(|_| bad("the ordinal after `:` must be a number"))?),
        None => (lower.clone(), 0),
    };
    match kind.as_str() {
        "cpu" | "host" if ordinal == 0 => Ok((Backend::Cpu, 0)),
        "cpu" | "host" => Err(bad("there is one cpu device")),
        "cuda" | "nvidia" => Ok((Backend::Cuda, ordinal)),
        "hip" | "rocm" | "amd" => Ok((Backend::Hip, ordinal)),
        "" => Err(bad("empty name")),
        _ => Err(bad("unknown backend")),
    }
}

impl Device {
    /// Opens a device by name: `cpu`, `cuda:N` (or `cuda`), `hip:N` (or `hip`).
    pub fn open(name: &str) -> Result<Device, DeviceError> {
        let (backend, ordinal) = parse(name)?;
        match backend {
            Backend::Cpu => Ok(Device::Cpu(CpuDevice)),
            Backend::Cuda => open_cuda(name, ordinal),
            Backend::Hip => open_hip(name, ordinal),
        }
    }

    /// `ROCMFORGE_DEVICE` if set, else the first GPU (CUDA, then HIP), else the CPU.
    pub fn default_device() -> Result<Device, DeviceError> {
        match std::env::var("ROCMFORGE_DEVICE") {
            Ok(name) if !name.trim().is_empty() => Device::open(&name),
            _ => Ok(Self::first_gpu().unwrap_or(Device::Cpu(CpuDevice))),
        }
    }

    fn first_gpu() -> Option<Device> {
        #[cfg(feature = "cuda")]
        if let Ok(d) = crate::cuda::CudaDevice::open(0) {
            return Some(Device::Cuda(d));
        }
        #[cfg(feature = "rocm")]
        if let Ok(d) = crate::hip::HipDevice::open(0, &[]) {
            return Some(Device::Hip(d));
        }
        None
    }

    /// Every device this build can open, GPUs first, the CPU last. A backend whose
    /// driver is missing contributes nothing.
    #[allow(clippy::vec_init_then_push, reason = "the GPU loops above the push are compiled in by features")]
    pub fn list() -> Vec<DeviceInfo> {
        let mut out = Vec::new();
        #[cfg(feature = "cuda")]
        for i in 0..crate::cuda::CudaDevice::count().unwrap_or(0) {
            if let Ok(d) = crate::cuda::CudaDevice::open(i) {
                out.push(Device::Cuda(d).info());
            }
        }
        #[cfg(feature = "rocm")]
        for i in 0..crate::hip::HipDevice::count().unwrap_or(0) {
            if let Ok(d) = crate::hip::HipDevice::open(i, &[]) {
                out.push(Device::Hip(d).info());
            }
        }
        out.push(CpuDevice.info());
        out
    }

    /// The device's backend.
    pub fn backend(&self) -> Backend {
        match self {
            Device::Cpu(_) => Backend::Cpu,
            #[cfg(feature = "cuda")]
            Device::Cuda(_) => Backend::Cuda,
            #[cfg(feature = "rocm")]
            Device::Hip(_) => Backend::Hip,
        }
    }

    /// Launch limits for planning.
    pub fn limits(&self) -> DeviceLimits {
        match self {
            Device::Cpu(_) => DeviceLimits::HOST,
            #[cfg(feature = "cuda")]
            Device::Cuda(d) => *d.limits(),
            #[cfg(feature = "rocm")]
            Device::Hip(d) => *d.limits(),
        }
    }

    /// Properties, with free memory read now.
    pub fn info(&self) -> DeviceInfo {
        match self {
            Device::Cpu(c) => c.info(),
            #[cfg(feature = "cuda")]
            Device::Cuda(d) => gpu_info(
                format!("cuda:{}", d.ordinal()),
                Backend::Cuda,
                d.name(),
                d.arch(),
                d.compute_units(),
                *d.limits(),
                d.memory_info().unwrap_or((0, d.total_memory())),
            ),
            #[cfg(feature = "rocm")]
            Device::Hip(d) => gpu_info(
                format!("hip:{}", d.ordinal()),
                Backend::Hip,
                d.name(),
                d.arch(),
                d.compute_units(),
                *d.limits(),
                d.memory_info().unwrap_or((0, d.total_memory())),
            ),
        }
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(name: &str, ordinal: usize) -> Result<Device, DeviceError> {
    crate::cuda::CudaDevice::open(ordinal)
        .map(Device::Cuda)
        .map_err(|e| DeviceError::Unavailable { name: name.to_string(), reason: e.to_string() })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(name: &str, _ordinal: usize) -> Result<Device, DeviceError> {
    Err(DeviceError::NotCompiled { name: name.to_string(), feature: "cuda" })
}

#[cfg(feature = "rocm")]
fn open_hip(name: &str, ordinal: usize) -> Result<Device, DeviceError> {
    crate::hip::HipDevice::open(ordinal, &[])
        .map(Device::Hip)
        .map_err(|e| DeviceError::Unavailable { name: name.to_string(), reason: e.to_string() })
}

#[cfg(not(feature = "rocm"))]
fn open_hip(name: &str, _ordinal: usize) -> Result<Device, DeviceError> {
    Err(DeviceError::NotCompiled { name: name.to_string(), feature: "rocm" })
}

/// A GPU's description from its backend's properties and (free, total) memory.
#[cfg(any(feature = "cuda", feature = "rocm"))]
fn gpu_info(
    id: String,
    backend: Backend,
    name: &str,
    arch: &str,
    compute_units: u32,
    limits: DeviceLimits,
    mem: (usize, usize),
) -> DeviceInfo {
    DeviceInfo {
        id,
        backend,
        name: name.to_string(),
        arch: arch.to_string(),
        warp_size: limits.warp_size,
        compute_units,
        memory_total: mem.1 as u64,
        memory_free: mem.0 as u64,
        limits,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn names_parse_or_say_why_not() {
        assert_eq!(parse("cpu").unwrap(), (Backend::Cpu, 0));
        assert_eq!(parse("CUDA:1").unwrap(), (Backend::Cuda, 1));
        assert_eq!(parse("hip").unwrap(), (Backend::Hip, 0));
        for bad in ["", "tpu:0", "cuda:x", "cpu:3", "cuda:-1"] {
            let e = parse(bad).unwrap_err();
            assert!(matches!(e, DeviceError::BadName { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("cpu, cuda:N or hip:N"), "{e}");
        }
    }
}
