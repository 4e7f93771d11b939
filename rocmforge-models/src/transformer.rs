//! The decoder-only transformer shared by every architecture, on the CPU in f32: the
//! reference for the GPU path and the fallback without a GPU. Matrix products and
//! attention heads run on all cores through rayon.

use rayon::prelude::*;
use rocmforge_dsl::rope::inv_freq;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::kv::{KvPool, KvSeq, KvShape};
use crate::weights::{bf16_to_f32, f16_to_f32_slice, Checkpoint, Values, Weight};

/// One decoder layer's weights (HF layout: linear weights are `[out, in]`).
#[derive(Debug)]
pub struct LayerWeights {
    /// input_layernorm.
    pub attn_norm: Weight,
    /// q_proj.
    pub wq: Weight,
    /// k_proj.
    pub wk: Weight,
    /// v_proj.
    pub wv: Weight,
    /// o_proj.
    pub wo: Weight,
    /// q/k/v/o biases where the architecture has them.
    pub bq: Option<Weight>,
    /// k_proj bias.
    pub bk: Option<Weight>,
    /// v_proj bias.
    pub bv: Option<Weight>,
    /// o_proj bias.
    pub bo: Option<Weight>,
    /// Qwen3's per-head q norm.
    pub q_norm: Option<Weight>,
    /// Qwen3's per-head k norm.
    pub k_norm: Option<Weight>,
    /// post_attention_layernorm.
    pub mlp_norm: Weight,
    /// gate_proj.
    pub w_gate: Weight,
    /// up_proj.
    pub w_up: Weight,
    /// down_proj.
    pub w_down: Weight,
    /// MLP biases (gate, up, down) where present.
    pub mlp_bias: Option<[Weight; 3]>,
}

/// Which positions' logits a forward returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token's (generation).
    Last,
    /// Every fed token's, row-major `[tokens, vocab]` (scoring, tests).
    All,
}

/// A loaded decoder-only model.
#[derive(Debug)]
pub struct Transformer {
    cfg: ModelConfig,
    embed: Weight,
    layers: Vec<LayerWeights>,
    norm: Weight,
    lm_head: Option<Weight>,
    inv_freq: Vec<f32>,
    mscale: f32,
}

impl Transformer {
    /// Takes every tensor the config asks for from the checkpoint, checking shapes.
    /// `progress` is called after each tensor with (done, total).
    pub fn from_checkpoint(cfg: ModelConfig, ck: &Checkpoint, mut progress: impl FnMut(usize, usize)) -> Result<Self> {
        let (h, q, kv, i) = (cfg.hidden, cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.intermediate);
        let per_layer =
            9 + 3 * usize::from(cfg.qkv_bias) + usize::from(cfg.o_bias) + 2 * usize::from(cfg.qk_norm) + 3 * usize::from(cfg.mlp_bias);
        let total = 2 + usize::from(!cfg.tie_embeddings) + cfg.layers * per_layer;
        let mut done = 0;
        let mut get = |name: String, shape: &[usize]| {
            let w = ck.get(&name, shape);
            done += 1;
            progress(done, total);
            w
        };
        let embed = get("model.embed_tokens.weight".into(), &[cfg.vocab, h])?;
        let mut layers = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let p = format!("model.layers.{l}");
            let a = format!("{p}.self_attn");
            let m = format!("{p}.mlp");
            layers.push(LayerWeights {
                attn_norm: get(format!("{p}.input_layernorm.weight"), &[h])?,
                wq: get(format!("{a}.q_proj.weight"), &[q, h])?,
                wk: get(format!("{a}.k_proj.weight"), &[kv, h])?,
                wv: get(format!("{a}.v_proj.weight"), &[kv, h])?,
                wo: get(format!("{a}.o_proj.weight"), &[h, q])?,
                bq: cfg.qkv_bias.then(|| get(format!("{a}.q_proj.bias"), &[q])).transpose()?,
                bk: cfg.qkv_bias.then(|| get(format!("{a}.k_proj.bias"), &[kv])).transpose()?,
                bv: cfg.qkv_bias.then(|| get(format!("{a}.v_proj.bias"), &[kv])).transpose()?,
                bo: cfg.o_bias.then(|| get(format!("{a}.o_proj.bias"), &[h])).transpose()?,
                q_norm: cfg.qk_norm.then(|| get(format!("{a}.q_norm.weight"), &[cfg.head_dim])).transpose()?,
                k_norm: cfg.qk_norm.then(|| get(format!("{a}.k_norm.weight"), &[cfg.head_dim])).transpose()?,
                mlp_norm: get(format!("{p}.post_attention_layernorm.weight"), &[h])?,
                w_gate: get(format!("{m}.gate_proj.weight"), &[i, h])?,
                w_up: get(format!("{m}.up_proj.weight"), &[i, h])?,
                w_down: get(format!("{m}.down_proj.weight"), &[h, i])?,
                mlp_bias: if cfg.mlp_bias {
                    Some([
                        get(format!("{m}.gate_proj.bias"), &[i])?,
                        get(format!("{m}.up_proj.bias"), &[i])?,
                        get(format!("{m}.down_proj.bias"), &[h])?,
                    ])
                } else {
                    None
                },
            });
        }
        let norm = get("model.norm.weight".into(), &[h])?;
        let lm_head = if cfg.tie_embeddings { None } else { Some(get("lm_head.weight".into(), &[cfg.vocab, h])?) };
        Self::new(cfg, embed, layers, norm, lm_head)
    }

    /// Assembles a model from weights already in memory, checking every shape.
    pub fn new(cfg: ModelConfig, embed: Weight, layers: Vec<LayerWeights>, norm: Weight, lm_head: Option<Weight>) -> Result<Self> {
        let (h, q, kv, i) = (cfg.hidden, cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.intermediate);
        let check = |w: &Weight, shape: &[usize], what: &str| {
            if w.shape() == shape {
                Ok(())
            } else {
                Err(ModelError::Invalid(format!("{what}: shape {:?}, expected {shape:?}", w.shape())))
            }
        };
        check(&embed, &[cfg.vocab, h], "embedding")?;
        check(&norm, &[h], "final norm")?;
        if layers.len() != cfg.layers || lm_head.is_none() != cfg.tie_embeddings || cfg.windows.len() != cfg.layers {
            return Err(ModelError::Invalid("layer count, LM head or window list disagree with the config".into()));
        }
        if cfg.kv_heads == 0 || !cfg.heads.is_multiple_of(cfg.kv_heads) {
            return Err(ModelError::Invalid(format!("{} query heads cannot share {} KV heads evenly", cfg.heads, cfg.kv_heads)));
        }
        if cfg.windows.contains(&Some(0)) {
            return Err(ModelError::Invalid("a sliding window of 0 tokens sees no keys; a layer without a window is None".into()));
        }
        if let Some(w) = &lm_head {
            check(w, &[cfg.vocab, h], "lm_head")?;
        }
        for l in &layers {
            check(&l.wq, &[q, h], "q_proj")?;
            check(&l.wk, &[kv, h], "k_proj")?;
            check(&l.wv, &[kv, h], "v_proj")?;
            check(&l.wo, &[h, q], "o_proj")?;
            check(&l.w_gate, &[i, h], "gate_proj")?;
            check(&l.w_up, &[i, h], "up_proj")?;
            check(&l.w_down, &[h, i], "down_proj")?;
            check(&l.attn_norm, &[h], "input_layernorm")?;
            check(&l.mlp_norm, &[h], "post_attention_layernorm")?;
            let opt = |w: &Option<Weight>, want: bool, shape: &[usize], what: &str| match (w, want) {
                (Some(w), true) => check(w, shape, what),
                (None, false) => Ok(()),
                _ => Err(ModelError::Invalid(format!("{what}: present where the config says absent, or the reverse"))),
            };
            opt(&l.bq, cfg.qkv_bias, &[q], "q_proj bias")?;
            opt(&l.bk, cfg.qkv_bias, &[kv], "k_proj bias")?;
            opt(&l.bv, cfg.qkv_bias, &[kv], "v_proj bias")?;
            opt(&l.bo, cfg.o_bias, &[h], "o_proj bias")?;
            opt(&l.q_norm, cfg.qk_norm, &[cfg.head_dim], "q_norm")?;
            opt(&l.k_norm, cfg.qk_norm, &[cfg.head_dim], "k_norm")?;
            match (&l.mlp_bias, cfg.mlp_bias) {
                (Some([g, u, d]), true) => {
                    check(g, &[i], "gate_proj bias")?;
                    check(u, &[i], "up_proj bias")?;
                    check(d, &[h], "down_proj bias")?;
                }
                (None, false) => {}
                _ => return Err(ModelError::Invalid("MLP biases disagree with the config".into())),
            }
        }
        let (inv_freq, mscale) = inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling);
        Ok(Transformer { cfg, embed, layers, norm, lm_head, inv_freq, mscale })
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// A KV pool for this model holding `tokens` tokens in blocks of `block_size`.
    pub fn kv_pool(&self, tokens: usize, block_size: usize) -> Result<KvPool> {
        let shape = KvShape {
            layers: self.cfg.layers,
            kv_dim: self.cfg.kv_heads * self.cfg.head_dim,
            block_size,
            blocks: tokens.div_ceil(block_size.max(1)).max(1),
        };
        Ok(KvPool::new(shape)?)
    }

    /// Feeds `tokens` at the next positions of `seq`, storing their K/V in `kv`, and returns
    /// logits (`[vocab]` for [`Logits::Last`], `[tokens, vocab]` for [`Logits::All`]).
    /// All or nothing: on error neither the cache nor `seq` changes.
    pub fn forward(&self, kv: &mut KvPool, seq: &mut KvSeq, tokens: &[u32], which: Logits) -> Result<Vec<f32>> {
        let c = &self.cfg;
        if tokens.is_empty() {
            return Err(ModelError::Invalid("forward needs at least one token".into()));
        }
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= c.vocab) {
            return Err(ModelError::TokenOutOfRange { id, vocab: c.vocab });
        }
        if kv.shape().kv_dim != c.kv_heads * c.head_dim || kv.shape().layers != c.layers {
            return Err(ModelError::Invalid(format!("KV pool {:?} was not made for this model", kv.shape())));
        }
        kv.reserve(seq, tokens.len())?;
        let (t_n, h, hd) = (tokens.len(), c.hidden, c.head_dim);
        let (qd, kvd) = (c.heads * hd, c.kv_heads * hd);
        let start = seq.len();
        let mut x: Vec<f32> = Vec::with_capacity(t_n * h);
        for &t in tokens {
            // In range: checked against the vocabulary above, and the embedding is [vocab, h].
            let row = self.embed.row(t as usize).ok_or(ModelError::TokenOutOfRange { id: t, vocab: c.vocab })?;
            x.extend_from_slice(&row);
        }
        for (li, l) in self.layers.iter().enumerate() {
            let xn = rmsnorm_rows(&x, &l.attn_norm.data(), c.eps);
            let mut q = linear(&xn, t_n, &l.wq, l.bq.as_ref())?;
            let mut k = linear(&xn, t_n, &l.wk, l.bk.as_ref())?;
            let v = linear(&xn, t_n, &l.wv, l.bv.as_ref())?;
            if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
                q = rmsnorm_rows(&q, &qn.data(), c.eps);
                k = rmsnorm_rows(&k, &kn.data(), c.eps);
            }
            for t in 0..t_n {
                let pos = start + t;
                q[t * qd..(t + 1) * qd].chunks_exact_mut(hd).for_each(|head| self.rope(head, pos));
                k[t * kvd..(t + 1) * kvd].chunks_exact_mut(hd).for_each(|head| self.rope(head, pos));
                kv.write(seq, li, pos, &k[t * kvd..(t + 1) * kvd], &v[t * kvd..(t + 1) * kvd])?;
            }
            let attn = self.attention(kv, seq, li, &q, start, t_n);
            let o = linear(&attn, t_n, &l.wo, l.bo.as_ref())?;
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let xn = rmsnorm_rows(&x, &l.mlp_norm.data(), c.eps);
            let [bg, bu, bd] = match &l.mlp_bias {
                Some([g, u, d]) => [Some(g), Some(u), Some(d)],
                None => [None, None, None],
            };
            let mut gate = linear(&xn, t_n, &l.w_gate, bg)?;
            let up = linear(&xn, t_n, &l.w_up, bu)?;
            gate.iter_mut().zip(&up).for_each(|(g, u)| *g = *g / (1.0 + (-*g).exp()) * u);
            let d = linear(&gate, t_n, &l.w_down, bd)?;
            x.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
        }
        kv.commit(seq, t_n)?;
        let rows = match which {
            Logits::Last => &x[(t_n - 1) * h..],
            Logits::All => &x[..],
        };
        let xn = rmsnorm_rows(rows, &self.norm.data(), c.eps);
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        linear(&xn, xn.len() / h, head, None)
    }

    /// NeoX-style rotation (HF `rotate_half`) of one head at position `pos`.
    fn rope(&self, x: &mut [f32], pos: usize) {
        let half = x.len() / 2;
        for (i, &f) in self.inv_freq.iter().enumerate().take(half) {
            // HF computes the angle in f32 (`inv_freq @ position_ids`), then cos/sin.
            let angle = pos as f32 * f;
            let (s, c) = angle.sin_cos();
            let (s, c) = (s * self.mscale, c * self.mscale);
            let (a, b) = (x[i], x[i + half]);
            x[i] = a * c - b * s;
            x[i + half] = b * c + a * s;
        }
    }

    /// Causal (and windowed) attention of `t_n` queries at positions `start..` over the
    /// cached keys; GQA maps query head `h` to KV head `h / (heads / kv_heads)`. Up to
    /// ATT_ROWS consecutive queries of a head share each pass over the keys and values
    /// (each read once for all of them); every query's sums keep the one-query order.
    fn attention(&self, kv: &KvPool, seq: &KvSeq, layer: usize, q: &[f32], start: usize, t_n: usize) -> Vec<f32> {
        self.attention_rows(kv, seq, layer, q, start, t_n, ATT_ROWS)
    }

    /// [`Self::attention`] with `rows` (1 to ATT_ROWS) queries a pass.
    #[allow(clippy::too_many_arguments)]
    fn attention_rows(&self, kv: &KvPool, seq: &KvSeq, layer: usize, q: &[f32], start: usize, t_n: usize, rows: usize) -> Vec<f32> {
        let rows = rows.clamp(1, ATT_ROWS);
        let c = &self.cfg;
        let (hd, group) = (c.head_dim, c.heads / c.kv_heads);
        let scale = 1.0 / (hd as f32).sqrt();
        let window = c.windows[layer];
        let blocks = t_n.div_ceil(rows);
        // Query i of a block sees keys lo(i)..=pos(i); both grow with i.
        let pos = |t: usize| start + t;
        let lo = |t: usize| window.map_or(0, |w| (pos(t) + 1).saturating_sub(w));
        let tiles: Vec<Vec<f32>> = (0..blocks * c.heads)
            .into_par_iter()
            .map(|u| {
                let (t0, head) = (u / c.heads * rows, u % c.heads);
                let n = rows.min(t_n - t0);
                let g = head / group;
                let (j0, j1) = (lo(t0), pos(t0 + n - 1));
                let width = j1 + 1 - j0;
                let seen = |i: usize, j: usize| lo(t0 + i) <= j && j <= pos(t0 + i);
                let qh = |i: usize| &q[((t0 + i) * c.heads + head) * hd..][..hd];
                let mut scores = vec![f32::NEG_INFINITY; n * width];
                for j in j0..=j1 {
                    let k = kv.read(seq, layer, j).map(|(k, _)| &k[g * hd..(g + 1) * hd]);
                    for i in (0..n).filter(|&i| seen(i, j)) {
                        scores[i * width + j - j0] = k.map_or(f32::NEG_INFINITY, |k| dot(qh(i), k) * scale);
                    }
                }
                let mut sums = [0.0f32; ATT_ROWS];
                for (i, sum) in sums.iter_mut().enumerate().take(n) {
                    let row = &mut scores[i * width + lo(t0 + i) - j0..=i * width + pos(t0 + i) - j0];
                    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    for s in row.iter_mut() {
                        *s = (*s - m).exp();
                        *sum += *s;
                    }
                }
                let mut o = vec![0.0f32; n * hd];
                for j in j0..=j1 {
                    if let Some((_, v)) = kv.read(seq, layer, j) {
                        let v = &v[g * hd..(g + 1) * hd];
                        for i in (0..n).filter(|&i| seen(i, j)) {
                            axpy(&mut o[i * hd..(i + 1) * hd], scores[i * width + j - j0] / sums[i], v);
                        }
                    }
                }
                o
            })
            .collect();
        let mut out = vec![0.0f32; t_n * c.heads * hd];
        for (u, o) in tiles.iter().enumerate() {
            let (t0, head) = (u / c.heads * rows, u % c.heads);
            for (i, oi) in o.chunks_exact(hd).enumerate() {
                out[((t0 + i) * c.heads + head) * hd..][..hd].copy_from_slice(oi);
            }
        }
        out
    }
}

/// Consecutive queries of one head that [`Transformer`]'s CPU attention takes together.
const ATT_ROWS: usize = 4;

/// RMSNorm of each row of `x` (rows of `w.len()`), as HF: f32 statistics, then the weight.
pub fn rmsnorm_rows(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let n = w.len();
    let mut out = vec![0.0f32; x.len()];
    for (row, o) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / n as f32;
        let r = 1.0 / (ms + eps).sqrt();
        o.iter_mut().zip(row).zip(w).for_each(|((o, &v), &g)| *o = g * (v * r));
    }
    out
}

/// `y[rows, out] = x[rows, in] @ W[out, in]^T + b`, parallel over output features. 16-bit
/// weights are widened as they are read (one row at a time for several input rows): the
/// same sums as on a widened copy, from half the bytes.
/// Mismatched sizes are an error, before any work.
pub fn linear(x: &[f32], rows: usize, w: &Weight, bias: Option<&Weight>) -> Result<Vec<f32>> {
    let &[out, inp] = w.shape() else {
        return Err(ModelError::Invalid(format!("linear needs a [out, in] weight, not shape {:?}", w.shape())));
    };
    if Some(x.len()) != rows.checked_mul(inp) || w.values().len() != out * inp {
        return Err(ModelError::Invalid(format!("linear: {} input values for {rows} rows of a [{out}, {inp}] weight", x.len())));
    }
    let bias = bias.map(Weight::data);
    let bias = bias.as_deref();
    if let Some(b) = bias.filter(|b| b.len() != out) {
        return Err(ModelError::Invalid(format!("linear: a bias of {} values for {out} outputs", b.len())));
    }
    if rows == 0 || out == 0 {
        return Ok(Vec::new());
    }
    let b = |o: usize| bias.map_or(0.0, |b| b[o]);
    let xr = |t: usize| &x[t * inp..(t + 1) * inp];
    // Columns of y computed as contiguous runs: yt[o][t].
    let mut yt = vec![0.0f32; out * rows];
    match w.values() {
        Values::F32(wd) if rows == 1 => {
            yt.par_iter_mut().enumerate().with_min_len(16).for_each(|(o, y)| *y = dot(xr(0), &wd[o * inp..(o + 1) * inp]) + b(o));
        }
        Values::BF16(wd) if rows == 1 => {
            yt.par_iter_mut().enumerate().with_min_len(16).for_each(|(o, y)| *y = dot_bf16(xr(0), &wd[o * inp..(o + 1) * inp]) + b(o));
        }
        Values::F16(wd) if rows == 1 => {
            yt.par_iter_mut().enumerate().with_min_len(16).for_each(|(o, y)| *y = dot_f16(xr(0), &wd[o * inp..(o + 1) * inp]) + b(o));
        }
        // Several rows (prefill), a block of outputs at a time: the block's weight rows
        // (16-bit rows widened once) stay in L2 while every TILE_R rows of x pass over
        // them, TILE_O outputs at a time (`dot_tile`), each sum in `dot`'s order.
        v => {
            // L2-sized blocks, but at least four a thread where the outputs are few and
            // the threads many (down to one tile a block).
            let share = out / (4 * rayon::current_num_threads()).max(1);
            let ob = block_outputs(inp).min((share - share % TILE_O).max(TILE_O));
            yt.par_chunks_mut(ob * rows).enumerate().for_each_init(
                || vec![0.0f32; ob * inp],
                |wide, (c, cols)| {
                    let o0 = c * ob;
                    let n_o = cols.len() / rows;
                    let wide: &[f32] = match v {
                        Values::F32(wd) => &wd[o0 * inp..(o0 + n_o) * inp],
                        _ => {
                            v.widen_into(o0 * inp, &mut wide[..n_o * inp]);
                            &wide[..n_o * inp]
                        }
                    };
                    let wr = |j: usize| &wide[j * inp..(j + 1) * inp];
                    // Outputs in whole tiles; an odd last one runs `dot` over every row.
                    let tiled = n_o - n_o % TILE_O;
                    let mut t = 0;
                    while t + TILE_R <= rows {
                        let xs = std::array::from_fn(|r| xr(t + r));
                        for j0 in (0..tiled).step_by(TILE_O) {
                            let tile = dot_tile(xs, std::array::from_fn(|j| wr(j0 + j)));
                            for (r, row) in tile.iter().enumerate() {
                                for (j, &v) in row.iter().enumerate() {
                                    cols[(j0 + j) * rows + t + r] = v + b(o0 + j0 + j);
                                }
                            }
                        }
                        t += TILE_R;
                    }
                    for j in 0..n_o {
                        for tt in if j < tiled { t } else { 0 }..rows {
                            cols[j * rows + tt] = dot(xr(tt), wr(j)) + b(o0 + j);
                        }
                    }
                },
            )
        }
    }
    if rows == 1 {
        return Ok(yt);
    }
    let mut y = vec![0.0f32; rows * out];
    for (o, col) in yt.chunks_exact(rows).enumerate() {
        for (t, &v) in col.iter().enumerate() {
            y[t * out + o] = v;
        }
    }
    Ok(y)
}

/// Rows of x and outputs of one [`dot_tile`].
const TILE_R: usize = 4;
const TILE_O: usize = 2;

/// The widened weight bytes of one block of outputs in the prefill products: small
/// enough to stay in a core's L2 (256 KiB or more on the x86 and Arm server cores of the
/// last decade) while the rows of x pass over them.
const BLOCK_BYTES: usize = 256 << 10;

/// Outputs per block of the prefill products for rows of `inp` inputs: a whole number
/// of tiles, at least one.
fn block_outputs(inp: usize) -> usize {
    let ob = (BLOCK_BYTES / (inp.max(1) * 4)).max(TILE_O);
    ob - ob % TILE_O
}

/// `dot(xs[r], ws[j])` for every pair. With AVX2 the eight pairs' accumulators stay in
/// registers and each loaded group of x serves both outputs, each group of weights all
/// four rows; each sum keeps `dot`'s order (multiply, then add: no fused multiply-add),
/// so the results are the same bits.
pub fn dot_tile(xs: [&[f32]; TILE_R], ws: [&[f32]; TILE_O]) -> [[f32; TILE_O]; TILE_R] {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the function only needs AVX2, which this CPU has (checked just above).
        return unsafe { avx2::dot_tile(xs, ws) };
    }
    std::array::from_fn(|r| std::array::from_fn(|j| dot(xs[r], ws[j])))
}

/// [`dot`] with bf16 weights, widened as read: the same sum as `dot` on the widened row.
pub fn dot_bf16(a: &[f32], b: &[u16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the function only needs AVX2, which this CPU has (checked just above).
        return unsafe { avx2::dot_bf16(a, b) };
    }
    dot_with(a, b, bf16_to_f32)
}

/// [`dot`] with f16 weights, widened 256 at a time: the same sum as `dot` on the widened row.
pub fn dot_f16(a: &[f32], b: &[u16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the function only needs AVX2, which this CPU has (checked just above).
        return unsafe { avx2::dot_f16(a, b) };
    }
    dot_f16_with(a, b)
}

/// Dot product with eight independent accumulators (vectorizes; sums in a fixed order).
/// On x86-64 CPUs with AVX2 the same loop runs compiled for it: eight accumulators are
/// one 256-bit register, and the sums are the same bits.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the function only needs AVX2, which this CPU has (checked just above).
        return unsafe { avx2::dot(a, b) };
    }
    dot_with(a, b, |v| v)
}

/// `o[i] += w * v[i]` (over the shorter of the two), multiply then add as written.
pub fn axpy(o: &mut [f32], w: f32, v: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the function only needs AVX2, which this CPU has (checked just above).
        return unsafe { avx2::axpy(o, w, v) };
    }
    axpy_with(o, w, v);
}

fn axpy_with(o: &mut [f32], w: f32, v: &[f32]) {
    o.iter_mut().zip(v).for_each(|(a, b)| *a += w * b);
}

/// The dot products compiled for AVX2 (chosen at run time). Rust does not reassociate or
/// contract float arithmetic, so these give the same bits as the baseline build.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{bf16_to_f32, dot_f16_with, dot_with, TILE_O, TILE_R};

    #[target_feature(enable = "avx2")]
    pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
        dot_with(a, b, |v| v)
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn axpy(o: &mut [f32], w: f32, v: &[f32]) {
        super::axpy_with(o, w, v)
    }

    /// [`super::dot_tile`] on AVX2: one 256-bit accumulator per pair, as `dot_with`'s
    /// eight lanes; the lanes and the tail summed as there.
    #[target_feature(enable = "avx2")]
    pub(super) fn dot_tile(xs: [&[f32]; TILE_R], ws: [&[f32]; TILE_O]) -> [[f32; TILE_O]; TILE_R] {
        use std::arch::x86_64::{__m256, _mm256_add_ps, _mm256_loadu_ps, _mm256_mul_ps, _mm256_setzero_ps, _mm256_storeu_ps};
        // Each pair's length is its shortest slice, as `dot`'s zip takes it.
        let n = xs.iter().chain(&ws).map(|s| s.len()).min().unwrap_or(0);
        if xs.iter().chain(&ws).any(|s| s.len() != n) {
            return std::array::from_fn(|r| std::array::from_fn(|j| super::dot(xs[r], ws[j])));
        }
        let whole = n / 8 * 8;
        let mut acc: [[__m256; TILE_O]; TILE_R] = [[_mm256_setzero_ps(); TILE_O]; TILE_R];
        let mut i = 0;
        while i < whole {
            // SAFETY: i + 8 <= whole <= the length of every slice, so each 8-lane load
            // reads inside it (unaligned loads).
            let (wv, xv) = unsafe {
                let wv: [__m256; TILE_O] = std::array::from_fn(|j| _mm256_loadu_ps(ws[j].as_ptr().add(i)));
                let xv: [__m256; TILE_R] = std::array::from_fn(|r| _mm256_loadu_ps(xs[r].as_ptr().add(i)));
                (wv, xv)
            };
            for r in 0..TILE_R {
                for j in 0..TILE_O {
                    acc[r][j] = _mm256_add_ps(acc[r][j], _mm256_mul_ps(xv[r], wv[j]));
                }
            }
            i += 8;
        }
        let mut out = [[0.0f32; TILE_O]; TILE_R];
        for r in 0..TILE_R {
            for j in 0..TILE_O {
                let mut lanes = [0.0f32; 8];
                // SAFETY: `lanes` holds eight f32.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r][j]) };
                let tail: f32 = xs[r][whole..].iter().zip(&ws[j][whole..]).map(|(x, &y)| x * y).sum();
                out[r][j] = lanes.iter().sum::<f32>() + tail;
            }
        }
        out
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn dot_bf16(a: &[f32], b: &[u16]) -> f32 {
        dot_with(a, b, bf16_to_f32)
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn dot_f16(a: &[f32], b: &[u16]) -> f32 {
        dot_f16_with(a, b)
    }
}

/// `sum(a[i] * widen(b[i]))` with eight accumulators, the tail summed apart, in one order.
#[inline(always)]
fn dot_with<W: Copy>(a: &[f32], b: &[W], widen: impl Fn(W) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, &y)| x * widen(y)).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * widen(y[i]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// [`dot_with`] for f16, widening 256 values at a time into a buffer.
#[inline(always)]
fn dot_f16_with(a: &[f32], b: &[u16]) -> f32 {
    const CHUNK: usize = 256;
    let mut acc = [0.0f32; 8];
    let mut buf = [0.0f32; CHUNK];
    let whole = a.len().min(b.len()) / 8 * 8;
    let mut i = 0;
    while i < whole {
        let n = CHUNK.min(whole - i);
        f16_to_f32_slice(&b[i..i + n], &mut buf[..n]);
        for (x, y) in a[i..i + n].chunks_exact(8).zip(buf[..n].chunks_exact(8)) {
            for j in 0..8 {
                acc[j] += x[j] * y[j];
            }
        }
        i += n;
    }
    let tail: f32 = a[whole..].iter().zip(&b[whole..]).map(|(x, &y)| x * half::f16::from_bits(y).to_f32()).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The 16-bit products widen exactly and sum in `dot`'s order: the same bits as
        /// `dot` over the widened row, for any length (whole chunks, tails, several blocks
        /// of the f16 buffer).
        #[test]
        fn half_dots_match_dot_on_widened_rows(len in 0usize..700, seed in any::<u64>()) {
            let mut rng = crate::sampling::Rng::new(seed);
            let x: Vec<f32> = (0..len).map(|_| rng.next_f32() * 4.0 - 2.0).collect();
            let w: Vec<f32> = (0..len).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
            let bf: Vec<u16> = w.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
            let hf: Vec<u16> = w.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
            let bf_wide: Vec<f32> = bf.iter().map(|&b| bf16_to_f32(b)).collect();
            let hf_wide: Vec<f32> = hf.iter().map(|&b| half::f16::from_bits(b).to_f32()).collect();
            prop_assert_eq!(dot_bf16(&x, &bf).to_bits(), dot(&x, &bf_wide).to_bits());
            prop_assert_eq!(dot_f16(&x, &hf).to_bits(), dot(&x, &hf_wide).to_bits());
            // The run-time AVX2 versions (where the CPU has it) give the baseline's bits.
            prop_assert_eq!(dot(&x, &w).to_bits(), dot_with(&x, &w, |v| v).to_bits());
            prop_assert_eq!(dot_bf16(&x, &bf).to_bits(), dot_with(&x, &bf, bf16_to_f32).to_bits());
            prop_assert_eq!(dot_f16(&x, &hf).to_bits(), dot_f16_with(&x, &hf).to_bits());
        }

        /// The tile gives `dot`'s bits for every pair (the AVX2 version where the CPU has
        /// it), at equal lengths (whole groups and tails) and unequal ones.
        #[test]
        fn tiles_match_dot_pair_by_pair(len in 0usize..300, short in 0usize..300, seed in any::<u64>()) {
            let mut rng = crate::sampling::Rng::new(seed);
            let mut vec_of = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.next_f32() * 4.0 - 2.0).collect() };
            let xs: Vec<Vec<f32>> = (0..TILE_R).map(|_| vec_of(len)).collect();
            let mut ws: Vec<Vec<f32>> = (0..TILE_O).map(|_| vec_of(len)).collect();
            for uneven in [false, true] {
                if uneven {
                    ws[1].truncate(short.min(len));
                }
                let xa: [&[f32]; TILE_R] = std::array::from_fn(|r| xs[r].as_slice());
                let wa: [&[f32]; TILE_O] = std::array::from_fn(|j| ws[j].as_slice());
                let got = dot_tile(xa, wa);
                for r in 0..TILE_R {
                    for j in 0..TILE_O {
                        prop_assert_eq!(got[r][j].to_bits(), dot_with(xa[r], wa[j], |v| v).to_bits(), "row {} output {} uneven {}", r, j, uneven);
                    }
                }
            }
        }
    }

    /// A config whose heads cannot share the KV heads, or with a window of no tokens, is a
    /// typed error when the model is assembled (the attention would divide by zero or
    /// slice an empty window otherwise).
    #[test]
    fn bad_head_groups_and_empty_windows_are_refused() -> Result<()> {
        for edit in [
            |c: &mut ModelConfig| c.windows[0] = Some(0),
            |c: &mut ModelConfig| c.kv_heads = 0,
            |c: &mut ModelConfig| c.kv_heads = c.heads + 1,
        ] {
            let t = crate::demo::model(1)?.transformer;
            let mut cfg = t.cfg.clone();
            edit(&mut cfg);
            let err = Transformer::new(cfg, t.embed, t.layers, t.norm, t.lm_head).err();
            assert!(matches!(err, Some(ModelError::Invalid(_))), "{err:?}");
        }
        Ok(())
    }

    /// The CPU attention with several queries a pass over the keys and values gives the
    /// same bits as one query a pass, causal and with a sliding window (the mistral
    /// fixture's window is 12), from the first position and from inside the prompt.
    #[test]
    fn attention_query_tiles_match_one_query_at_a_time() -> Result<()> {
        for name in ["llama", "mistral"] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models").join(name);
            let model = crate::Model::load(&dir, crate::LoadOptions::default())?;
            let t = &model.transformer;
            let c = t.config();
            let prompt: Vec<u32> = (0..31u32).map(|i| (i * 7 + 3) % c.vocab as u32).collect();
            let mut pool = model.kv_pool(prompt.len())?;
            let mut seq = pool.new_sequence();
            t.forward(&mut pool, &mut seq, &prompt, Logits::Last)?;
            let mut rng = crate::sampling::Rng::new(5);
            for (start, t_n) in [(0, 31), (17, 14), (30, 1), (3, 6)] {
                let q: Vec<f32> = (0..t_n * c.heads * c.head_dim).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
                for layer in 0..c.layers {
                    let one = t.attention_rows(&pool, &seq, layer, &q, start, t_n, 1);
                    assert!(one.iter().any(|&v| v != 0.0), "{name}: attention all zero");
                    for rows in 2..=ATT_ROWS {
                        let tiled = t.attention_rows(&pool, &seq, layer, &q, start, t_n, rows);
                        let same = one.iter().zip(&tiled).all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same && one.len() == tiled.len(), "{name}: layer {layer}, queries {start}.., {t_n} of them, {rows} a pass");
                    }
                }
            }
            pool.release(seq);
        }
        Ok(())
    }

    /// `linear` over several rows (the tiled path: blocks of outputs, pairs of them four
    /// rows at a time, an odd output and leftover rows apart) equals `dot` per element plus
    /// the bias. On one thread, 37 outputs of 37 inputs run in blocks of 8 (four a thread),
    /// the last of 5 (two tiles and an odd output); 7 outputs of a long row in L2-sized
    /// blocks of 2, the last of 1. (The 16-bit weights take the same path on rows widened
    /// exactly; the bf16 fixture's logits test covers them.)
    #[test]
    fn linear_rows_equal_dots() -> Result<()> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().map_err(|e| ModelError::Invalid(e.to_string()))?;
        pool.install(linear_rows_equal_dots_on_this_pool)
    }

    fn linear_rows_equal_dots_on_this_pool() -> Result<()> {
        let mut rng = crate::sampling::Rng::new(17);
        let long = BLOCK_BYTES / 4 / 3 + 1;
        assert!(block_outputs(37) > 8 && block_outputs(long) == 2, "the shapes below must cover both limits on a block");
        for (out, inp) in [(37, 37), (7, long)] {
            let w: Vec<f32> = (0..out * inp).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
            let bias: Vec<f32> = (0..out).map(|_| rng.next_f32()).collect();
            let weights = Weight::from_vec(w.clone(), vec![out, inp])?;
            let b = Weight::from_vec(bias.clone(), vec![out])?;
            // Empty shapes give empty or bias-only outputs, not a panic.
            assert!(linear(&[], 0, &weights, Some(&b))?.is_empty());
            let no_inputs = Weight::from_vec(Vec::new(), vec![out, 0])?;
            assert_eq!(linear(&[], 3, &no_inputs, Some(&b))?, [bias.as_slice(); 3].concat());
            for rows in [1, 2, 4, 6, 9] {
                let x: Vec<f32> = (0..rows * inp).map(|_| rng.next_f32() * 4.0 - 2.0).collect();
                let y = linear(&x, rows, &weights, Some(&b))?;
                for t in 0..rows {
                    for o in 0..out {
                        let want = dot_with(&x[t * inp..(t + 1) * inp], &w[o * inp..(o + 1) * inp], |v| v) + bias[o];
                        assert_eq!(y[t * out + o].to_bits(), want.to_bits(), "[{out}, {inp}], rows {rows}, row {t}, output {o}");
                    }
                }
            }
        }
        Ok(())
    }
}
