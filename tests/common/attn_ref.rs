//! A naive f64 attention reference, independent of the DSL: each variant's mask and
//! score change written out by hand. Shared by `tests/attention.rs` (against the
//! interpreter) and the GPU self-check (against the device).

/// The standard attention kernels' semantics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Variant {
    /// Every position visible.
    Full,
    /// `kv_pos <= q_pos`.
    Causal,
    /// Causal, and `q_pos - kv_pos < window`.
    Window(i32),
    /// Causal, score `cap * tanh(score / cap)`.
    Softcap(f32),
    /// Causal, score `score - 2^(e * (head + 1)) * (q_pos - kv_pos)`.
    Alibi(f32),
}

/// Sizes and sequence layout of one reference problem.
#[derive(Debug, Clone)]
pub struct Problem {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Elements per head.
    pub d: usize,
    /// Queries per sequence (the last `q_len` of its `kv_len` positions).
    pub q_lens: Vec<usize>,
    /// Key/value positions per sequence.
    pub kv_lens: Vec<usize>,
}

/// `out[t, h, :]` for `q [total_q, heads, d]`; `kv_at(b, pos)` is the row of K/V (each
/// `[rows, kv_heads, d]`) holding position `pos` of sequence `b`.
pub fn attention(
    p: &Problem,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    kv_at: &dyn Fn(usize, usize) -> usize,
    scale: f64,
    var: Variant,
) -> Vec<f64> {
    let (h_n, kvh_n, d) = (p.heads, p.kv_heads, p.d);
    let group = h_n / kvh_n;
    let mut out = vec![0.0; q.len()];
    let mut q0 = 0;
    for (b, (&ql, &kl)) in p.q_lens.iter().zip(&p.kv_lens).enumerate() {
        for h in 0..h_n {
            let kvh = h / group;
            for i in 0..ql {
                let q_pos = kl as i64 - ql as i64 + i as i64;
                let qrow = &q[((q0 + i) * h_n + h) * d..][..d];
                let mut s: Vec<Option<f64>> = Vec::with_capacity(kl);
                for pos in 0..kl {
                    let r = (kv_at(b, pos) * kvh_n + kvh) * d;
                    let dot: f64 = qrow.iter().zip(&k[r..r + d]).map(|(a, b)| a * b).sum();
                    let x = dot * scale;
                    let dist = q_pos - pos as i64;
                    let (x, visible) = match var {
                        Variant::Full => (x, true),
                        Variant::Causal => (x, dist >= 0),
                        Variant::Window(w) => (x, dist >= 0 && dist < i64::from(w)),
                        Variant::Softcap(c) => (f64::from(c) * (x / f64::from(c)).tanh(), dist >= 0),
                        Variant::Alibi(e) => (x - 2f64.powf(f64::from(e) * (h as f64 + 1.0)) * dist as f64, dist >= 0),
                    };
                    s.push(visible.then_some(x));
                }
                let m = s.iter().flatten().copied().fold(f64::NEG_INFINITY, f64::max);
                if m == f64::NEG_INFINITY {
                    continue; // nothing visible: zeros
                }
                let mut sum = 0.0;
                let o = &mut out[((q0 + i) * h_n + h) * d..][..d];
                for (pos, x) in s.iter().enumerate() {
                    let Some(x) = x else { continue };
                    let w = (x - m).exp();
                    sum += w;
                    let r = (kv_at(b, pos) * kvh_n + kvh) * d;
                    for (o, vv) in o.iter_mut().zip(&v[r..r + d]) {
                        *o += w * vv;
                    }
                }
                o.iter_mut().for_each(|x| *x /= sum);
            }
        }
        q0 += ql;
    }
    out
}

/// The variant a standard attention kernel implements, from its name and scalar.
pub fn variant_of(kernel: &str, scalar: f32) -> Option<Variant> {
    Some(match kernel {
        "attention" => Variant::Full,
        "attention_causal" => Variant::Causal,
        "attention_window" => Variant::Window(scalar as i32),
        "attention_softcap" => Variant::Softcap(scalar),
        "attention_alibi" => Variant::Alibi(scalar),
        _ => return None,
    })
}

// The including file imports these (the test crate and the self-check name the
// crates differently).
use super::{DType, HostArg, HostTensor};

/// One attention problem as host arguments, and the same values in f64.
#[derive(Debug)]
pub struct Case {
    /// The declared arguments (q, k, v, out, scale, extra scalars), then the index
    /// tensors: cu_q and cu_k, or cu_q, block_table and kv_lens.
    pub host: Vec<HostArg>,
    /// K/V row of `(sequence, position)`.
    pub rows: Vec<Vec<usize>>,
    /// Longest query run.
    pub max_q: u32,
    /// Longest key/value run.
    pub max_kv: u32,
    /// The inputs as stored (rounded to the dtype), in f64.
    pub q: Vec<f64>,
    /// Keys, as stored.
    pub k: Vec<f64>,
    /// Values, as stored.
    pub v: Vec<f64>,
}

fn tensor(dtype: DType, shape: &[usize], vals: &[f32]) -> (HostArg, Vec<f64>) {
    let t = HostTensor::from_f32(dtype, shape, vals).unwrap_or_else(|| unreachable!("shape and values agree"));
    let stored = t.to_f32_vec().into_iter().map(f64::from).collect();
    (HostArg::Tensor(t), stored)
}

fn vals(rnd: &mut dyn FnMut() -> f32, n: usize, amp: f32) -> Vec<f32> {
    (0..n).map(|_| (rnd() * 2.0 - 1.0) * amp).collect()
}

fn ints(shape: &[usize], v: Vec<i32>) -> HostArg {
    HostArg::Tensor(HostTensor::from_i32(shape, v).unwrap_or_else(|| unreachable!("shape and values agree")))
}

/// Random inputs for `p`: values uniform in [-amp, amp); K/V contiguous, or paged in
/// pages of `page_size` handed out in a shuffled order (scattered blocks).
pub fn build(p: &Problem, dtype: DType, page_size: Option<usize>, scalars: &[HostArg], amp: f32, rnd: &mut dyn FnMut() -> f32) -> Case {
    let (h, kvh, d) = (p.heads, p.kv_heads, p.d);
    let total_q: usize = p.q_lens.iter().sum();
    let (q_arg, q) = tensor(dtype, &[total_q, h, d], &vals(rnd, total_q * h * d, amp));
    let mut cu_q = vec![0i32];
    for &l in &p.q_lens {
        cu_q.push(cu_q[cu_q.len() - 1] + l as i32);
    }
    let batch = p.q_lens.len();
    let (kv_shape, rows, index): (Vec<usize>, Vec<Vec<usize>>, Vec<HostArg>) = match page_size {
        None => {
            let mut cu_k = vec![0i32];
            let mut rows = Vec::new();
            for &l in &p.kv_lens {
                let start = cu_k[cu_k.len() - 1] as usize;
                rows.push((start..start + l).collect());
                cu_k.push((start + l) as i32);
            }
            let total = (cu_k[batch] as usize).max(1);
            (vec![total, kvh, d], rows, vec![ints(&[batch + 1], cu_k)])
        }
        Some(ps) => {
            let need: Vec<usize> = p.kv_lens.iter().map(|l| l.div_ceil(ps)).collect();
            let pages = need.iter().sum::<usize>() + 3;
            let mut order: Vec<usize> = (0..pages).collect();
            for i in (1..pages).rev() {
                let j = ((rnd() * (i + 1) as f32) as usize).min(i);
                order.swap(i, j);
            }
            let max_pages = need.iter().copied().max().unwrap_or(0).max(1);
            let mut table = vec![-1i32; batch * max_pages];
            let mut next = order.into_iter();
            let mut rows = Vec::new();
            for (b, &n) in need.iter().enumerate() {
                let mine: Vec<usize> = next.by_ref().take(n).collect();
                for (j, &pg) in mine.iter().enumerate() {
                    table[b * max_pages + j] = pg as i32;
                }
                rows.push((0..p.kv_lens[b]).map(|pos| mine[pos / ps] * ps + pos % ps).collect());
            }
            let lens = p.kv_lens.iter().map(|&l| l as i32).collect();
            (vec![pages, ps, kvh, d], rows, vec![ints(&[batch, max_pages], table), ints(&[batch], lens)])
        }
    };
    let n_kv: usize = kv_shape.iter().product();
    let (k_arg, k) = tensor(dtype, &kv_shape, &vals(rnd, n_kv, amp));
    let (v_arg, v) = tensor(dtype, &kv_shape, &vals(rnd, n_kv, amp));
    let (out_arg, _) = tensor(dtype, &[total_q, h, d], &vec![f32::NAN; total_q * h * d]);
    let mut host = vec![q_arg, k_arg, v_arg, out_arg];
    host.extend(scalars.iter().cloned());
    host.push(ints(&[batch + 1], cu_q));
    host.extend(index);
    let max_q = p.q_lens.iter().copied().max().unwrap_or(0) as u32;
    let max_kv = p.kv_lens.iter().copied().max().unwrap_or(0) as u32;
    Case { host, rows, max_q, max_kv, q, k, v }
}

impl Case {
    /// The f64 reference output of this case.
    pub fn reference(&self, p: &Problem, scale: f64, var: Variant) -> Vec<f64> {
        attention(p, &self.q, &self.k, &self.v, &|b, pos| self.rows[b][pos], scale, var)
    }
}

/// `sum (got - want)^2 / sum want^2`; infinite when `got` has NaN or Inf.
pub fn nmse(got: &[f32], want: &[f64]) -> f64 {
    if got.len() != want.len() || got.iter().any(|g| !g.is_finite()) {
        return f64::INFINITY;
    }
    let num: f64 = got.iter().zip(want).map(|(&g, &w)| (f64::from(g) - w).powi(2)).sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    if den == 0.0 {
        num
    } else {
        num / den
    }
}
