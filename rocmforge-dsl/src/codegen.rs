//! HIP C++ from the kernel IR, through the tera templates in `templates/`.
//!
//! Rust decides everything here (names, passes, loads, the C++ of each expression);
//! the templates only lay out the loops around it.

use std::sync::OnceLock;

use crate::dtype::DType;
use crate::ir::*;
use crate::spec::{symbol_name, RowMode, Spec};

/// The portability header every translation unit starts with.
pub const PORTABILITY_HEADER: &str = include_str!("../../templates/rocmforge.h");

const TEMPLATES: [(&str, &str); 7] = [
    ("attention.hip.tera", include_str!("../../templates/attention.hip.tera")),
    ("decode_step.hip.tera", include_str!("../../templates/decode_step.hip.tera")),
    ("engine.hip.tera", include_str!("../../templates/engine.hip.tera")),
    ("elementwise.hip.tera", include_str!("../../templates/elementwise.hip.tera")),
    ("gemv.hip.tera", include_str!("../../templates/gemv.hip.tera")),
    ("rowwise.hip.tera", include_str!("../../templates/rowwise.hip.tera")),
    ("rope.hip.tera", include_str!("../../templates/rope.hip.tera")),
];

/// A failure to render a kernel. It means a template and the codegen disagree: a bug
/// in RocmForge, not in the declaration.
#[derive(Debug, thiserror::Error)]
pub enum CodegenError {
    /// Tera rejected a template or a render.
    #[error("template `{template}` failed: {message}")]
    Template {
        /// The template name.
        template: String,
        /// Tera's message with its causes.
        message: String,
    },
    /// A source asked for something it is not generated for.
    #[error("{0}")]
    Unsupported(String),
}

fn tera_message(e: &tera::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

fn templates() -> Result<&'static tera::Tera, CodegenError> {
    static TERA: OnceLock<Result<tera::Tera, String>> = OnceLock::new();
    let t = TERA.get_or_init(|| {
        let mut t = tera::Tera::default();
        t.autoescape_on(vec![]);
        t.add_raw_templates(TEMPLATES).map_err(|e| tera_message(&e))?;
        Ok(t)
    });
    t.as_ref().map_err(|m| CodegenError::Template { template: "(registration)".into(), message: m.clone() })
}

fn render(name: &str, ctx: &tera::Context) -> Result<String, CodegenError> {
    templates()?.render(name, ctx).map_err(|e| CodegenError::Template { template: name.to_string(), message: tera_message(&e) })
}

/// One translation unit: the portability header and every given specialization.
pub fn render_source(kernel: &Kernel, specs: &[Spec]) -> Result<String, CodegenError> {
    let mut out = String::with_capacity(PORTABILITY_HEADER.len() + 4096 * specs.len());
    out.push_str(PORTABILITY_HEADER);
    for spec in specs {
        out.push('\n');
        out.push_str(&render_spec(kernel, spec)?);
    }
    Ok(out)
}

/// Storage dtypes the engine kernels are generated for.
pub const ENGINE_DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// The inference engine's own kernels (row gather, argmax, the q/k/v stage, SwiGLU rows,
/// matrix-vector products; for f32 also the sampler's) for every dtype of
/// [`ENGINE_DTYPES`], as one translation unit with the portability header. Symbols:
/// `rf_gather_{dtype}`, `rf_argmax_{dtype}`, `rf_qkv_post_{dtype}`, `rf_swiglu_rows_{dtype}`,
/// ...; `rf_topk_stage_f32`, `rf_penalize_f32`, `rf_softmax_mass_f32`.
pub fn engine_source() -> Result<String, CodegenError> {
    let mut out = String::from(PORTABILITY_HEADER);
    for dt in ENGINE_DTYPES {
        let mut ctx = engine_context(dt);
        ctx.insert("part", "all");
        out.push('\n');
        out.push_str(&render("engine.hip.tera", &ctx)?);
    }
    Ok(out)
}

/// A part of the engine kernels of one dtype: what the runtime compiles as one module.
/// The parts of a dtype together are that dtype's share of [`engine_source`], each
/// kernel in exactly one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EnginePart {
    /// Row gather, argmax, top-k, the q/k/v stage and SwiGLU (`rf_gather_*`,
    /// `rf_argmax_*`, `rf_topk_*`, `rf_qkv_post_*`, `rf_swiglu_rows_*`).
    Misc,
    /// The matrix-vector product for up to this many rows of x (1, 2, 4 or 8), one warp
    /// a weight row and two (`rf_gemv{rows}_*`, `rf_gemv{rows}x2_*`).
    Gemv(u32),
    /// The matrix-vector product over pairs of weight rows for up to this many rows of x
    /// (1, 2, 4 or 8), one warp a pair and two (`rf_gemv_pair{rows}_*`,
    /// `rf_gemv_pair{rows}x2_*`).
    Pairs(u32),
}

impl EnginePart {
    /// Every part.
    pub const ALL: [EnginePart; 9] = [
        EnginePart::Misc,
        EnginePart::Gemv(1),
        EnginePart::Gemv(2),
        EnginePart::Gemv(4),
        EnginePart::Gemv(8),
        EnginePart::Pairs(1),
        EnginePart::Pairs(2),
        EnginePart::Pairs(4),
        EnginePart::Pairs(8),
    ];

    /// The part's name (the template's `part`, and the module name's suffix).
    pub fn name(self) -> String {
        match self {
            EnginePart::Misc => "misc".into(),
            EnginePart::Gemv(rows) => format!("gemv{rows}"),
            EnginePart::Pairs(rows) => format!("pairs{rows}"),
        }
    }
}

/// One part of the engine kernels of one storage dtype (`dt` of [`ENGINE_DTYPES`]) as a
/// translation unit of its own, with the portability header. The runtime compiles only
/// the parts and dtypes a model launches, each part on its own thread, instead of every
/// dtype's kernels as one unit (on H200 hosts, a cold load of the Llama-3.2-1B shape
/// spent 30-49 s compiling that unit, and 4.3 s in parts).
pub fn engine_source_for(dt: DType, part: EnginePart) -> Result<String, CodegenError> {
    if !ENGINE_DTYPES.contains(&dt) {
        return Err(CodegenError::Unsupported(format!("engine kernels for {}: they exist for f32, f16 and bf16", dt.name())));
    }
    if !EnginePart::ALL.contains(&part) {
        return Err(CodegenError::Unsupported(format!("engine part {}: the products exist for 1, 2, 4 or 8 rows", part.name())));
    }
    let mut ctx = engine_context(dt);
    ctx.insert("part", &part.name());
    Ok(format!("{PORTABILITY_HEADER}\n{}", render("engine.hip.tera", &ctx)?))
}

/// The names an engine template uses for one storage dtype.
fn engine_context(dt: DType) -> tera::Context {
    let mut ctx = tera::Context::new();
    ctx.insert("dt", dt.name());
    ctx.insert("T", dt.c_storage());
    ctx.insert(
        "to_f32",
        match dt {
            DType::F16 => "rf_f16_to_f32",
            DType::BF16 => "rf_bf16_to_f32",
            _ => "",
        },
    );
    ctx.insert(
        "from_f32",
        match dt {
            DType::F16 => "rf_f32_to_f16",
            DType::BF16 => "rf_f32_to_bf16",
            _ => "",
        },
    );
    ctx
}

/// The persistent decode step (`rf_decode_step_{dtype}`, templates/decode_step.hip.tera)
/// for one storage dtype, each lane accumulating `dpl` head dims (1, 2 or 4: head_dim up
/// to 32, 64 or 128) of `group` query heads (a GQA group, 1 to 8), as a translation unit
/// of its own: it is compiled on first use, for the shape a model has, not with the
/// other engine kernels. CUDA only (the body is empty elsewhere).
pub fn decode_step_source(dt: DType, dpl: u32, group: u32) -> Result<String, CodegenError> {
    let mut ctx = engine_context(dt);
    ctx.insert("dpl", &dpl);
    ctx.insert("group", &group);
    Ok(format!("{PORTABILITY_HEADER}\n{}", render("decode_step.hip.tera", &ctx)?))
}

/// The `__global__` function of one specialization (without the header).
pub fn render_spec(kernel: &Kernel, spec: &Spec) -> Result<String, CodegenError> {
    let mut ctx = tera::Context::new();
    ctx.insert("kernel", &kernel.name);
    ctx.insert("symbol", &symbol_name(&kernel.name, spec));
    ctx.insert("block", &spec.block);
    ctx.insert("spec_desc", &spec_desc(spec));
    ctx.insert("params", &param_list(kernel, spec));
    let vec = kernel.vec_width(spec);
    ctx.insert("vec", &vec);
    match kernel.kind {
        Kind::Elementwise => {
            let lw = Lowered::new(kernel, spec);
            ctx.insert("align_expr", &align_expr(kernel));
            ctx.insert("inputs", &io_list(kernel, spec, &lw.inputs));
            ctx.insert("outputs", &io_list(kernel, spec, &lw.outputs));
            ctx.insert("element_code", &lw.element_code(kernel, spec, 0, 16));
            render("elementwise.hip.tera", &ctx)
        }
        Kind::Rowwise => {
            let lw = Lowered::new(kernel, spec);
            ctx.insert("warp", &spec.warp.unwrap_or(32));
            ctx.insert("row_threads", &kernel.row_threads(spec));
            ctx.insert("items", &kernel.row_items(spec));
            ctx.insert("align_expr", &align_expr(kernel));
            ctx.insert("has_reductions", &!lw.reductions.is_empty());
            let last = lw.last_pass();
            // On the cached path the row tensors are loaded into registers up front, so
            // their loads overlap instead of each pass waiting on its own. Tensors shared
            // by every row (weights) are not cached: they stay in L1/L2 and re-loading them
            // in the pass that reads them keeps registers, hence occupancy, for the rows
            // (on the H100, 96 -> 48 registers and 0.49 -> 0.72 of copy bandwidth for
            // bf16 RMSNorm, together with moving wide rows to their own kernel). The wide
            // kernel loads what each pass reads.
            let row_inputs: Vec<usize> = lw
                .inputs
                .iter()
                .copied()
                .filter(|&i| matches!(kernel.params[i].ty, ParamTy::Tensor { layout: Layout::Rows, .. }))
                .collect();
            ctx.insert("inputs", &io_list(kernel, spec, &row_inputs));
            ctx.insert("capacity", &kernel.row_capacity(spec));
            ctx.insert("outputs", &io_list(kernel, spec, &lw.outputs));
            let mut passes = Vec::new();
            for p in 0..=last {
                let reds: Vec<usize> = (0..lw.reductions.len()).filter(|&r| lw.reductions[r].arg_stage == p && p < last).collect();
                passes.push(PassCtx {
                    last: p == last,
                    accs: reds.iter().map(|&r| format!("acc{r} = {}", lw.reductions[r].op_init())).collect(),
                    reduce: reds.iter().map(|&r| lw.reductions[r].finish(r)).collect(),
                    element_code: lw.element_code(kernel, spec, p, 28),
                    element_code_unmasked: lw.element_code(kernel, spec, p, 24),
                    reads: io_list(kernel, spec, &lw.pass_needs(p).1),
                });
            }
            ctx.insert("passes", &passes);
            render("rowwise.hip.tera", &ctx)
        }
        Kind::Rope(layout) => {
            let dtype = kernel.param_dtype(0, spec).unwrap_or(crate::DType::F32);
            let pairs = match layout {
                RopeLayout::Neox => vec,
                RopeLayout::Gptj => vec / 2,
            };
            let head_dim = spec.head_dim.unwrap_or(2);
            let name = |i: usize| format!("p_{}", kernel.params[i].name);
            ctx.insert(
                "layout",
                &match layout {
                    RopeLayout::Neox => "neox",
                    RopeLayout::Gptj => "gptj",
                },
            );
            ctx.insert("head_dim", &head_dim);
            ctx.insert("heads_per_thread", &crate::spec::ROPE_HEADS_PER_THREAD);
            ctx.insert("pairs", &pairs);
            ctx.insert("hd_aligned", &(head_dim as usize * dtype.size()).is_multiple_of(16));
            ctx.insert("storage", dtype.c_storage());
            ctx.insert("q", &name(0));
            ctx.insert("k", &name(1));
            ctx.insert("pos", &name(2));
            ctx.insert("inv_freq", &name(3));
            ctx.insert("mscale", &format!("s_{}", kernel.params[4].name));
            let (la, lb) = match layout {
                RopeLayout::Neox => ("a.v[j]", "b.v[j]"),
                RopeLayout::Gptj => ("a.v[2 * j]", "a.v[2 * j + 1]"),
            };
            ctx.insert("load_a", &dtype.c_load(la));
            ctx.insert("load_b", &dtype.c_load(lb));
            ctx.insert("store_a", &dtype.c_store("x1 * cs[j] - x2 * sn[j]"));
            ctx.insert("store_b", &dtype.c_store("x2 * cs[j] + x1 * sn[j]"));
            render("rope.hip.tera", &ctx)
        }
        Kind::Attention => {
            attention_ctx(kernel, spec, &mut ctx);
            render("attention.hip.tera", &ctx)
        }
        Kind::Gemv => {
            gemv_ctx(kernel, spec, &mut ctx);
            render("gemv.hip.tera", &ctx)
        }
    }
}

#[derive(serde::Serialize)]
struct GemvTensor {
    name: String,
    storage: &'static str,
    /// Start of the group's row: `xr_x[mi]` (`Rows<T>`, row `m0 + mi`) or `p_x`.
    ptr: String,
    /// A `Rows<T>` input (its row pointers are set up per launch row); false for weights.
    row: bool,
    /// Element `j` of the loaded group (weights: of `wg_<name>`), as f32.
    vload: String,
    /// Weights: column `c` of the row, as f32 (the per-column path).
    sload: String,
}

#[derive(serde::Serialize)]
struct GemvAcc {
    name: String,
    init: &'static str,
    /// The warp reduction of one lane's partial.
    reduce: String,
}

/// The gemv template's values: weights, input-side tensors, the accumulators (one per
/// `dot`, one per reduction) with the code that updates them per input column, and the
/// epilogue per output element.
fn gemv_ctx(kernel: &Kernel, spec: &Spec, ctx: &mut tera::Context) {
    let roles = kernel.gemv_roles();
    let lw = Lowered::new(kernel, spec);
    let dtype = |i: usize| kernel.param_dtype(i, spec).unwrap_or(crate::DType::F32);
    let with_role = |role: GemvRole| -> Vec<usize> { (0..kernel.params.len()).filter(|&i| roles[i] == Some(role)).collect() };
    let is_rows = |i: usize| matches!(kernel.params[i].ty, ParamTy::Tensor { layout: Layout::Rows, .. });
    let weights: Vec<GemvTensor> = with_role(GemvRole::Weight)
        .into_iter()
        .map(|i| {
            let name = kernel.params[i].name.clone();
            GemvTensor {
                vload: dtype(i).c_load(&format!("wg_{name}.v[j]")),
                sload: dtype(i).c_load(&format!("wr_{name}[c]")),
                ptr: format!("p_{name} + r * k"),
                storage: dtype(i).c_storage(),
                row: false,
                name,
            }
        })
        .collect();
    let inputs: Vec<GemvTensor> = with_role(GemvRole::Input)
        .into_iter()
        .map(|i| {
            let name = kernel.params[i].name.clone();
            let ptr = if is_rows(i) { format!("xr_{name}[mi]") } else { format!("p_{name}") };
            GemvTensor {
                vload: dtype(i).c_load(&format!("g_{name}.v[j]")),
                sload: String::new(),
                ptr,
                storage: dtype(i).c_storage(),
                row: is_rows(i),
                name,
            }
        })
        .collect();
    // Per input column: the inputs as f32, then every accumulator's update. The vector
    // path reads element j of the loaded groups, the scalar path column c.
    let updates = |wref: &dyn Fn(&str) -> String| -> Vec<String> {
        let mut lines = Vec::new();
        for (d, (w, arg)) in lw.dots.iter().enumerate() {
            lines.push(format!("a{d}[mi] += {} * {arg};", wref(&kernel.params[*w].name)));
        }
        for (r, red) in lw.reductions.iter().enumerate() {
            lines.push(red.accumulate_into(&format!("q{r}[mi]")));
        }
        lines
    };
    let mut vec_code: Vec<String> = inputs.iter().map(|t| format!("const float v_{} = {};", t.name, t.vload)).collect();
    vec_code.extend(updates(&|w| format!("wf_{w}[j]")));
    let mut scalar_code: Vec<String> = with_role(GemvRole::Input)
        .into_iter()
        .map(|i| {
            let name = &kernel.params[i].name;
            let at = if is_rows(i) { format!("xr_{name}[mi][c]") } else { format!("p_{name}[c]") };
            format!("const float v_{name} = {};", dtype(i).c_load(&at))
        })
        .collect();
    scalar_code.extend(updates(&|w| format!("wf_{w}")));
    let mut accs: Vec<GemvAcc> =
        (0..lw.dots.len()).map(|d| GemvAcc { name: format!("a{d}"), init: "0.0f", reduce: "rf_warp_sum<WARP>".into() }).collect();
    for (r, red) in lw.reductions.iter().enumerate() {
        let reduce = match red.op {
            ReduceOp::Sum | ReduceOp::Mean => "rf_warp_sum<WARP>",
            ReduceOp::Max => "rf_warp_max<WARP>",
            ReduceOp::Min => "rf_warp_min<WARP>",
        };
        accs.push(GemvAcc { name: format!("q{r}"), init: red.op_init(), reduce: reduce.into() });
    }
    // Lane 0, per input row: the products and reductions, output-side reads, the stores.
    let mut epilogue: Vec<String> = (0..lw.dots.len()).map(|d| format!("const float d{d} = a{d}[mi];")).collect();
    for (r, red) in lw.reductions.iter().enumerate() {
        let div = if red.op == ReduceOp::Mean { " / (float)k" } else { "" };
        epilogue.push(format!("const float r{r} = q{r}[mi]{div};"));
    }
    for i in with_role(GemvRole::Output) {
        let name = &kernel.params[i].name;
        let read = lw.stores.iter().any(|s| s.3.tensors.contains(&i));
        if read {
            let at = if is_rows(i) { format!("p_{name}[orow + r]") } else { format!("p_{name}[r]") };
            epilogue.push(format!("const float v_{name} = {};", dtype(i).c_load(&at)));
        }
    }
    for (param, code, _, _) in &lw.stores {
        epilogue.push(format!("p_{}[orow + r] = {code};", kernel.params[*param].name));
    }
    let mut align: Vec<String> = with_role(GemvRole::Weight)
        .into_iter()
        .chain(with_role(GemvRole::Input))
        .map(|i| format!("(unsigned long long)p_{}", kernel.params[i].name))
        .collect();
    if align.is_empty() {
        align.push("0ull".into());
    }
    let args: Vec<String> =
        kernel.params.iter().map(|p| if p.ty.is_tensor() { format!("p_{}", p.name) } else { format!("s_{}", p.name) }).collect();
    ctx.insert("warp", &spec.warp.unwrap_or(32));
    ctx.insert("rows", &crate::spec::GEMV_ROWS);
    ctx.insert("weights", &weights);
    ctx.insert("inputs", &inputs);
    ctx.insert("accs", &accs);
    ctx.insert("vec_code", &indent(&vec_code, 36));
    ctx.insert("scalar_code", &indent(&scalar_code, 24));
    ctx.insert("epilogue", &indent(&epilogue, 20));
    ctx.insert("align_expr", &align.join(" | "));
    ctx.insert("args", &args.join(", "));
}

fn indent(lines: &[String], n: usize) -> String {
    let pad = " ".repeat(n);
    lines.iter().map(|l| format!("{pad}{l}")).collect::<Vec<_>>().join("\n")
}

/// The attention template's values: tile sizes, the modifiers as lambdas, the band.
fn attention_ctx(kernel: &Kernel, spec: &Spec, ctx: &mut tera::Context) {
    use crate::spec::{decode_chunk, prefill_tiles, DECODE_ROWS};
    let dtype = kernel.param_dtype(0, spec).unwrap_or(crate::DType::F32);
    let name = |i: usize| format!("p_{}", kernel.params[i].name);
    let (bq, bkv) = prefill_tiles(kernel, spec);
    let head_dim = spec.head_dim.unwrap_or(16);
    ctx.insert("head_dim", &head_dim);
    ctx.insert("block_q", &bq);
    ctx.insert("block_kv", &bkv);
    ctx.insert("mfma_block_q", &crate::spec::MFMA_PREFILL_TILES.0);
    ctx.insert("mfma_block_kv", &crate::spec::MFMA_PREFILL_TILES.1);
    ctx.insert("wmma_block_q", &crate::spec::WMMA_PREFILL_TILES.0);
    ctx.insert("wmma_block_kv", &crate::spec::WMMA_PREFILL_TILES.1);
    ctx.insert("chunk", &decode_chunk(spec, dtype.size() as u32));
    ctx.insert("rows", &DECODE_ROWS);
    ctx.insert("counters", &crate::spec::DECODE_COUNTERS);
    ctx.insert("mma", &matches!(dtype, crate::DType::F16 | crate::DType::BF16));
    ctx.insert("wgmma", &crate::spec::has_wgmma_prefill(kernel, spec, dtype));
    ctx.insert("is_bf16", &(dtype == crate::DType::BF16));
    ctx.insert("storage", dtype.c_storage());
    for (key, i) in [("q", 0), ("k", 1), ("v", 2), ("out", 3)] {
        ctx.insert(key, &name(i));
    }
    ctx.insert("scale", &format!("s_{}", kernel.params[4].name));
    ctx.insert("load_q", &dtype.c_load(&format!("{}[((long long)(q_start + i) * heads + h) * D + c]", name(0))));
    ctx.insert("load_kg", &dtype.c_load("kg.v[j]"));
    ctx.insert("load_vg", &dtype.c_load("vg.v[j]"));
    ctx.insert("store_o", &dtype.c_store("acc[it][j] * inv"));
    ctx.insert("store_o2", &dtype.c_store("acc2[j] * inv"));
    let mut mods = Vec::new();
    let mask = kernel.mask.as_ref().map(|m| crate::attn::cpp(kernel, m));
    let score = kernel.score_mod.as_ref().map(|m| crate::attn::cpp(kernel, m));
    if let Some(m) = &mask {
        mods.push(format!(
            "    const auto rf_visible = [&](int q_pos, int kv_pos, int head, int kv_head, int batch) -> bool {{ return {m}; }};"
        ));
    }
    if let Some(sc) = &score {
        mods.push(format!(
            "    const auto rf_score = [&](float score, int q_pos, int kv_pos, int head, int kv_head, int batch) -> float {{ return {sc}; }};"
        ));
    }
    ctx.insert("modifiers", &mods.join("\n"));
    ctx.insert("mask_code", &mask.unwrap_or_default());
    ctx.insert("score_code", &score.unwrap_or_default());
    let band = crate::attn::band(kernel);
    let hi = band.d_max.as_ref().map(|e| crate::attn::cpp(kernel, e)).unwrap_or_default();
    let lo = band.d_min.as_ref().map(|e| crate::attn::cpp(kernel, e)).unwrap_or_default();
    let mut full = vec!["kv0 + BKV <= kv_len".to_string()];
    if kernel.mask.is_some() {
        if band.opaque {
            full = vec!["false".to_string()];
        } else {
            if !hi.is_empty() {
                full.push(format!("(long long)(kv0 + BKV - 1) - qp_first <= (long long)({hi})"));
            }
            if !lo.is_empty() {
                full.push(format!("(long long)kv0 - qp_last >= (long long)({lo})"));
            }
        }
    }
    ctx.insert("full_test", &full.join(" && "));
    // The matrix-core decode tests each tile against its warp's range end and the rows'
    // query positions qp0..qp1.
    let dec_full: Vec<String> = full
        .iter()
        .map(|t| t.replace("kv0 + BKV <= kv_len", "kv0 + BKV <= w_hi").replace("qp_first", "qp0").replace("qp_last", "qp1"))
        .collect();
    ctx.insert("dec_full_test", &dec_full.join(" && "));
    ctx.insert("dec_bkv", &crate::spec::decode_mma_tile(spec));
    ctx.insert("dec_stages", &crate::spec::DECODE_MMA_STAGES);
    ctx.insert("max_splits", &crate::spec::DECODE_MAX_SPLITS);
    ctx.insert("max_cluster", &crate::spec::DECODE_MAX_CLUSTER);
    ctx.insert("store_x", &dtype.c_store("x"));
    ctx.insert("band_hi", &hi);
    ctx.insert("band_lo", &lo);
}

#[derive(serde::Serialize)]
struct PassCtx {
    last: bool,
    accs: Vec<String>,
    reduce: Vec<String>,
    element_code: String,
    /// The same, indented for the cached kernel's loop (no bounds check around it).
    element_code_unmasked: String,
    /// Tensors this pass reads.
    reads: Vec<IoCtx>,
}

#[derive(serde::Serialize)]
struct IoCtx {
    name: String,
    storage: &'static str,
    /// Start of the tensor's current row (`Rows<T>`) or of the tensor (`[T]`).
    ptr: String,
    /// A `Rows<T>` tensor (cached in registers on the cached rowwise path).
    row: bool,
}

fn io_list(kernel: &Kernel, spec: &Spec, params: &[usize]) -> Vec<IoCtx> {
    params
        .iter()
        .map(|&i| {
            let p = &kernel.params[i];
            let row = matches!(p.ty, ParamTy::Tensor { layout: Layout::Rows, .. });
            let ptr = if row { format!("p_{} + roff", p.name) } else { format!("p_{}", p.name) };
            let storage = kernel.param_dtype(i, spec).map(|d| d.c_storage()).unwrap_or("float");
            IoCtx { name: p.name.clone(), storage, ptr, row }
        })
        .collect()
}

fn spec_desc(spec: &Spec) -> String {
    let mut parts = Vec::new();
    if let Some(d) = spec.dtype {
        parts.push(format!("T = {d}"));
    }
    if let Some(h) = spec.head_dim {
        parts.push(format!("head_dim {h}"));
    }
    match spec.row_mode {
        Some(RowMode::Warp) => parts.push(format!("one row per warp, block {}", spec.block)),
        _ => parts.push(format!("block {}", spec.block)),
    }
    if let Some(w) = spec.warp {
        parts.push(format!("warp {w}"));
    }
    parts.join(", ")
}

fn param_list(kernel: &Kernel, spec: &Spec) -> String {
    let mut out = Vec::new();
    for (i, p) in kernel.params.iter().enumerate() {
        match p.ty {
            ParamTy::Tensor { mutable, .. } => {
                let st = kernel.param_dtype(i, spec).map(|d| d.c_storage()).unwrap_or("float");
                let c = if mutable { "" } else { "const " };
                out.push(format!("{c}{st}* __restrict__ p_{}", p.name));
            }
            ParamTy::Scalar(s) => out.push(format!("{} s_{}", s.ty().c_type(), p.name)),
        }
    }
    out.join(", ")
}

fn align_expr(kernel: &Kernel) -> String {
    let ptrs: Vec<String> = kernel.tensor_params().map(|(_, p)| format!("(unsigned long long)p_{}", p.name)).collect();
    if ptrs.is_empty() {
        "0ull".to_string()
    } else {
        ptrs.join(" | ")
    }
}

struct Reduction {
    op: ReduceOp,
    arg: String,
    arg_stage: usize,
    deps: Deps,
}

impl Reduction {
    fn op_init(&self) -> &'static str {
        match self.op {
            ReduceOp::Sum | ReduceOp::Mean => "0.0f",
            ReduceOp::Max => "rf_neg_inf()",
            ReduceOp::Min => "-rf_neg_inf()",
        }
    }
    fn accumulate(&self, r: usize) -> String {
        self.accumulate_into(&format!("acc{r}"))
    }
    /// The update of accumulator `acc` (a variable or an element) by one column.
    fn accumulate_into(&self, acc: &str) -> String {
        match self.op {
            ReduceOp::Sum | ReduceOp::Mean => format!("{acc} += {};", self.arg),
            ReduceOp::Max => format!("{acc} = fmaxf({acc}, {});", self.arg),
            ReduceOp::Min => format!("{acc} = fminf({acc}, {});", self.arg),
        }
    }
    fn finish(&self, r: usize) -> String {
        match self.op {
            ReduceOp::Sum => format!("const float r{r} = rf_row_sum<ROW_THREADS, WARP>(acc{r}, rf_red);"),
            ReduceOp::Mean => format!("const float r{r} = rf_row_sum<ROW_THREADS, WARP>(acc{r}, rf_red) / (float)cols;"),
            ReduceOp::Max => format!("const float r{r} = rf_row_max<ROW_THREADS, WARP>(acc{r}, rf_red);"),
            ReduceOp::Min => format!("const float r{r} = rf_row_min<ROW_THREADS, WARP>(acc{r}, rf_red);"),
        }
    }
}

/// Tensors and `let`s an expression reads directly (not through a reduction, whose
/// argument is consumed in an earlier pass).
#[derive(Default, Clone)]
struct Deps {
    tensors: Vec<usize>,
    lets: Vec<usize>,
}

impl Deps {
    fn of(e: &Expr) -> Deps {
        fn walk(e: &Expr, d: &mut Deps) {
            match e {
                Expr::Tensor(i) => d.tensors.push(*i),
                Expr::Local(i) => d.lets.push(*i),
                Expr::Reduce(..) | Expr::Dot(..) | Expr::Float(_) | Expr::Int(_) | Expr::Scalar(_) | Expr::Var(_) => {}
                Expr::Unary(_, a) | Expr::Cast(_, a) => walk(a, d),
                Expr::Binary(_, a, b) => {
                    walk(a, d);
                    walk(b, d);
                }
                Expr::Call(_, args) => args.iter().for_each(|a| walk(a, d)),
                Expr::Select(c, a, b) => {
                    walk(c, d);
                    walk(a, d);
                    walk(b, d);
                }
            }
        }
        let mut d = Deps::default();
        walk(e, &mut d);
        d
    }
}

/// The IR lowered to C++ snippets, with the pass (stage) at which each value exists:
/// a reduction's result is available one pass after its argument.
struct Lowered {
    lets: Vec<(String, usize, Deps)>,
    reductions: Vec<Reduction>,
    /// Gemv `dot` products: the weight parameter and the input-side argument's C++.
    dots: Vec<(usize, String)>,
    stores: Vec<(usize, String, usize, Deps)>,
    inputs: Vec<usize>,
    outputs: Vec<usize>,
}

impl Lowered {
    fn new(kernel: &Kernel, spec: &Spec) -> Self {
        let mut lw = Lowered {
            lets: Vec::new(),
            reductions: Vec::new(),
            dots: Vec::new(),
            stores: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
        };
        let mut let_stage = Vec::new();
        for (i, l) in kernel.lets.iter().enumerate() {
            let (code, stage) = lw.expr(kernel, &l.value, &let_stage);
            lw.lets.push((format!("const {} l{i}_{} = {code};", l.ty.c_type(), l.name), stage, Deps::of(&l.value)));
            let_stage.push(stage);
        }
        for s in &kernel.stores {
            let (code, stage) = lw.expr(kernel, &s.value, &let_stage);
            let dtype = kernel.param_dtype(s.param, spec).unwrap_or(crate::DType::F32);
            lw.stores.push((s.param, dtype.c_store(&code), stage, Deps::of(&s.value)));
            lw.outputs.push(s.param);
        }
        let mut reads = Vec::new();
        let mut f = |e: &Expr| {
            if let Expr::Tensor(i) = e {
                if !reads.contains(i) {
                    reads.push(*i);
                }
            }
        };
        kernel.lets.iter().for_each(|l| l.value.visit(&mut f));
        kernel.stores.iter().for_each(|s| s.value.visit(&mut f));
        reads.sort_unstable();
        lw.inputs = reads;
        lw
    }

    fn last_pass(&self) -> usize {
        self.stores.iter().map(|s| s.2).max().unwrap_or(0)
    }

    /// The `let`s and tensors pass `pass` reads (sorted, deduplicated).
    fn pass_needs(&self, pass: usize) -> (Vec<usize>, Vec<usize>) {
        let mut roots: Vec<Deps> = Vec::new();
        if pass == self.last_pass() {
            roots.extend(self.stores.iter().map(|s| s.3.clone()));
        } else {
            roots.extend(self.reductions.iter().filter(|r| r.arg_stage == pass).map(|r| r.deps.clone()));
        }
        let mut lets: Vec<usize> = Vec::new();
        let mut tensors: Vec<usize> = Vec::new();
        let mut stack: Vec<usize> = Vec::new();
        for d in &roots {
            tensors.extend(&d.tensors);
            stack.extend(&d.lets);
        }
        while let Some(l) = stack.pop() {
            if lets.contains(&l) {
                continue;
            }
            lets.push(l);
            if let Some((_, _, d)) = self.lets.get(l) {
                tensors.extend(&d.tensors);
                stack.extend(&d.lets);
            }
        }
        lets.sort_unstable();
        tensors.sort_unstable();
        tensors.dedup();
        (lets, tensors)
    }

    fn expr(&mut self, k: &Kernel, e: &Expr, let_stage: &[usize]) -> (String, usize) {
        match e {
            Expr::Float(v) => (float_lit(*v), 0),
            Expr::Int(v) => (format!("{v}"), 0),
            Expr::Tensor(i) => (format!("v_{}", k.params[*i].name), 0),
            Expr::Scalar(i) => (format!("s_{}", k.params[*i].name), 0),
            Expr::Local(i) => (format!("l{i}_{}", k.lets[*i].name), let_stage.get(*i).copied().unwrap_or(0)),
            Expr::Var(v) => (v.name().to_string(), 0),
            Expr::Unary(op, a) => {
                let (a, s) = self.expr(k, a, let_stage);
                let o = match op {
                    UnOp::Neg => "-",
                    UnOp::Not => "!",
                };
                (format!("({o}{a})"), s)
            }
            Expr::Binary(op, a, b) => {
                let (a, sa) = self.expr(k, a, let_stage);
                let (b, sb) = self.expr(k, b, let_stage);
                (format!("({a} {} {b})", op.symbol()), sa.max(sb))
            }
            Expr::Call(f, args) => {
                let mut stage = 0;
                let mut parts = Vec::new();
                for a in args {
                    let (c, s) = self.expr(k, a, let_stage);
                    stage = stage.max(s);
                    parts.push(c);
                }
                (format!("{}({})", f.c_name(), parts.join(", ")), stage)
            }
            Expr::Reduce(op, a) => {
                let (arg, s) = self.expr(k, a, let_stage);
                // The same reduction twice (a gemv `let` inlined in two places) is one.
                if let Some(r) = self.reductions.iter().position(|r| r.op == *op && r.arg == arg && r.arg_stage == s) {
                    return (format!("r{r}"), s + 1);
                }
                self.reductions.push(Reduction { op: *op, arg, arg_stage: s, deps: Deps::of(a) });
                (format!("r{}", self.reductions.len() - 1), s + 1)
            }
            Expr::Dot(w, a) => {
                let (arg, s) = self.expr(k, a, let_stage);
                // A product used twice (a `let` inlined in two places) is computed once.
                let d = match self.dots.iter().position(|(w0, a0)| w0 == w && *a0 == arg) {
                    Some(d) => d,
                    None => {
                        self.dots.push((*w, arg));
                        self.dots.len() - 1
                    }
                };
                (format!("d{d}"), s + 1)
            }
            Expr::Select(c, a, b) => {
                let (c, sc) = self.expr(k, c, let_stage);
                let (a, sa) = self.expr(k, a, let_stage);
                let (b, sb) = self.expr(k, b, let_stage);
                (format!("({c} ? {a} : {b})"), sc.max(sa).max(sb))
            }
            Expr::Cast(to, a) => {
                let (a, s) = self.expr(k, a, let_stage);
                let code = match to {
                    CastTo::F32 => format!("((float)({a}))"),
                    CastTo::I32 => format!("((int)({a}))"),
                    CastTo::U32 => format!("((unsigned int)({a}))"),
                    CastTo::F16 => format!("rf_f16_to_f32(rf_f32_to_f16({a}))"),
                    CastTo::BF16 => format!("rf_bf16_to_f32(rf_f32_to_bf16({a}))"),
                };
                (code, s)
            }
        }
    }

    /// The code for element `j` of a group in pass `pass`: the values it reads, the
    /// `let`s it needs, then its accumulations (or, in the last pass, its stores).
    fn element_code(&self, k: &Kernel, spec: &Spec, pass: usize, indent: usize) -> String {
        let pad = " ".repeat(indent);
        let last = pass == self.last_pass();
        let (lets, tensors) = self.pass_needs(pass);
        let mut lines = Vec::new();
        for &i in &tensors {
            let p = &k.params[i];
            let d = k.param_dtype(i, spec).unwrap_or(crate::DType::F32);
            lines.push(format!("const {} v_{} = {};", Ty::of_dtype(d).c_type(), p.name, d.c_load(&format!("g_{}.v[j]", p.name))));
        }
        for &l in &lets {
            lines.push(self.lets[l].0.clone());
        }
        if last {
            for (param, code, _, _) in &self.stores {
                lines.push(format!("o_{}.v[j] = {code};", k.params[*param].name));
            }
        } else {
            for (r, red) in self.reductions.iter().enumerate() {
                if red.arg_stage == pass {
                    lines.push(red.accumulate(r));
                }
            }
        }
        lines.iter().map(|l| format!("{pad}{l}")).collect::<Vec<_>>().join("\n")
    }
}

pub(crate) fn float_lit(v: f64) -> String {
    let f = v as f32;
    if f.is_finite() {
        format!("{f:?}f")
    } else if f.is_nan() {
        "__int_as_float(0x7fc00000)".to_string()
    } else if f > 0.0 {
        "(-rf_neg_inf())".to_string()
    } else {
        "rf_neg_inf()".to_string()
    }
}
