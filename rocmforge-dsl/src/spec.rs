//! Specializations: the compile-time values one kernel symbol is generated for, and the
//! one function that names that symbol (used by codegen and by the launcher alike).

use crate::dtype::DType;
use crate::ir::{Kernel, Kind, Layout, ParamTy};

/// How a rowwise kernel maps rows onto threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowMode {
    /// One row per workgroup of `block` threads.
    Block,
    /// One row per warp, four warps per workgroup: for short rows.
    Warp,
}

/// One specialization of a kernel: one generated `__global__` function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Spec {
    /// The value of the generic dtype `T`, if the kernel is generic.
    pub dtype: Option<DType>,
    /// Threads per workgroup.
    pub block: u32,
    /// Warp (wavefront) size; `Some` only for kinds whose code depends on it (rowwise).
    pub warp: Option<u32>,
    /// Head dim (rope).
    pub head_dim: Option<u32>,
    /// Row mapping (rowwise).
    pub row_mode: Option<RowMode>,
}

/// Warp sizes the codegen supports: 32 (NVIDIA, RDNA) and 64 (CDNA).
pub const WARP_SIZES: [u32; 2] = [32, 64];

/// Register-cache depth of the warp-per-row rowwise variant.
pub const WARP_MODE_ITEMS: u32 = 4;

/// Register-cache depth of the workgroup-per-row rowwise variant: each thread keeps two
/// 16-byte groups per tensor. Deeper caches cost registers for every row (the depth is a
/// compile-time bound, the columns are not), which lowered occupancy and bandwidth on
/// the H100; wider rows use a larger block instead, or re-read.
pub const BLOCK_MODE_ITEMS: u32 = 2;

/// The kernel symbol of one specialization. Codegen names the `__global__` function
/// with it and the launcher looks it up with it, so the two cannot disagree.
pub fn symbol_name(kernel: &str, spec: &Spec) -> String {
    let mut s = format!("rf_{kernel}");
    if let Some(d) = spec.dtype {
        s.push('_');
        s.push_str(d.name());
    }
    if let Some(h) = spec.head_dim {
        s.push_str(&format!("_hd{h}"));
    }
    match spec.row_mode {
        Some(RowMode::Warp) => s.push_str("_rw"),
        _ => s.push_str(&format!("_b{}", spec.block)),
    }
    if let Some(w) = spec.warp {
        s.push_str(&format!("_w{w}"));
    }
    s
}

/// Threads of an attention workgroup (prefill: four warps of 32 on the matrix cores;
/// decode: 128 threads on any warp size).
pub const ATTENTION_BLOCK: u32 = 128;

/// Threads of a gemv workgroup by default: four warps of 32 (two wavefronts of 64), each
/// on its own output column.
pub const GEMV_BLOCK: u32 = 128;

/// Input rows one gemv kernel takes per launch row (`<symbol>_m1`, `_m2`, `_m4`, `_m8`):
/// each weight row is loaded once and used for all of them. More rows run as several
/// groups along the grid's y.
pub const GEMV_ROWS: [u32; 4] = [1, 2, 4, 8];

/// The rows per group a gemv launch of `m` input rows uses: the fewest of [`GEMV_ROWS`]
/// that hold them, or the most.
pub fn gemv_rows(m: u64) -> u32 {
    GEMV_ROWS.iter().copied().find(|&r| u64::from(r) >= m).unwrap_or(GEMV_ROWS[GEMV_ROWS.len() - 1])
}

/// The symbol of a gemv specialization's kernel for `rows` input rows per group.
pub fn gemv_symbol(kernel: &str, spec: &Spec, rows: u32) -> String {
    format!("{}_m{rows}", symbol_name(kernel, spec))
}

/// Suffix of an attention specialization's split-KV decode kernel (also the portable
/// prefill where the device has no matrix-core path).
pub const DECODE_SUFFIX: &str = "_decode";

/// Suffix of an attention specialization's kernel that writes new K/V into a paged cache.
pub const KV_STORE_SUFFIX: &str = "_kvstore";

/// Split-KV combine counters at the start of the decode workspace, one per tile. The
/// region is fixed so that no launch's partial results ever land where a later launch
/// (of another grid shape) keeps counters; launches with more tiles do not split.
pub const DECODE_COUNTERS: u32 = 4096;

/// Most splits of one decode launch.
pub const DECODE_MAX_SPLITS: u32 = 256;

/// Most splits of one tile combined in a thread-block cluster (sm_90; the portable
/// cluster size).
pub const DECODE_MAX_CLUSTER: u32 = 8;

/// Query rows one decode workgroup holds (heads of a GQA group x query tokens).
pub const DECODE_ROWS: u32 = 8;

/// Prefill tile sizes of one attention specialization: `(block_q, block_kv)`. Head dims
/// past 128 use 64 x 32 tiles: a warp's output accumulators (16 rows x head_dim) and
/// the shared K/V tiles would not fit otherwise. K/V tiles of 128 rows are taken only up
/// to head_dim 64 (past it, 64): the score accumulators double with the tile. Unset,
/// block_kv is 128 up to head_dim 64 (H100, d 64: 325-327 TFLOP/s against 295 with 64
/// rows, which halves the per-tile softmax and barrier work) and 64 past it.
pub fn prefill_tiles(kernel: &Kernel, spec: &Spec) -> (u32, u32) {
    let bq = kernel.options.block_q;
    match spec.head_dim {
        Some(h) if h > 128 => (64, 32),
        Some(h) if h > 64 => (bq, kernel.options.block_kv.unwrap_or(64).min(64)),
        _ => (bq, kernel.options.block_kv.unwrap_or(128)),
    }
}

/// Shared bytes of a prefill workgroup: the Q tile and two stages of K and V tiles,
/// rows padded by 8 elements (16 bytes) so ldmatrix reads hit distinct banks.
pub fn prefill_shared_bytes(kernel: &Kernel, spec: &Spec) -> u32 {
    let (bq, bkv) = prefill_tiles(kernel, spec);
    let ld = spec.head_dim.unwrap_or(16) + 8;
    (bq + 4 * bkv) * ld * 2
}

/// Query rows of a workgroup of the AMD matrix-core prefills (MFMA and WMMA alike).
pub const AMD_PREFILL_BLOCK_Q: u32 = 64;

/// Prefill tiles of the CDNA matrix-core path (MFMA, wave64): `(block_q, block_kv)`, two
/// waves of 32 query rows, single-buffered in 64 KiB of LDS.
pub const MFMA_PREFILL_TILES: (u32, u32) = (AMD_PREFILL_BLOCK_Q, 32);

/// Largest head_dim of the CDNA matrix-core prefill (its output accumulators live in
/// registers: head_dim / 16 x 4 per m-tile).
pub const MFMA_PREFILL_MAX_HEAD_DIM: u32 = 128;

/// Shared bytes of a CDNA matrix-core prefill workgroup: the Q tile and one K and one V
/// tile, rows padded by 8 elements; `None` where the path does not exist (head_dim past
/// `MFMA_PREFILL_MAX_HEAD_DIM`).
pub fn mfma_prefill_shared_bytes(spec: &Spec) -> Option<u32> {
    let h = spec.head_dim.unwrap_or(16);
    let (bq, bkv) = MFMA_PREFILL_TILES;
    (h <= MFMA_PREFILL_MAX_HEAD_DIM).then_some((bq + 2 * bkv) * (h + 8) * 2)
}

/// AMD targets with the RDNA3 matrix-core prefill: those `templates/rocmforge.h` defines
/// `RF_WMMA` for (its kernel body is empty elsewhere; a test keeps the two lists equal).
pub const WMMA_ARCHS: [&str; 6] = ["gfx1100", "gfx1101", "gfx1102", "gfx1103", "gfx1150", "gfx1151"];

/// Prefill tiles of the RDNA3 matrix-core path (WMMA, wave32): `(block_q, block_kv)`, four
/// waves of 16 query rows, single-buffered.
pub const WMMA_PREFILL_TILES: (u32, u32) = (AMD_PREFILL_BLOCK_Q, 32);

/// Shared bytes of an RDNA3 matrix-core prefill workgroup: the Q tile and one K tile (rows
/// padded by 8 elements) and one V tile stored transposed (head_dim rows of block_kv + 8);
/// `None` past head_dim 128 (its output accumulators live in registers).
pub fn wmma_prefill_shared_bytes(spec: &Spec) -> Option<u32> {
    let h = spec.head_dim.unwrap_or(16);
    let (bq, bkv) = WMMA_PREFILL_TILES;
    (h <= MFMA_PREFILL_MAX_HEAD_DIM).then_some((bq + bkv) * (h + 8) * 2 + h * (bkv + 8) * 2)
}

/// Suffix of the Hopper prefill kernel (warpgroup `wgmma`, sm_90a).
pub const WGMMA_PREFILL_SUFFIX: &str = "_wgmma";

/// Prefill tiles of the Hopper path: `(block_q, block_kv)`, two warpgroups of 64 query
/// rows sharing each K/V tile.
pub const WGMMA_PREFILL_TILES: (u32, u32) = (128, 128);

/// Threads of a Hopper prefill workgroup (two warpgroups).
pub const WGMMA_PREFILL_THREADS: u32 = 256;

/// The head dim the Hopper prefill is written for.
pub const WGMMA_PREFILL_HEAD_DIM: u32 = 128;

/// Whether a specialization has the Hopper prefill kernel: f16/bf16 at head_dim 128
/// with the default tiles (explicit `block_q`/`block_kv` options keep the `mma.sync`
/// kernel they describe).
pub fn has_wgmma_prefill(kernel: &Kernel, spec: &Spec, dtype: DType) -> bool {
    matches!(dtype, DType::F16 | DType::BF16)
        && spec.head_dim == Some(WGMMA_PREFILL_HEAD_DIM)
        && kernel.options.block_q == 128
        && kernel.options.block_kv.is_none()
}

/// Shared bytes of a Hopper prefill workgroup: the Q tile and two stages of K and V
/// tiles, unpadded (128-byte swizzled rows), plus 1 KiB to align the base to the
/// swizzle's 1024-byte period.
pub fn wgmma_prefill_shared_bytes() -> u32 {
    let (bq, bkv) = WGMMA_PREFILL_TILES;
    (bq + 4 * bkv) * WGMMA_PREFILL_HEAD_DIM * 2 + 1024
}

/// Suffix of the matrix-core split-KV decode kernel (f16/bf16 on sm_80+).
pub const DECODE_MMA_SUFFIX: &str = "_decode_mma";

/// Query rows of the matrix-core decode (one m16 tile).
pub const DECODE_MMA_ROWS: u32 = 16;

/// Stages of each warp's K/V pipeline in the matrix-core decode (two tiles in flight).
pub const DECODE_MMA_STAGES: u32 = 3;

/// Warps of a matrix-core decode workgroup, each over a quarter of its split.
pub const DECODE_MMA_WARPS: u32 = 4;

/// K/V rows per stage of the matrix-core decode: 32, or 16 for head dims past 64 (keeps
/// two workgroups' pipelines per multiprocessor at head_dim 128).
pub fn decode_mma_tile(spec: &Spec) -> u32 {
    if 2048 / spec.head_dim.unwrap_or(16) >= 32 {
        32
    } else {
        16
    }
}

/// Shared bytes of a matrix-core decode workgroup: the Q tile and each warp's stages of
/// K and V; the warps' merge reuses the buffers (it must fit them).
pub fn decode_mma_shared_bytes(spec: &Spec) -> u32 {
    let d = spec.head_dim.unwrap_or(16);
    let ld = d + 8;
    let buffers = DECODE_MMA_WARPS * DECODE_MMA_STAGES * 2 * decode_mma_tile(spec) * ld * 2;
    // Merge: per-warp outputs, (max, sum) and weights, the rows' (max, sum), the flag,
    // then the splits' maxima (turned into weights) and sums in the combine.
    let merge = 4 * (DECODE_MMA_WARPS * DECODE_MMA_ROWS * (d + 3) + 2 * DECODE_MMA_ROWS + 4 + 2 * DECODE_MAX_SPLITS * DECODE_MMA_ROWS);
    DECODE_MMA_ROWS * ld * 2 + buffers.max(merge)
}

/// Key/value positions a decode workgroup stages per step: about 8 KiB of K per stage.
pub fn decode_chunk(spec: &Spec, elem_bytes: u32) -> u32 {
    (8192 / (spec.head_dim.unwrap_or(16) * elem_bytes)).clamp(8, 64)
}

/// Heads one RoPE thread rotates (its cos/sin are computed once for them).
pub const ROPE_HEADS_PER_THREAD: u32 = 4;

/// Suffix of a rowwise specialization's second kernel, for the rows its register-cached
/// kernel does not take: wider than `Kernel::row_capacity`, not a multiple of the vector
/// width, or with a tensor not 16-byte aligned. The launch plan picks it, so neither
/// kernel carries the other's code (and registers).
pub const WIDE_SUFFIX: &str = "_wide";

/// The symbol a rowwise launch of `cols` columns uses: [`symbol_name`], with
/// [`WIDE_SUFFIX`] unless the row fits the register cache in whole 16-byte groups
/// (`aligned`: every tensor pointer is 16-byte aligned). Other kinds have one symbol.
pub fn launch_symbol(kernel: &Kernel, spec: &Spec, cols: u64, aligned: bool) -> String {
    let mut s = symbol_name(&kernel.name, spec);
    if matches!(kernel.kind, crate::ir::Kind::Rowwise) {
        let fits = cols <= kernel.row_capacity(spec) && cols.is_multiple_of(u64::from(kernel.vec_width(spec))) && aligned;
        if !fits {
            s.push_str(WIDE_SUFFIX);
        }
    }
    s
}

impl Kernel {
    /// Every specialization for a device of the given warp size, in a stable order.
    pub fn specs(&self, warp: u32) -> Vec<Spec> {
        let dtypes: Vec<Option<DType>> =
            if self.options.dtypes.is_empty() { vec![None] } else { self.options.dtypes.iter().copied().map(Some).collect() };
        let mut out = Vec::new();
        for dtype in dtypes {
            match self.kind {
                Kind::Elementwise => out.push(Spec { dtype, block: self.options.blocks[0], warp: None, head_dim: None, row_mode: None }),
                Kind::Rowwise => {
                    for &block in &self.options.blocks {
                        out.push(Spec { dtype, block, warp: Some(warp), head_dim: None, row_mode: Some(RowMode::Block) });
                    }
                    out.push(Spec { dtype, block: 4 * warp, warp: Some(warp), head_dim: None, row_mode: Some(RowMode::Warp) });
                }
                Kind::Gemv => out.push(Spec { dtype, block: self.options.blocks[0], warp: Some(warp), head_dim: None, row_mode: None }),
                Kind::Rope(_) | Kind::Attention => {
                    for &h in &self.options.head_dims {
                        out.push(Spec { dtype, block: self.options.blocks[0], warp: None, head_dim: Some(h), row_mode: None });
                    }
                }
            }
        }
        out
    }

    /// Resolved dtype of parameter `i` under a specialization (`None` for scalars).
    pub fn param_dtype(&self, i: usize, spec: &Spec) -> Option<DType> {
        match self.params.get(i)?.ty {
            ParamTy::Tensor { dtype, .. } => Some(dtype.resolve(spec.dtype)),
            ParamTy::Scalar(_) => None,
        }
    }

    /// Elements per vector group: one 16-byte vector of the narrowest tensor dtype
    /// (the `[T]`, `Rows<T>` and `Heads<T>` tensors; rope's tables are not vectorized).
    pub fn vec_width(&self, spec: &Spec) -> u32 {
        let min_size = self
            .params
            .iter()
            .enumerate()
            .filter(|(_, p)| match p.ty {
                ParamTy::Tensor { layout, .. } => !matches!(self.kind, Kind::Rope(_)) || layout == Layout::Heads,
                ParamTy::Scalar(_) => false,
            })
            .filter_map(|(i, _)| self.param_dtype(i, spec))
            .map(|d| d.size())
            .min()
            .unwrap_or(4);
        (16 / min_size) as u32
    }

    /// Threads that cooperate on one row (rowwise).
    pub fn row_threads(&self, spec: &Spec) -> u32 {
        match (spec.row_mode, spec.warp) {
            (Some(RowMode::Warp), Some(w)) => w,
            _ => spec.block,
        }
    }

    /// Vector groups per thread kept in registers (rowwise).
    pub fn row_items(&self, spec: &Spec) -> u32 {
        match spec.row_mode {
            Some(RowMode::Warp) => WARP_MODE_ITEMS,
            _ => BLOCK_MODE_ITEMS,
        }
    }

    /// Columns a rowwise specialization keeps in registers; wider rows are re-read.
    pub fn row_capacity(&self, spec: &Spec) -> u64 {
        u64::from(self.row_threads(spec)) * u64::from(self.vec_width(spec)) * u64::from(self.row_items(spec))
    }
}
