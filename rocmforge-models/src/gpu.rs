//! The decoder on an NVIDIA GPU (feature `cuda`): the same network as
//! [`crate::transformer`], composed from the standard DSL kernels, cuBLAS matrix products
//! and the engine kernels (embedding gather, argmax, top-k), over a paged KV cache in
//! device memory.
//!
//! Per layer: (fused residual add +) RMSNorm, q/k/v projections (+ bias, + q/k norm),
//! RoPE in place, K/V stored into the pages, attention (matrix-core prefill or split-KV
//! decode, causal or windowed), output projection, (add +) RMSNorm, gate and up
//! projections, SwiGLU, down projection. Weights are uploaded once in one dtype (f32, f16
//! or bf16); logits come out in f32. Memory is planned before anything is allocated
//! ([`plan_memory`]).

use std::sync::Arc;

use rocmforge_dsl::rope::inv_freq;
use rocmforge_runtime::cuda::{CudaDevice, CudaError, CudaEvent, DeviceGraph, DeviceTensor, DeviceView, DeviceViewMut};
use rocmforge_runtime::engine::{
    argmax_workspace, decode_step_table, decode_step_ticks, decode_step_unsupported, decode_step_workspace, plan_argmax,
    plan_decode_advance, plan_decode_advance_gather, plan_decode_step, plan_gather, plan_gemm, plan_gemv, plan_gemv_pairs, plan_penalize,
    plan_qkv_post, plan_softmax_mass, plan_swiglu_rows, plan_topk_staged, softmax_mass_parts, topk_staged_workspace, DecodeIndex,
    EngineModule, EnginePart, GemvFusion, PairEpilogue, QkvPost, RmsNorm, StepBuffers, StepDims, StepLayer, TOPK_MAX,
};
use rocmforge_runtime::{AttnSeqs, DType, Kernel, KvIndex, LaunchError, LaunchPlan, TensorArg};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::kernels;
use crate::kv::{KvPool, KvSeq, KvShape};
use crate::sampling::{MassParts, Sampler};
use crate::weights::{encode, f16_max_abs};

pub use crate::memory::{plan_memory, tensor_list, GpuOptions, MemoryPlan, RandomWeights, WeightSource};

impl From<CudaError> for ModelError {
    fn from(e: CudaError) -> Self {
        ModelError::Gpu(e.to_string())
    }
}

impl From<LaunchError> for ModelError {
    fn from(e: LaunchError) -> Self {
        ModelError::Gpu(e.to_string())
    }
}

/// One layer's weights on the GPU. q/k/v and gate/up are fused along the output rows,
/// so each is one product: `wqkv` is `[(heads + 2 kv_heads) head_dim, hidden]` (q rows,
/// then k, then v), `w_gate_up` is `[2 intermediate, hidden]` (gate rows, then up).
/// With [`GpuOptions::fold_norms`] the two norms' weights are folded into the columns of
/// the product after each (`wqkv[r, c] * attn_norm[c]`, `w_gate_up[r, c] *
/// mlp_norm[c]`) and not kept (`None`).
struct Layer {
    attn_norm: Option<DeviceTensor>,
    wqkv: DeviceTensor,
    bqkv: Option<DeviceTensor>,
    q_norm: Option<DeviceTensor>,
    k_norm: Option<DeviceTensor>,
    wo: DeviceTensor,
    bo: Option<DeviceTensor>,
    mlp_norm: Option<DeviceTensor>,
    w_gate_up: DeviceTensor,
    b_gate_up: Option<DeviceTensor>,
    w_down: DeviceTensor,
    b_down: Option<DeviceTensor>,
    window: Option<usize>,
}

/// Activations and staging, sized for `max_batch_tokens` tokens and `max_seqs` sequences.
struct Scratch {
    res: DeviceTensor,
    normed: DeviceTensor,
    proj: DeviceTensor,
    qkv: DeviceTensor,
    q: DeviceTensor,
    attn: DeviceTensor,
    gate_up: DeviceTensor,
    act: DeviceTensor,
    tmp: DeviceTensor,
    /// i32 staging: ids, pos, slots [T each], cu_q [S + 1], kv_lens [S], last [S],
    /// block table [S, max_blocks].
    index: DeviceTensor,
    /// The ids a chain of greedy steps draws (i32 `[CHAIN]`), copied out after each.
    chain_ids: DeviceTensor,
    last: DeviceTensor,
    logits: DeviceTensor,
    next: DeviceTensor,
    /// What a draw over top candidates copies back, in one transfer (u32 words, read as
    /// f32 and i32 through [`DeviceTensor::view_as`]): for `rows` rows and `k`
    /// candidates, their values (f32 `[rows, k]`), their ids (i32 `[rows, k]`), then each
    /// row's softmax normalizer in parts (f32 `[rows, parts, 2]`, [`plan_softmax_mass`]).
    draw: DeviceTensor,
    /// The staged top-k's candidates between its stages ([`plan_topk_staged`]).
    topk_ws_vals: DeviceTensor,
    topk_ws_ids: DeviceTensor,
    /// i32 staging of a draw: each row's temperature, then the penalty entries
    /// ([`plan_penalize`]); allocated at the first draw that is not plain greedy, grown
    /// when the seen tokens outgrow it.
    sampling: Option<DeviceTensor>,
    /// The argmax's workspace (f32) and counters (u32, zeroed at allocation; every
    /// launch leaves them zero).
    argmax_ws: DeviceTensor,
    argmax_counters: DeviceTensor,
}

/// Where each index array starts in the i32 staging buffer (`Scratch::index`) for a step
/// of `t` tokens in `s` sequences: ids, positions and slots (`t` each), query offsets
/// (`s + 1`), lengths and last rows (`s` each), then the block table. Packed to the
/// step, so a decode step copies a few hundred bytes; the buffer is sized for
/// `max_batch_tokens` and `max_seqs`.
#[derive(Debug, Clone, Copy)]
struct IndexOffsets {
    pos: usize,
    slots: usize,
    cu: usize,
    lens: usize,
    last: usize,
    table: usize,
}

impl IndexOffsets {
    fn new(tmax: usize, smax: usize) -> Self {
        let cu = 3 * tmax;
        IndexOffsets { pos: tmax, slots: 2 * tmax, cu, lens: cu + smax + 1, last: cu + 2 * smax + 1, table: cu + 3 * smax + 1 }
    }
}

/// The shape of one staged step.
#[derive(Debug, Clone, Copy)]
struct Layout {
    t: usize,
    nb: usize,
    /// Pages per block-table row.
    width: usize,
    max_q: usize,
    max_kv: usize,
    /// A step of a chain of greedy steps ([`GpuModel::capture_chain`]): its embedding
    /// was gathered by the index advance before it.
    chain: bool,
}

/// The staged index of a one-token step of one sequence, as the device-side advance
/// reads and writes it: its id, position, slot and length, and the first `pages` entries
/// of its block table row (views of `Scratch::index` at [`IndexOffsets`]`(1, 1)`).
struct OneStepIndex<'a> {
    ids: DeviceView<'a>,
    pos: DeviceView<'a>,
    slots: DeviceView<'a>,
    lens: DeviceView<'a>,
    table: DeviceView<'a>,
}

impl<'a> OneStepIndex<'a> {
    fn new(index: &'a DeviceTensor, pages: usize) -> Result<Self> {
        let o = IndexOffsets::new(1, 1);
        Ok(OneStepIndex {
            ids: index.view(0, &[1])?,
            pos: index.view(o.pos, &[1])?,
            slots: index.view(o.slots, &[1])?,
            lens: index.view(o.lens, &[1])?,
            table: index.view(o.table, &[pages])?,
        })
    }

    fn index(&self) -> DecodeIndex<'_> {
        DecodeIndex { ids: &self.ids, pos: &self.pos, slots: &self.slots, lens: &self.lens, table: &self.table }
    }
}

/// What [`GpuModel::sample`]'s draws over the GPU's top candidates copied to the host,
/// counted since the model was loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SampleStats {
    /// Rows drawn over top candidates.
    pub rows: u64,
    /// Rows whose every logit was copied: top-p's mass or min-p's floor not reached
    /// inside the candidates, or a top-k past them.
    pub row_copies: u64,
    /// Parts of a row (about a thousand logits each) copied by draws that landed past
    /// the candidates with nothing cut (a plain temperature draw's tail).
    pub part_copies: u64,
}

/// One sequence's part of a forward: its cache and the tokens to feed.
#[derive(Debug)]
pub struct SeqTokens<'a> {
    /// The sequence (its blocks are in the model's pool).
    pub seq: &'a mut KvSeq,
    /// Tokens at its next positions.
    pub tokens: &'a [u32],
}

/// A model on the GPU with its KV cache.
pub struct GpuModel {
    dev: Arc<CudaDevice>,
    cfg: ModelConfig,
    opts: GpuOptions,
    plan: MemoryPlan,
    embed: DeviceTensor,
    layers: Vec<Layer>,
    /// The final norm's weight; `None` where it is folded into an untied `lm_head`.
    norm: Option<DeviceTensor>,
    lm_head: Option<DeviceTensor>,
    /// Ones `[hidden]`: the weight of a norm whose own weight is folded, for the
    /// kernels that apply one (prefill's RMSNorm, the persistent decode step).
    unit: DeviceTensor,
    inv_freq: DeviceTensor,
    mscale: f32,
    k_cache: Vec<DeviceTensor>,
    v_cache: Vec<DeviceTensor>,
    pool: KvPool,
    s: Scratch,
    max_blocks: usize,
    /// Rows of `logits` the last forward filled.
    rows: usize,
    profiling: bool,
    profile: std::collections::BTreeMap<&'static str, (f64, usize)>,
    /// Draws over top candidates and the logits they copied ([`GpuModel::sample_stats`]).
    stats: SampleStats,
    /// Captured decode steps by (sequences, block-table width).
    graphs: std::collections::HashMap<(usize, usize), DeviceGraph>,
    /// Captured chains of `CHAIN` greedy steps of one sequence, by block-table width.
    chains: std::collections::HashMap<usize, DeviceGraph>,
    /// The persistent decode step's state, where the model takes it.
    step: Option<StepState>,
}

/// What the persistent decode step reads besides the model's tensors: the layer table
/// (each layer's addresses), the attention partials, the per-KV-head counters and the
/// grid barrier (both zeroed at allocation; every launch leaves them so).
struct StepState {
    dims: StepDims,
    table: DeviceTensor,
    ws: DeviceTensor,
    counters: DeviceTensor,
    bar: DeviceTensor,
    /// The phase clock ([`GpuModel::step_phase_times`]), where asked for.
    times: Option<DeviceTensor>,
}

impl std::fmt::Debug for GpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuModel").field("device", &self.dev.name()).field("opts", &self.opts).field("plan", &self.plan).finish()
    }
}

fn kernel(k: std::result::Result<&'static Kernel, LaunchError>) -> Result<&'static Kernel> {
    Ok(k?)
}

/// Events between the stages of a forward, when profiling.
struct Marks<'a> {
    dev: &'a CudaDevice,
    on: bool,
    v: std::cell::RefCell<Vec<(&'static str, CudaEvent)>>,
}

impl Marks<'_> {
    fn mark(&self, name: &'static str) -> Result<()> {
        if self.on {
            let e = self.dev.event()?;
            self.dev.record(&e)?;
            self.v.borrow_mut().push((name, e));
        }
        Ok(())
    }

    /// Milliseconds from each mark to the next, by the earlier mark's name.
    fn collect(self) -> Result<Vec<(&'static str, f64)>> {
        if !self.on {
            return Ok(Vec::new());
        }
        self.dev.synchronize()?;
        let v = self.v.into_inner();
        v.windows(2)
            .map(|w| Ok((w[0].0, f64::from(w[0].1.elapsed_ms(&w[1].1).map_err(|e| ModelError::Gpu(format!("cuEventElapsedTime: {e}")))?))))
            .collect()
    }
}

/// Rows up to which products run the matrix-vector kernel (when `GpuOptions::gemv`):
/// from two rows on, cuBLAS took less time. H100, batch-2 decode with graphs: 1B 1475
/// against 1284 tok/s, 8B 316 against 266 (`benches/logs/h100-2026-11-27-g/rows/`).
const GEMV_ROWS: usize = 1;

/// Greedy decode steps of one sequence replayed as one graph (`GpuModel::decode_greedy`):
/// each step's index advance with its embedding gather, forward and argmax, `CHAIN`
/// times, so the stream holds one launch where it held three a step. H200, Llama-3.2-1B
/// shape: the advance and the argmax as launches of their own cost 8.5 and 7.5 us a step
/// (860.6 us against 844.6 for the forward's graph replayed alone); chained, tg128 1167
/// against 1161 tok/s (`benches/logs/h200-2026-11-30/`). Callers that decode greedily in
/// rounds (`generate`'s pipelined conversation) take `1 + k * CHAIN` tokens a round: one
/// host-staged step, then `k` chains.
pub const CHAIN: usize = 8;

/// Chains a host-staged greedy step reserves pages for ahead of it, so that the block
/// table it stages serves that many chains: a step staged on the host (a new page) comes
/// once every `1 + CHAIN * CHAINS_AHEAD` tokens instead of once a page.
const CHAINS_AHEAD: usize = 8;

/// `res += proj; normed = rmsnorm(res) * w` over the first `t` rows of the scratch.
fn add_norm(
    dev: &CudaDevice,
    k: &'static Kernel,
    (proj, res, normed): (&DeviceTensor, &mut DeviceTensor, &mut DeviceTensor),
    w: &DeviceTensor,
    t: usize,
    h: usize,
    eps: f32,
) -> Result<()> {
    let plan = kernels::add_rmsnorm::plan(
        dev.limits(),
        &proj.view(0, &[t, h])?,
        &mut res.view_mut(0, &[t, h])?,
        w,
        &mut normed.view_mut(0, &[t, h])?,
        eps,
    )?;
    Ok(dev.launch(k, &plan)?)
}

/// An optional tensor as a launch argument.
fn bias(b: &Option<DeviceTensor>) -> Option<&dyn TensorArg> {
    b.as_ref().map(|b| b as &dyn TensorArg)
}

/// A norm's weight for a kernel that applies one: its own, or `unit` (ones) where it is
/// folded into the product after it.
fn norm_weight<'a>(w: &'a Option<DeviceTensor>, unit: &'a DeviceTensor) -> &'a DeviceTensor {
    w.as_ref().unwrap_or(unit)
}

/// A norm fused into the product after it: weighted, or folded into that product.
fn fused_norm(w: &Option<DeviceTensor>, eps: f32) -> RmsNorm<'_> {
    match w {
        Some(w) => RmsNorm::new(w, eps),
        None => RmsNorm::folded(eps),
    }
}

/// `out = x @ w^T`: the matrix-vector kernel for up to `GEMV_ROWS` rows when
/// `gemv` is on, cuBLAS otherwise.
fn matmul(dev: &CudaDevice, gemv: bool, x: &dyn TensorArg, w: &dyn TensorArg, out: &dyn TensorArg) -> Result<()> {
    let rows = x.shape().iter().rev().skip(1).product::<usize>();
    if gemv && rows <= GEMV_ROWS {
        Ok(dev.launch_engine(&plan_gemv(dev.limits(), x, w, out, &GemvFusion::default())?)?)
    } else {
        Ok(dev.gemm(&plan_gemm(x, w, out)?)?)
    }
}

/// `out = x @ w^T (+ b)`: the product lands in `out` directly, or in `tmp` then the bias
/// kernel writes `out`.
#[allow(clippy::too_many_arguments, reason = "the tensors of one projection")]
fn project(
    dev: &CudaDevice,
    gemv: bool,
    x: &dyn TensorArg,
    w: &DeviceTensor,
    b: &Option<DeviceTensor>,
    out: &mut DeviceTensor,
    tmp: &mut DeviceTensor,
    t: usize,
    n: usize,
) -> Result<()> {
    match b {
        None => matmul(dev, gemv, x, w, &out.view(0, &[t, n])?),
        Some(b) => {
            matmul(dev, gemv, x, w, &tmp.view(0, &[t, n])?)?;
            let k = kernel(kernels::add_bias::kernel())?;
            Ok(dev.launch(k, &kernels::add_bias::plan(dev.limits(), &tmp.view(0, &[t, n])?, b, &mut out.view_mut(0, &[t, n])?)?)?)
        }
    }
}

impl GpuModel {
    /// Plans memory, then uploads every tensor of `cfg` from `src` (calling `progress`
    /// with (done, total) bytes) and allocates activations and the KV cache.
    pub fn load(
        dev: &Arc<CudaDevice>,
        cfg: ModelConfig,
        src: &mut dyn WeightSource,
        opts: GpuOptions,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Self> {
        if cfg.windows.len() != cfg.layers {
            return Err(ModelError::Invalid("the window list disagrees with the layer count".into()));
        }
        let (free, _) = dev.memory_info()?;
        let plan = plan_memory(&cfg, &opts, free as u64, dev.name())?;
        let dt = opts.dtype;
        let done = std::cell::Cell::new(0u64);
        let progress = std::cell::RefCell::new(&mut progress);
        let src = std::cell::RefCell::new(src);
        // f16 holds at most 65504: where a norm's weight is folded into an f16 product, the
        // largest magnitudes of both bound what the fold may write. The tensors a fold
        // takes are scanned (`scanned`) on their host bytes as they upload, in f16 only
        // (0 otherwise).
        let scan = |bytes: &[u8], scanned: bool| if scanned && dt == DType::F16 && opts.fold_norms { f16_max_abs(bytes) } else { 0.0 };
        // A tensor uploaded, and its largest magnitude where scanned.
        let upload = |name: &str, shape: &[usize], scanned: bool| -> Result<(DeviceTensor, f32)> {
            let bytes = src.borrow_mut().tensor(name, shape, dt)?;
            let t = dev.upload_bytes(dt, shape, &bytes)?;
            done.set(done.get() + bytes.len() as u64);
            (progress.borrow_mut())(done.get(), plan.weights);
            Ok((t, scan(&bytes, scanned)))
        };
        let up = |name: &str, shape: &[usize]| -> Result<DeviceTensor> { Ok(upload(name, shape, false)?.0) };
        // Several tensors stacked along their rows (`cols` 0: vectors), as one tensor, and
        // its largest magnitude where scanned.
        let up_fused = |parts: &[(String, usize)], cols: usize, scanned: bool| -> Result<(DeviceTensor, f32)> {
            let mut bytes = Vec::new();
            let mut rows = 0;
            for (name, r) in parts {
                let shape: Vec<usize> = if cols == 0 { vec![*r] } else { vec![*r, cols] };
                let b = src.borrow_mut().tensor(name, &shape, dt)?;
                bytes.try_reserve(b.len()).map_err(|_| ModelError::OutOfMemory { bytes: b.len(), what: "weights" })?;
                bytes.extend_from_slice(&b);
                rows += r;
            }
            let shape: Vec<usize> = if cols == 0 { vec![rows] } else { vec![rows, cols] };
            let t = dev.upload_bytes(dt, &shape, &bytes)?;
            done.set(done.get() + bytes.len() as u64);
            (progress.borrow_mut())(done.get(), plan.weights);
            Ok((t, scan(&bytes, scanned)))
        };
        // Folds a norm's weight `g` into the columns of the product `w` after it (in
        // place, on the device: one rounding of `w * g` to the dtype), or keeps it. In
        // f16 a norm stays apart unless the largest magnitudes of `w` (`w_max`) and `g`
        // (`g_max`) multiply to at most 65504, so that no folded weight leaves f16's
        // range; bf16 and f32 have f32's range.
        let k_scale = if opts.fold_norms { Some(kernel(kernels::scale_columns::kernel())?) } else { None };
        let fold = |(w, w_max): (&mut DeviceTensor, f32), (g, g_max): (DeviceTensor, f32)| -> Result<Option<DeviceTensor>> {
            let Some(k) = k_scale else { return Ok(Some(g)) };
            // A NaN anywhere fails the comparison: that norm stays apart too.
            let fits = w_max * g_max <= 65504.0;
            if dt == DType::F16 && !fits {
                return Ok(Some(g));
            }
            let (rows, cols) = (w.shape()[0], w.shape()[1]);
            dev.launch(k, &kernels::scale_columns::plan(dev.limits(), &mut w.view_mut(0, &[rows, cols])?, &g)?)?;
            // Dropping `g` waits for the launch before freeing it.
            Ok(None)
        };
        let (h, q, kv, i) = (cfg.hidden, cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.intermediate);
        let embed = up("model.embed_tokens.weight", &[cfg.vocab, h])?;
        let mut layers = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let p = format!("model.layers.{l}");
            let a = format!("{p}.self_attn");
            let m = format!("{p}.mlp");
            let attn_norm = upload(&format!("{p}.input_layernorm.weight"), &[h], true)?;
            let (mut wqkv, wqkv_max) = up_fused(
                &[(format!("{a}.q_proj.weight"), q), (format!("{a}.k_proj.weight"), kv), (format!("{a}.v_proj.weight"), kv)],
                h,
                true,
            )?;
            let attn_norm = fold((&mut wqkv, wqkv_max), attn_norm)?;
            let mlp_norm = upload(&format!("{p}.post_attention_layernorm.weight"), &[h], true)?;
            let (mut w_gate_up, w_gate_up_max) =
                up_fused(&[(format!("{m}.gate_proj.weight"), i), (format!("{m}.up_proj.weight"), i)], h, true)?;
            let mlp_norm = fold((&mut w_gate_up, w_gate_up_max), mlp_norm)?;
            layers.push(Layer {
                attn_norm,
                wqkv,
                bqkv: if cfg.qkv_bias {
                    Some(
                        up_fused(
                            &[(format!("{a}.q_proj.bias"), q), (format!("{a}.k_proj.bias"), kv), (format!("{a}.v_proj.bias"), kv)],
                            0,
                            false,
                        )?
                        .0,
                    )
                } else {
                    None
                },
                q_norm: if cfg.qk_norm { Some(up(&format!("{a}.q_norm.weight"), &[cfg.head_dim])?) } else { None },
                k_norm: if cfg.qk_norm { Some(up(&format!("{a}.k_norm.weight"), &[cfg.head_dim])?) } else { None },
                wo: up(&format!("{a}.o_proj.weight"), &[h, q])?,
                bo: if cfg.o_bias { Some(up(&format!("{a}.o_proj.bias"), &[h])?) } else { None },
                mlp_norm,
                w_gate_up,
                b_gate_up: if cfg.mlp_bias {
                    Some(up_fused(&[(format!("{m}.gate_proj.bias"), i), (format!("{m}.up_proj.bias"), i)], 0, false)?.0)
                } else {
                    None
                },
                w_down: up(&format!("{m}.down_proj.weight"), &[h, i])?,
                b_down: if cfg.mlp_bias { Some(up(&format!("{m}.down_proj.bias"), &[h])?) } else { None },
                window: cfg.windows[l],
            });
        }
        let norm = upload("model.norm.weight", &[h], !cfg.tie_embeddings)?;
        // A tied head is the embedding table too: its norm stays separate.
        let (norm, lm_head) = if cfg.tie_embeddings {
            (Some(norm.0), None)
        } else {
            let (mut head, head_max) = upload("lm_head.weight", &[cfg.vocab, h], true)?;
            (fold((&mut head, head_max), norm)?, Some(head))
        };
        let unit = dev.upload_bytes(dt, &[h], &encode(&vec![1.0; h], dt))?;
        let (freqs, mscale) = inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling);
        let inv_freq = dev.upload_bytes(DType::F32, &[freqs.len()], &encode(&freqs, DType::F32))?;

        let bs = opts.block_size;
        let pages = (plan.kv_tokens as usize) / bs;
        let mut k_cache = Vec::with_capacity(cfg.layers);
        let mut v_cache = Vec::with_capacity(cfg.layers);
        for _ in 0..cfg.layers {
            k_cache.push(dev.alloc(dt, &[pages, bs, cfg.kv_heads, cfg.head_dim])?);
            v_cache.push(dev.alloc(dt, &[pages, bs, cfg.kv_heads, cfg.head_dim])?);
        }
        let pool = KvPool::index_only(KvShape { layers: cfg.layers, kv_dim: kv, block_size: bs, blocks: pages })?;
        let (t, sq) = (opts.max_batch_tokens, opts.max_seqs);
        let max_blocks = (plan.max_context as usize).div_ceil(bs);
        let wide = (q + 2 * kv).max(2 * i).max(h);
        let topk_ws = topk_staged_workspace(sq, cfg.vocab, TOPK_MAX.min(cfg.vocab)).max(1);
        let s = Scratch {
            res: dev.alloc(dt, &[t * h])?,
            normed: dev.alloc(dt, &[t * h])?,
            proj: dev.alloc(dt, &[t * h])?,
            qkv: dev.alloc(dt, &[t * (q + 2 * kv)])?,
            q: dev.alloc(dt, &[t * q])?,
            attn: dev.alloc(dt, &[t * q])?,
            gate_up: dev.alloc(dt, &[t * 2 * i])?,
            act: dev.alloc(dt, &[t * i])?,
            tmp: dev.alloc(dt, &[t * wide])?,
            index: dev.alloc(DType::I32, &[IndexOffsets::new(t, sq).table + sq * max_blocks])?,
            last: dev.alloc(dt, &[sq * h])?,
            logits: dev.alloc(DType::F32, &[sq * cfg.vocab])?,
            next: dev.alloc(DType::I32, &[sq])?,
            chain_ids: dev.alloc(DType::I32, &[CHAIN])?,
            draw: dev.alloc(DType::U32, &[sq * 2 * (TOPK_MAX + softmax_mass_parts(cfg.vocab).0)])?,
            topk_ws_vals: dev.alloc(DType::F32, &[topk_ws])?,
            topk_ws_ids: dev.alloc(DType::I32, &[topk_ws])?,
            sampling: None,
            argmax_ws: dev.alloc(DType::F32, &[argmax_workspace(sq, cfg.vocab).max(1)])?,
            argmax_counters: dev.zeros(DType::U32, &[sq])?,
        };
        let step = step_state(dev, &cfg, &opts, (&layers, &unit), (&k_cache, &v_cache), (freqs.len(), mscale))?;
        // Compile (or read from the disk cache) what the forward launches, up front, each
        // module on its own thread: the weights' dtype's engine kernels (the products for
        // decode batches up to GEMV_ROWS, the paired ones for one sequence, the only place
        // they run), and the f32 part that holds the logits' argmax and top-k.
        let widest = (GEMV_ROWS as u32).next_power_of_two();
        let launched = |p: &EnginePart| match *p {
            EnginePart::Misc => true,
            EnginePart::Gemv(rows) => rows <= widest,
            EnginePart::Pairs(rows) => rows == 1,
        };
        let mut modules: Vec<EngineModule> = EnginePart::ALL.into_iter().filter(launched).map(|p| EngineModule::Engine(dt, p)).collect();
        if dt != DType::F32 {
            modules.push(EngineModule::Engine(DType::F32, EnginePart::Misc));
        }
        dev.prepare_engine(&modules)?;
        Ok(GpuModel {
            dev: Arc::clone(dev),
            cfg,
            opts,
            plan,
            embed,
            layers,
            norm,
            lm_head,
            unit,
            inv_freq,
            mscale,
            k_cache,
            v_cache,
            pool,
            s,
            max_blocks,
            rows: 0,
            profiling: false,
            profile: std::collections::BTreeMap::new(),
            stats: SampleStats::default(),
            graphs: std::collections::HashMap::new(),
            chains: std::collections::HashMap::new(),
            step,
        })
    }

    /// The last persistent decode step's phase durations in microseconds, averaged over
    /// the layers: q/k/v, attention, o, gate/up, down (each up to the end of the grid
    /// barrier after it), then the LM head, then one grid barrier alone; `None` unless the clock was asked for.
    pub fn step_phase_times(&self) -> Result<Option<Vec<f64>>> {
        let Some(t) = self.step.as_ref().and_then(|s| s.times.as_ref()) else { return Ok(None) };
        let b = self.dev.read_bytes(t)?;
        let ns: Vec<u64> = b.chunks_exact(8).map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])).collect();
        let n = self.layers.len();
        let mut out = vec![0.0; 7];
        for l in 0..n {
            for (p, o) in out.iter_mut().enumerate().take(5) {
                *o += ns[2 + 5 * l + p].saturating_sub(ns[1 + 5 * l + p]) as f64 / 1e3 / n as f64;
            }
        }
        out[5] = ns[5 * n + 2].saturating_sub(ns[5 * n + 1]) as f64 / 1e3;
        out[6] = ns[1].saturating_sub(ns[0]) as f64 / 1e3;
        Ok(Some(out))
    }

    /// Whether decode of one sequence runs as one persistent launch
    /// ([`GpuOptions::persistent_decode`] and a model shape the kernel takes).
    pub fn persistent_decode(&self) -> bool {
        self.step.is_some()
    }

    /// How many of the model's RMSNorms (two a layer and the final one) have their
    /// weight folded into the product after them ([`GpuOptions::fold_norms`]), and how
    /// many there are.
    pub fn folded_norms(&self) -> (usize, usize) {
        let layer_norms = self.layers.iter().flat_map(|l| [&l.attn_norm, &l.mlp_norm]);
        let folded = layer_norms.chain([&self.norm]).filter(|n| n.is_none()).count();
        (folded, 2 * self.layers.len() + 1)
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    /// The memory plan it was built with.
    pub fn memory(&self) -> &MemoryPlan {
        &self.plan
    }
    /// The layout options.
    pub fn options(&self) -> &GpuOptions {
        &self.opts
    }
    /// The device.
    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.dev
    }
    /// Starts an empty sequence in the model's cache.
    pub fn new_sequence(&self) -> KvSeq {
        self.pool.new_sequence()
    }
    /// Ends a sequence, returning its pages.
    pub fn release(&mut self, seq: KvSeq) {
        self.pool.release(seq);
    }
    /// KV pages free now.
    pub fn free_blocks(&self) -> usize {
        self.pool.free_blocks()
    }

    /// Feeds each sequence's tokens at its next positions and leaves the logits of each
    /// sequence's last token in device memory (row `b` for `batch[b]`; read them with
    /// [`GpuModel::logits`] or sample with [`GpuModel::sample`]). All or nothing: on
    /// an error before the launches, no sequence and no page changes.
    pub fn forward(&mut self, batch: &mut [SeqTokens<'_>]) -> Result<()> {
        self.forward_with(batch, false)
    }

    /// [`GpuModel::forward`]; with `ids_on_device` (one token per sequence) the tokens fed
    /// are the last argmax's outputs on the device, and `batch`'s tokens only hold places.
    fn forward_with(&mut self, batch: &mut [SeqTokens<'_>], ids_on_device: bool) -> Result<()> {
        let c = &self.cfg;
        let total: usize = batch.iter().map(|b| b.tokens.len()).sum();
        if batch.is_empty() || batch.iter().any(|b| b.tokens.is_empty()) {
            return Err(ModelError::Invalid("forward needs at least one token for every sequence".into()));
        }
        if total > self.opts.max_batch_tokens || batch.len() > self.opts.max_seqs {
            return Err(ModelError::Invalid(format!(
                "{total} tokens in {} sequences exceed the GPU batch of {} tokens / {} sequences; feed them in chunks",
                batch.len(),
                self.opts.max_batch_tokens,
                self.opts.max_seqs
            )));
        }
        for b in batch.iter() {
            if let Some(&id) = b.tokens.iter().find(|&&t| t as usize >= c.vocab) {
                return Err(ModelError::TokenOutOfRange { id, vocab: c.vocab });
            }
            let len = b.seq.len() + b.tokens.len();
            if len as u64 > self.plan.max_context {
                return Err(ModelError::Invalid(format!(
                    "a sequence of {len} tokens exceeds the longest context of {} this cache serves",
                    self.plan.max_context
                )));
            }
        }
        for i in 0..batch.len() {
            let (done, rest) = batch.split_at_mut(i);
            let b = &mut rest[0];
            if let Err(e) = self.pool.reserve(b.seq, b.tokens.len()) {
                for d in done.iter_mut() {
                    self.pool.trim(d.seq);
                }
                return Err(e.into());
            }
        }
        let r = self.run(batch, total, ids_on_device);
        for b in batch.iter_mut() {
            if r.is_ok() {
                self.pool.commit(b.seq, b.tokens.len())?;
            } else {
                self.pool.trim(b.seq);
            }
        }
        r
    }

    /// With `ids_on_device`, the step's token ids are the last argmax's outputs (one per
    /// sequence, copied on the device over the staged ids) instead of `batch`'s tokens.
    fn run(&mut self, batch: &[SeqTokens<'_>], t: usize, ids_on_device: bool) -> Result<()> {
        let nb = batch.len();
        let needed = batch.iter().map(|b| b.seq.blocks().len()).max().unwrap_or(1).max(1);
        if needed > self.max_blocks {
            return Err(ModelError::Invalid(format!("a block table of {needed} pages exceeds the {} planned", self.max_blocks)));
        }
        let decode = batch.iter().all(|b| b.tokens.len() == 1);
        if !(decode && self.opts.cuda_graphs && !self.profiling) {
            let layout = self.stage(batch, t, needed, ids_on_device)?;
            return self.launches(&layout);
        }
        // Decode replays a graph per (sequences, table width): attention is planned for the
        // longest context that width holds (its kernel reads each sequence's true length),
        // so one graph serves every step until a sequence outgrows the width.
        let width = self.graph_width(needed);
        let layout = self.stage(batch, t, width, ids_on_device)?;
        let layout = Layout { max_kv: (width * self.opts.block_size).min(self.plan.max_context as usize), ..layout };
        if let Some(g) = self.graphs.get(&(nb, width)) {
            g.launch()?;
            self.rows = nb;
            return Ok(());
        }
        // First step of this shape: run it (loading modules, sizing the workspace), then
        // record the same launches for the next steps.
        self.launches(&layout)?;
        let dev = Arc::clone(&self.dev);
        let graph = dev.capture(|| self.launches(&layout))?;
        self.graphs.insert((nb, width), graph);
        Ok(())
    }

    /// The block-table width of the decode graph that serves sequences of up to `pages`
    /// pages: rounded up to a power of two (16 at least, the planned width at most).
    fn graph_width(&self, pages: usize) -> usize {
        pages.next_power_of_two().max(16).min(self.max_blocks)
    }

    /// Copies the step's indices to the device: ids, positions, slots, query offsets,
    /// lengths, last rows and the block table (`width` pages a row), in one transfer.
    /// With `ids_on_device`, the last argmax's outputs (one per sequence) are then copied
    /// over the ids on the device, in stream order (the ids lead the index buffer).
    fn stage(&mut self, batch: &[SeqTokens<'_>], t: usize, width: usize, ids_on_device: bool) -> Result<Layout> {
        let nb = batch.len();
        let bs = self.opts.block_size;
        let o = IndexOffsets::new(t, nb);
        // Written in place: one buffer, one copy to the device per step.
        let mut staged = vec![0i32; o.table + nb * width];
        let (mut max_q, mut max_kv, mut row) = (0usize, 0usize, 0usize);
        for (bi, b) in batch.iter().enumerate() {
            let start = b.seq.len();
            for (j, &tok) in b.tokens.iter().enumerate() {
                let p = start + j;
                staged[row + j] = tok as i32;
                staged[o.pos + row + j] = p as i32;
                staged[o.slots + row + j] = (b.seq.blocks()[p / bs] as usize * bs + p % bs) as i32;
            }
            let end = start + b.tokens.len();
            row += b.tokens.len();
            staged[o.cu + bi + 1] = row as i32;
            staged[o.lens + bi] = end as i32;
            staged[o.last + bi] = row as i32 - 1;
            for (k, &blk) in b.seq.blocks().iter().enumerate() {
                staged[o.table + bi * width + k] = blk as i32;
            }
            max_q = max_q.max(b.tokens.len());
            max_kv = max_kv.max(end);
        }
        let bytes: Vec<u8> = staged.iter().flat_map(|v| v.to_ne_bytes()).collect();
        self.dev.write(&mut self.s.index, 0, &bytes)?;
        if ids_on_device {
            let next = self.s.next.view(0, &[nb])?;
            self.dev.copy_view(&next, &mut self.s.index.view_mut(0, &[nb])?)?;
        }
        Ok(Layout { t, nb, width, max_q, max_kv, chain: false })
    }

    /// Queues the forward of a staged step.
    fn launches(&mut self, layout: &Layout) -> Result<()> {
        let Layout { t, nb, width, max_q, max_kv, chain } = *layout;
        let dev = Arc::clone(&self.dev);
        let lim = *dev.limits();
        let c = &self.cfg;
        let (h, hd) = (c.hidden, c.head_dim);
        let (qd, kvd, inter) = (c.heads * hd, c.kv_heads * hd, c.intermediate);
        let o = IndexOffsets::new(t, nb);
        let s = &mut self.s;
        let idx = &s.index;
        let v_ids = idx.view(0, &[t])?;
        let v_pos = idx.view(o.pos, &[t])?;
        let v_slots = idx.view(o.slots, &[t])?;
        let v_cu = idx.view(o.cu, &[nb + 1])?;
        let v_lens = idx.view(o.lens, &[nb])?;
        let v_last = idx.view(o.last, &[nb])?;
        let v_table = idx.view(o.table, &[nb, width])?;
        let seqs = AttnSeqs {
            cu_q: &v_cu,
            kv: KvIndex::Paged { block_table: &v_table, kv_lens: &v_lens },
            max_q: max_q as u32,
            max_kv: max_kv as u32,
        };
        let launch = |k: &'static Kernel, p: std::result::Result<LaunchPlan, LaunchError>| -> Result<()> { Ok(dev.launch(k, &p?)?) };
        let gemv = self.opts.gemv;
        let gemm = |x: &dyn TensorArg, w: &dyn TensorArg, out: &dyn TensorArg| -> Result<()> { matmul(&dev, gemv, x, w, out) };

        let k_rms = kernel(kernels::rmsnorm::kernel())?;
        let k_add_rms = kernel(kernels::add_rmsnorm::kernel())?;
        let k_causal = kernel(kernels::attention_causal::kernel())?;
        let k_window = kernel(kernels::attention_window::kernel())?;
        let k_mlp = kernel(kernels::mlp_gate_up::kernel())?;
        let k_mlp_folded = kernel(kernels::mlp_gate_up_folded::kernel())?;

        let marks = Marks { dev: &dev, on: self.profiling, v: std::cell::RefCell::new(Vec::new()) };
        let host_t0 = std::time::Instant::now();
        // Embedding.
        marks.mark("embed")?;
        if !chain {
            dev.launch_engine(&plan_gather(&lim, &self.embed, &v_ids, &s.res.view(0, &[t, h])?)?)?;
        }
        let eps = c.eps;
        // Decode of up to GEMV_ROWS sequences, one token each: products run the
        // matrix-vector kernel with the norms and residual adds fused into them.
        let fused = gemv && t == nb && t <= GEMV_ROWS;
        // The pair epilogues at one sequence only: at two, the paired products cost
        // more than the launches they save (H100, 1B: 1147 against 1216 tok/s; 8B: 241
        // against 253; at one, 843 against 828 and 173.6 against 172.6). Decode of one
        // sequence is the only fused case while GEMV_ROWS is 1; this keeps the rule if
        // it changes.
        let pairs = fused && self.opts.pair_epilogues && t == 1;
        if let Some(st) = self.step.as_ref().filter(|_| pairs) {
            // Decode of one sequence: every layer and the LM head in one launch.
            marks.mark("step")?;
            let head = self.lm_head.as_ref().unwrap_or(&self.embed);
            let b = StepBuffers {
                table: &st.table,
                res: &s.res.view(0, &[h])?,
                qbuf: &s.q.view(0, &[qd])?,
                attn: &s.attn.view(0, &[qd])?,
                act: &s.act.view(0, &[inter])?,
                final_norm: norm_weight(&self.norm, &self.unit),
                head,
                logits: &s.logits.view(0, &[c.vocab])?,
                pos: &v_pos,
                slots: &v_slots,
                block_table: &v_table,
                lens: &v_lens,
                inv_freq: &self.inv_freq,
                ws: &st.ws,
                counters: &st.counters,
                bar: &st.bar,
                times: st.times.as_ref().map(|t| t as &dyn TensorArg),
            };
            dev.launch_engine(&plan_decode_step(&lim, self.opts.dtype, &st.dims, self.layers.len(), &b)?)?;
            marks.mark("end")?;
            return self.finish_forward(nb, marks, host_t0);
        }
        for (l, layer) in self.layers.iter().enumerate() {
            // Attention block input: RMSNorm, with the previous MLP's residual add fused.
            marks.mark("norm")?;
            // Decode with the pair epilogues: the q/k/v product does the q/k/v stage
            // (rotary embedding, q out, k and v into the pages) itself, except where
            // per-head norms need a whole head (Qwen3).
            let qkv_stage = pairs && layer.q_norm.is_none() && layer.k_norm.is_none();
            if qkv_stage {
                marks.mark("qkv")?;
                let x = s.res.view(0, &[t, h])?;
                let q_out = s.q.view_mut(0, &[t, c.heads, hd])?;
                let epi = PairEpilogue::QkvStage {
                    q_out: &q_out,
                    k_cache: &self.k_cache[l],
                    v_cache: &self.v_cache[l],
                    pos: &v_pos,
                    slots: &v_slots,
                    inv_freq: &self.inv_freq,
                    mscale: self.mscale,
                };
                dev.launch_engine(&plan_gemv_pairs(
                    &lim,
                    &x,
                    &layer.wqkv,
                    Some(fused_norm(&layer.attn_norm, eps)),
                    bias(&layer.bqkv),
                    &epi,
                )?)?;
            } else if fused {
                // Decode: the norm runs inside the q/k/v product; the residual adds
                // inside the o and down products.
                marks.mark("qkv")?;
                let x = s.res.view(0, &[t, h])?;
                let f = GemvFusion { norm: Some(fused_norm(&layer.attn_norm, eps)), bias: bias(&layer.bqkv), ..GemvFusion::default() };
                dev.launch_engine(&plan_gemv(&lim, &x, &layer.wqkv, &s.qkv.view(0, &[t, qd + 2 * kvd])?, &f)?)?;
            } else if l == 0 {
                launch(
                    k_rms,
                    kernels::rmsnorm::plan(
                        &lim,
                        &s.res.view(0, &[t, h])?,
                        norm_weight(&layer.attn_norm, &self.unit),
                        &mut s.normed.view_mut(0, &[t, h])?,
                        eps,
                    ),
                )?;
            } else {
                add_norm(&dev, k_add_rms, (&s.proj, &mut s.res, &mut s.normed), norm_weight(&layer.attn_norm, &self.unit), t, h, eps)?;
            }
            if !fused {
                marks.mark("qkv")?;
                project(&dev, gemv, &s.normed.view(0, &[t, h])?, &layer.wqkv, &layer.bqkv, &mut s.qkv, &mut s.tmp, t, qd + 2 * kvd)?;
            }
            let (kc, vc) = (&mut self.k_cache[l], &mut self.v_cache[l]);
            if !qkv_stage {
                marks.mark("qkv_post")?;
                let qkv = s.qkv.view(0, &[t, qd + 2 * kvd])?;
                let q_out = s.q.view_mut(0, &[t, c.heads, hd])?;
                let norms = match (&layer.q_norm, &layer.k_norm) {
                    (Some(a), Some(b)) => Some((a as &dyn TensorArg, b as &dyn TensorArg)),
                    _ => None,
                };
                let post = QkvPost {
                    qkv: &qkv,
                    q_out: &q_out,
                    k_cache: &*kc,
                    v_cache: &*vc,
                    pos: &v_pos,
                    slots: &v_slots,
                    inv_freq: &self.inv_freq,
                    qk_norm: norms,
                };
                dev.launch_engine(&plan_qkv_post(&lim, &post, self.mscale, eps)?)?;
            }
            marks.mark("attention")?;
            let scale = 1.0 / (hd as f32).sqrt();
            let qv = s.q.view(0, &[t, c.heads, hd])?;
            let mut out = s.attn.view_mut(0, &[t, c.heads, hd])?;
            match layer.window {
                None => launch(k_causal, kernels::attention_causal::plan(&lim, &qv, &*kc, &*vc, &mut out, scale, &seqs))?,
                Some(w) => {
                    let w = i32::try_from(w).unwrap_or(i32::MAX);
                    launch(k_window, kernels::attention_window::plan(&lim, &qv, &*kc, &*vc, &mut out, scale, w, &seqs))?
                }
            }
            drop(out);
            marks.mark("o_proj")?;
            if fused {
                let r = s.res.view(0, &[t, h])?;
                let f = GemvFusion { bias: bias(&layer.bo), residual: Some(&r), ..GemvFusion::default() };
                dev.launch_engine(&plan_gemv(&lim, &s.attn.view(0, &[t, qd])?, &layer.wo, &r, &f)?)?;
                marks.mark("gate_up")?;
                let norm = Some(fused_norm(&layer.mlp_norm, eps));
                if pairs && layer.b_gate_up.is_none() {
                    // The DSL's `mlp_gate_up` (`mlp_gate_up_folded` where the norm's
                    // weight is in the rows): the norm, both products (each warp streams
                    // gate row j and up row j) and SwiGLU in one pass.
                    let w_gate = layer.w_gate_up.view(0, &[inter, h])?;
                    let w_up = layer.w_gate_up.view(inter * h, &[inter, h])?;
                    let mut act = s.act.view_mut(0, &[t, inter])?;
                    match &layer.mlp_norm {
                        Some(g) => launch(k_mlp, kernels::mlp_gate_up::plan(&lim, &r, g, &w_gate, &w_up, &mut act, eps))?,
                        None => launch(k_mlp_folded, kernels::mlp_gate_up_folded::plan(&lim, &r, &w_gate, &w_up, &mut act, eps))?,
                    }
                } else if pairs {
                    // One warp per (gate row j, up row j), the bias and SwiGLU in its epilogue.
                    let epi = PairEpilogue::SwiGlu { out: &s.act.view(0, &[t, inter])? };
                    dev.launch_engine(&plan_gemv_pairs(&lim, &r, &layer.w_gate_up, norm, bias(&layer.b_gate_up), &epi)?)?;
                } else {
                    let f = GemvFusion { norm, bias: bias(&layer.b_gate_up), ..GemvFusion::default() };
                    dev.launch_engine(&plan_gemv(&lim, &r, &layer.w_gate_up, &s.gate_up.view(0, &[t, 2 * inter])?, &f)?)?;
                    marks.mark("swiglu")?;
                    dev.launch_engine(&plan_swiglu_rows(&lim, &s.gate_up.view(0, &[t, 2 * inter])?, &s.act.view(0, &[t, inter])?)?)?;
                }
                marks.mark("down")?;
                let f = GemvFusion { bias: bias(&layer.b_down), residual: Some(&r), ..GemvFusion::default() };
                dev.launch_engine(&plan_gemv(&lim, &s.act.view(0, &[t, inter])?, &layer.w_down, &r, &f)?)?;
                continue;
            }
            project(&dev, gemv, &s.attn.view(0, &[t, qd])?, &layer.wo, &layer.bo, &mut s.proj, &mut s.tmp, t, h)?;
            add_norm(&dev, k_add_rms, (&s.proj, &mut s.res, &mut s.normed), norm_weight(&layer.mlp_norm, &self.unit), t, h, eps)?;
            marks.mark("gate_up")?;
            project(&dev, gemv, &s.normed.view(0, &[t, h])?, &layer.w_gate_up, &layer.b_gate_up, &mut s.gate_up, &mut s.tmp, t, 2 * inter)?;
            marks.mark("swiglu")?;
            dev.launch_engine(&plan_swiglu_rows(&lim, &s.gate_up.view(0, &[t, 2 * inter])?, &s.act.view(0, &[t, inter])?)?)?;
            marks.mark("down")?;
            project(&dev, gemv, &s.act.view(0, &[t, inter])?, &layer.w_down, &layer.b_down, &mut s.proj, &mut s.tmp, t, h)?;
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        if fused {
            // Every sequence fed one token: its last row is its only row.
            marks.mark("lm_head")?;
            let logits = s.logits.view(0, &[nb, c.vocab])?;
            match &self.norm {
                // A head tied to the embedding keeps the final norm's weight: the norm
                // runs as a launch of its own, then the plain product. Fused into the
                // head, the norm's loads of x and its weight for every one of the 128k
                // rows cost more than the launch (Llama-3.2-1B tg128 on an H200: 1208
                // against 1193 tok/s).
                Some(g) => {
                    launch(k_rms, kernels::rmsnorm::plan(&lim, &s.res.view(0, &[t, h])?, g, &mut s.normed.view_mut(0, &[t, h])?, eps))?;
                    dev.launch_engine(&plan_gemv(&lim, &s.normed.view(0, &[t, h])?, head, &logits, &GemvFusion::default())?)?;
                }
                // Folded into the head's columns: the scale alone, inside the product.
                None => {
                    let f = GemvFusion { norm: Some(RmsNorm::folded(eps)), ..GemvFusion::default() };
                    dev.launch_engine(&plan_gemv(&lim, &s.res.view(0, &[t, h])?, head, &logits, &f)?)?;
                }
            }
            marks.mark("end")?;
            return self.finish_forward(nb, marks, host_t0);
        }
        marks.mark("final_norm")?;
        add_norm(&dev, k_add_rms, (&s.proj, &mut s.res, &mut s.normed), norm_weight(&self.norm, &self.unit), t, h, eps)?;
        marks.mark("lm_head")?;
        dev.launch_engine(&plan_gather(&lim, &s.normed.view(0, &[t, h])?, &v_last, &s.last.view(0, &[nb, h])?)?)?;
        gemm(&s.last.view(0, &[nb, h])?, head, &s.logits.view(0, &[nb, c.vocab])?)?;
        marks.mark("end")?;
        self.finish_forward(nb, marks, host_t0)
    }

    /// Records the rows of logits filled and, when profiling, the stage times.
    fn finish_forward(&mut self, nb: usize, marks: Marks<'_>, host_t0: std::time::Instant) -> Result<()> {
        let host_ms = host_t0.elapsed().as_secs_f64() * 1e3;
        let times = marks.collect()?;
        self.rows = nb;
        if self.profiling {
            let e = self.profile.entry("(host enqueue)").or_insert((0.0, 0));
            e.0 += host_ms;
            e.1 += 1;
            for (name, ms) in times {
                let e = self.profile.entry(name).or_insert((0.0, 0));
                e.0 += ms;
                e.1 += 1;
            }
        }
        Ok(())
    }

    /// Times every stage of each later forward with events (slower: one event per
    /// stage), accumulating into [`GpuModel::take_profile`].
    pub fn set_profiling(&mut self, on: bool) {
        self.profiling = on;
    }

    /// Accumulated (milliseconds, forwards) per stage since the last call, and clears it.
    pub fn take_profile(&mut self) -> Vec<(&'static str, f64, usize)> {
        std::mem::take(&mut self.profile).into_iter().map(|(k, (ms, n))| (k, ms, n)).collect()
    }

    /// The last forward's logits, `[sequences, vocab]` row-major, copied to the host.
    pub fn logits(&self) -> Result<Vec<f32>> {
        self.read_f32s(&self.s.logits.view(0, &[self.rows, self.cfg.vocab])?)
    }

    /// Draws the next token of each sequence of the last forward with its sampler,
    /// without copying a row's logits to the host unless the draw needs them.
    /// - Plain greedy: an argmax on the GPU, one id copied per sequence.
    /// - Penalties are applied on the GPU, in place on the logits (the seen tokens' entries
    ///   uploaded), so [`GpuModel::logits`] after a draw with penalties reads them
    ///   penalized; greedy with penalties then takes the argmax there.
    /// - Sampling: a top-k selection on the GPU (k the samplers' top-k, or [`TOPK_MAX`]
    ///   where one has none) and each row's softmax normalizer in parts, copied back in
    ///   one transfer; the host draws over those candidates ([`Sampler::sample_top`]).
    ///   Where the draw falls past them it copies more: the row's logits where top-p's
    ///   mass or min-p's floor is not reached, one part of about a thousand logits where a
    ///   plain temperature draw lands in the tail. [`GpuModel::sample_stats`] counts those
    ///   copies.
    pub fn sample(&mut self, samplers: &mut [&mut Sampler]) -> Result<Vec<u32>> {
        if samplers.len() != self.rows {
            return Err(ModelError::Invalid(format!("{} samplers for {} sequences", samplers.len(), self.rows)));
        }
        let (rows, vocab) = (self.rows, self.cfg.vocab);
        let lim = *self.dev.limits();
        let greedy = samplers.iter().all(|s| s.params().temperature == 0.0);
        if greedy && !samplers.iter().any(|s| s.has_penalties()) {
            return self.draw_argmax(samplers);
        }
        // One upload: each row's temperature (f32 bits), then the penalty entries.
        let mut staged: Vec<i32> = samplers.iter().map(|s| s.params().temperature.to_bits() as i32).collect();
        for (r, s) in samplers.iter().enumerate() {
            for (tok, rep, sub) in s.penalties() {
                if (tok as usize) < vocab {
                    staged.extend([r as i32, tok as i32, rep.to_bits() as i32, sub.to_bits() as i32]);
                }
            }
        }
        let buf = match &mut self.s.sampling {
            Some(b) if b.bytes() >= staged.len() * 4 => b,
            slot => {
                // Grown to the next power of two: a long generation's seen set grows a
                // token at a time. Dropped first, so the old and new never coexist.
                *slot = None;
                slot.insert(self.dev.alloc(DType::I32, &[staged.len().next_power_of_two().max(1024)])?)
            }
        };
        let bytes: Vec<u8> = staged.iter().flat_map(|v| v.to_ne_bytes()).collect();
        self.dev.write(buf, 0, &bytes)?;
        let buf = &*buf;
        let logits = self.s.logits.view(0, &[rows, vocab])?;
        let entries = (staged.len() - rows) / 4;
        if entries > 0 {
            self.dev.launch_engine(&plan_penalize(&lim, &logits, &buf.view(rows, &[entries, 4])?)?)?;
        }
        if greedy {
            return self.draw_argmax(samplers);
        }
        // Enough candidates for every row's top-k; without one, as many as are kept.
        let bounded = samplers.iter().all(|s| s.params().temperature == 0.0 || (1..=TOPK_MAX).contains(&s.params().top_k));
        let k = if bounded { samplers.iter().map(|s| s.params().top_k).max().unwrap_or(1).max(1) } else { TOPK_MAX };
        let k = k.min(vocab);
        let (parts, chunk) = softmax_mass_parts(vocab);
        let d = &self.s.draw;
        let vals = d.view_as(DType::F32, 0, &[rows, k])?;
        let ids = d.view_as(DType::I32, rows * k, &[rows, k])?;
        for plan in plan_topk_staged(&lim, &logits, k, &vals, &ids, &self.s.topk_ws_vals, &self.s.topk_ws_ids)? {
            self.dev.launch_engine(&plan)?;
        }
        let mass = d.view_as(DType::F32, 2 * rows * k, &[rows, parts, 2])?;
        self.dev.launch_engine(&plan_softmax_mass(&lim, &logits, &buf.view(0, &[rows])?, &mass)?)?;
        // Candidates and normalizers back in one copy.
        let words = self.read_words(&d.view(0, &[2 * rows * (k + parts)])?)?;
        let (v, rest) = words.split_at(rows * k);
        let (i, m) = rest.split_at(rows * k);
        let mut out = Vec::with_capacity(rows);
        let (mut row_copies, mut part_copies) = (0u64, 0u64);
        for (r, s) in samplers.iter_mut().enumerate() {
            let pairs = (r * k..(r + 1) * k).map(|j| (i[j], f32::from_bits(v[j]))).collect();
            let m: Vec<f32> = m[r * parts * 2..(r + 1) * parts * 2].iter().map(|&w| f32::from_bits(w)).collect();
            let row = MassParts { parts: &m, chunk, cols: vocab };
            out.push(s.sample_top(pairs, &row, |cols| {
                if cols.len() == vocab {
                    row_copies += 1;
                } else {
                    part_copies += 1;
                }
                self.read_f32s(&self.s.logits.view(r * vocab + cols.start, &[cols.len()])?)
            })?);
        }
        self.stats.rows += rows as u64;
        self.stats.row_copies += row_copies;
        self.stats.part_copies += part_copies;
        Ok(out)
    }

    /// Each row's argmax on the GPU (after any penalties), one id copied per sequence.
    fn draw_argmax(&mut self, samplers: &mut [&mut Sampler]) -> Result<Vec<u32>> {
        let rows = self.rows;
        self.argmax_to_next(rows, None)?;
        let ids = self.read_words(&self.s.next.view(0, &[rows])?)?;
        for (s, &id) in samplers.iter_mut().zip(&ids) {
            s.observe(&[id]);
        }
        Ok(ids)
    }

    /// What [`GpuModel::sample`]'s draws over top candidates copied since the model was
    /// loaded.
    pub fn sample_stats(&self) -> SampleStats {
        self.stats
    }

    /// Greedy decode of `n` tokens of one sequence, starting by feeding `first`: the same
    /// ids as `n` calls of [`GpuModel::step`] with a greedy sampler (`model_check` compares
    /// them), pipelined. Each step's argmax stays on the device, where the next step's
    /// embedding reads it, and the host reads the `n` ids once at the end, so the GPU
    /// never waits for the host between steps. No stop condition is checked inside: for
    /// generation with EOS or stop strings, call it on chunks and trim what follows a stop.
    /// A context past the cache's longest is refused before any step; an error in a later
    /// step (the page pool running out) leaves the tokens fed so far in `seq`.
    pub fn decode_greedy(&mut self, seq: &mut KvSeq, first: u32, n: usize) -> Result<Vec<u32>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let end = seq.len() as u64 + n as u64;
        if end > self.plan.max_context {
            return Err(ModelError::Invalid(format!(
                "{n} more tokens would take the sequence to {end}, past the longest context of {} this cache serves",
                self.plan.max_context
            )));
        }
        let mut gen = self.dev.alloc(DType::I32, &[n])?;
        let r = self.decode_greedy_into(seq, first, &mut gen);
        // Pages reserved ahead for chains that did not run go back to the pool.
        self.pool.trim(seq);
        r?;
        self.read_words(&gen)
    }

    /// `decode_greedy`'s steps, their ids written into `gen` (one a step).
    fn decode_greedy_into(&mut self, seq: &mut KvSeq, first: u32, gen: &mut DeviceTensor) -> Result<()> {
        let n = gen.shape()[0];
        let mut i = 0;
        while i < n {
            if i > 0 && n - i >= CHAIN && self.chain(seq, &mut gen.view_mut(i, &[CHAIN])?)? {
                i += CHAIN;
                continue;
            }
            // Step 0 feeds `first`; later steps the previous argmax, on the device: staged
            // there from the step before where its pages allow, else from the host.
            if i == 0 || !self.advance(seq)? {
                // The table staged now also holds the pages of the chains that can
                // follow (best effort: where the pool lacks them, single steps follow).
                let ahead = (n - i).min(1 + CHAIN * CHAINS_AHEAD);
                if ahead > 1 && self.opts.cuda_graphs {
                    let _ = self.pool.reserve(seq, ahead);
                }
                self.forward_with(&mut [SeqTokens { seq: &mut *seq, tokens: &[first] }], i > 0)?;
            }
            // The argmax writes the id where the next step reads it and into the history.
            self.argmax_to_next(1, Some(&gen.view(i, &[1])?))?;
            i += 1;
        }
        Ok(())
    }

    /// The next `CHAIN` greedy steps of `seq` as one graph replay ([`CHAIN`]), their ids
    /// copied into `ids`. Where [`GpuModel::advance`] applies to every one of them (the
    /// staged block table already holds their pages) and the single step's graph of this
    /// width exists; `false`, with nothing done, otherwise. The chain's graph is captured
    /// at its first use (or by `warm_up`).
    fn chain(&mut self, seq: &mut KvSeq, ids: &mut DeviceViewMut<'_>) -> Result<bool> {
        if !self.chain_applies(seq) {
            return Ok(false);
        }
        let width = self.graph_width(seq.blocks().len());
        let Some(graph) = self.chain_graph(width)? else {
            return Ok(false);
        };
        graph.launch()?;
        self.dev.copy_view(&self.s.chain_ids, ids)?;
        self.rows = 1;
        self.pool.commit(seq, CHAIN)?;
        Ok(true)
    }

    /// The chain of greedy steps at table width `width`, captured at its first call.
    fn chain_graph(&mut self, width: usize) -> Result<Option<&DeviceGraph>> {
        if !self.chains.contains_key(&width) {
            let graph = self.capture_chain(width)?;
            self.chains.insert(width, graph);
        }
        Ok(self.chains.get(&width))
    }

    /// Whether `CHAIN` device-advanced steps can follow the last forward of `seq`: graphs
    /// on, not profiling, and every position they write inside the pages the staged
    /// table holds, with the single step's graph of that width captured (its first run
    /// loaded the modules and sized the workspace).
    fn chain_applies(&self, seq: &KvSeq) -> bool {
        let pages = seq.blocks().len();
        self.opts.cuda_graphs
            && !self.profiling
            && !seq.is_empty()
            && seq.len() + CHAIN <= pages * self.opts.block_size
            && self.graphs.contains_key(&(1, self.graph_width(pages)))
    }

    /// Records a chain of `CHAIN` greedy steps of one sequence at table width `width`,
    /// each the index advance with the embedding gather (one launch), the forward, and the
    /// argmax into `next` and the chain's ids.
    fn capture_chain(&mut self, width: usize) -> Result<DeviceGraph> {
        let bs = self.opts.block_size;
        let h = self.cfg.hidden;
        let max_kv = (width * bs).min(self.plan.max_context as usize);
        let layout = Layout { t: 1, nb: 1, width, max_q: 1, max_kv, chain: true };
        // Every step advances the same staged index: one plan, launched CHAIN times.
        let ix = OneStepIndex::new(&self.s.index, width)?;
        let (next, res) = (self.s.next.view(0, &[1])?, self.s.res.view(0, &[1, h])?);
        let advance = plan_decode_advance_gather(&ix.index(), &next, &self.embed, &res, bs)?;
        let dev = Arc::clone(&self.dev);
        dev.capture(|| -> Result<()> {
            for j in 0..CHAIN {
                self.dev.launch_engine(&advance)?;
                self.launches(&layout)?;
                self.argmax_to_next(1, Some(&self.s.chain_ids.view(j, &[1])?))?;
            }
            Ok(())
        })
    }

    /// The next decode step of `seq`, fed the last argmax, run without a copy between
    /// the host and the device: the index staged for its step before (which must be the
    /// last forward, of `seq` alone, one token) is advanced on the device by one kernel,
    /// and the step's graph replayed. `false`, with nothing done, where that does not
    /// apply: graphs off or profiling, a new page needed, no graph of this table width
    /// yet. Context limits are the caller's to check (as `decode_greedy` does).
    fn advance(&mut self, seq: &mut KvSeq) -> Result<bool> {
        let bs = self.opts.block_size;
        let pages = seq.blocks().len();
        if !self.opts.cuda_graphs || self.profiling || seq.is_empty() || (seq.len() + 1).div_ceil(bs) > pages {
            return Ok(false);
        }
        let width = self.graph_width(pages);
        let Some(graph) = self.graphs.get(&(1, width)) else {
            return Ok(false);
        };
        let ix = OneStepIndex::new(&self.s.index, pages)?;
        self.dev.launch_engine(&plan_decode_advance(&ix.index(), &self.s.next.view(0, &[1])?, bs)?)?;
        graph.launch()?;
        self.rows = 1;
        self.pool.commit(seq, 1)?;
        Ok(true)
    }

    /// The greedy argmax of the last forward's `rows` logits rows into `next` (and into
    /// `also` where given), on the GPU.
    fn argmax_to_next(&self, rows: usize, also: Option<&dyn TensorArg>) -> Result<()> {
        let logits = self.s.logits.view(0, &[rows, self.cfg.vocab])?;
        let out = self.s.next.view(0, &[rows])?;
        self.dev.launch_engine(&plan_argmax(self.dev.limits(), &logits, &out, also, &self.s.argmax_counters, &self.s.argmax_ws)?)?;
        Ok(())
    }

    /// A tensor of 32-bit elements (f32, or i32 token ids, read as their bits) copied to
    /// the host.
    fn read_words(&self, t: &dyn TensorArg) -> Result<Vec<u32>> {
        let bytes = self.dev.read_bytes(t)?;
        Ok(bytes.chunks_exact(4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]])).collect())
    }

    /// An f32 tensor copied to the host.
    fn read_f32s(&self, t: &dyn TensorArg) -> Result<Vec<f32>> {
        Ok(self.read_words(t)?.into_iter().map(f32::from_bits).collect())
    }

    /// Feeds `tokens` to `seq` in chunks of at most `max_batch_tokens` and returns the
    /// next token drawn by `sampler` (one sequence; the generation loop's step).
    pub fn step(&mut self, seq: &mut KvSeq, tokens: &[u32], sampler: &mut Sampler) -> Result<u32> {
        for chunk in tokens.chunks(self.opts.max_batch_tokens.max(1)) {
            self.forward(&mut [SeqTokens { seq, tokens: chunk }])?;
        }
        let ids = self.sample(&mut [sampler])?;
        ids.first().copied().ok_or_else(|| ModelError::Invalid("no token was sampled".into()))
    }

    /// Runs what a generation will first launch, on scratch sequences that are then
    /// released: a prefill of each length in `prefills` (each from position 0, clamped to
    /// the batch and the context), then a decode step at every block-table width of the
    /// decode graphs that sequences of up to `max_len` positions replay. The first
    /// launches load the kernels (compiling them at first use where the disk cache lacks
    /// them; loading a module of the vendor BLAS the first time a product shape picks a
    /// kernel of it, tens of milliseconds) and capture the decode graphs, so that what a
    /// caller times next is the model. Give the prompt's chunk lengths where they are
    /// known (the vendor library picks its kernels by shape). The wider widths' steps
    /// attend over pages reserved but never written (their outputs are discarded);
    /// `max_len` past the cache's longest context is taken as that context. The
    /// sequences and pages are as before; the logits are overwritten.
    pub fn warm_up(&mut self, prefills: &[usize], max_len: usize) -> Result<()> {
        let ctx = self.plan.max_context as usize;
        for &len in prefills {
            let n = len.min(self.opts.max_batch_tokens).min(ctx).max(1);
            let mut seq = self.new_sequence();
            let tokens = vec![0u32; n];
            let r = self.forward(&mut [SeqTokens { seq: &mut seq, tokens: &tokens }]);
            self.release(seq);
            r?;
        }
        let mut seq = self.new_sequence();
        let r = self.warm_up_decode(&mut seq, max_len.min(ctx));
        self.release(seq);
        r?;
        Ok(self.dev.synchronize()?)
    }

    /// A prompt of one token and decode steps up to `max_len` positions: one at each
    /// decode graph width (the first also where graphs are off).
    fn warm_up_decode(&mut self, seq: &mut KvSeq, max_len: usize) -> Result<()> {
        if max_len < 2 {
            return Ok(());
        }
        self.forward(&mut [SeqTokens { seq: &mut *seq, tokens: &[0] }])?;
        self.forward(&mut [SeqTokens { seq: &mut *seq, tokens: &[0] }])?;
        if !self.opts.cuda_graphs || self.profiling {
            return Ok(());
        }
        let bs = self.opts.block_size;
        let last = self.graph_width(max_len.div_ceil(bs).max(1));
        let mut width = self.graph_width(seq.blocks().len().max(1));
        while width < last {
            // One token past `width` full pages: its step needs the next width's graph,
            // captured as it runs. Best effort: where the pool lacks the pages (other
            // sequences hold them), the rest stay uncaptured.
            let len = width * bs;
            let grow = len.saturating_sub(seq.len());
            if len + 1 > max_len || self.pool.reserve(seq, grow).is_err() {
                break;
            }
            self.pool.commit(seq, grow)?;
            self.forward(&mut [SeqTokens { seq: &mut *seq, tokens: &[0] }])?;
            width = self.graph_width(seq.blocks().len());
        }
        // The chains of greedy steps at every width captured above.
        let mut widths: Vec<usize> = self.graphs.keys().filter(|k| k.0 == 1).map(|k| k.1).collect();
        widths.sort_unstable();
        for w in widths {
            self.chain_graph(w)?;
        }
        Ok(())
    }

    /// The decode graphs captured so far (one per batch size and block-table width).
    pub fn decode_graphs(&self) -> usize {
        self.graphs.len()
    }

    /// The chains of greedy decode steps captured so far (one per block-table width).
    pub fn decode_chains(&self) -> usize {
        self.chains.len()
    }
}

/// One sequence of a [`GpuModel`] for a [`crate::chat::Conversation`]: its pages go back
/// to the model's cache when it is dropped.
pub struct GpuDecoder<'m> {
    model: &'m mut GpuModel,
    seq: KvSeq,
}

impl<'m> GpuDecoder<'m> {
    /// A new, empty sequence of `model`.
    pub fn new(model: &'m mut GpuModel) -> Self {
        let seq = model.new_sequence();
        GpuDecoder { model, seq }
    }
}

impl std::fmt::Debug for GpuDecoder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuDecoder").field("seq", &self.seq).finish_non_exhaustive()
    }
}

impl Drop for GpuDecoder<'_> {
    fn drop(&mut self) {
        self.model.release(std::mem::take(&mut self.seq));
    }
}

impl crate::chat::Decoder for GpuDecoder<'_> {
    fn feed(&mut self, tokens: &[u32], sampler: &mut Sampler) -> Result<u32> {
        self.model.step(&mut self.seq, tokens, sampler)
    }
    fn truncate(&mut self, len: usize) {
        self.model.pool.truncate(&mut self.seq, len);
    }
    /// Pipelined on the device ([`GpuModel::decode_greedy`]).
    fn feed_greedy(&mut self, first: u32, n: usize) -> Result<Vec<u32>> {
        self.model.decode_greedy(&mut self.seq, first, n)
    }
    fn context(&self) -> usize {
        let free = self.model.pool.free_blocks() * self.model.opts.block_size;
        (self.model.plan.max_context as usize).min(self.seq.blocks().len() * self.model.opts.block_size + free)
    }
}

/// The persistent decode step's state for this model, or `None` where the options turn
/// it off or the model's shape is not one the kernel takes (the layered decode runs).
fn step_state(
    dev: &Arc<CudaDevice>,
    cfg: &ModelConfig,
    opts: &GpuOptions,
    (layers, unit): (&[Layer], &DeviceTensor),
    (k_cache, v_cache): (&[DeviceTensor], &[DeviceTensor]),
    (half_rot, mscale): (usize, f32),
) -> Result<Option<StepState>> {
    if !(opts.persistent_decode && opts.gemv && opts.pair_epilogues && opts.cuda_graphs && dev.limits().mma) {
        return Ok(None);
    }
    if layers.iter().any(|l| l.q_norm.is_some() || l.k_norm.is_some() || l.window.is_some()) {
        return Ok(None);
    }
    let dims = StepDims {
        hidden: cfg.hidden,
        heads: cfg.heads,
        kv_heads: cfg.kv_heads,
        head_dim: cfg.head_dim,
        half_rot,
        inter: cfg.intermediate,
        vocab: cfg.vocab,
        page_size: opts.block_size,
        eps: cfg.eps,
        mscale,
    };
    if decode_step_unsupported(opts.dtype, &dims).is_some() {
        return Ok(None);
    }
    let refs: Vec<StepLayer<'_>> = layers
        .iter()
        .zip(k_cache.iter().zip(v_cache))
        .map(|(l, (k, v))| StepLayer {
            attn_norm: norm_weight(&l.attn_norm, unit),
            wqkv: &l.wqkv,
            bqkv: bias(&l.bqkv),
            wo: &l.wo,
            bo: bias(&l.bo),
            mlp_norm: norm_weight(&l.mlp_norm, unit),
            w_gate_up: &l.w_gate_up,
            b_gate_up: bias(&l.b_gate_up),
            w_down: &l.w_down,
            b_down: bias(&l.b_down),
            k_cache: k,
            v_cache: v,
        })
        .collect();
    let words = decode_step_table(opts.dtype, &dims, &refs)?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    Ok(Some(StepState {
        dims,
        table: dev.upload_bytes(DType::U32, &[words.len()], &bytes)?,
        ws: dev.alloc(DType::F32, &[decode_step_workspace(&dims)])?,
        counters: dev.zeros(DType::U32, &[cfg.kv_heads])?,
        bar: dev.zeros(DType::U32, &[2])?,
        times: if opts.step_clock { Some(dev.zeros(DType::U32, &[2 * decode_step_ticks(layers.len())])?) } else { None },
    }))
}
