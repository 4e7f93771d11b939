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
    /// Shared memory one workgroup may use, bytes (with the opt-in past 48 KiB on NVIDIA).
    pub max_shared_bytes: u32,
    /// Multiprocessors (NVIDIA SMs, AMD CUs): split-KV decode sizes its grid to them.
    pub compute_units: u32,
    /// NVIDIA `mma.sync` (sm_80 and newer): attention prefill runs on the matrix cores;
    /// elsewhere it runs the portable kernel.
    pub mma: bool,
    /// AMD CDNA matrix cores (MFMA, gfx90a and gfx94x): attention prefill (f16/bf16,
    /// head_dim up to 128) runs the MFMA kernel. Off unless asked for
    /// (`ROCMFORGE_MFMA=1`): that kernel has not run on an AMD GPU yet.
    pub mfma: bool,
    /// AMD RDNA3 matrix cores (WMMA, gfx11xx, wave32): attention prefill (f16/bf16,
    /// head_dim up to 128) runs the WMMA kernel. Off unless asked for
    /// (`ROCMFORGE_WMMA=1`): that kernel has not run on an AMD GPU yet.
    pub wmma: bool,
    /// NVIDIA thread-block clusters with distributed shared memory (sm_90 and newer):
    /// split-KV decode combines its splits inside a cluster instead of through a
    /// global workspace.
    pub clusters: bool,
    /// NVIDIA Hopper warpgroup matrix instructions (`wgmma`, sm_90a): the f16/bf16
    /// prefill at head_dim 128 with the default tiles runs the `_wgmma` kernel (two
    /// warpgroups, 128 x 128 tiles). Set by the CUDA device on compute capability 9.0
    /// unless `ROCMFORGE_WGMMA=0`.
    pub wgmma: bool,
}

impl DeviceLimits {
    /// The host device (the interpreter has no launch limits; plans use these shapes).
    pub const HOST: DeviceLimits = DeviceLimits {
        warp_size: 32,
        max_threads_per_block: 1024,
        max_grid: [i32::MAX as u32, 65535, 65535],
        max_shared_bytes: 48 * 1024,
        compute_units: 1,
        mma: false,
        mfma: false,
        wmma: false,
        clusters: false,
        wgmma: false,
    };
    /// NVIDIA sm_80/sm_90 limits (A100, H100), without the Hopper-only `wgmma` prefill
    /// (the planner's tests set it where they test it).
    pub const NVIDIA_SM90: DeviceLimits = DeviceLimits {
        warp_size: 32,
        max_threads_per_block: 1024,
        max_grid: [i32::MAX as u32, 65535, 65535],
        max_shared_bytes: 227 * 1024,
        compute_units: 132,
        mma: true,
        mfma: false,
        wmma: false,
        clusters: true,
        wgmma: false,
    };
    /// AMD CDNA (gfx90a, gfx94x): wave64.
    pub const AMD_CDNA: DeviceLimits = DeviceLimits {
        warp_size: 64,
        max_threads_per_block: 1024,
        max_grid: [i32::MAX as u32, 65535, 65535],
        max_shared_bytes: 64 * 1024,
        compute_units: 104,
        mma: false,
        mfma: false,
        wmma: false,
        clusters: false,
        wgmma: false,
    };
    /// AMD RDNA (gfx10xx, gfx11xx, gfx12xx): wave32.
    pub const AMD_RDNA: DeviceLimits = DeviceLimits {
        warp_size: 32,
        max_threads_per_block: 1024,
        max_grid: [i32::MAX as u32, 65535, 65535],
        max_shared_bytes: 64 * 1024,
        compute_units: 48,
        mma: false,
        mfma: false,
        wmma: false,
        clusters: false,
        wgmma: false,
    };
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
    /// Zero-initialized scratch the kernel needs (split-KV attention), bytes. The device
    /// passes its workspace, kept between launches, as the last argument; the kernel
    /// leaves it zeroed again.
    pub workspace_bytes: u64,
    /// Workgroups per thread-block cluster along z (sm_90), 1 for none: split-KV decode
    /// launches a tile's splits as one cluster and combines them in distributed shared
    /// memory. The grid's z is a multiple of it.
    pub cluster_z: u32,
}

impl LaunchPlan {
    /// The kernel parameters as the driver's `void**` launch API wants them: one 8-byte
    /// slot per parameter, in order, each holding the value in the width the generated
    /// signature declares (pointers and `long long` 8 bytes; float, int, unsigned the
    /// first 4).
    pub fn param_slots(&self) -> Vec<[u8; 8]> {
        slots(&self.args)
    }
}

/// Launch arguments as 8-byte slots in the widths the generated signatures declare.
pub(crate) fn slots(args: &[ArgValue]) -> Vec<[u8; 8]> {
    args.iter()
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

impl_tensor_arg!(TensorDesc);

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
    /// A shape the kernel does not handle (the caller takes another path).
    #[error("kernel `{kernel}` does not handle {what}")]
    Unsupported {
        /// Kernel name.
        kernel: String,
        /// What it does not handle.
        what: String,
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
    let (dtype, dims) = resolve(kernel, &descs_of(args))?;
    let warp = limits.warp_size;
    if !rocmforge_dsl::spec::WARP_SIZES.contains(&warp) {
        return Err(LaunchError::UnsupportedSpecialization {
            kernel: kernel.name.clone(),
            what: "warp size",
            value: u64::from(warp),
            supported: rocmforge_dsl::spec::WARP_SIZES.iter().map(|&w| u64::from(w)).collect(),
        });
    }
    let mut values = values_of(args);
    let i64_of = |what, v| to_i64(kernel, what, v);
    let i32_of = |what, v| to_i32(kernel, what, v);
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
        (Kind::Gemv, Dims::Gemv { m, n, k }) => {
            let spec = kernel.specs(warp).into_iter().find(|s| s.dtype == dtype).ok_or_else(|| missing(kernel, dtype))?;
            values.push(ArgValue::I64(i64_of("input rows", m)?));
            values.push(ArgValue::I64(i64_of("output columns", n)?));
            // In-row column indices are 32-bit in the kernel.
            i32_of("input columns", k)?;
            values.push(ArgValue::I64(i64_of("input columns", k)?));
            (spec, n)
        }
        (Kind::Attention, _) => {
            return Err(LaunchError::Kernel(format!(
                "kernel `{}` is attention: plan it with its launcher's `plan(..., seqs)` (plan_attention), which takes the sequence layout",
                kernel.name
            )))
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
        // One warp per output column.
        Kind::Gemv => (spec.block / warp).max(1),
        Kind::Elementwise | Kind::Rope(_) | Kind::Attention => spec.block,
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
    let (symbol, grid_y) = match dims {
        // Input rows in groups of `rows` along y; each group reads the weights once.
        Dims::Gemv { m, .. } => {
            let rows = rocmforge_dsl::spec::gemv_rows(m);
            let groups = ceil_div(m, u64::from(rows));
            limit(kernel, "input row groups (grid y; split the rows into several launches)", groups, u64::from(limits.max_grid[1]))?;
            (rocmforge_dsl::spec::gemv_symbol(&kernel.name, &spec, rows), u32::try_from(groups).unwrap_or(u32::MAX))
        }
        _ => (launch_symbol(kernel, &spec, cols, aligned), 1),
    };
    Ok(LaunchPlan {
        kernel: kernel.name.clone(),
        symbol,
        spec,
        grid: [u32::try_from(grid_x).unwrap_or(u32::MAX), grid_y, 1],
        block: [spec.block, 1, 1],
        shared_bytes: 0,
        args: values,
        dims,
        workspace_bytes: 0,
        cluster_z: 1,
    })
}

fn missing(kernel: &Kernel, dtype: Option<DType>) -> LaunchError {
    LaunchError::Kernel(format!("kernel `{}` has no specialization for dtype {dtype:?}", kernel.name))
}

fn overflow(kernel: &Kernel, what: &'static str) -> LaunchError {
    LaunchError::Limit { kernel: kernel.name.clone(), what, value: u64::MAX, limit: i64::MAX as u64 }
}

/// Where each sequence's queries and keys/values lie, for an attention launch.
#[derive(Clone, Copy)]
pub enum KvIndex<'a> {
    /// K/V `[total_kv, kv_heads, head_dim]`; sequence `b` holds rows `cu_k[b]..cu_k[b+1]`.
    Contiguous {
        /// i32 `[batch + 1]`, non-decreasing, `cu_k[batch] <= total_kv`.
        cu_k: &'a dyn TensorArg,
    },
    /// K/V `[pages, page_size, kv_heads, head_dim]`; position `p` of sequence `b` is in
    /// page `block_table[b][p / page_size]` at row `p % page_size`.
    Paged {
        /// i32 `[batch, max_pages]`; entries outside `0..pages` read as zeros.
        block_table: &'a dyn TensorArg,
        /// i32 `[batch]`: positions in each sequence's cache.
        kv_lens: &'a dyn TensorArg,
    },
}

/// The sequences of an attention launch. The offsets live on the device; the two
/// bounds are their host-side maxima, which size the grid.
#[derive(Clone, Copy)]
pub struct AttnSeqs<'a> {
    /// i32 `[batch + 1]`: sequence `b` has queries `cu_q[b]..cu_q[b+1]` of `q`.
    pub cu_q: &'a dyn TensorArg,
    /// Keys and values.
    pub kv: KvIndex<'a>,
    /// The longest query run of any sequence.
    pub max_q: u32,
    /// The longest key/value length of any sequence.
    pub max_kv: u32,
}

impl AttnSeqs<'_> {
    fn index_args(&self) -> Vec<Arg<'_>> {
        let mut v = vec![Arg::Tensor(self.cu_q)];
        match self.kv {
            KvIndex::Contiguous { cu_k } => v.push(Arg::Tensor(cu_k)),
            KvIndex::Paged { block_table, kv_lens } => {
                v.push(Arg::Tensor(block_table));
                v.push(Arg::Tensor(kv_lens));
            }
        }
        v
    }
}

/// Query tokens per sequence up to which attention uses the split-KV decode kernel.
pub const DECODE_MAX_Q: u32 = 8;

/// `v` as a kernel's `int` parameter, or a `Limit` error naming `what`.
fn to_i32(kernel: &Kernel, what: &'static str, v: u64) -> Result<i32, LaunchError> {
    i32::try_from(v).map_err(|_| LaunchError::Limit { kernel: kernel.name.clone(), what, value: v, limit: i32::MAX as u64 })
}

/// `v` as a kernel's `long long` parameter, or a `Limit` error naming `what`.
fn to_i64(kernel: &Kernel, what: &'static str, v: u64) -> Result<i64, LaunchError> {
    i64::try_from(v).map_err(|_| LaunchError::Limit { kernel: kernel.name.clone(), what, value: v, limit: i64::MAX as u64 })
}

fn descs_of<'a>(args: &'a [Arg<'a>]) -> Vec<ArgDesc<'a>> {
    args.iter()
        .map(|a| match a {
            Arg::Tensor(t) => ArgDesc::Tensor { dtype: t.dtype(), shape: t.shape() },
            Arg::F32(_) => ArgDesc::Scalar(ScalarTy::F32),
            Arg::I32(_) => ArgDesc::Scalar(ScalarTy::I32),
            Arg::U32(_) => ArgDesc::Scalar(ScalarTy::U32),
        })
        .collect()
}

fn values_of(args: &[Arg<'_>]) -> Vec<ArgValue> {
    args.iter()
        .map(|a| match a {
            Arg::Tensor(t) => ArgValue::Ptr(t.device_ptr()),
            Arg::F32(v) => ArgValue::F32(*v),
            Arg::I32(v) => ArgValue::I32(*v),
            Arg::U32(v) => ArgValue::U32(*v),
        })
        .collect()
}

fn attention_spec(kernel: &Kernel, limits: &DeviceLimits, dtype: Option<DType>, head_dim: u64) -> Result<Spec, LaunchError> {
    kernel.specs(limits.warp_size).into_iter().find(|s| s.dtype == dtype && s.head_dim.map(u64::from) == Some(head_dim)).ok_or_else(|| {
        LaunchError::UnsupportedSpecialization {
            kernel: kernel.name.clone(),
            what: "head_dim",
            value: head_dim,
            supported: kernel.options.head_dims.iter().map(|&h| u64::from(h)).collect(),
        }
    })
}

fn require_aligned(kernel: &Kernel, values: &[ArgValue]) -> Result<(), LaunchError> {
    for v in values {
        if let ArgValue::Ptr(p) = v {
            if p % 16 != 0 {
                return Err(LaunchError::Limit {
                    kernel: kernel.name.clone(),
                    what: "tensor address alignment (attention reads and writes 16-byte groups; pass tensors that start 16-byte aligned)",
                    value: *p,
                    limit: 16,
                });
            }
        }
    }
    Ok(())
}

/// Plans an attention launch: `args` are the declared parameters in order; `seqs` says
/// where the sequences are. Up to [`DECODE_MAX_Q`] query tokens per sequence run the
/// split-KV decode kernel; longer runs the matrix-core prefill where the device has one.
pub fn plan_attention(kernel: &Kernel, limits: &DeviceLimits, args: &[Arg<'_>], seqs: &AttnSeqs<'_>) -> Result<LaunchPlan, LaunchError> {
    plan_attention_with(kernel, limits, args, seqs, None)
}

/// [`plan_attention`] with the kernel forced (`Some(true)`: the portable split-KV kernel,
/// as on devices without a matrix-core path; `Some(false)`: the matrix-core prefill),
/// for self-checks and benchmarks that run several kernels on one problem.
pub fn plan_attention_with(
    kernel: &Kernel,
    limits: &DeviceLimits,
    args: &[Arg<'_>],
    seqs: &AttnSeqs<'_>,
    force_decode: Option<bool>,
) -> Result<LaunchPlan, LaunchError> {
    use rocmforge_dsl::spec::{
        decode_chunk, decode_mma_shared_bytes, has_wgmma_prefill, mfma_prefill_shared_bytes, prefill_shared_bytes, prefill_tiles,
        symbol_name, wgmma_prefill_shared_bytes, wmma_prefill_shared_bytes, AMD_PREFILL_BLOCK_Q, DECODE_MMA_ROWS, DECODE_MMA_SUFFIX,
        DECODE_ROWS, DECODE_SUFFIX, WGMMA_PREFILL_SUFFIX, WGMMA_PREFILL_THREADS, WGMMA_PREFILL_TILES,
    };
    if kernel.kind != Kind::Attention {
        return Err(LaunchError::Kernel(format!("kernel `{}` is {}, not attention", kernel.name, kernel.kind.name())));
    }
    let mut all: Vec<Arg<'_>> = args.to_vec();
    all.extend(seqs.index_args());
    let (dtype, dims) = resolve(kernel, &descs_of(&all))?;
    let Dims::Attention { batch, total_q, heads, kv_heads, head_dim, paged, kv_rows } = dims else {
        return Err(LaunchError::Kernel(format!("kernel `{}`: kind and problem size disagree", kernel.name)));
    };
    let spec = attention_spec(kernel, limits, dtype, head_dim)?;
    // The kernels take all four index pointers; the layout not used passes null.
    let mut values = values_of(args);
    // q, k, v and out move in 16-byte groups; the i32 index tensors are read by element.
    require_aligned(kernel, &values[..4])?;
    let ptr = |t: &dyn TensorArg| ArgValue::Ptr(t.device_ptr());
    values.push(ptr(seqs.cu_q));
    match seqs.kv {
        KvIndex::Contiguous { cu_k } => values.extend([ptr(cu_k), ArgValue::Ptr(0), ArgValue::Ptr(0)]),
        KvIndex::Paged { block_table, kv_lens } => values.extend([ArgValue::Ptr(0), ptr(block_table), ptr(kv_lens)]),
    }
    let max_q = u64::from(seqs.max_q);
    if max_q == 0 || max_q > total_q {
        return Err(LaunchError::Limit {
            kernel: kernel.name.clone(),
            what: "max_q (must be 1 to the query tokens)",
            value: max_q,
            limit: total_q,
        });
    }
    if paged.is_none() && u64::from(seqs.max_kv) > kv_rows {
        return Err(LaunchError::Limit {
            kernel: kernel.name.clone(),
            what: "max_kv (past the K/V rows)",
            value: u64::from(seqs.max_kv),
            limit: kv_rows,
        });
    }
    let i32_of = |what, v| to_i32(kernel, what, v);
    i32_of("query tokens", total_q)?;
    i32_of("K/V rows", kv_rows)?;
    let (pages, page_size, max_pages) = paged.unwrap_or((0, 0, 0));
    values.push(ArgValue::I32(i32_of("heads", heads)?));
    values.push(ArgValue::I32(i32_of("kv heads", kv_heads)?));
    values.push(ArgValue::I32(i32_of("page size", page_size)?));
    values.push(ArgValue::I32(i32_of("pages per sequence", max_pages)?));
    values.push(ArgValue::I32(i32_of("pages", pages)?));
    let is_mma_dtype = matches!(dtype, Some(DType::F16 | DType::BF16));
    // The prefill's matrix-core kernel: mma.sync (NVIDIA sm_80+) or, where enabled, MFMA
    // (AMD CDNA) or WMMA (AMD RDNA3), each up to head_dim 128 with its own shared size and
    // 64-row query tiles.
    let amd_shared = match (limits.mma, limits.mfma, limits.wmma) {
        (false, true, _) => mfma_prefill_shared_bytes(&spec),
        (false, false, true) => wmma_prefill_shared_bytes(&spec),
        _ => None,
    };
    let prefill_mma = is_mma_dtype && (limits.mma || amd_shared.is_some());
    let decode = force_decode.unwrap_or(max_q <= u64::from(DECODE_MAX_Q) || !prefill_mma);
    if !(decode || prefill_mma) {
        return Err(LaunchError::Kernel(format!(
            "kernel `{}`: the matrix-core prefill needs f16/bf16 and an sm_80+ NVIDIA GPU (or, with ROCMFORGE_MFMA=1, an AMD \
             gfx90a/gfx94x GPU, or with ROCMFORGE_WMMA=1 a gfx11xx one, and head_dim up to 128)",
            kernel.name
        )));
    }
    let base = symbol_name(&kernel.name, &spec);
    let grid_y_max = u64::from(limits.max_grid[1]);
    let grid_z_max = u64::from(limits.max_grid[2]);
    if decode {
        let sizes = [batch, heads, kv_heads, head_dim, max_q];
        let kind = if force_decode != Some(true) && limits.mma && is_mma_dtype {
            // Matrix cores: 16 rows, workgroups as many as fit at once (one wave), each
            // split over at least DECODE_MMA_MIN_SPLIT positions.
            let shared = decode_mma_shared_bytes(&spec);
            limit(kernel, "shared memory per workgroup (bytes)", u64::from(shared), u64::from(limits.max_shared_bytes))?;
            DecodeKind {
                rows: DECODE_MMA_ROWS,
                suffix: DECODE_MMA_SUFFIX,
                shared,
                workgroups: u64::from(limits.compute_units.max(1)) * u64::from((limits.max_shared_bytes / shared.max(1)).max(1)),
                min_split: DECODE_MMA_MIN_SPLIT,
                clusters: true,
            }
        } else {
            // Portable: 8 rows, two workgroups per multiprocessor, at least 4 steps each.
            let elem = dtype.map_or(4, |d| d.size() as u32);
            DecodeKind {
                rows: DECODE_ROWS,
                suffix: DECODE_SUFFIX,
                shared: 0,
                workgroups: 2 * u64::from(limits.compute_units.max(1)),
                min_split: 4 * decode_chunk(&spec, elem),
                clusters: false,
            }
        };
        return plan_decode(kernel, limits, spec, values, dims, seqs.max_kv, sizes, &kind);
    }
    // Hopper: the warpgroup kernel where the specialization has it and its shared tiles
    // fit (else the mma.sync kernel, which needs less).
    let wgmma = limits.wgmma
        && limits.mma
        && dtype.is_some_and(|d| has_wgmma_prefill(kernel, &spec, d))
        && wgmma_prefill_shared_bytes() <= limits.max_shared_bytes;
    // The prefill kernel: (symbol suffix, query rows per workgroup, shared bytes, threads).
    let (suffix, bq, shared, threads) = match amd_shared {
        Some(shared) => ("", AMD_PREFILL_BLOCK_Q, shared, spec.block),
        None if wgmma => (WGMMA_PREFILL_SUFFIX, WGMMA_PREFILL_TILES.0, wgmma_prefill_shared_bytes(), WGMMA_PREFILL_THREADS),
        None => ("", prefill_tiles(kernel, &spec).0, prefill_shared_bytes(kernel, &spec), spec.block),
    };
    limit(kernel, "shared memory per workgroup (bytes)", u64::from(shared), u64::from(limits.max_shared_bytes))?;
    limit(kernel, "heads (grid y)", heads, grid_y_max)?;
    limit(kernel, "batch (grid z)", batch, grid_z_max)?;
    let gx = max_q.div_ceil(u64::from(bq));
    Ok(LaunchPlan {
        kernel: kernel.name.clone(),
        spec,
        symbol: format!("{base}{suffix}"),
        grid: [gx as u32, heads as u32, batch as u32],
        block: [threads, 1, 1],
        shared_bytes: shared,
        args: values,
        dims,
        workspace_bytes: 0,
        cluster_z: 1,
    })
}

/// What distinguishes the two split-KV decode kernels to the planner.
struct DecodeKind {
    /// Query rows one workgroup holds.
    rows: u32,
    /// Symbol suffix.
    suffix: &'static str,
    /// Dynamic shared bytes.
    shared: u32,
    /// Workgroups the device should get (the split count fills it up to this).
    workgroups: u64,
    /// Fewest positions per split.
    min_split: u32,
    /// Whether the kernel can combine its splits in a cluster (see `DeviceLimits::clusters`).
    clusters: bool,
}

/// Fewest positions per split of the matrix-core decode. 512 against the former two
/// tiles a warp (128 positions at head_dim 128, 256 at 64), same H200 job, CUDA graphs
/// (`benches/logs/h200-2026-11-28-b/`): Llama-3-8B shape tg128 239.6-239.7 against
/// 236.1-236.2 tok/s, 4096 context 221.3-221.6 against 216.8-217.1; Llama-3.2-1B tg128
/// unchanged, 4096 context 993 against 981. The attention benchmark alone agrees at 4096
/// positions (8 splits in one cluster, 15.8 us, against 32 through the workspace, 19.2)
/// but not at 1024, where more, shorter splits time faster on their own (11.0 against
/// 15.7 us) and still lose inside the model's step.
const DECODE_MMA_MIN_SPLIT: u32 = 512;

/// A split-KV decode launch: tiles of (query rows x GQA heads) per (sequence, kv head),
/// split along the positions to fill the device; with several splits, a workspace for
/// the partial results and the combine counters.
#[allow(clippy::too_many_arguments, reason = "the pieces plan_attention_with already checked")]
fn plan_decode(
    kernel: &Kernel,
    limits: &DeviceLimits,
    spec: Spec,
    mut values: Vec<ArgValue>,
    dims: Dims,
    max_kv: u32,
    [batch, heads, kv_heads, head_dim, max_q]: [u64; 5],
    kind: &DecodeKind,
) -> Result<LaunchPlan, LaunchError> {
    use rocmforge_dsl::spec::{symbol_name, DECODE_COUNTERS, DECODE_MAX_CLUSTER, DECODE_MAX_SPLITS};
    let group = heads / kv_heads;
    let rows = u64::from(kind.rows);
    let head_rows = group.min(rows);
    let q_rows = (rows / head_rows).clamp(1, max_q);
    let gx = max_q.div_ceil(q_rows) * group.div_ceil(head_rows);
    let gy = batch * kv_heads;
    limit(kernel, "batch * kv_heads (grid y)", gy, u64::from(limits.max_grid[1]))?;
    let tiles = gx.checked_mul(gy).ok_or_else(|| overflow(kernel, "attention tiles"))?;
    let want = (kind.workgroups / tiles.max(1)).max(1);
    let mut splits = want
        .min(u64::from(max_kv).div_ceil(u64::from(kind.min_split)))
        .clamp(1, u64::from(limits.max_grid[2]).min(u64::from(DECODE_MAX_SPLITS)));
    if tiles > u64::from(DECODE_COUNTERS) {
        splits = 1; // enough tiles to fill the device; and one counter per tile
    }
    // On sm_90, up to 8 splits of a tile (the portable cluster size) form one cluster and
    // merge through distributed shared memory: no workspace, no second pass over global
    // memory. More splits (long contexts at small batch) combine through the workspace.
    let cluster = kind.clusters && limits.clusters && splits > 1 && splits <= u64::from(DECODE_MAX_CLUSTER);
    let i32_of = |what, v| to_i32(kernel, what, v);
    values.push(ArgValue::I32(i32_of("query rows", q_rows)?));
    values.push(ArgValue::I32(i32_of("head rows", head_rows)?));
    values.push(ArgValue::I32(i32_of("splits", splits)?));
    values.push(ArgValue::Ptr(0));
    let workspace_bytes = if splits > 1 && !cluster {
        let slots = tiles * splits * rows;
        4 * (u64::from(DECODE_COUNTERS) + slots * 2 + slots * head_dim)
    } else {
        0
    };
    let gx = u32::try_from(gx).ok().filter(|&g| g <= limits.max_grid[0]).ok_or(LaunchError::Limit {
        kernel: kernel.name.clone(),
        what: "query row groups (grid x)",
        value: gx,
        limit: u64::from(limits.max_grid[0]),
    })?;
    Ok(LaunchPlan {
        kernel: kernel.name.clone(),
        spec,
        symbol: format!("{}{}", symbol_name(&kernel.name, &spec), kind.suffix),
        grid: [gx, gy as u32, splits as u32],
        block: [spec.block, 1, 1],
        shared_bytes: kind.shared,
        args: values,
        dims,
        workspace_bytes,
        cluster_z: if cluster { splits as u32 } else { 1 },
    })
}

/// Plans the write of new K/V rows `[tokens, kv_heads, head_dim]` into a paged cache
/// `[pages, page_size, kv_heads, head_dim]` at `slots` (i32 `[tokens]`, `page * page_size
/// + offset`; negative slots are skipped).
pub fn plan_kv_store(
    kernel: &Kernel,
    limits: &DeviceLimits,
    k_new: &dyn TensorArg,
    v_new: &dyn TensorArg,
    k_cache: &dyn TensorArg,
    v_cache: &dyn TensorArg,
    slots: &dyn TensorArg,
) -> Result<LaunchPlan, LaunchError> {
    use rocmforge_dsl::spec::{symbol_name, KV_STORE_SUFFIX};
    let kname = kernel.name.as_str();
    let shape_err = |param: &str, expected: String, got: &[usize]| {
        LaunchError::Args(ArgError::Shape { kernel: kname.into(), param: param.into(), expected, got: got.to_vec() })
    };
    if kernel.kind != Kind::Attention {
        return Err(LaunchError::Kernel(format!("kernel `{kname}` is {}, not attention", kernel.name)));
    }
    let dtype = k_new.dtype();
    for (name, t) in [("v_new", v_new), ("k_cache", k_cache), ("v_cache", v_cache)] {
        if t.dtype() != dtype {
            return Err(LaunchError::Args(ArgError::DType {
                kernel: kname.into(),
                param: name.into(),
                expected: dtype.to_string(),
                got: t.dtype(),
                hint: String::new(),
            }));
        }
    }
    let kn = k_new.shape();
    if kn.len() != 3 || v_new.shape() != kn {
        return Err(shape_err("k_new/v_new", "two equal shapes [tokens, kv_heads, head_dim]".into(), v_new.shape()));
    }
    let kc = k_cache.shape();
    if kc.len() != 4 || v_cache.shape() != kc || kc[2] != kn[1] || kc[3] != kn[2] {
        return Err(shape_err("k_cache/v_cache", format!("two equal shapes [pages, page_size, {}, {}]", kn[1], kn[2]), kc));
    }
    if slots.dtype() != DType::I32 || slots.shape().iter().product::<usize>() != kn[0] {
        return Err(shape_err("slots", format!("i32 [{}], one slot per token", kn[0]), slots.shape()));
    }
    let spec = attention_spec(kernel, limits, Some(dtype).filter(|_| kernel.is_generic()), kn[2] as u64)?;
    let mut values = values_of(&[Arg::Tensor(k_new), Arg::Tensor(v_new), Arg::Tensor(k_cache), Arg::Tensor(v_cache), Arg::Tensor(slots)]);
    require_aligned(kernel, &values[..4])?;
    let tokens = kn[0] as u64;
    let num_slots = (kc[0] as u64).checked_mul(kc[1] as u64).ok_or_else(|| overflow(kernel, "cache slots"))?;
    if tokens == 0 || num_slots == 0 {
        return Err(shape_err("k_new", "at least one token and one cache slot".into(), kn));
    }
    let groups = tokens * kn[1] as u64 * (kn[2] as u64 / u64::from(16 / dtype.size() as u32)) * 2;
    values.push(ArgValue::I64(to_i64(kernel, "tokens", tokens)?));
    values.push(ArgValue::I32(to_i32(kernel, "kv heads", kn[1] as u64)?));
    values.push(ArgValue::I64(to_i64(kernel, "cache slots", num_slots)?));
    let grid = groups.div_ceil(u64::from(spec.block)).clamp(1, u64::from(limits.max_grid[0]));
    Ok(LaunchPlan {
        kernel: kernel.name.clone(),
        spec,
        symbol: format!("{}{KV_STORE_SUFFIX}", symbol_name(&kernel.name, &spec)),
        grid: [grid as u32, 1, 1],
        block: [spec.block, 1, 1],
        shared_bytes: 0,
        args: values,
        dims: Dims::Elementwise { n: groups },
        workspace_bytes: 0,
        cluster_z: 1,
    })
}

impl std::fmt::Debug for KvIndex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvIndex::Contiguous { cu_k } => write!(f, "Contiguous {{ cu_k: {:?} }}", Arg::Tensor(*cu_k)),
            KvIndex::Paged { block_table, kv_lens } => {
                write!(f, "Paged {{ block_table: {:?}, kv_lens: {:?} }}", Arg::Tensor(*block_table), Arg::Tensor(*kv_lens))
            }
        }
    }
}

impl std::fmt::Debug for AttnSeqs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttnSeqs")
            .field("cu_q", &Arg::Tensor(self.cu_q))
            .field("kv", &self.kv)
            .field("max_q", &self.max_q)
            .field("max_kv", &self.max_kv)
            .finish()
    }
}
