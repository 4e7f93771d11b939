//! Launch plans: the checked product of a typed launcher before anything runs.
//!
//! Every size is computed in u64 with checked arithmetic and compared against the
//! device's limits; the kernels index with 64-bit integers and grid-stride, so a grid
//! clamped to the device limit still covers the whole problem. A `u32` wrap such as
//! `seq_len * intermediate_size` cannot happen here.

use rocmforge_dsl::args::{resolve, ArgDesc, ArgError, Dims};
use rocmforge_dsl::ir::{Kernel, Kind, ScalarTy};
use rocmforge_dsl::spec::{launch_symbol, RowMode, Spec};
use rocmforge_dsl::DType;

/// The limits of a device that launch planning checks against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceLimits {
    /// Warp (wavefront) size: 32 on NVIDIA and RDNA, 64 on CDNA.
    pub warp_size: u32,
    /// Most threads in one workgroup.
    pub max_threads_per_block: u32,
    /// Most workgroups per grid dimension.
    pub max_grid: [u32; 3],
    /// Shared memory per workgroup, bytes.
    pub max_shared_bytes: u32,
}

impl DeviceLimits {
    /// The host device (the interpreter has no launch limits; plans use these shapes).
    pub const HOST: DeviceLimits =
        DeviceLimits { warp_size: 32, max_threads_per_block: 1024, max_grid: [i32::MAX as u32, 65535, 65535], max_shared_bytes: 48 * 1024 };
    /// NVIDIA sm_80/sm_90 limits (A100, H100).
    pub const NVIDIA_SM90: DeviceLimits =
        DeviceLimits { warp_size: 32, max_threads_per_block: 1024, max_grid: [i32::MAX as u32, 65535, 65535], max_shared_bytes: 48 * 1024 };
    /// AMD CDNA (gfx90a, gfx94x): wave64.
    pub const AMD_CDNA: DeviceLimits =
        DeviceLimits { warp_size: 64, max_threads_per_block: 1024, max_grid: [i32::MAX as u32, 65535, 65535], max_shared_bytes: 64 * 1024 };
    /// AMD RDNA (gfx10xx, gfx11xx, gfx12xx): wave32.
    pub const AMD_RDNA: DeviceLimits =
        DeviceLimits { warp_size: 32, max_threads_per_block: 1024, max_grid: [i32::MAX as u32, 65535, 65535], max_shared_bytes: 64 * 1024 };
}

/// One kernel argument as passed to the launch API.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ArgValue {
    /// A device address.
    Ptr(u64),
    /// `float`
    F32(f32),
    /// `int`
    I32(i32),
    /// `unsigned int`
    U32(u32),
    /// `long long`
    I64(i64),
}

/// A validated launch: what to call, with what, on how many threads.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchPlan {
    /// The kernel's declared name.
    pub kernel: String,
    /// The specialization chosen.
    pub spec: Spec,
    /// Its symbol (from [`rocmforge_dsl::launch_symbol`]: the spec's symbol, or its wide
    /// variant for rows past the register cache).
    pub symbol: String,
    /// Workgroups per dimension.
    pub grid: [u32; 3],
    /// Threads per workgroup per dimension.
    pub block: [u32; 3],
    /// Dynamic shared memory, bytes.
    pub shared_bytes: u32,
    /// Arguments in the kernel's parameter order.
    pub args: Vec<ArgValue>,
    /// The problem size the plan covers.
    pub dims: Dims,
}

impl LaunchPlan {
    /// The kernel parameters as the driver's `void**` launch API wants them: one 8-byte
    /// slot per parameter, in order, each holding the value in the width the generated
    /// signature declares (pointers and `long long` 8 bytes; float, int, unsigned the
    /// first 4).
    pub fn param_slots(&self) -> Vec<[u8; 8]> {
        self.args
            .iter()
            .map(|a| {
                let mut b = [0u8; 8];
                match a {
                    ArgValue::Ptr(p) => b.copy_from_slice(&p.to_ne_bytes()),
                    ArgValue::I64(v) => b.copy_from_slice(&v.to_ne_bytes()),
                    ArgValue::F32(v) => b[..4].copy_from_slice(&v.to_ne_bytes()),
                    ArgValue::I32(v) => b[..4].copy_from_slice(&v.to_ne_bytes()),
                    ArgValue::U32(v) => b[..4].copy_from_slice(&v.to_ne_bytes()),
                }
                b
            })
            .collect()
    }
}

/// A tensor as a launcher sees it: dtype, shape and device address.
pub trait TensorArg {
    /// Element type.
    fn dtype(&self) -> DType;
    /// Dimensions, outermost first.
    fn shape(&self) -> &[usize];
    /// Device address of the first element.
    fn device_ptr(&self) -> u64;
}

/// A tensor description with no memory behind it, for planning and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorDesc {
    /// Element type.
    pub dtype: DType,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Address the plan will carry.
    pub ptr: u64,
}

/// Bytes of a `dtype` tensor of `shape`; `None` when the size overflows `usize`.
pub fn byte_size(dtype: DType, shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(dtype.size(), |a, &d| a.checked_mul(d))
}

impl TensorDesc {
    /// A description at address `ptr`.
    pub fn new(dtype: DType, shape: &[usize], ptr: u64) -> Self {
        TensorDesc { dtype, shape: shape.to_vec(), ptr }
    }
}

impl TensorArg for TensorDesc {
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn device_ptr(&self) -> u64 {
        self.ptr
    }
}

/// One argument of a launcher call.
#[derive(Clone, Copy)]
pub enum Arg<'a> {
    /// A tensor.
    Tensor(&'a dyn TensorArg),
    /// An f32 scalar.
    F32(f32),
    /// An i32 scalar.
    I32(i32),
    /// A u32 scalar.
    U32(u32),
}

impl std::fmt::Debug for Arg<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Arg::Tensor(t) => write!(f, "Tensor({} {:?} @ {:#x})", t.dtype(), t.shape(), t.device_ptr()),
            Arg::F32(v) => write!(f, "F32({v})"),
            Arg::I32(v) => write!(f, "I32({v})"),
            Arg::U32(v) => write!(f, "U32({v})"),
        }
    }
}

/// Why a launch was refused. Nothing was launched.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LaunchError {
    /// The arguments do not fit the declaration.
    #[error(transparent)]
    Args(#[from] ArgError),
    /// No specialization for a runtime value.
    #[error("kernel `{kernel}` has no specialization for {what} = {value}; supported: {supported:?}. Add the value to the declaration's `{what} = [...]`")]
    UnsupportedSpecialization {
        /// Kernel name.
        kernel: String,
        /// The option (`head_dim`, `warp size`).
        what: &'static str,
        /// The runtime value.
        value: u64,
        /// The values generated.
        supported: Vec<u64>,
    },
    /// A size past what the device or the kernel's index types allow.
    #[error("kernel `{kernel}`: {what} = {value} exceeds the limit {limit}")]
    Limit {
        /// Kernel name.
        kernel: String,
        /// What was too large.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// The launcher's embedded declaration failed to parse (a RocmForge bug).
    #[error("embedded kernel declaration failed to parse: {0}")]
    Kernel(String),
}

fn ceil_div(a: u64, b: u64) -> u64 {
    a.div_ceil(b.max(1))
}

fn limit(kernel: &Kernel, what: &'static str, value: u64, max: u64) -> Result<(), LaunchError> {
    if value > max {
        return Err(LaunchError::Limit { kernel: kernel.name.clone(), what, value, limit: max });
    }
    Ok(())
}

/// Chooses the rowwise specialization for rows of `cols` columns.
pub fn choose_row_spec(kernel: &Kernel, dtype: Option<DType>, warp: u32, cols: u64) -> Option<Spec> {
    let specs: Vec<Spec> = kernel.specs(warp).into_iter().filter(|s| s.dtype == dtype).collect();
    if let Some(w) = specs.iter().find(|s| s.row_mode == Some(RowMode::Warp)) {
        if cols <= kernel.row_capacity(w) {
            return Some(*w);
        }
    }
    let mut blocks: Vec<Spec> = specs.into_iter().filter(|s| s.row_mode == Some(RowMode::Block)).collect();
    blocks.sort_by_key(|s| s.block);
    // The smallest workgroup whose register cache holds the row: its threads' caches
    // are (nearly) full, so no lane idles; rows past every cache re-read with the largest.
    blocks.iter().find(|s| cols <= kernel.row_capacity(s)).or(blocks.last()).copied()
}

/// Checks arguments and device limits and computes the launch.
pub fn plan(kernel: &Kernel, limits: &DeviceLimits, args: &[Arg<'_>]) -> Result<LaunchPlan, LaunchError> {
    plan_spec(kernel, limits, args, None)
}

/// [`plan`] with the specialization chosen by the caller (self-checks and benchmarks
/// use it to run every specialization); it must be one of `kernel.specs(warp)` and fit
/// the arguments' dtype and head dim.
pub fn plan_spec(kernel: &Kernel, limits: &DeviceLimits, args: &[Arg<'_>], force: Option<Spec>) -> Result<LaunchPlan, LaunchError> {
    let descs: Vec<ArgDesc<'_>> = args
        .iter()
        .map(|a| match a {
            Arg::Tensor(t) => ArgDesc::Tensor { dtype: t.dtype(), shape: t.shape() },
            Arg::F32(_) => ArgDesc::Scalar(ScalarTy::F32),
            Arg::I32(_) => ArgDesc::Scalar(ScalarTy::I32),
            Arg::U32(_) => ArgDesc::Scalar(ScalarTy::U32),
        })
        .collect();
    let (dtype, dims) = resolve(kernel, &descs)?;
    let warp = limits.warp_size;
    if !rocmforge_dsl::spec::WARP_SIZES.contains(&warp) {
        return Err(LaunchError::UnsupportedSpecialization {
            kernel: kernel.name.clone(),
            what: "warp size",
            value: u64::from(warp),
            supported: rocmforge_dsl::spec::WARP_SIZES.iter().map(|&w| u64::from(w)).collect(),
        });
    }
    let mut values: Vec<ArgValue> = args
        .iter()
        .map(|a| match a {
            Arg::Tensor(t) => ArgValue::Ptr(t.device_ptr()),
            Arg::F32(v) => ArgValue::F32(*v),
            Arg::I32(v) => ArgValue::I32(*v),
            Arg::U32(v) => ArgValue::U32(*v),
        })
        .collect();
    let i64_of = |what: &'static str, v: u64| -> Result<i64, LaunchError> {
        i64::try_from(v).map_err(|_| LaunchError::Limit { kernel: kernel.name.clone(), what, value: v, limit: i64::MAX as u64 })
    };
    let i32_of = |what: &'static str, v: u64| -> Result<i32, LaunchError> {
        i32::try_from(v).map_err(|_| LaunchError::Limit { kernel: kernel.name.clone(), what, value: v, limit: i32::MAX as u64 })
    };
    // `items`: threads needed (elementwise, rope) or rows (rowwise, one per row owner).
    let (spec, items) = match (kernel.kind, dims) {
        (Kind::Elementwise, Dims::Elementwise { n }) => {
            let spec = kernel.specs(warp).into_iter().find(|s| s.dtype == dtype).ok_or_else(|| missing(kernel, dtype))?;
            let groups = ceil_div(n, u64::from(kernel.vec_width(&spec)));
            values.push(ArgValue::I64(i64_of("elements", n)?));
            (spec, groups)
        }
        (Kind::Rowwise, Dims::Rowwise { rows, cols }) => {
            let spec = choose_row_spec(kernel, dtype, warp, cols).ok_or_else(|| missing(kernel, dtype))?;
            values.push(ArgValue::I64(i64_of("rows", rows)?));
            values.push(ArgValue::I64(i64_of("columns", cols)?));
            (spec, rows)
        }
        (Kind::Rope(_), Dims::Rope { tokens, q_heads, k_heads, head_dim, half_rot }) => {
            let spec =
                kernel.specs(warp).into_iter().find(|s| s.dtype == dtype && s.head_dim.map(u64::from) == Some(head_dim)).ok_or_else(
                    || LaunchError::UnsupportedSpecialization {
                        kernel: kernel.name.clone(),
                        what: "head_dim",
                        value: head_dim,
                        supported: kernel.options.head_dims.iter().map(|&h| u64::from(h)).collect(),
                    },
                )?;
            let pairs = u64::from(match kernel.kind {
                Kind::Rope(rocmforge_dsl::ir::RopeLayout::Gptj) => kernel.vec_width(&spec) / 2,
                _ => kernel.vec_width(&spec),
            });
            let heads = q_heads.checked_add(k_heads).ok_or_else(|| overflow(kernel, "heads"))?;
            // One thread per token, group of heads and group of pairs.
            let head_groups = ceil_div(heads, u64::from(rocmforge_dsl::spec::ROPE_HEADS_PER_THREAD));
            let work = tokens
                .checked_mul(ceil_div(half_rot, pairs))
                .and_then(|w| w.checked_mul(head_groups))
                .ok_or_else(|| overflow(kernel, "rope work items"))?;
            i64_of("rope work items", work)?;
            values.push(ArgValue::I64(i64_of("tokens", tokens)?));
            values.push(ArgValue::I32(i32_of("q heads", q_heads)?));
            values.push(ArgValue::I32(i32_of("k heads", k_heads)?));
            i32_of("q + k heads", heads)?;
            values.push(ArgValue::I32(i32_of("rotary pairs", half_rot)?));
            (spec, work)
        }
        _ => return Err(LaunchError::Kernel(format!("kernel `{}`: kind and problem size disagree", kernel.name))),
    };
    let spec = match force {
        None => spec,
        Some(f) => {
            let fits = kernel.specs(warp).contains(&f) && f.dtype == spec.dtype && f.head_dim == spec.head_dim;
            if !fits {
                return Err(LaunchError::Kernel(format!("kernel `{}`: specialization {f:?} does not fit these arguments", kernel.name)));
            }
            f
        }
    };
    let items_per_block = match kernel.kind {
        Kind::Rowwise => spec.block / kernel.row_threads(&spec),
        Kind::Elementwise | Kind::Rope(_) => spec.block,
    };
    let blocks_needed = ceil_div(items, u64::from(items_per_block));
    limit(kernel, "threads per block", u64::from(spec.block), u64::from(limits.max_threads_per_block))?;
    if spec.block % warp != 0 {
        return Err(LaunchError::Limit {
            kernel: kernel.name.clone(),
            what: "block size (must be a multiple of the warp size)",
            value: u64::from(spec.block),
            limit: u64::from(warp),
        });
    }
    // The kernels grid-stride, so clamping to the device's limit stays correct.
    let grid_x = blocks_needed.clamp(1, u64::from(limits.max_grid[0]));
    let cols = match dims {
        Dims::Rowwise { cols, .. } => cols,
        _ => 0,
    };
    let aligned = values.iter().all(|v| !matches!(v, ArgValue::Ptr(p) if p % 16 != 0));
    Ok(LaunchPlan {
        kernel: kernel.name.clone(),
        symbol: launch_symbol(kernel, &spec, cols, aligned),
        spec,
        grid: [u32::try_from(grid_x).unwrap_or(u32::MAX), 1, 1],
        block: [spec.block, 1, 1],
        shared_bytes: 0,
        args: values,
        dims,
    })
}

fn missing(kernel: &Kernel, dtype: Option<DType>) -> LaunchError {
    LaunchError::Kernel(format!("kernel `{}` has no specialization for dtype {dtype:?}", kernel.name))
}

fn overflow(kernel: &Kernel, what: &'static str) -> LaunchError {
    LaunchError::Limit { kernel: kernel.name.clone(), what, value: u64::MAX, limit: i64::MAX as u64 }
}
