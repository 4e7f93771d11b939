//! Plans for the inference engine's own operations: matrix products through the vendor
//! BLAS ([`plan_gemm`]) and the engine kernels of `templates/engine.hip.tera` (row
//! gather, argmax, top-k). Pure functions of shapes and limits, like the DSL launchers'
//! plans, so they are tested without a GPU; the devices run them.

use rocmforge_dsl::args::ArgError;
pub use rocmforge_dsl::codegen::EnginePart;
use rocmforge_dsl::DType;

use crate::plan::{ArgValue, DeviceLimits, LaunchError, TensorArg};

/// A checked launch of an engine kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct EnginePlan {
    /// The kernel symbol (`rf_gather_bf16`, ...).
    pub symbol: String,
    /// Workgroups per dimension.
    pub grid: [u32; 3],
    /// Threads per workgroup.
    pub block: [u32; 3],
    /// Arguments in parameter order.
    pub args: Vec<ArgValue>,
    /// A cooperative launch: every workgroup resident at once (the driver refuses the
    /// launch otherwise), as a kernel with grid barriers needs.
    pub cooperative: bool,
    /// The translation unit that defines the kernel.
    pub module: EngineModule,
}

/// Which translation unit an engine kernel is compiled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineModule {
    /// One part of the engine kernels of one storage dtype
    /// (`rocmforge_dsl::codegen::engine_source_for`): a model compiles only the parts
    /// and dtypes it launches, each module on its own thread.
    Engine(DType, EnginePart),
    /// The persistent decode step of one dtype and head dims a lane
    /// (`rocmforge_dsl::codegen::decode_step_source`).
    DecodeStep {
        /// Storage dtype.
        dtype: DType,
        /// Head dims a lane accumulates: 1, 2 or 4.
        dpl: u32,
        /// Query heads per KV head: 1 to 8.
        group: u32,
    },
}

impl EngineModule {
    /// The module's cache key (and NVRTC program name).
    pub fn key(&self) -> String {
        match self {
            EngineModule::Engine(dtype, part) => format!("rf_engine_{}_{}", dtype.name(), part.name()),
            EngineModule::DecodeStep { dtype, dpl, group } => format!("rf_decode_step_{}_d{dpl}_g{group}", dtype.name()),
        }
    }
}

impl EnginePlan {
    /// One 8-byte slot per parameter, as [`crate::LaunchPlan::param_slots`].
    pub fn param_slots(&self) -> Vec<[u8; 8]> {
        crate::plan::slots(&self.args)
    }
}

/// `out[m, n] = sum_k x[m, k] * w[n, k]` (a linear layer, weights `[out, in]` as in
/// HF checkpoints), f32 accumulation, through the vendor BLAS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmPlan {
    /// Rows of `x` and `out` (tokens).
    pub m: i32,
    /// Rows of `w`, columns of `out`.
    pub n: i32,
    /// The reduced dimension.
    pub k: i32,
    /// Dtype of `x` and `w`.
    pub dtype: DType,
    /// Dtype of `out`: the input dtype or f32.
    pub out_dtype: DType,
    /// Device addresses.
    pub x: u64,
    /// Weight address.
    pub w: u64,
    /// Output address.
    pub out: u64,
}

fn shape_err(kernel: &str, param: &str, expected: String, got: &[usize]) -> LaunchError {
    LaunchError::Args(ArgError::Shape { kernel: kernel.into(), param: param.into(), expected, got: got.to_vec() })
}

fn dtype_err(kernel: &str, param: &str, expected: String, got: DType) -> LaunchError {
    LaunchError::Args(ArgError::DType { kernel: kernel.into(), param: param.into(), expected, got, hint: String::new() })
}

/// `(rows, cols)` of a tensor of rank 1 or more, leading dimensions flattened.
fn rows_cols(kernel: &str, param: &str, t: &dyn TensorArg) -> Result<(u64, u64), LaunchError> {
    let s = t.shape();
    let Some((&cols, lead)) = s.split_last() else {
        return Err(shape_err(kernel, param, "at least one dimension".into(), s));
    };
    let rows = lead.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
    match rows {
        Some(r) if r > 0 && cols > 0 => Ok((r, cols as u64)),
        _ => Err(shape_err(kernel, param, "a non-empty tensor".into(), s)),
    }
}

fn int(kernel: &str, what: &'static str, v: u64) -> Result<i32, LaunchError> {
    i32::try_from(v).map_err(|_| LaunchError::Limit { kernel: kernel.into(), what, value: v, limit: i32::MAX as u64 })
}

/// Plans `out = x @ w^T`: `x` `[.., K]`, `w` `[N, K]`, `out` `[.., N]` with as many rows
/// as `x`. `x` and `w` share a float dtype; `out` has it too, or is f32 (logits).
pub fn plan_gemm(x: &dyn TensorArg, w: &dyn TensorArg, out: &dyn TensorArg) -> Result<GemmPlan, LaunchError> {
    const K: &str = "gemm";
    let dtype = x.dtype();
    if !dtype.is_float() {
        return Err(dtype_err(K, "x", "f32, f16 or bf16".into(), dtype));
    }
    if w.dtype() != dtype {
        return Err(dtype_err(K, "w", dtype.to_string(), w.dtype()));
    }
    if out.dtype() != dtype && out.dtype() != DType::F32 {
        return Err(dtype_err(K, "out", format!("{dtype} or f32"), out.dtype()));
    }
    let (m, k) = rows_cols(K, "x", x)?;
    if w.shape().len() != 2 || w.shape()[1] as u64 != k || w.shape()[0] == 0 {
        return Err(shape_err(K, "w", format!("[N, {k}] (the last dimension of x)"), w.shape()));
    }
    let n = w.shape()[0] as u64;
    let (om, on) = rows_cols(K, "out", out)?;
    if om != m || on != n {
        return Err(shape_err(K, "out", format!("{m} rows of {n} (rows of x, rows of w)"), out.shape()));
    }
    Ok(GemmPlan {
        m: int(K, "rows", m)?,
        n: int(K, "output columns", n)?,
        k: int(K, "reduced dimension", k)?,
        dtype,
        out_dtype: out.dtype(),
        x: x.device_ptr(),
        w: w.device_ptr(),
        out: out.device_ptr(),
    })
}

fn engine_symbol(kernel: &str, dtype: DType) -> Result<String, LaunchError> {
    if !dtype.is_float() {
        return Err(dtype_err(kernel, "x", "f32, f16 or bf16".into(), dtype));
    }
    Ok(format!("rf_{kernel}_{}", dtype.name()))
}

fn rows_grid(limits: &DeviceLimits, rows: u64) -> [u32; 3] {
    [rows.min(u64::from(limits.max_grid[0])).max(1) as u32, 1, 1]
}

fn i64_of(kernel: &str, what: &'static str, v: u64) -> Result<i64, LaunchError> {
    i64::try_from(v).map_err(|_| LaunchError::Limit { kernel: kernel.into(), what, value: v, limit: i64::MAX as u64 })
}

/// Plans `out[r] = table[idx[r]]`: `table` `[rows, cols]`, `idx` i32 `[n]`, `out` `[n, cols]`
/// in the table's dtype. An index out of range gives a zero row on the device; callers
/// check ids first (a zero row is not a meaningful embedding).
pub fn plan_gather(
    limits: &DeviceLimits,
    table: &dyn TensorArg,
    idx: &dyn TensorArg,
    out: &dyn TensorArg,
) -> Result<EnginePlan, LaunchError> {
    const K: &str = "gather";
    let symbol = engine_symbol(K, table.dtype())?;
    if idx.dtype() != DType::I32 {
        return Err(dtype_err(K, "idx", "i32".into(), idx.dtype()));
    }
    let (rows, cols, vec) = gather_table(K, table, out)?;
    let n = match idx.shape() {
        [n] if *n > 0 => *n as u64,
        s => return Err(shape_err(K, "idx", "[n], non-empty".into(), s)),
    };
    if out.shape() != [n as usize, cols as usize] {
        return Err(shape_err(K, "out", format!("[{n}, {cols}]"), out.shape()));
    }
    Ok(EnginePlan {
        cooperative: false,
        module: EngineModule::Engine(table.dtype(), EnginePart::Misc),
        symbol,
        grid: rows_grid(limits, n),
        block: [256, 1, 1],
        args: vec![
            ArgValue::Ptr(table.device_ptr()),
            ArgValue::Ptr(idx.device_ptr()),
            ArgValue::Ptr(out.device_ptr()),
            ArgValue::I64(i64_of(K, "rows", n)?),
            ArgValue::I64(i64_of(K, "cols", cols)?),
            ArgValue::I64(i64_of(K, "table rows", rows)?),
            ArgValue::I32(i32::from(vec)),
        ],
    })
}

/// A row gather's table and output, checked: `table` `[rows, cols]`, non-empty, `out` in
/// its dtype. `(rows, cols, vec)`: `vec` where rows are copied in 16-byte groups (the row
/// bytes and both base addresses 16-byte aligned).
fn gather_table(kernel: &str, table: &dyn TensorArg, out: &dyn TensorArg) -> Result<(u64, u64, bool), LaunchError> {
    if out.dtype() != table.dtype() {
        return Err(dtype_err(kernel, "out", table.dtype().to_string(), out.dtype()));
    }
    let ts = table.shape();
    if ts.len() != 2 || ts[0] == 0 || ts[1] == 0 {
        return Err(shape_err(kernel, "table", "[rows, cols], non-empty".into(), ts));
    }
    let (rows, cols) = (ts[0] as u64, ts[1] as u64);
    let vec = (cols * table.dtype().size() as u64).is_multiple_of(16)
        && table.device_ptr().is_multiple_of(16)
        && out.device_ptr().is_multiple_of(16);
    Ok((rows, cols, vec))
}

/// The index of a one-sequence decode step, as the model stages it (i32 windows of one
/// element each, and the sequence's block table row).
#[derive(Clone, Copy)]
pub struct DecodeIndex<'a> {
    /// The token id fed.
    pub ids: &'a dyn TensorArg,
    /// Its position.
    pub pos: &'a dyn TensorArg,
    /// Its page slot (page * block_size + offset).
    pub slots: &'a dyn TensorArg,
    /// The sequence's length with it.
    pub lens: &'a dyn TensorArg,
    /// The block table row (pages of the sequence).
    pub table: &'a dyn TensorArg,
}

impl std::fmt::Debug for DecodeIndex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodeIndex").field("table", &self.table.shape()).finish()
    }
}

/// Plans the next step of a one-sequence decode staged on the device over `index`, the
/// step before's (`rf_decode_advance_f32`, in the f32 module whatever the weights):
/// position and length + 1, the slot through the table row, the id from `next` (the last
/// argmax). The caller keeps the new position inside the pages of the row (the kernel
/// cannot check it).
pub fn plan_decode_advance(index: &DecodeIndex<'_>, next: &dyn TensorArg, block_size: usize) -> Result<EnginePlan, LaunchError> {
    const K: &str = "decode_advance";
    Ok(EnginePlan {
        cooperative: false,
        module: EngineModule::Engine(DType::F32, EnginePart::Misc),
        symbol: "rf_decode_advance_f32".into(),
        grid: [1, 1, 1],
        block: [32, 1, 1],
        args: advance_args(K, index, next, block_size)?,
    })
}

/// The leading arguments of a decode advance, checked: the index's and `next`'s
/// addresses (each i32, at least one element), then the block size (positive).
fn advance_args(kernel: &str, index: &DecodeIndex<'_>, next: &dyn TensorArg, block_size: usize) -> Result<Vec<ArgValue>, LaunchError> {
    let mut args = Vec::with_capacity(12);
    for (name, t) in
        [("ids", index.ids), ("pos", index.pos), ("slots", index.slots), ("lens", index.lens), ("table", index.table), ("next", next)]
    {
        if t.dtype() != DType::I32 {
            return Err(dtype_err(kernel, name, "i32".into(), t.dtype()));
        }
        if t.shape().iter().product::<usize>() == 0 {
            return Err(shape_err(kernel, name, "at least one element".into(), t.shape()));
        }
        args.push(ArgValue::Ptr(t.device_ptr()));
    }
    let bs = i32::try_from(block_size).ok().filter(|&b| b > 0).ok_or(LaunchError::Limit {
        kernel: kernel.into(),
        what: "block size",
        value: block_size as u64,
        limit: i32::MAX as u64,
    })?;
    args.push(ArgValue::I32(bs));
    Ok(args)
}

/// Plans the next step of a one-sequence greedy decode and its embedding in one launch
/// (`rf_decode_advance_gather_<dt>`, one workgroup): the id from `next` (the last argmax,
/// i32 `[1]`), the index advanced as [`plan_decode_advance`] does, and the token's row of
/// `embed` (`[vocab, hidden]`) into `out` (`hidden` elements) as [`plan_gather`] does. The
/// caller keeps the new position inside the pages of the row.
pub fn plan_decode_advance_gather(
    index: &DecodeIndex<'_>,
    next: &dyn TensorArg,
    embed: &dyn TensorArg,
    out: &dyn TensorArg,
    block_size: usize,
) -> Result<EnginePlan, LaunchError> {
    const K: &str = "decode_advance_gather";
    let symbol = engine_symbol(K, embed.dtype())?;
    let mut args = advance_args(K, index, next, block_size)?;
    let (rows, cols, vec) = gather_table(K, embed, out)?;
    if out.shape().iter().product::<usize>() as u64 != cols {
        return Err(shape_err(K, "out", format!("{cols} elements (one row)"), out.shape()));
    }
    args.extend([
        ArgValue::Ptr(embed.device_ptr()),
        ArgValue::Ptr(out.device_ptr()),
        ArgValue::I64(i64_of(K, "cols", cols)?),
        ArgValue::I64(i64_of(K, "table rows", rows)?),
        ArgValue::I32(i32::from(vec)),
    ]);
    Ok(EnginePlan {
        cooperative: false,
        module: EngineModule::Engine(embed.dtype(), EnginePart::Misc),
        symbol,
        grid: [1, 1, 1],
        block: [256, 1, 1],
        args,
    })
}

/// Columns one argmax workgroup reduces ([`plan_argmax`] cuts a row into chunks).
const ARGMAX_CHUNK: u64 = 2048;
/// Most chunks of one argmax row.
const ARGMAX_MAX_PARTS: u64 = 1024;

fn argmax_parts(cols: u64) -> (u64, u64) {
    row_parts(cols, ARGMAX_CHUNK, ARGMAX_MAX_PARTS)
}

/// A row of `cols` cut into parts of about `chunk` columns, at most `max_parts`: (parts,
/// columns a part, the last one shorter).
fn row_parts(cols: u64, chunk: u64, max_parts: u64) -> (u64, u64) {
    let parts = cols.div_ceil(chunk).clamp(1, max_parts);
    (parts, cols.div_ceil(parts))
}

/// f32 elements of the workspace [`plan_argmax`] needs for `rows` rows of `cols`: a
/// (value, index) pair per chunk.
pub fn argmax_workspace(rows: usize, cols: usize) -> usize {
    let (parts, _) = argmax_parts(cols as u64);
    rows.saturating_mul(2 * parts as usize)
}

/// Plans `out[r] = argmax(x[r, :])` (lowest index on ties): `x` `[rows, cols]` (or
/// `[cols]`), `out` i32 `[rows]`. A row is cut into chunks of about 2048 columns, one
/// workgroup each, and the last to finish reduces them: `counters` is u32, at least
/// `rows` elements, zero before the first launch (each launch leaves them zero); `ws`
/// is f32, at least [`argmax_workspace`] elements.
/// `also`, i32 `[rows]` where given, receives the ids too (a decode keeps its history
/// there without a copy after each step).
pub fn plan_argmax(
    limits: &DeviceLimits,
    x: &dyn TensorArg,
    out: &dyn TensorArg,
    also: Option<&dyn TensorArg>,
    counters: &dyn TensorArg,
    ws: &dyn TensorArg,
) -> Result<EnginePlan, LaunchError> {
    const K: &str = "argmax";
    let symbol = engine_symbol(K, x.dtype())?;
    let (rows, cols) = rows_cols(K, "x", x)?;
    int(K, "columns", cols)?;
    for (name, o) in [("out", Some(out)), ("also", also)] {
        let Some(o) = o else { continue };
        if o.dtype() != DType::I32 {
            return Err(dtype_err(K, name, "i32".into(), o.dtype()));
        }
        if o.shape().iter().product::<usize>() as u64 != rows {
            return Err(shape_err(K, name, format!("{rows} elements, one per row of x"), o.shape()));
        }
    }
    workspace(K, "counters", counters, DType::U32, rows as usize)?;
    workspace(K, "ws", ws, DType::F32, argmax_workspace(rows as usize, cols as usize))?;
    let (grid, mut args) = parted_rows(K, limits, x, rows, cols, argmax_parts(cols))?;
    args.extend([
        ArgValue::Ptr(out.device_ptr()),
        ArgValue::Ptr(also.map_or(0, |a| a.device_ptr())),
        ArgValue::Ptr(counters.device_ptr()),
        ArgValue::Ptr(ws.device_ptr()),
    ]);
    Ok(EnginePlan { cooperative: false, module: EngineModule::Engine(x.dtype(), EnginePart::Misc), symbol, grid, block: [256, 1, 1], args })
}

/// The launch of a kernel that cuts each row of `x` (`rows` x `cols`) into `parts`
/// workgroups of `chunk` columns (`row_parts`: the argmax, the softmax normalizer):
/// grid `[parts, rows]` (rows within the grid's y limit), and the leading arguments
/// `(x, rows, cols, chunk, parts)`.
fn parted_rows(
    kernel: &str,
    limits: &DeviceLimits,
    x: &dyn TensorArg,
    rows: u64,
    cols: u64,
    (parts, chunk): (u64, u64),
) -> Result<([u32; 3], Vec<ArgValue>), LaunchError> {
    if rows > u64::from(limits.max_grid[1]) {
        return Err(LaunchError::Limit { kernel: kernel.into(), what: "rows", value: rows, limit: u64::from(limits.max_grid[1]) });
    }
    let args = vec![
        ArgValue::Ptr(x.device_ptr()),
        ArgValue::I64(i64_of(kernel, "rows", rows)?),
        ArgValue::I64(i64_of(kernel, "cols", cols)?),
        ArgValue::I64(i64_of(kernel, "chunk", chunk)?),
        ArgValue::I32(int(kernel, "parts", parts)?),
    ];
    Ok(([parts as u32, rows as u32, 1], args))
}

/// Checks a workspace of `dtype` with at least `need` elements.
fn workspace(kernel: &str, name: &str, ws: &dyn TensorArg, dtype: DType, need: usize) -> Result<(), LaunchError> {
    if ws.dtype() != dtype {
        return Err(dtype_err(kernel, name, dtype.to_string(), ws.dtype()));
    }
    let have = ws.shape().iter().product::<usize>();
    if have < need {
        return Err(shape_err(kernel, name, format!("at least {need} elements"), ws.shape()));
    }
    Ok(())
}

fn block_1024(kernel: &str, limits: &DeviceLimits) -> Result<(), LaunchError> {
    if limits.max_threads_per_block < 1024 {
        return Err(LaunchError::Limit {
            kernel: kernel.into(),
            what: "threads per workgroup",
            value: 1024,
            limit: u64::from(limits.max_threads_per_block),
        });
    }
    Ok(())
}

/// Plans sampling penalties applied in place to f32 `logits` `[rows, cols]`: `ent` is
/// i32 `[n, 4]`, each entry (row, token, repetition penalty, amount subtracted), the last
/// two as f32 bits, no (row, token) twice. A positive logit is divided by the repetition
/// penalty, a negative one multiplied, then the amount is subtracted (the host sampler's
/// order). Entries out of range are skipped on the device.
pub fn plan_penalize(limits: &DeviceLimits, logits: &dyn TensorArg, ent: &dyn TensorArg) -> Result<EnginePlan, LaunchError> {
    const K: &str = "penalize";
    if logits.dtype() != DType::F32 {
        return Err(dtype_err(K, "logits", "f32".into(), logits.dtype()));
    }
    let (rows, cols) = rows_cols(K, "logits", logits)?;
    if ent.dtype() != DType::I32 {
        return Err(dtype_err(K, "ent", "i32".into(), ent.dtype()));
    }
    let n = match ent.shape() {
        [n, 4] if *n > 0 => *n as u64,
        s => return Err(shape_err(K, "ent", "[n, 4], non-empty".into(), s)),
    };
    let n32 = int(K, "entries", n)?;
    let blocks = n.div_ceil(256);
    if blocks > u64::from(limits.max_grid[0]) {
        return Err(LaunchError::Limit { kernel: K.into(), what: "entries", value: n, limit: u64::from(limits.max_grid[0]) * 256 });
    }
    Ok(EnginePlan {
        cooperative: false,
        module: EngineModule::Engine(DType::F32, EnginePart::Misc),
        symbol: "rf_penalize_f32".into(),
        grid: [blocks as u32, 1, 1],
        block: [256, 1, 1],
        args: vec![
            ArgValue::Ptr(logits.device_ptr()),
            ArgValue::I64(i64_of(K, "rows", rows)?),
            ArgValue::I64(i64_of(K, "cols", cols)?),
            ArgValue::Ptr(ent.device_ptr()),
            ArgValue::I32(n32),
        ],
    })
}

/// Columns of each workgroup of [`plan_softmax_mass`].
const MASS_CHUNK: u64 = 1024;
/// Most workgroups a row of [`plan_softmax_mass`].
const MASS_MAX_PARTS: u64 = 1024;

/// Parts [`plan_softmax_mass`] cuts a row of `cols` into, and each part's columns.
pub fn softmax_mass_parts(cols: usize) -> (usize, usize) {
    let (parts, chunk) = row_parts(cols as u64, MASS_CHUNK, MASS_MAX_PARTS);
    (parts as usize, chunk as usize)
}

/// Plans each row's softmax normalizer in parts, for a draw over the top candidates: row
/// `r` of f32 `x` `[rows, cols]` is cut into the [`softmax_mass_parts`] of `cols`, and part
/// `j` writes `out[r, j] = (m, s)`: `m` its largest non-NaN logit, `s = sum exp(l / t -
/// m / t)` over its non-NaN logits `l`, `t` the row's temperature in i32 `temps` `[rows]`
/// (f32 bits). A row whose temperature is not positive, and a part without a non-NaN
/// logit, gets `(-inf, 0)`. `out` is f32 `[rows, parts, 2]`; the caller merges the parts.
pub fn plan_softmax_mass(
    limits: &DeviceLimits,
    x: &dyn TensorArg,
    temps: &dyn TensorArg,
    out: &dyn TensorArg,
) -> Result<EnginePlan, LaunchError> {
    const K: &str = "softmax_mass";
    if x.dtype() != DType::F32 {
        return Err(dtype_err(K, "x", "f32".into(), x.dtype()));
    }
    let (rows, cols) = rows_cols(K, "x", x)?;
    if temps.dtype() != DType::I32 {
        return Err(dtype_err(K, "temps", "i32".into(), temps.dtype()));
    }
    if temps.shape().iter().product::<usize>() as u64 != rows {
        return Err(shape_err(K, "temps", format!("{rows} elements, one per row of x"), temps.shape()));
    }
    let (parts, chunk) = softmax_mass_parts(cols as usize);
    if out.dtype() != DType::F32 {
        return Err(dtype_err(K, "out", "f32".into(), out.dtype()));
    }
    if out.shape() != [rows as usize, parts, 2] {
        return Err(shape_err(K, "out", format!("[{rows}, {parts}, 2]"), out.shape()));
    }
    let (grid, mut args) = parted_rows(K, limits, x, rows, cols, (parts as u64, chunk as u64))?;
    args.extend([ArgValue::Ptr(temps.device_ptr()), ArgValue::Ptr(out.device_ptr())]);
    let module = EngineModule::Engine(DType::F32, EnginePart::Misc);
    Ok(EnginePlan { cooperative: false, module, symbol: "rf_softmax_mass_f32".into(), grid, block: [256, 1, 1], args })
}

/// Most candidates [`plan_topk_staged`] selects per row.
pub const TOPK_MAX: usize = 1024;

/// Entries one workgroup of the staged top-k ([`plan_topk_staged`]) holds in shared memory.
const TOPK_SPAN: u64 = 8192;

/// Workgroups of the staged top-k's first stage for rows of `cols`, and of its second
/// (0 where one stage does), for `k` candidates.
fn topk_stage_parts(cols: u64, k: u64) -> (u64, u64) {
    let p1 = cols.div_ceil(TOPK_SPAN);
    let p2 = if p1 > 1 { p1.div_ceil(TOPK_SPAN / k) } else { 0 };
    (p1, if p2 > 1 { p2 } else { 0 })
}

/// Elements of each of the two workspaces (f32 values, i32 ids) [`plan_topk_staged`] needs
/// for `rows` rows of `cols` and `k` candidates.
pub fn topk_staged_workspace(rows: usize, cols: usize, k: usize) -> usize {
    let (p1, p2) = topk_stage_parts(cols as u64, k.max(1) as u64);
    let parts = if p1 > 1 { p1 + p2 } else { 0 };
    rows.saturating_mul(k).saturating_mul(parts as usize)
}

/// Plans the `k` largest values of each row of f32 `x` `[rows, cols]` with their indices,
/// unordered, in stages that run on many multiprocessors: the first
/// cuts each row into chunks of up to 8192 (one workgroup each, the chunk in shared memory)
/// and keeps each chunk's k largest; each next stage keeps the k largest of up to 8192 of
/// those, until one workgroup is left, which writes `vals` f32 `[rows, k]` and `ids` i32
/// `[rows, k]`. `ws_vals` (f32) and `ws_ids` (i32) hold the stages' candidates, at least
/// [`topk_staged_workspace`] elements each. `1 <= k <= min(cols, TOPK_MAX)`. Returns the
/// launches, in order.
pub fn plan_topk_staged(
    limits: &DeviceLimits,
    x: &dyn TensorArg,
    k: usize,
    vals: &dyn TensorArg,
    ids: &dyn TensorArg,
    ws_vals: &dyn TensorArg,
    ws_ids: &dyn TensorArg,
) -> Result<Vec<EnginePlan>, LaunchError> {
    const K: &str = "topk_staged";
    if x.dtype() != DType::F32 {
        return Err(dtype_err(K, "x", "f32".into(), x.dtype()));
    }
    let (rows, cols) = rows_cols(K, "x", x)?;
    int(K, "columns", cols)?;
    let max = cols.min(TOPK_MAX as u64);
    if k == 0 || k as u64 > max {
        return Err(LaunchError::Limit { kernel: K.into(), what: "k", value: k as u64, limit: max });
    }
    for (name, t, dt) in [("vals", vals, DType::F32), ("ids", ids, DType::I32)] {
        if t.dtype() != dt {
            return Err(dtype_err(K, name, dt.to_string(), t.dtype()));
        }
        if t.shape() != [rows as usize, k] {
            return Err(shape_err(K, name, format!("[{rows}, {k}]"), t.shape()));
        }
    }
    let need = topk_staged_workspace(rows as usize, cols as usize, k);
    workspace(K, "ws_vals", ws_vals, DType::F32, need)?;
    workspace(K, "ws_ids", ws_ids, DType::I32, need)?;
    if rows > u64::from(limits.max_grid[1]) {
        return Err(LaunchError::Limit { kernel: K.into(), what: "rows", value: rows, limit: u64::from(limits.max_grid[1]) });
    }
    block_1024(K, limits)?;
    let k64 = k as u64;
    let (p1, _) = topk_stage_parts(cols, k64);
    // Candidates of the stages alternate between the workspaces' two regions.
    let region = |i: u64| -> u64 {
        if i.is_multiple_of(2) {
            0
        } else {
            rows * k64 * p1
        }
    };
    let elem = 4u64;
    let mut plans = Vec::new();
    let (mut n_in, mut parts_in) = (cols, 0u64);
    let mut stage = 0u64;
    loop {
        // Stage 0 reads the row; the next ones the candidates before them.
        let (parts, span) = if stage == 0 {
            let p = cols.div_ceil(TOPK_SPAN);
            (p, cols.div_ceil(p))
        } else {
            let per = TOPK_SPAN / k64;
            (parts_in.div_ceil(per), per * k64)
        };
        let last = parts == 1;
        let (in_vals, in_ids) = if stage == 0 {
            (x.device_ptr(), 0)
        } else {
            let off = region(stage - 1) * elem;
            (ws_vals.device_ptr() + off, ws_ids.device_ptr() + off)
        };
        let (out_vals, out_ids) = if last {
            (vals.device_ptr(), ids.device_ptr())
        } else {
            let off = region(stage) * elem;
            (ws_vals.device_ptr() + off, ws_ids.device_ptr() + off)
        };
        plans.push(EnginePlan {
            cooperative: false,
            module: EngineModule::Engine(DType::F32, EnginePart::Misc),
            symbol: "rf_topk_stage_f32".into(),
            grid: [parts as u32, rows as u32, 1],
            block: [1024, 1, 1],
            args: vec![
                ArgValue::Ptr(in_vals),
                ArgValue::Ptr(in_ids),
                ArgValue::I64(i64_of(K, "rows", rows)?),
                ArgValue::I64(i64_of(K, "entries", n_in)?),
                ArgValue::I64(span as i64),
                ArgValue::I32(k as i32),
                ArgValue::I32(parts as i32),
                ArgValue::Ptr(out_vals),
                ArgValue::Ptr(out_ids),
            ],
        });
        if last {
            return Ok(plans);
        }
        n_in = parts * k64;
        parts_in = parts;
        stage += 1;
    }
}

/// Most rows of `x` the matrix-vector kernel takes (decode of up to this many tokens).
pub const GEMV_MAX_ROWS: usize = 8;

/// An RMSNorm fused before a matrix-vector product: each row of `x` times
/// `rsqrt(mean(x^2) + eps)`, then times `weight` where given. Without a weight the
/// product's weight matrix carries it, folded into its columns (`w[r, c] * weight[c]`,
/// as the models' GPU loader stores q/k/v and gate/up), so the product does not load
/// it. The scale is applied to each dot product after the sum, so both forms stream
/// the same bytes of `w`.
#[derive(Clone, Copy)]
pub struct RmsNorm<'a> {
    /// The norm's weight `[k]`; `None`: folded into the product's weights.
    pub weight: Option<&'a dyn TensorArg>,
    /// Added to the mean square before the reciprocal square root.
    pub eps: f32,
}

impl<'a> RmsNorm<'a> {
    /// The norm with its weight applied to `x`.
    pub fn new(weight: &'a dyn TensorArg, eps: f32) -> Self {
        RmsNorm { weight: Some(weight), eps }
    }

    /// The norm whose weight is folded into the product's weights.
    pub fn folded(eps: f32) -> Self {
        RmsNorm { weight: None, eps }
    }

    /// The kernels' fusion mode (1: weighted, 3: folded), its weight's address (0 when
    /// folded) and epsilon, the weight checked against `k` elements of `dtype`.
    fn args(&self, kernel: &str, dtype: DType, k: u64) -> Result<(i32, u64, f32), LaunchError> {
        match self.weight {
            Some(t) => Ok((1, vector_arg(kernel, "norm_w", t, dtype, k)?, self.eps)),
            None => Ok((3, 0, self.eps)),
        }
    }
}

impl std::fmt::Debug for RmsNorm<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RmsNorm").field("weight", &self.weight.map(|t| t.shape().to_vec())).field("eps", &self.eps).finish()
    }
}

/// What a matrix-vector product fuses around itself (decode steps).
#[derive(Clone, Copy, Default)]
pub struct GemvFusion<'a> {
    /// RMSNorm of each row of `x` first.
    pub norm: Option<RmsNorm<'a>>,
    /// SwiGLU of `x` first: `x` is `[m, 2k]`, gate columns then up.
    pub swiglu: bool,
    /// `+ bias[r]`, `[n]`.
    pub bias: Option<&'a dyn TensorArg>,
    /// `+ res[m, r]`, `[m, n]` (may be the output itself: a residual add in place).
    pub residual: Option<&'a dyn TensorArg>,
}

impl std::fmt::Debug for GemvFusion<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GemvFusion")
            .field("norm", &self.norm.is_some())
            .field("swiglu", &self.swiglu)
            .field("bias", &self.bias.is_some())
            .field("residual", &self.residual.is_some())
            .finish()
    }
}

/// The address of a vector argument of a product (norm weight, bias): `len` elements of
/// `dtype`, any shape.
fn vector_arg(kernel: &str, name: &str, t: &dyn TensorArg, dtype: DType, len: u64) -> Result<u64, LaunchError> {
    if t.dtype() != dtype {
        return Err(dtype_err(kernel, name, dtype.to_string(), t.dtype()));
    }
    if t.shape().iter().product::<usize>() as u64 != len {
        return Err(shape_err(kernel, name, format!("{len} elements"), t.shape()));
    }
    Ok(t.device_ptr())
}

/// Warps a row (or a pair of rows) of the matrix-vector products ([`plan_gemv`],
/// [`plan_gemv_pairs`], the `x2` symbols) over `units` rows or pairs of `groups` 16-byte
/// groups (`vec`: the 16-byte path; the element path takes 1): 2 where twice the units
/// still fit one wave of 32 warps a multiprocessor (the two-warp kernels are held to 64
/// registers for it) and each warp's half of a row gives every lane two rounds of loads;
/// else 1. Fewer warps than that leave too few loads in flight to reach the memory's
/// rate: in one graph of the Llama-3.2-1B step's products
/// (`scripts/membench/step_ceiling.cu`, H200), two warps a row for the q/k/v, o and down
/// products took the step from 795 to 723 us; four, or two for the gate/up product
/// (16384 rows) or the LM head, were slower. Where the plain and paired products cut a
/// row the same way they are bit-identical; they may differ in the last bit where not.
pub fn gemv_split(limits: &DeviceLimits, units: u64, groups: u64, vec: bool) -> i32 {
    let one_wave = 2 * units <= u64::from(limits.compute_units.max(1)) * 32;
    if vec && one_wave && groups.is_multiple_of(2) && groups / 2 >= 64 {
        2
    } else {
        1
    }
}

/// Plans `out = f(x) @ w^T (+ bias) (+ res)` for a few rows of `x` (at most
/// [`GEMV_MAX_ROWS`]) with the bandwidth-bound matrix-vector kernel instead of the
/// vendor BLAS; `f` is the identity, an RMSNorm or SwiGLU ([`GemvFusion`]). Shapes as
/// [`plan_gemm`] (with SwiGLU, `x` has twice `w`'s columns).
pub fn plan_gemv(
    limits: &DeviceLimits,
    x: &dyn TensorArg,
    w: &dyn TensorArg,
    out: &dyn TensorArg,
    fuse: &GemvFusion<'_>,
) -> Result<EnginePlan, LaunchError> {
    const K: &str = "gemv";
    let dtype = x.dtype();
    let (xm, xk) = rows_cols(K, "x", x)?;
    let k = if fuse.swiglu {
        if xk % 2 != 0 {
            return Err(shape_err(K, "x", "[m, 2k]: gate and up columns".into(), x.shape()));
        }
        xk / 2
    } else {
        xk
    };
    // The product's checks on the shapes it sees: x as [m, k].
    let xd = crate::plan::TensorDesc::new(dtype, &[xm as usize, k as usize], x.device_ptr());
    let g = plan_gemm(&xd, w, out)?;
    let m = g.m as usize;
    if m > GEMV_MAX_ROWS {
        return Err(LaunchError::Limit { kernel: K.into(), what: "rows of x", value: m as u64, limit: GEMV_MAX_ROWS as u64 });
    }
    if fuse.norm.is_some() && fuse.swiglu {
        return Err(LaunchError::Kernel("gemv fuses an RMSNorm or a SwiGLU, not both".into()));
    }
    let vector = |name: &str, t: &dyn TensorArg, len: u64| vector_arg(K, name, t, dtype, len);
    let (norm_mode, norm, eps) = match fuse.norm {
        Some(n) => n.args(K, dtype, k)?,
        None => (0, 0, 0.0),
    };
    let bias = fuse.bias.map(|t| vector("bias", t, g.n as u64)).transpose()?.unwrap_or(0);
    let res = match fuse.residual {
        Some(t) => {
            if t.dtype() != out.dtype() {
                return Err(dtype_err(K, "res", out.dtype().to_string(), t.dtype()));
            }
            if t.shape() != out.shape() {
                return Err(shape_err(K, "res", format!("{:?} (the output's shape)", out.shape()), t.shape()));
            }
            t.device_ptr()
        }
        None => 0,
    };
    if res != 0 && out.dtype() != dtype {
        return Err(dtype_err(K, "out", format!("{dtype} with a residual"), out.dtype()));
    }
    let mt = m.next_power_of_two();
    let v = (16 / dtype.size()) as i32;
    let vec = g.k % v == 0 && [g.x, g.w, norm].iter().all(|p| p.is_multiple_of(16));
    let mode = if fuse.norm.is_some() {
        norm_mode
    } else if fuse.swiglu {
        2
    } else {
        0
    };
    let split = gemv_split(limits, g.n as u64, g.k as u64 / v as u64, vec);
    Ok(EnginePlan {
        cooperative: false,
        module: EngineModule::Engine(dtype, EnginePart::Gemv(mt as u32)),
        symbol: format!("rf_gemv{mt}{}_{}", if split == 2 { "x2" } else { "" }, dtype.name()),
        grid: rows_grid(limits, (g.n as u64).div_ceil(4 / split as u64)),
        block: [128, 1, 1],
        args: vec![
            ArgValue::Ptr(g.x),
            ArgValue::Ptr(g.w),
            ArgValue::Ptr(g.out),
            ArgValue::I32(g.m),
            ArgValue::I64(i64::from(g.n)),
            ArgValue::I32(g.k),
            ArgValue::I32(i32::from(vec)),
            ArgValue::I32(i32::from(g.out_dtype != dtype)),
            ArgValue::I32(mode),
            ArgValue::Ptr(norm),
            ArgValue::F32(eps),
            ArgValue::Ptr(bias),
            ArgValue::Ptr(res),
        ],
    })
}

/// The tensors of [`plan_qkv_post`].
#[derive(Clone, Copy)]
pub struct QkvPost<'a> {
    /// The fused product `[tokens, (heads + 2 kv_heads) * head_dim]`.
    pub qkv: &'a dyn TensorArg,
    /// Rotated queries out, `[tokens, heads, head_dim]`.
    pub q_out: &'a dyn TensorArg,
    /// Paged key cache `[pages, page_size, kv_heads, head_dim]`.
    pub k_cache: &'a dyn TensorArg,
    /// Paged value cache, same shape.
    pub v_cache: &'a dyn TensorArg,
    /// i32 `[tokens]`: positions.
    pub pos: &'a dyn TensorArg,
    /// i32 `[tokens]`: cache slots (`page * page_size + offset`; negative: skipped).
    pub slots: &'a dyn TensorArg,
    /// f32 `[half_rot]`: rotary frequencies (`half_rot <= head_dim / 2`).
    pub inv_freq: &'a dyn TensorArg,
    /// Per-head RMSNorm weights `[head_dim]` for q and k (Qwen3), or neither.
    pub qk_norm: Option<(&'a dyn TensorArg, &'a dyn TensorArg)>,
}

impl std::fmt::Debug for QkvPost<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QkvPost").field("qkv", &self.qkv.shape()).field("q_out", &self.q_out.shape()).finish()
    }
}

/// The sizes [`check_qkv_post`] found.
struct QkvDims {
    tokens: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    half_rot: usize,
    q_norm: u64,
    k_norm: u64,
}

/// The checks of the q/k/v stage's tensors, shared by [`plan_qkv_post`] and the fused
/// stage of [`plan_gemv_pairs`] (which names itself in the errors).
fn check_qkv_post(kernel: &str, a: &QkvPost<'_>) -> Result<QkvDims, LaunchError> {
    let dt = a.qkv.dtype();
    let qs = a.q_out.shape();
    let cs = a.k_cache.shape();
    let (&[t, heads, d], &[_, _, kvh, cd]) = (qs, cs) else {
        return Err(shape_err(
            kernel,
            "q_out / k_cache",
            "[tokens, heads, head_dim] and [pages, page_size, kv_heads, head_dim]".into(),
            qs,
        ));
    };
    if d == 0 || d > 256 || cd != d || t == 0 || heads == 0 || kvh == 0 {
        return Err(shape_err(kernel, "k_cache", format!("[pages, page_size, kv_heads, {d}] with head_dim 1 to 256"), cs));
    }
    if a.v_cache.shape() != cs {
        return Err(shape_err(kernel, "v_cache", format!("{cs:?} (the k cache's shape)"), a.v_cache.shape()));
    }
    let nh = heads + 2 * kvh;
    if a.qkv.shape().iter().product::<usize>() != t * nh * d {
        return Err(shape_err(kernel, "qkv", format!("[{t}, {}] (tokens, (heads + 2 kv_heads) x head_dim)", nh * d), a.qkv.shape()));
    }
    for (name, x) in [("q_out", a.q_out), ("k_cache", a.k_cache), ("v_cache", a.v_cache)] {
        if x.dtype() != dt {
            return Err(dtype_err(kernel, name, dt.to_string(), x.dtype()));
        }
    }
    for (name, x) in [("pos", a.pos), ("slots", a.slots)] {
        if x.dtype() != DType::I32 {
            return Err(dtype_err(kernel, name, "i32".into(), x.dtype()));
        }
        if x.shape() != [t] {
            return Err(shape_err(kernel, name, format!("[{t}]"), x.shape()));
        }
    }
    if a.inv_freq.dtype() != DType::F32 {
        return Err(dtype_err(kernel, "inv_freq", "f32".into(), a.inv_freq.dtype()));
    }
    let half = match a.inv_freq.shape() {
        [h] if *h > 0 && 2 * *h <= d => *h,
        s => return Err(shape_err(kernel, "inv_freq", format!("[n] with 1 <= n <= {}", d / 2), s)),
    };
    let (q_norm, k_norm) = match a.qk_norm {
        Some((q, k)) => {
            for (name, x) in [("q_norm", q), ("k_norm", k)] {
                if x.dtype() != dt {
                    return Err(dtype_err(kernel, name, dt.to_string(), x.dtype()));
                }
                if x.shape() != [d] {
                    return Err(shape_err(kernel, name, format!("[{d}]"), x.shape()));
                }
            }
            (q.device_ptr(), k.device_ptr())
        }
        None => (0, 0),
    };
    Ok(QkvDims { tokens: t, heads, kv_heads: kvh, head_dim: d, half_rot: half, q_norm, k_norm })
}

/// Plans the fused stage after the q/k/v product: per-head norm (optional), rotary
/// embedding of q and k, q out, k and v into the paged caches.
pub fn plan_qkv_post(limits: &DeviceLimits, a: &QkvPost<'_>, mscale: f32, eps: f32) -> Result<EnginePlan, LaunchError> {
    const K: &str = "qkv_post";
    let symbol = engine_symbol(K, a.qkv.dtype())?;
    let d = check_qkv_post(K, a)?;
    let items = (d.tokens as u64).checked_mul((d.heads + 2 * d.kv_heads) as u64).ok_or(LaunchError::Limit {
        kernel: K.into(),
        what: "items",
        value: u64::MAX,
        limit: i64::MAX as u64,
    })?;
    Ok(EnginePlan {
        cooperative: false,
        module: EngineModule::Engine(a.qkv.dtype(), EnginePart::Misc),
        symbol,
        grid: rows_grid(limits, items.div_ceil(4)),
        block: [128, 1, 1],
        args: vec![
            ArgValue::Ptr(a.qkv.device_ptr()),
            ArgValue::Ptr(a.q_out.device_ptr()),
            ArgValue::Ptr(a.k_cache.device_ptr()),
            ArgValue::Ptr(a.v_cache.device_ptr()),
            ArgValue::Ptr(a.pos.device_ptr()),
            ArgValue::Ptr(a.slots.device_ptr()),
            ArgValue::Ptr(a.inv_freq.device_ptr()),
            ArgValue::F32(mscale),
            ArgValue::Ptr(d.q_norm),
            ArgValue::Ptr(d.k_norm),
            ArgValue::F32(eps),
            ArgValue::I64(i64_of(K, "tokens", d.tokens as u64)?),
            ArgValue::I32(int(K, "heads", d.heads as u64)?),
            ArgValue::I32(int(K, "kv heads", d.kv_heads as u64)?),
            ArgValue::I32(d.head_dim as i32),
            ArgValue::I32(d.half_rot as i32),
        ],
    })
}

/// What [`plan_gemv_pairs`] does with the two results of each pair of weight rows.
#[derive(Clone, Copy)]
pub enum PairEpilogue<'a> {
    /// `out[m, j] = silu(y[m, j]) * y[m, j + n / 2]` for the product `y` `[m, n]` (`w`
    /// holds the gate rows, then the up rows); `out` `[m, n / 2]`. What
    /// [`plan_swiglu_rows`] does after [`plan_gemv`], in one launch.
    SwiGlu {
        /// `[m, n / 2]`.
        out: &'a dyn TensorArg,
    },
    /// The q/k/v stage of [`plan_qkv_post`] (rotary embedding of q and k, q out, k and v
    /// into the paged caches) on the product, which is never stored. Per-head norms
    /// (Qwen3) need a whole head: those run the product and [`plan_qkv_post`].
    QkvStage {
        /// `[m, heads, head_dim]`.
        q_out: &'a dyn TensorArg,
        /// `[pages, page_size, kv_heads, head_dim]`.
        k_cache: &'a dyn TensorArg,
        /// Same shape as `k_cache`.
        v_cache: &'a dyn TensorArg,
        /// i32 `[m]`.
        pos: &'a dyn TensorArg,
        /// i32 `[m]`, negative: skipped.
        slots: &'a dyn TensorArg,
        /// f32 `[half_rot]`.
        inv_freq: &'a dyn TensorArg,
        /// Scale of cos and sin (YaRN).
        mscale: f32,
    },
}

impl std::fmt::Debug for PairEpilogue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PairEpilogue::SwiGlu { out } => f.debug_struct("SwiGlu").field("out", &out.shape()).finish(),
            PairEpilogue::QkvStage { q_out, k_cache, .. } => {
                f.debug_struct("QkvStage").field("q_out", &q_out.shape()).field("k_cache", &k_cache.shape()).finish()
            }
        }
    }
}

/// Plans `y = f(x) @ w^T (+ bias)` for a few rows of `x` (at most [`GEMV_MAX_ROWS`])
/// with one warp per pair of weight rows, and the [`PairEpilogue`] on each pair's two
/// results, so the product is never stored: the SwiGLU after the gate/up product, or
/// the q/k/v stage after the q/k/v product. `f` is the identity or the RMSNorm
/// `norm`. Each result is computed and rounded exactly as [`plan_gemv`] computes and
/// stores it, so the outputs equal the two launches they replace.
pub fn plan_gemv_pairs(
    limits: &DeviceLimits,
    x: &dyn TensorArg,
    w: &dyn TensorArg,
    norm: Option<RmsNorm<'_>>,
    bias: Option<&dyn TensorArg>,
    epi: &PairEpilogue<'_>,
) -> Result<EnginePlan, LaunchError> {
    const K: &str = "gemv_pairs";
    let dtype = x.dtype();
    engine_symbol(K, dtype)?;
    let (m, _) = rows_cols(K, "x", x)?;
    let (n, _) = rows_cols(K, "w", w)?;
    // The product's checks (dtypes, x's columns against w's, sizes in range) on the
    // product `[m, n]`, which is never stored.
    let product = crate::plan::TensorDesc::new(dtype, &[m as usize, n as usize], 0);
    let k = plan_gemm(x, w, &product)?.k as u64;
    if m > GEMV_MAX_ROWS as u64 {
        return Err(LaunchError::Limit { kernel: K.into(), what: "rows of x", value: m, limit: GEMV_MAX_ROWS as u64 });
    }
    if n % 2 != 0 {
        return Err(shape_err(K, "w", "[n, k] with n even (pairs of rows)".into(), w.shape()));
    }
    let vector = |name: &str, t: &dyn TensorArg, len: u64| vector_arg(K, name, t, dtype, len);
    let (mode, norm_w, eps) = match norm {
        Some(n) => n.args(K, dtype, k)?,
        None => (0, 0, 0.0),
    };
    let bias = bias.map(|t| vector("bias", t, n)).transpose()?.unwrap_or(0);
    let none = [ArgValue::Ptr(0), ArgValue::Ptr(0), ArgValue::Ptr(0), ArgValue::Ptr(0), ArgValue::Ptr(0), ArgValue::F32(0.0)];
    let (epi_code, out, stage, sizes) = match *epi {
        PairEpilogue::SwiGlu { out } => {
            if out.dtype() != dtype {
                return Err(dtype_err(K, "out", dtype.to_string(), out.dtype()));
            }
            if out.shape() != [m as usize, (n / 2) as usize] {
                return Err(shape_err(K, "out", format!("[{m}, {}]", n / 2), out.shape()));
            }
            (1, out.device_ptr(), none, [0; 4])
        }
        PairEpilogue::QkvStage { q_out, k_cache, v_cache, pos, slots, inv_freq, mscale } => {
            let post = QkvPost { qkv: &product, q_out, k_cache, v_cache, pos, slots, inv_freq, qk_norm: None };
            let d = check_qkv_post(K, &post)?;
            if d.head_dim % 2 != 0 {
                return Err(shape_err(K, "k_cache", "[pages, page_size, kv_heads, head_dim] with head_dim even".into(), k_cache.shape()));
            }
            let stage = [
                ArgValue::Ptr(k_cache.device_ptr()),
                ArgValue::Ptr(v_cache.device_ptr()),
                ArgValue::Ptr(pos.device_ptr()),
                ArgValue::Ptr(slots.device_ptr()),
                ArgValue::Ptr(inv_freq.device_ptr()),
                ArgValue::F32(mscale),
            ];
            // Checked above: head_dim <= 256, and the counts fit the product's i32 rows.
            let sizes = [int(K, "heads", d.heads as u64)?, int(K, "kv heads", d.kv_heads as u64)?, d.head_dim as i32, d.half_rot as i32];
            (2, q_out.device_ptr(), stage, sizes)
        }
    };
    let v = (16 / dtype.size()) as u64;
    let vec = k.is_multiple_of(v) && [x.device_ptr(), w.device_ptr(), norm_w].iter().all(|p| p.is_multiple_of(16));
    let pairs = n / 2;
    let mut args = vec![
        ArgValue::Ptr(x.device_ptr()),
        ArgValue::Ptr(w.device_ptr()),
        ArgValue::Ptr(out),
        ArgValue::I32(m as i32),
        ArgValue::I64(i64_of(K, "pairs", pairs)?),
        ArgValue::I32(int(K, "reduced dimension", k)?),
        ArgValue::I32(i32::from(vec)),
        ArgValue::I32(mode),
        ArgValue::Ptr(norm_w),
        ArgValue::F32(eps),
        ArgValue::Ptr(bias),
        ArgValue::I32(epi_code),
    ];
    args.extend(stage);
    args.extend(sizes.map(ArgValue::I32));
    // A warp (or two) a pair streams two rows.
    let split = gemv_split(limits, pairs, k / v, vec);
    // Checked above: m <= GEMV_MAX_ROWS (8).
    let mt = (m as u32).next_power_of_two();
    Ok(EnginePlan {
        cooperative: false,
        module: EngineModule::Engine(dtype, EnginePart::Pairs(mt)),
        symbol: format!("rf_gemv_pair{mt}{}_{}", if split == 2 { "x2" } else { "" }, dtype.name()),
        grid: rows_grid(limits, pairs.div_ceil(4 / split as u64)),
        block: [128, 1, 1],
        args,
    })
}

/// Plans `out[r, j] = silu(x[r, j]) * x[r, inter + j]`: `x` `[rows, 2 inter]` (the fused
/// gate/up product), `out` `[rows, inter]`.
pub fn plan_swiglu_rows(limits: &DeviceLimits, x: &dyn TensorArg, out: &dyn TensorArg) -> Result<EnginePlan, LaunchError> {
    const K: &str = "swiglu_rows";
    let symbol = engine_symbol(K, x.dtype())?;
    let (rows, cols) = rows_cols(K, "x", x)?;
    if cols % 2 != 0 {
        return Err(shape_err(K, "x", "[rows, 2 inter] (an even number of columns)".into(), x.shape()));
    }
    if out.dtype() != x.dtype() {
        return Err(dtype_err(K, "out", x.dtype().to_string(), out.dtype()));
    }
    let (orows, ocols) = rows_cols(K, "out", out)?;
    if orows != rows || ocols * 2 != cols {
        return Err(shape_err(K, "out", format!("[{rows}, {}]", cols / 2), out.shape()));
    }
    let n = rows.saturating_mul(cols / 2);
    Ok(EnginePlan {
        cooperative: false,
        module: EngineModule::Engine(x.dtype(), EnginePart::Misc),
        symbol,
        grid: rows_grid(limits, n.div_ceil(256)),
        block: [256, 1, 1],
        args: vec![
            ArgValue::Ptr(x.device_ptr()),
            ArgValue::Ptr(out.device_ptr()),
            ArgValue::I64(i64_of(K, "rows", rows)?),
            ArgValue::I64(i64_of(K, "inter", cols / 2)?),
        ],
    })
}

/// One layer's tensors as the persistent decode step reads them ([`decode_step_table`]):
/// the weights as the model stores them fused (`wqkv` `[(heads + 2 kv_heads) head_dim,
/// hidden]`, `w_gate_up` `[2 inter, hidden]`) and the layer's paged K/V caches
/// `[pages, page_size, kv_heads, head_dim]`.
#[derive(Clone, Copy)]
pub struct StepLayer<'a> {
    /// `[hidden]`: the attention block's RMSNorm weight.
    pub attn_norm: &'a dyn TensorArg,
    /// The fused q/k/v weight.
    pub wqkv: &'a dyn TensorArg,
    /// Its bias, `[(heads + 2 kv_heads) head_dim]`, where the model has one.
    pub bqkv: Option<&'a dyn TensorArg>,
    /// `[hidden, heads head_dim]`: the output projection.
    pub wo: &'a dyn TensorArg,
    /// Its bias `[hidden]`.
    pub bo: Option<&'a dyn TensorArg>,
    /// `[hidden]`: the MLP's RMSNorm weight.
    pub mlp_norm: &'a dyn TensorArg,
    /// The fused gate/up weight.
    pub w_gate_up: &'a dyn TensorArg,
    /// Its bias `[2 inter]`.
    pub b_gate_up: Option<&'a dyn TensorArg>,
    /// `[hidden, inter]`: the down projection.
    pub w_down: &'a dyn TensorArg,
    /// Its bias `[hidden]`.
    pub b_down: Option<&'a dyn TensorArg>,
    /// The layer's paged key cache.
    pub k_cache: &'a dyn TensorArg,
    /// The layer's paged value cache.
    pub v_cache: &'a dyn TensorArg,
}

impl std::fmt::Debug for StepLayer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepLayer").field("wqkv", &self.wqkv.shape()).field("k_cache", &self.k_cache.shape()).finish_non_exhaustive()
    }
}

/// The model dimensions of a persistent decode step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepDims {
    /// Model width.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Dimensions of a head.
    pub head_dim: usize,
    /// Rotated pairs per head (`head_dim / 2` for full rotary).
    pub half_rot: usize,
    /// MLP width.
    pub inter: usize,
    /// Vocabulary (LM head rows).
    pub vocab: usize,
    /// KV cache tokens per page (a power of two).
    pub page_size: usize,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// Rotary amplitude (1 but for YaRN).
    pub mscale: f32,
}

/// Words (u32) per layer in the table [`decode_step_table`] builds: 12 device addresses.
pub const STEP_LAYER_WORDS: usize = 24;
/// Threads of a persistent decode step's workgroup (`RF_STEP_THREADS`).
const STEP_THREADS: u32 = 512;
/// Bytes of one warp's q stage (`RF_STEP_QBYTES`): a GQA group's q heads.
const STEP_QBYTES: usize = 2048;

/// Why a model cannot take the persistent decode step, or `None` where it can: the
/// kernel streams whole 16-byte groups (every reduced dimension a multiple of 16 bytes),
/// stages a GQA group's q heads in 2 KiB of shared memory, and keeps at most 8 query
/// heads and 4 head dims a lane in registers.
pub fn decode_step_unsupported(dtype: DType, d: &StepDims) -> Option<String> {
    if !dtype.is_float() {
        return Some(format!("dtype {dtype}"));
    }
    let v = 16 / dtype.size();
    if d.kv_heads == 0 || !d.heads.is_multiple_of(d.kv_heads) || d.heads / d.kv_heads > 8 {
        return Some(format!("{} query heads over {} KV heads (at most 8 a group)", d.heads, d.kv_heads));
    }
    if d.head_dim == 0 || d.head_dim > 128 || !d.head_dim.is_multiple_of(v) || d.half_rot * 2 > d.head_dim {
        return Some(format!("head_dim {} (a multiple of {v} up to 128)", d.head_dim));
    }
    if (d.heads / d.kv_heads) * d.head_dim * dtype.size() > STEP_QBYTES {
        return Some(format!("a GQA group of {} x {} elements", d.heads / d.kv_heads, d.head_dim));
    }
    for (what, k) in [("hidden", d.hidden), ("heads x head_dim", d.heads * d.head_dim), ("intermediate", d.inter)] {
        if k == 0 || k % v != 0 || k > i32::MAX as usize {
            return Some(format!("{what} {k} (a multiple of {v})"));
        }
    }
    if !d.page_size.is_power_of_two() || d.vocab == 0 {
        return Some(format!("page size {} / vocabulary {}", d.page_size, d.vocab));
    }
    None
}

/// The device table of a persistent decode step's layers (u32 words, [`STEP_LAYER_WORDS`]
/// a layer: each tensor's address as two little-endian words, 0 for an absent bias), after
/// checking every tensor's dtype and shape against `d`.
pub fn decode_step_table(dtype: DType, d: &StepDims, layers: &[StepLayer<'_>]) -> Result<Vec<u32>, LaunchError> {
    const K: &str = "decode_step";
    if let Some(why) = decode_step_unsupported(dtype, d) {
        return Err(LaunchError::Unsupported { kernel: K.into(), what: why });
    }
    let (h, qd, kvd) = (d.hidden, d.heads * d.head_dim, d.kv_heads * d.head_dim);
    let matrix = |name: &str, t: &dyn TensorArg, rows: usize, cols: usize| -> Result<u64, LaunchError> {
        if t.dtype() != dtype {
            return Err(dtype_err(K, name, dtype.to_string(), t.dtype()));
        }
        if t.shape() != [rows, cols] {
            return Err(shape_err(K, name, format!("[{rows}, {cols}]"), t.shape()));
        }
        if !t.device_ptr().is_multiple_of(16) {
            return Err(shape_err(K, name, "a 16-byte aligned address".into(), t.shape()));
        }
        Ok(t.device_ptr())
    };
    let vector = |name: &str, t: &dyn TensorArg, len: usize| vector_arg(K, name, t, dtype, len as u64);
    let opt = |name: &str, t: Option<&dyn TensorArg>, len: usize| t.map(|t| vector(name, t, len)).transpose().map(|p| p.unwrap_or(0));
    let cache = |name: &str, t: &dyn TensorArg| -> Result<u64, LaunchError> {
        if t.dtype() != dtype {
            return Err(dtype_err(K, name, dtype.to_string(), t.dtype()));
        }
        match t.shape() {
            [_, ps, kh, hd] if *ps == d.page_size && *kh == d.kv_heads && *hd == d.head_dim => Ok(t.device_ptr()),
            s => Err(shape_err(K, name, format!("[pages, {}, {}, {}]", d.page_size, d.kv_heads, d.head_dim), s)),
        }
    };
    let mut words = Vec::with_capacity(layers.len() * STEP_LAYER_WORDS);
    for l in layers {
        let ptrs = [
            vector("attn_norm", l.attn_norm, h)?,
            matrix("wqkv", l.wqkv, qd + 2 * kvd, h)?,
            opt("bqkv", l.bqkv, qd + 2 * kvd)?,
            matrix("wo", l.wo, h, qd)?,
            opt("bo", l.bo, h)?,
            vector("mlp_norm", l.mlp_norm, h)?,
            matrix("w_gate_up", l.w_gate_up, 2 * d.inter, h)?,
            opt("b_gate_up", l.b_gate_up, 2 * d.inter)?,
            matrix("w_down", l.w_down, h, d.inter)?,
            opt("b_down", l.b_down, h)?,
            cache("k_cache", l.k_cache)?,
            cache("v_cache", l.v_cache)?,
        ];
        for p in ptrs {
            words.push(p as u32);
            words.push((p >> 32) as u32);
        }
    }
    Ok(words)
}

/// Buffers of a persistent decode step ([`plan_decode_step`]), all of the model's dtype
/// unless noted.
pub struct StepBuffers<'a> {
    /// The layer table ([`decode_step_table`], uploaded).
    pub table: &'a dyn TensorArg,
    /// `[hidden]`: the new token's embedding on entry, the last layer's residual on exit.
    pub res: &'a dyn TensorArg,
    /// `[heads * head_dim]`: the rotated queries.
    pub qbuf: &'a dyn TensorArg,
    /// `[heads * head_dim]`: the attention output.
    pub attn: &'a dyn TensorArg,
    /// `[inter]`: the SwiGLU output.
    pub act: &'a dyn TensorArg,
    /// `[hidden]`: the final RMSNorm weight.
    pub final_norm: &'a dyn TensorArg,
    /// `[vocab, hidden]`: the LM head.
    pub head: &'a dyn TensorArg,
    /// f32 `[vocab]`: the logits out.
    pub logits: &'a dyn TensorArg,
    /// i32 `[1]`: the token's position.
    pub pos: &'a dyn TensorArg,
    /// i32 `[1]`: its cache slot.
    pub slots: &'a dyn TensorArg,
    /// i32: the sequence's block-table row.
    pub block_table: &'a dyn TensorArg,
    /// i32 `[1]`: the sequence's length with the token.
    pub lens: &'a dyn TensorArg,
    /// f32 `[head_dim / 2]`: the rotary frequencies.
    pub inv_freq: &'a dyn TensorArg,
    /// f32, at least [`decode_step_workspace`] elements.
    pub ws: &'a dyn TensorArg,
    /// u32, at least `kv_heads`, zero before the first launch (each launch leaves them zero).
    pub counters: &'a dyn TensorArg,
    /// u32, at least 2, zero before the first launch (each launch leaves the first zero).
    pub bar: &'a dyn TensorArg,
    /// Where given (u64 as u32 pairs, at least [`decode_step_ticks`] of them): the
    /// device's nanosecond clock as workgroup 0 leaves each grid barrier.
    pub times: Option<&'a dyn TensorArg>,
}

/// Clock readings a timed persistent decode step writes: after two barriers with nothing
/// between them, after each of a layer's five phases, and at the end.
pub fn decode_step_ticks(n_layers: usize) -> usize {
    5 * n_layers + 3
}

impl std::fmt::Debug for StepBuffers<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepBuffers").field("res", &self.res.shape()).field("head", &self.head.shape()).finish_non_exhaustive()
    }
}

/// Most chunks of 32 positions the persistent decode step's attention cuts a sequence
/// into: the kernel's limit (it combines at most this many partials a head), passed to it
/// and sizing its workspace.
pub const STEP_MAX_SPLITS: usize = 64;

/// f32 elements of the attention partials a persistent decode step needs.
pub fn decode_step_workspace(d: &StepDims) -> usize {
    d.heads.saturating_mul(STEP_MAX_SPLITS).saturating_mul(d.head_dim + 2)
}

/// Plans one decode step of one sequence, every layer and the LM head, as one
/// cooperative launch of one 512-thread workgroup per multiprocessor
/// (`rf_decode_step_<dtype>`, templates/decode_step.hip.tera): the phases of a layer are
/// separated by grid barriers, and each product accumulates exactly as [`plan_gemv`] and
/// [`plan_gemv_pairs`] do at one warp a row ([`gemv_split`] 1). `layers` is the table from [`decode_step_table`] (u32
/// `[n_layers * STEP_LAYER_WORDS]`). CUDA only (sm_70+: the barrier's
/// acquire/release atomics).
pub fn plan_decode_step(
    limits: &DeviceLimits,
    dtype: DType,
    d: &StepDims,
    n_layers: usize,
    b: &StepBuffers<'_>,
) -> Result<EnginePlan, LaunchError> {
    const K: &str = "decode_step";
    let times = match b.times {
        Some(t) => {
            workspace(K, "times", t, DType::U32, 2 * decode_step_ticks(n_layers))?;
            t.device_ptr()
        }
        None => 0,
    };
    let symbol = engine_symbol(K, dtype)?;
    if let Some(why) = decode_step_unsupported(dtype, d) {
        return Err(LaunchError::Unsupported { kernel: K.into(), what: why });
    }
    if limits.max_threads_per_block < STEP_THREADS || limits.compute_units == 0 {
        return Err(LaunchError::Limit {
            kernel: K.into(),
            what: "threads per workgroup",
            value: u64::from(STEP_THREADS),
            limit: u64::from(limits.max_threads_per_block),
        });
    }
    let (h, qd) = (d.hidden, d.heads * d.head_dim);
    workspace(K, "layers", b.table, DType::U32, n_layers * STEP_LAYER_WORDS)?;
    if n_layers == 0 {
        return Err(shape_err(K, "layers", "at least one layer".into(), b.table.shape()));
    }
    let vector = |name: &str, t: &dyn TensorArg, dt: DType, len: usize| vector_arg(K, name, t, dt, len as u64);
    let res = vector("res", b.res, dtype, h)?;
    let qbuf = vector("qbuf", b.qbuf, dtype, qd)?;
    let attn = vector("attn", b.attn, dtype, qd)?;
    let act = vector("act", b.act, dtype, d.inter)?;
    let final_norm = vector("final_norm", b.final_norm, dtype, h)?;
    if b.head.dtype() != dtype {
        return Err(dtype_err(K, "head", dtype.to_string(), b.head.dtype()));
    }
    if b.head.shape() != [d.vocab, h] {
        return Err(shape_err(K, "head", format!("[{}, {h}]", d.vocab), b.head.shape()));
    }
    let logits = vector("logits", b.logits, DType::F32, d.vocab)?;
    let pos = vector("pos", b.pos, DType::I32, 1)?;
    let slots = vector("slots", b.slots, DType::I32, 1)?;
    let lens = vector("lens", b.lens, DType::I32, 1)?;
    if b.block_table.dtype() != DType::I32 || b.block_table.shape().iter().product::<usize>() == 0 {
        return Err(dtype_err(K, "block_table", "i32, non-empty".into(), b.block_table.dtype()));
    }
    let inv_freq = vector("inv_freq", b.inv_freq, DType::F32, d.head_dim / 2)?;
    workspace(K, "ws", b.ws, DType::F32, decode_step_workspace(d))?;
    workspace(K, "counters", b.counters, DType::U32, d.kv_heads)?;
    workspace(K, "bar", b.bar, DType::U32, 2)?;
    let aligned = [res, qbuf, attn, act, final_norm, b.head.device_ptr(), b.table.device_ptr()];
    if !aligned.iter().all(|p| p.is_multiple_of(16)) {
        return Err(shape_err(K, "res", "16-byte aligned buffers".into(), b.res.shape()));
    }
    let i = |what: &'static str, v: usize| int(K, what, v as u64);
    Ok(EnginePlan {
        symbol,
        grid: [limits.compute_units.min(limits.max_grid[0]), 1, 1],
        block: [STEP_THREADS, 1, 1],
        args: vec![
            ArgValue::Ptr(b.table.device_ptr()),
            ArgValue::I32(i("layers", n_layers)?),
            ArgValue::Ptr(res),
            ArgValue::Ptr(qbuf),
            ArgValue::Ptr(attn),
            ArgValue::Ptr(act),
            ArgValue::Ptr(final_norm),
            ArgValue::Ptr(b.head.device_ptr()),
            ArgValue::Ptr(logits),
            ArgValue::I32(i("vocabulary", d.vocab)?),
            ArgValue::Ptr(pos),
            ArgValue::Ptr(slots),
            ArgValue::Ptr(b.block_table.device_ptr()),
            ArgValue::Ptr(lens),
            ArgValue::Ptr(inv_freq),
            ArgValue::F32(d.mscale),
            ArgValue::F32(d.eps),
            ArgValue::F32(1.0 / (d.head_dim as f32).sqrt()),
            ArgValue::I32(i("hidden", h)?),
            ArgValue::I32(i("heads", d.heads)?),
            ArgValue::I32(i("kv heads", d.kv_heads)?),
            ArgValue::I32(i("head_dim", d.head_dim)?),
            ArgValue::I32(i("rotated pairs", d.half_rot)?),
            ArgValue::I32(i("intermediate", d.inter)?),
            ArgValue::I32(d.page_size.trailing_zeros() as i32),
            ArgValue::I32(STEP_MAX_SPLITS as i32),
            ArgValue::Ptr(b.ws.device_ptr()),
            ArgValue::Ptr(b.counters.device_ptr()),
            ArgValue::Ptr(b.bar.device_ptr()),
            ArgValue::Ptr(times),
        ],
        cooperative: true,
        module: EngineModule::DecodeStep {
            dtype,
            dpl: d.head_dim.div_ceil(32).next_power_of_two() as u32,
            group: (d.heads / d.kv_heads) as u32,
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use crate::plan::TensorDesc;

    fn t(dtype: DType, shape: &[usize]) -> TensorDesc {
        TensorDesc::new(dtype, shape, 0x1000)
    }

    #[test]
    fn gemm_maps_rows_and_columns() {
        let p = plan_gemm(&t(DType::BF16, &[3, 7, 64]), &t(DType::BF16, &[96, 64]), &t(DType::F32, &[21, 96])).unwrap();
        assert_eq!((p.m, p.n, p.k, p.out_dtype), (21, 96, 64, DType::F32));
        assert!(plan_gemm(&t(DType::BF16, &[4, 64]), &t(DType::F16, &[96, 64]), &t(DType::BF16, &[4, 96])).is_err());
        assert!(plan_gemm(&t(DType::BF16, &[4, 64]), &t(DType::BF16, &[96, 63]), &t(DType::BF16, &[4, 96])).is_err());
        assert!(plan_gemm(&t(DType::BF16, &[4, 64]), &t(DType::BF16, &[96, 64]), &t(DType::BF16, &[5, 96])).is_err());
        assert!(plan_gemm(&t(DType::BF16, &[4, 64]), &t(DType::BF16, &[96, 64]), &t(DType::F16, &[4, 96])).is_err());
        assert!(plan_gemm(&t(DType::I32, &[4, 64]), &t(DType::I32, &[96, 64]), &t(DType::I32, &[4, 96])).is_err());
        assert!(plan_gemm(&t(DType::BF16, &[0, 64]), &t(DType::BF16, &[96, 64]), &t(DType::BF16, &[0, 96])).is_err());
        let big = plan_gemm(&t(DType::F16, &[1 << 31, 1]), &t(DType::F16, &[1, 1]), &t(DType::F16, &[1 << 31, 1]));
        assert!(matches!(big, Err(LaunchError::Limit { .. })));
    }

    #[test]
    fn products_take_two_warps_a_row_where_the_rows_fit_one_wave() {
        let l = DeviceLimits { compute_units: 132, ..DeviceLimits::NVIDIA_SM90 };
        // Llama-3.2-1B (k 2048, bf16: 256 groups): q/k/v pairs, o and down take two;
        // gate/up (16384 rows) and the LM head one. Llama-3-8B: none.
        for (units, groups, want) in [(1536, 256, 2), (2048, 256, 2), (2048, 1024, 2), (8192, 256, 1), (128256, 256, 1)] {
            assert_eq!(gemv_split(&l, units, groups, true), want, "{units} x {groups}");
        }
        for units in [3072, 4096] {
            assert_eq!(gemv_split(&l, units, 512, true), 1);
        }
        // Odd groups, halves under two rounds of loads, and the element path take one.
        assert_eq!(gemv_split(&l, 300, 515, true), 1);
        assert_eq!(gemv_split(&l, 300, 126, true), 1);
        assert_eq!(gemv_split(&l, 300, 256, false), 1);
        // The plans launch the two-warp symbol on half the rows a workgroup.
        let none = GemvFusion::default();
        let p = plan_gemv(&l, &t(DType::BF16, &[1, 2048]), &t(DType::BF16, &[2048, 2048]), &t(DType::BF16, &[1, 2048]), &none).unwrap();
        assert_eq!((p.symbol.as_str(), p.grid[0], p.block[0]), ("rf_gemv1x2_bf16", 1024, 128));
        let p = plan_gemv(&l, &t(DType::BF16, &[1, 2048]), &t(DType::BF16, &[8192, 2048]), &t(DType::BF16, &[1, 8192]), &none).unwrap();
        assert_eq!((p.symbol.as_str(), p.grid[0]), ("rf_gemv1_bf16", 2048));
        let (x, w, act) = (t(DType::BF16, &[1, 2048]), t(DType::BF16, &[3072, 2048]), t(DType::BF16, &[1, 1536]));
        let p = plan_gemv_pairs(&l, &x, &w, None, None, &PairEpilogue::SwiGlu { out: &act }).unwrap();
        assert_eq!((p.symbol.as_str(), p.grid[0]), ("rf_gemv_pair1x2_bf16", 768));
    }

    #[test]
    fn engine_plans_check_their_arguments() {
        let l = DeviceLimits::NVIDIA_SM90;
        let p = plan_gather(&l, &t(DType::BF16, &[100, 64]), &t(DType::I32, &[5]), &t(DType::BF16, &[5, 64])).unwrap();
        assert_eq!((p.symbol.as_str(), p.grid[0], p.args[6]), ("rf_gather_bf16", 5, ArgValue::I32(1)));
        let odd = plan_gather(&l, &t(DType::BF16, &[100, 63]), &t(DType::I32, &[5]), &t(DType::BF16, &[5, 63])).unwrap();
        assert_eq!(odd.args[6], ArgValue::I32(0));
        assert!(plan_gather(&l, &t(DType::BF16, &[100, 64]), &t(DType::U32, &[5]), &t(DType::BF16, &[5, 64])).is_err());
        assert!(plan_gather(&l, &t(DType::BF16, &[100, 64]), &t(DType::I32, &[5]), &t(DType::BF16, &[4, 64])).is_err());
        let (cnt, ws) = (t(DType::U32, &[3]), t(DType::F32, &[argmax_workspace(3, 128_256)]));
        let a = plan_argmax(&l, &t(DType::F32, &[3, 128_256]), &t(DType::I32, &[3]), None, &cnt, &ws).unwrap();
        // 63 chunks of 2036 columns a row, one workgroup each.
        assert_eq!((a.symbol.as_str(), a.grid, a.args[3]), ("rf_argmax_f32", [63, 3, 1], ArgValue::I64(2036)));
        assert_eq!(argmax_workspace(3, 128_256), 3 * 2 * 63);
        assert!(plan_argmax(&l, &t(DType::F32, &[3, 1000]), &t(DType::I32, &[2]), None, &cnt, &ws).is_err());
        assert!(plan_argmax(&l, &t(DType::F32, &[3, 1000]), &t(DType::I32, &[3]), Some(&t(DType::I32, &[2])), &cnt, &ws).is_err());
        assert!(plan_argmax(&l, &t(DType::F32, &[3, 1000]), &t(DType::I32, &[3]), Some(&t(DType::U32, &[3])), &cnt, &ws).is_err());
        let also = plan_argmax(&l, &t(DType::F32, &[3, 1000]), &t(DType::I32, &[3]), Some(&t(DType::I32, &[3])), &cnt, &ws).unwrap();
        assert_ne!(also.args[6], ArgValue::Ptr(0));
        assert_eq!(a.args[6], ArgValue::Ptr(0));
        let short = t(DType::F32, &[argmax_workspace(3, 128_256) - 1]);
        assert!(plan_argmax(&l, &t(DType::F32, &[3, 128_256]), &t(DType::I32, &[3]), None, &cnt, &short).is_err());
        assert!(plan_argmax(&l, &t(DType::F32, &[3, 10]), &t(DType::I32, &[3]), None, &t(DType::U32, &[2]), &ws).is_err());
        assert!(plan_argmax(&l, &t(DType::F32, &[3, 10]), &t(DType::I32, &[3]), None, &cnt, &t(DType::U32, &[60])).is_err());
        let one = t(DType::I32, &[1]);
        let ix = DecodeIndex { ids: &one, pos: &one, slots: &one, lens: &one, table: &t(DType::I32, &[16]) };
        let adv = plan_decode_advance(&ix, &one, 16).unwrap();
        assert_eq!(
            (adv.symbol.as_str(), adv.module, adv.args[6]),
            ("rf_decode_advance_f32", EngineModule::Engine(DType::F32, EnginePart::Misc), ArgValue::I32(16))
        );
        assert!(plan_decode_advance(&ix, &one, 0).is_err());
        assert!(plan_decode_advance(&ix, &t(DType::U32, &[1]), 16).is_err());
        assert!(plan_decode_advance(&DecodeIndex { table: &t(DType::I32, &[0]), ..ix }, &one, 16).is_err());
        let (embed, row) = (t(DType::BF16, &[128_256, 2048]), t(DType::BF16, &[1, 2048]));
        let ag = plan_decode_advance_gather(&ix, &one, &embed, &row, 16).unwrap();
        assert_eq!(
            (ag.symbol.as_str(), ag.module, ag.grid, ag.args[6], ag.args[11]),
            (
                "rf_decode_advance_gather_bf16",
                EngineModule::Engine(DType::BF16, EnginePart::Misc),
                [1, 1, 1],
                ArgValue::I32(16),
                ArgValue::I32(1)
            )
        );
        let odd = plan_decode_advance_gather(&ix, &one, &t(DType::BF16, &[100, 63]), &t(DType::BF16, &[63]), 16).unwrap();
        assert_eq!(odd.args[11], ArgValue::I32(0));
        assert!(plan_decode_advance_gather(&ix, &one, &embed, &row, 0).is_err());
        assert!(plan_decode_advance_gather(&ix, &t(DType::F32, &[1]), &embed, &row, 16).is_err());
        assert!(plan_decode_advance_gather(&ix, &one, &embed, &t(DType::F16, &[1, 2048]), 16).is_err());
        assert!(plan_decode_advance_gather(&ix, &one, &embed, &t(DType::BF16, &[2, 2048]), 16).is_err());
        assert!(plan_decode_advance_gather(&ix, &one, &t(DType::I32, &[100, 2048]), &t(DType::I32, &[2048]), 16).is_err());
        // 128256 columns, k 1024: 16 chunks, then 2 blocks of 8 groups, then one.
        let ws = topk_staged_workspace(2, 128_256, 1024);
        assert_eq!(ws, 2 * 1024 * (16 + 2));
        let (wv, wi) = (t(DType::F32, &[ws]), t(DType::I32, &[ws]));
        let st =
            plan_topk_staged(&l, &t(DType::F32, &[2, 128_256]), 1024, &t(DType::F32, &[2, 1024]), &t(DType::I32, &[2, 1024]), &wv, &wi)
                .unwrap();
        assert_eq!(st.iter().map(|p| p.grid[0]).collect::<Vec<_>>(), vec![16, 2, 1]);
        assert_eq!(st[0].args[1], ArgValue::Ptr(0));
        assert_ne!(st[1].args[1], ArgValue::Ptr(0));
        // One chunk: one launch, no workspace.
        assert_eq!(topk_staged_workspace(3, 5000, 50), 0);
        let one =
            plan_topk_staged(&l, &t(DType::F32, &[3, 5000]), 50, &t(DType::F32, &[3, 50]), &t(DType::I32, &[3, 50]), &wv, &wi).unwrap();
        assert_eq!(one.len(), 1);
        let short = t(DType::F32, &[ws - 1]);
        assert!(plan_topk_staged(
            &l,
            &t(DType::F32, &[2, 128_256]),
            1024,
            &t(DType::F32, &[2, 1024]),
            &t(DType::I32, &[2, 1024]),
            &short,
            &wi
        )
        .is_err());
        assert!(plan_topk_staged(&l, &t(DType::BF16, &[2, 5000]), 5, &t(DType::F32, &[2, 5]), &t(DType::I32, &[2, 5]), &wv, &wi).is_err());
        for bad_k in [0, 1001, TOPK_MAX + 1] {
            let r =
                plan_topk_staged(&l, &t(DType::F32, &[2, 1000]), bad_k, &t(DType::F32, &[2, bad_k]), &t(DType::I32, &[2, bad_k]), &wv, &wi);
            assert!(matches!(r, Err(LaunchError::Limit { .. })), "k = {bad_k}");
        }
        assert!(plan_topk_staged(&l, &t(DType::F32, &[2, 5000]), 1025, &t(DType::F32, &[2, 1025]), &t(DType::I32, &[2, 1025]), &wv, &wi)
            .is_err());
        let pen = plan_penalize(&l, &t(DType::F32, &[2, 1000]), &t(DType::I32, &[300, 4])).unwrap();
        assert_eq!((pen.symbol.as_str(), pen.grid[0], pen.args[4]), ("rf_penalize_f32", 2, ArgValue::I32(300)));
        assert!(plan_penalize(&l, &t(DType::BF16, &[2, 1000]), &t(DType::I32, &[3, 4])).is_err());
        assert!(plan_penalize(&l, &t(DType::F32, &[2, 1000]), &t(DType::I32, &[3, 3])).is_err());
        assert!(plan_penalize(&l, &t(DType::F32, &[2, 1000]), &t(DType::I32, &[0, 4])).is_err());
        assert!(plan_penalize(&l, &t(DType::F32, &[2, 1000]), &t(DType::F32, &[3, 4])).is_err());
        assert_eq!(softmax_mass_parts(128_256), (126, 1018));
        assert_eq!(softmax_mass_parts(17), (1, 17));
        assert_eq!(softmax_mass_parts(5_000_000).0, 1024);
        let out = t(DType::F32, &[3, 126, 2]);
        let m = plan_softmax_mass(&l, &t(DType::F32, &[3, 128_256]), &t(DType::I32, &[3]), &out).unwrap();
        assert_eq!((m.symbol.as_str(), m.grid, m.args[3]), ("rf_softmax_mass_f32", [126, 3, 1], ArgValue::I64(1018)));
        assert!(plan_softmax_mass(&l, &t(DType::F16, &[3, 128_256]), &t(DType::I32, &[3]), &out).is_err());
        assert!(plan_softmax_mass(&l, &t(DType::F32, &[3, 128_256]), &t(DType::I32, &[2]), &out).is_err());
        assert!(plan_softmax_mass(&l, &t(DType::F32, &[3, 128_256]), &t(DType::I32, &[3]), &t(DType::F32, &[3, 125, 2])).is_err());
        assert!(plan_softmax_mass(&l, &t(DType::F32, &[3, 128_256]), &t(DType::I32, &[3]), &t(DType::I32, &[3, 126, 2])).is_err());
        let qkv = t(DType::BF16, &[3, (4 + 2 * 2) * 64]);
        let (q, kc, i32s, f) = (t(DType::BF16, &[3, 4, 64]), t(DType::BF16, &[10, 16, 2, 64]), t(DType::I32, &[3]), t(DType::F32, &[32]));
        let a = QkvPost { qkv: &qkv, q_out: &q, k_cache: &kc, v_cache: &kc, pos: &i32s, slots: &i32s, inv_freq: &f, qk_norm: None };
        let p = plan_qkv_post(&l, &a, 1.0, 1e-6).unwrap();
        assert_eq!((p.symbol.as_str(), p.grid[0], p.args.len()), ("rf_qkv_post_bf16", 6, 16));
        let wrong = t(DType::BF16, &[3, 7 * 64]);
        assert!(plan_qkv_post(&l, &QkvPost { qkv: &wrong, ..a }, 1.0, 1e-6).is_err());
        let long_freq = t(DType::F32, &[33]);
        assert!(plan_qkv_post(&l, &QkvPost { inv_freq: &long_freq, ..a }, 1.0, 1e-6).is_err());
        let nw = t(DType::BF16, &[63]);
        assert!(plan_qkv_post(&l, &QkvPost { qk_norm: Some((&nw, &nw)), ..a }, 1.0, 1e-6).is_err());
        assert!(plan_swiglu_rows(&l, &t(DType::F16, &[4, 20]), &t(DType::F16, &[4, 10])).is_ok());
        assert!(plan_swiglu_rows(&l, &t(DType::F16, &[4, 20]), &t(DType::F16, &[4, 20])).is_err());
        let none = GemvFusion::default();
        let gv = plan_gemv(&l, &t(DType::BF16, &[3, 64]), &t(DType::BF16, &[96, 64]), &t(DType::F32, &[3, 96]), &none).unwrap();
        assert_eq!((gv.symbol.as_str(), gv.grid[0], gv.args[6], gv.args[7]), ("rf_gemv4_bf16", 24, ArgValue::I32(1), ArgValue::I32(1)));
        assert!(plan_gemv(&l, &t(DType::BF16, &[9, 64]), &t(DType::BF16, &[96, 64]), &t(DType::BF16, &[9, 96]), &none).is_err());
        let (nw, r) = (t(DType::BF16, &[64]), t(DType::BF16, &[3, 96]));
        let fused = GemvFusion { norm: Some(RmsNorm::new(&nw, 1e-5)), residual: Some(&r), ..none };
        let p = plan_gemv(&l, &t(DType::BF16, &[3, 64]), &t(DType::BF16, &[96, 64]), &t(DType::BF16, &[3, 96]), &fused).unwrap();
        assert_eq!(p.args[8], ArgValue::I32(1));
        // A folded norm: mode 3, no weight address, the same epsilon.
        let folded = GemvFusion { norm: Some(RmsNorm::folded(1e-5)), ..none };
        let p = plan_gemv(&l, &t(DType::BF16, &[3, 64]), &t(DType::BF16, &[96, 64]), &t(DType::BF16, &[3, 96]), &folded).unwrap();
        assert_eq!((p.args[8], p.args[9], p.args[10]), (ArgValue::I32(3), ArgValue::Ptr(0), ArgValue::F32(1e-5)));
        let sw = GemvFusion { swiglu: true, ..none };
        let p = plan_gemv(&l, &t(DType::BF16, &[3, 128]), &t(DType::BF16, &[96, 64]), &t(DType::BF16, &[3, 96]), &sw).unwrap();
        assert_eq!((p.args[5], p.args[8]), (ArgValue::I32(64), ArgValue::I32(2)));
        let both = GemvFusion { swiglu: true, norm: Some(RmsNorm::new(&nw, 1e-5)), ..none };
        assert!(plan_gemv(&l, &t(DType::BF16, &[3, 128]), &t(DType::BF16, &[96, 64]), &t(DType::BF16, &[3, 96]), &both).is_err());
        let short = t(DType::BF16, &[63]);
        let bad = GemvFusion { norm: Some(RmsNorm::new(&short, 1e-5)), ..none };
        assert!(plan_gemv(&l, &t(DType::BF16, &[3, 64]), &t(DType::BF16, &[96, 64]), &t(DType::BF16, &[3, 96]), &bad).is_err());
        // Paired products: the pairs set the grid; the epilogue's shapes are checked.
        let (x, w, act) = (t(DType::BF16, &[3, 64]), t(DType::BF16, &[96, 64]), t(DType::BF16, &[3, 48]));
        let p = plan_gemv_pairs(&l, &x, &w, Some(RmsNorm::new(&nw, 1e-5)), None, &PairEpilogue::SwiGlu { out: &act }).unwrap();
        assert_eq!(
            (p.symbol.as_str(), p.grid[0], p.args.len(), p.args[4], p.args[11]),
            ("rf_gemv_pair4_bf16", 12, 22, ArgValue::I64(48), ArgValue::I32(1))
        );
        let p = plan_gemv_pairs(&l, &x, &w, Some(RmsNorm::folded(1e-5)), None, &PairEpilogue::SwiGlu { out: &act }).unwrap();
        assert_eq!((p.args[7], p.args[8]), (ArgValue::I32(3), ArgValue::Ptr(0)));
        assert!(plan_gemv_pairs(&l, &x, &w, Some(RmsNorm::new(&short, 1e-5)), None, &PairEpilogue::SwiGlu { out: &act }).is_err());
        assert!(plan_gemv_pairs(&l, &x, &w, None, None, &PairEpilogue::SwiGlu { out: &r }).is_err());
        assert!(plan_gemv_pairs(&l, &x, &t(DType::BF16, &[95, 64]), None, None, &PairEpilogue::SwiGlu { out: &act }).is_err());
        assert!(plan_gemv_pairs(&l, &t(DType::BF16, &[9, 64]), &w, None, None, &PairEpilogue::SwiGlu { out: &act }).is_err());
        let wqkv = t(DType::BF16, &[(4 + 2 * 2) * 64, 64]);
        let stage = PairEpilogue::QkvStage { q_out: &q, k_cache: &kc, v_cache: &kc, pos: &i32s, slots: &i32s, inv_freq: &f, mscale: 1.0 };
        let p = plan_gemv_pairs(&l, &x, &wqkv, None, None, &stage).unwrap();
        assert_eq!((p.grid[0], &p.args[18..]), (64, &[ArgValue::I32(4), ArgValue::I32(2), ArgValue::I32(64), ArgValue::I32(32)][..]));
        // A product that is not the (heads + 2 kv_heads) x head_dim rows of the stage.
        assert!(plan_gemv_pairs(&l, &x, &t(DType::BF16, &[7 * 64, 64]), None, None, &stage).is_err());
        let small = DeviceLimits { max_threads_per_block: 512, ..l };
        let ws1 = t(DType::F32, &[1]);
        let wi1 = t(DType::I32, &[1]);
        assert!(plan_topk_staged(&small, &t(DType::F32, &[2, 1000]), 50, &t(DType::F32, &[2, 50]), &t(DType::I32, &[2, 50]), &ws1, &wi1)
            .is_err());
    }

    #[test]
    fn decode_step_plans_check_their_arguments() {
        let l = DeviceLimits::NVIDIA_SM90;
        let bf = DType::BF16;
        let d = StepDims {
            hidden: 64,
            heads: 4,
            kv_heads: 2,
            head_dim: 16,
            half_rot: 8,
            inter: 160,
            vocab: 512,
            page_size: 16,
            eps: 1e-5,
            mscale: 1.0,
        };
        assert_eq!(decode_step_unsupported(bf, &d), None);
        for bad in [
            StepDims { heads: 18, kv_heads: 2, ..d },
            StepDims { head_dim: 256, ..d },
            StepDims { head_dim: 12, ..d },
            StepDims { hidden: 60, ..d },
            StepDims { page_size: 24, ..d },
        ] {
            assert!(decode_step_unsupported(bf, &bad).is_some(), "{bad:?}");
        }
        assert!(decode_step_unsupported(DType::I32, &d).is_some());
        let (norm, wqkv, wo, wgu, wd, kc) =
            (t(bf, &[64]), t(bf, &[128, 64]), t(bf, &[64, 64]), t(bf, &[320, 64]), t(bf, &[64, 160]), t(bf, &[8, 16, 2, 16]));
        let layer = StepLayer {
            attn_norm: &norm,
            wqkv: &wqkv,
            bqkv: None,
            wo: &wo,
            bo: None,
            mlp_norm: &norm,
            w_gate_up: &wgu,
            b_gate_up: None,
            w_down: &wd,
            b_down: None,
            k_cache: &kc,
            v_cache: &kc,
        };
        let words = decode_step_table(bf, &d, &[layer, layer]).unwrap();
        assert_eq!(words.len(), 2 * STEP_LAYER_WORDS);
        // attn_norm's address, then wqkv's; an absent bias is a null address.
        assert_eq!(&words[..6], &[0x1000, 0, 0x1000, 0, 0, 0]);
        let short = t(bf, &[127, 64]);
        assert!(decode_step_table(bf, &d, &[StepLayer { wqkv: &short, ..layer }]).is_err());
        let wrong_cache = t(bf, &[8, 32, 2, 16]);
        assert!(decode_step_table(bf, &d, &[StepLayer { k_cache: &wrong_cache, ..layer }]).is_err());
        let f16 = t(DType::F16, &[64, 64]);
        assert!(decode_step_table(bf, &d, &[StepLayer { wo: &f16, ..layer }]).is_err());

        let (table, res, q, act, head) =
            (t(DType::U32, &[2 * STEP_LAYER_WORDS]), t(bf, &[64]), t(bf, &[64]), t(bf, &[160]), t(bf, &[512, 64]));
        let (logits, one, bt, freq) = (t(DType::F32, &[512]), t(DType::I32, &[1]), t(DType::I32, &[1, 16]), t(DType::F32, &[8]));
        let (ws, cnt, bar) = (t(DType::F32, &[decode_step_workspace(&d)]), t(DType::U32, &[2]), t(DType::U32, &[2]));
        let b = StepBuffers {
            table: &table,
            res: &res,
            qbuf: &q,
            attn: &q,
            act: &act,
            final_norm: &norm,
            head: &head,
            logits: &logits,
            pos: &one,
            slots: &one,
            block_table: &bt,
            lens: &one,
            inv_freq: &freq,
            ws: &ws,
            counters: &cnt,
            bar: &bar,
            times: None,
        };
        let p = plan_decode_step(&l, bf, &d, 2, &b).unwrap();
        assert_eq!(
            (p.symbol.as_str(), p.grid, p.block, p.cooperative),
            ("rf_decode_step_bf16", [l.compute_units, 1, 1], [512, 1, 1], true)
        );
        assert_eq!(p.module, EngineModule::DecodeStep { dtype: bf, dpl: 1, group: 2 });
        // One argument per parameter of the generated kernel.
        let src = rocmforge_dsl::codegen::decode_step_source(bf, 1, 2).unwrap();
        let sig = &src[src.find("rf_decode_step_bf16(const").unwrap()..];
        let params = sig[..sig.find(") {").unwrap()].matches(',').count() + 1;
        assert_eq!(p.args.len(), params);
        assert!(plan_decode_step(&l, bf, &d, 3, &b).is_err(), "a table of two layers for three");
        let short_ws = t(DType::F32, &[decode_step_workspace(&d) - 1]);
        assert!(plan_decode_step(&l, bf, &d, 2, &StepBuffers { ws: &short_ws, ..b }).is_err());
        let short_times = t(DType::U32, &[2 * decode_step_ticks(2) - 1]);
        assert!(plan_decode_step(&l, bf, &d, 2, &StepBuffers { times: Some(&short_times), ..b }).is_err());
        let times = t(DType::U32, &[2 * decode_step_ticks(2)]);
        assert!(plan_decode_step(&l, bf, &d, 2, &StepBuffers { times: Some(&times), ..b }).is_ok());
        assert!(plan_decode_step(&l, bf, &d, 2, &StepBuffers { logits: &t(bf, &[512]), ..b }).is_err());
    }
}
