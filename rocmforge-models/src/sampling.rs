//! Token sampling: greedy, temperature, top-k, top-p, min-p, and repetition / presence /
//! frequency penalties, seeded for reproducible runs. The order follows HF transformers'
//! logits processors: penalties, temperature, top-k, top-p, min-p, then the draw.

use std::collections::HashMap;
use std::ops::Range;

use rocmforge_runtime::engine::TOPK_MAX;

use crate::error::{ModelError, Result};

/// splitmix64: a small, fast generator whose stream depends only on the seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1) with 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [0, 1) with 24 bits.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Sampling settings. The default is greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 is greedy; otherwise logits are divided by it.
    pub temperature: f32,
    /// Keep the k most likely tokens (0: off).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1: off).
    pub top_p: f32,
    /// Drop tokens below min_p times the top probability (0: off).
    pub min_p: f32,
    /// HF repetition penalty (1: off): seen tokens' positive logits divided by it,
    /// negative ones multiplied.
    pub repetition_penalty: f32,
    /// OpenAI presence penalty (0: off): subtracted once from every seen token.
    pub presence_penalty: f32,
    /// OpenAI frequency penalty (0: off): subtracted per occurrence.
    pub frequency_penalty: f32,
    /// Seed of the draw.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Rejects values that make no sense, naming the flag.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: f32, range: &str| Err(ModelError::Invalid(format!("{what} = {v} is out of range ({range})")));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature", self.temperature, "0 or more; 0 is greedy");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p, "greater than 0, at most 1");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", self.min_p, "0 to 1");
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad("repetition_penalty", self.repetition_penalty, "greater than 0; 1 is off");
        }
        if !self.presence_penalty.is_finite() || !self.frequency_penalty.is_finite() {
            return Err(ModelError::Invalid("presence and frequency penalties must be finite".into()));
        }
        Ok(())
    }

    /// Whether any penalty is set (repetition, presence or frequency).
    pub fn has_penalties(&self) -> bool {
        self.repetition_penalty != 1.0 || self.presence_penalty != 0.0 || self.frequency_penalty != 0.0
    }

    /// Greedy: temperature 0 and no penalties, so each token is the argmax of the logits.
    pub fn is_plain_greedy(&self) -> bool {
        self.temperature == 0.0 && !self.has_penalties()
    }
}

/// Draws tokens under [`SamplingParams`], remembering what it has seen for the penalties.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    counts: HashMap<u32, u32>,
}

impl Sampler {
    /// A sampler; fails on out-of-range parameters.
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        Ok(Sampler { rng: Rng::new(params.seed), params, counts: HashMap::new() })
    }

    /// Records tokens that the penalties should count (the prompt, then each output).
    pub fn observe(&mut self, tokens: &[u32]) {
        for &t in tokens {
            *self.counts.entry(t).or_insert(0) += 1;
        }
    }

    /// What the penalties do to each seen token: `(token, repetition penalty, amount
    /// subtracted)`. A positive logit is divided by the repetition penalty (1: off), a
    /// negative one multiplied, then the amount (presence plus frequency times count) is
    /// subtracted. Empty when no penalty is set. The GPU applies the same entries.
    pub fn penalties(&self) -> Vec<(u32, f32, f32)> {
        let p = &self.params;
        if !self.has_penalties() {
            return Vec::new();
        }
        self.counts.iter().map(|(&t, &n)| (t, p.repetition_penalty, p.presence_penalty + p.frequency_penalty * n as f32)).collect()
    }

    /// Applies the penalties to `logits` in place.
    pub fn penalize(&self, logits: &mut [f32]) {
        for (t, rep, sub) in self.penalties() {
            let Some(l) = logits.get_mut(t as usize) else { continue };
            if rep != 1.0 {
                *l = if *l > 0.0 { *l / rep } else { *l * rep };
            }
            *l -= sub;
        }
    }

    /// Picks the next token from `logits` (which it may modify) and records it.
    pub fn sample(&mut self, logits: &mut [f32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(ModelError::Invalid("cannot sample from empty logits".into()));
        }
        self.penalize(logits);
        let token = if self.params.temperature == 0.0 {
            argmax(logits)
        } else {
            let u = self.rng.next_f64();
            // None only where every logit is NaN.
            self.draw_row(logits, u).unwrap_or_else(|| argmax(logits))
        };
        self.observe(&[token]);
        Ok(token)
    }

    /// The settings.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Whether the penalties change logits (they need every logit, not only the top ones).
    pub fn has_penalties(&self) -> bool {
        !self.counts.is_empty() && self.params.has_penalties()
    }

    /// Picks the next token from a row's most likely tokens, and records it: `pairs`
    /// holds `(id, logit)` of the row's `pairs.len()` largest logits, in any order (the
    /// GPU's top-k selection), after penalties; `row` is the row's softmax normalizer in
    /// parts (unused at temperature 0). Where top-k, top-p or min-p keep only candidates,
    /// or the draw lands on one, it is decided here. Otherwise `fetch` is called for the
    /// (penalized) logits of a range of the row's columns, and the draw goes on there with
    /// the same random number:
    /// - a draw past every candidate with nothing cut (a plain temperature draw's tail)
    ///   copies only the part its remaining probability falls in, found by the parts' sums
    ///   less the candidates in them, where the candidates are the [`SORTED_HEAD`] a
    ///   whole-row draw walks first (fewer: the whole row);
    /// - top-p's mass or min-p's floor not reached inside the candidates, or a top-k past
    ///   them, copy the whole row.
    ///
    /// Either way it is the draw [`Sampler::sample`] makes on the whole row: the same
    /// token, up to the order of floating-point sums (and which of equal logits tied at the
    /// `pairs.len()`-th place the candidates hold).
    pub fn sample_top(
        &mut self,
        pairs: Vec<(u32, f32)>,
        row: &MassParts<'_>,
        mut fetch: impl FnMut(Range<usize>) -> Result<Vec<f32>>,
    ) -> Result<u32> {
        let mut pairs = pairs;
        pairs.retain(|x| !x.1.is_nan());
        // The order a whole-row draw walks its head in.
        pairs.sort_unstable_by_key(|&(id, l)| rank_key(id, l));
        let token = if self.params.temperature == 0.0 {
            pairs.first().map(|p| p.0)
        } else {
            let u = self.rng.next_f64();
            let mass = row.mass(self.params.temperature);
            // A normalizer that cannot be right (an infinite logit, say) takes the whole row.
            let drawn = if mass.is_finite() && mass >= 1.0 { self.draw_sorted(&pairs, Some(mass), u) } else { Drawn::Undecided };
            match drawn {
                Drawn::Token(t) => Some(t),
                Drawn::Empty => None,
                Drawn::Undecided => self.draw_row(&fetch(0..row.cols)?, u),
                // The tail in parts where the candidates are the head a whole-row draw
                // sorts (so it walks the same tokens past them); else the row.
                Drawn::Past(r) if pairs.len() == SORTED_HEAD.min(row.cols) => self.draw_parts(&pairs, row, mass, r, u, &mut fetch)?,
                Drawn::Past(_) => self.draw_row(&fetch(0..row.cols)?, u),
            }
        };
        let token = token.ok_or_else(|| ModelError::Invalid("cannot sample from empty or all-NaN logits".into()))?;
        self.observe(&[token]);
        Ok(token)
    }

    /// A draw past every candidate of `pairs` (sorted, no NaN, none cut) with `past` of
    /// the probability left: the rest of the row in id order, as [`Sampler::draw_row`]
    /// walks it past its sorted head, but copying only the part the draw lands in (and
    /// the parts after it, where rounding carries the draw past its last logit).
    fn draw_parts(
        &self,
        pairs: &[(u32, f32)],
        row: &MassParts<'_>,
        mass: f64,
        past: f64,
        u: f64,
        fetch: &mut impl FnMut(Range<usize>) -> Result<Vec<f32>>,
    ) -> Result<Option<u32>> {
        let t = self.params.temperature;
        let Some(&(_, first)) = pairs.first() else { return Ok(self.draw_row(&fetch(0..row.cols)?, u)) };
        let top = f64::from(first / t);
        let weight = |l: f32| (f64::from(l / t) - top).exp();
        let n = row.parts.len() / 2;
        let chunk = row.chunk.max(1);
        let mut head: Vec<u32> = pairs.iter().map(|p| p.0).collect();
        head.sort_unstable();
        // Each part's probability past the candidates: its sum less theirs.
        let mut in_head = vec![0.0f64; n];
        for &(id, l) in pairs {
            if let Some(m) = in_head.get_mut(id as usize / chunk) {
                *m += weight(l);
            }
        }
        let mut r = past;
        let mut j = 0;
        while j < n {
            let (m, s) = (row.parts[2 * j], row.parts[2 * j + 1]);
            let x = if s > 0.0 { (f64::from(s) * (f64::from(m / t) - top).exp() - in_head[j]) / mass } else { 0.0 };
            if r < x {
                break;
            }
            r -= x;
            j += 1;
        }
        let mut last = None;
        for part in j..n {
            let lo = part * chunk;
            let hi = (lo + chunk).min(row.cols);
            if lo >= hi {
                break;
            }
            for (i, &l) in fetch(lo..hi)?.iter().enumerate() {
                let id = (lo + i) as u32;
                if l.is_nan() || head.binary_search(&id).is_ok() {
                    continue;
                }
                let x = weight(l) / mass;
                if r < x {
                    return Ok(Some(id));
                }
                r -= x;
                last = Some(id);
            }
        }
        match last {
            // Rounding left a sliver past the last weight.
            Some(id) => Ok(Some(id)),
            // The parts' sums passed every part: the whole row decides.
            None => Ok(self.draw_row(&fetch(0..row.cols)?, u)),
        }
    }

    /// The draw with uniform `u` over `pairs`, sorted highest logit first, no NaN. `mass`:
    /// `None` where `pairs` is the whole row; else the row's normalizer relative to its
    /// largest logit (the first pair), with `pairs` only its most likely tokens, and
    /// [`Drawn::Undecided`] or [`Drawn::Past`] where the outcome depends on tokens past them.
    fn draw_sorted(&self, pairs: &[(u32, f32)], mass: Option<f64>, u: f64) -> Drawn {
        let p = &self.params;
        let Some(&(_, first)) = pairs.first() else { return Drawn::Empty };
        let mut complete = mass.is_none();
        let mut pairs = pairs;
        if p.top_k > 0 {
            if p.top_k <= pairs.len() {
                pairs = &pairs[..p.top_k];
                complete = true;
            } else if !complete {
                // The top-k set (and its normalizer) reaches past the candidates.
                return Drawn::Undecided;
            }
        }
        let top = f64::from(first / p.temperature);
        let mut probs: Vec<f64> = pairs.iter().map(|&(_, l)| (f64::from(l / p.temperature) - top).exp()).collect();
        let total: f64 = match mass {
            Some(m) if !complete => m,
            _ => probs.iter().sum(),
        };
        probs.iter_mut().for_each(|x| *x /= total);
        if p.top_p < 1.0 {
            // Keep the shortest prefix whose mass reaches top_p (at least one token).
            let mut acc = 0.0;
            match probs.iter().position(|&x| {
                acc += x;
                acc >= f64::from(p.top_p)
            }) {
                Some(i) => {
                    probs.truncate(i + 1);
                    complete = true;
                }
                None if !complete => return Drawn::Undecided,
                None => {}
            }
        }
        if p.min_p > 0.0 {
            let floor = probs[0] * f64::from(p.min_p);
            let keep = probs.iter().take_while(|&&x| x >= floor).count().max(1);
            if keep < probs.len() {
                probs.truncate(keep);
                complete = true;
            } else if !complete {
                // Tokens past the candidates may still reach the floor.
                return Drawn::Undecided;
            }
        }
        // Over the whole row nothing was cut: the kept mass is 1 by construction.
        let kept: f64 = if complete { probs.iter().sum() } else { 1.0 };
        let mut r = u * kept;
        for (i, &x) in probs.iter().enumerate() {
            if r < x {
                return Drawn::Token(pairs[i].0);
            }
            r -= x;
        }
        if complete {
            Drawn::Token(pairs[probs.len() - 1].0)
        } else {
            Drawn::Past(r)
        }
    }

    /// The draw with uniform `u` over a whole row of logits (after penalties); `None`
    /// where every logit is NaN. The row's [`SORTED_HEAD`] highest logits are walked first,
    /// highest first (ties by id), as the GPU's candidates are; a top-p nucleus past them
    /// (with no top-k or min-p) is cut by selection and its rest walked in id order
    /// ([`Sampler::draw_nucleus`]); where top-k or min-p need more of the order, the
    /// sorted head grows; a plain temperature draw past the head walks the rest in id
    /// order. Only the head is sorted (a full sort of a 128k vocabulary costs milliseconds
    /// a token).
    fn draw_row(&self, logits: &[f32], u: f64) -> Option<u32> {
        // Integer sorts and selections run several times faster than on pairs.
        let mut keys: Vec<u64> = logits.iter().enumerate().filter(|x| !x.1.is_nan()).map(|(i, &l)| rank_key(i as u32, l)).collect();
        let n = keys.len();
        let id = |k: u64| (k & 0xffff_ffff) as u32;
        let best = id(*keys.iter().min()?);
        let best_logit = logits[best as usize];
        if !best_logit.is_finite() {
            // +inf takes every draw (-inf everywhere: no weights); the lowest such id.
            return Some(best);
        }
        let t = self.params.temperature;
        let top = f64::from(best_logit / t);
        let weight = |l: f32| (f64::from(l / t) - top).exp();
        // The row's normalizer, where the head is not the whole row.
        let row_mass = if SORTED_HEAD < n { keys.iter().map(|&k| weight(logits[id(k) as usize])).sum::<f64>() } else { 0.0 };
        let mut head = SORTED_HEAD.min(n);
        let (mass, past) = loop {
            if head < n {
                keys.select_nth_unstable(head - 1);
                keys[..head].sort_unstable();
            } else {
                keys.sort_unstable();
            }
            let pairs: Vec<(u32, f32)> = keys[..head].iter().map(|&k| (id(k), logits[id(k) as usize])).collect();
            let mass = (head < n).then_some(row_mass);
            match self.draw_sorted(&pairs, mass, u) {
                Drawn::Token(tok) => return Some(tok),
                Drawn::Empty => return None,
                // A nucleus past the sorted head, with no other cut: found by selection.
                Drawn::Undecided if self.params.top_k == 0 && self.params.min_p <= 0.0 && head < n => {
                    // Each token's weight, once (NaN ones are not among the keys).
                    let ws: Vec<f64> = logits.iter().map(|&l| weight(l)).collect();
                    return Some(self.draw_nucleus(&ws, &mut keys, head, row_mass, u));
                }
                // Past an eighth of the row, one sort of all of it.
                Drawn::Undecided => head = if head * 8 >= n / 8 { n } else { head * 8 },
                Drawn::Past(r) => break (mass.unwrap_or(1.0), r),
            }
        };
        // Past the sorted head (a draw with no cut): the rest in id order.
        let mut in_head = vec![false; logits.len()];
        for &k in &keys[..head] {
            in_head[id(k) as usize] = true;
        }
        let mut r = past;
        let mut last = best;
        for (i, &l) in logits.iter().enumerate() {
            if l.is_nan() || in_head[i] {
                continue;
            }
            let x = weight(l) / mass;
            if r < x {
                return Some(i as u32);
            }
            r -= x;
            last = i as u32;
        }
        // Rounding left a sliver past the last weight.
        Some(last)
    }

    /// A top-p draw whose nucleus reaches past the sorted head (`keys[..head]`, sorted;
    /// the rest of `keys` ranks after it, in any order): the cut is found by selecting
    /// around the middle of what is left and summing one side's weight, halving each
    /// time, with no sort of the nucleus (on nearly flat logits it is most of the row,
    /// which a sort took milliseconds a token for). The nucleus is the shortest prefix in
    /// rank order whose weight reaches `top_p` of `row_mass`; the draw walks the sorted
    /// head first, then the rest of the nucleus in id order, as a plain draw walks the row
    /// past its head. `ws`: each token's weight (relative to the row's largest logit; NaN
    /// ones are not among the keys); `row_mass`: their sum over the keys.
    fn draw_nucleus(&self, ws: &[f64], keys: &mut [u64], head: usize, row_mass: f64, u: f64) -> u32 {
        let id = |k: u64| (k & 0xffff_ffff) as usize;
        let target = f64::from(self.params.top_p) * row_mass;
        let w = |k: u64| ws[id(k)];
        let head_mass: f64 = keys[..head].iter().map(|&k| w(k)).sum();
        let rest = &mut keys[head..];
        // The cut lies in rest[lo..hi]; `acc` is the weight ranked before rest[lo].
        let (mut lo, mut hi, mut acc) = (0, rest.len(), head_mass);
        while hi - lo > 64 {
            let mid = lo + (hi - lo) / 2;
            rest[lo..hi].select_nth_unstable(mid - lo);
            let m: f64 = rest[lo..=mid].iter().map(|&k| w(k)).sum();
            if acc + m >= target {
                hi = mid + 1;
            } else {
                acc += m;
                lo = mid + 1;
            }
        }
        rest[lo..hi].sort_unstable();
        // The range is never empty; rounding that keeps the sums short of the target
        // keeps all of it.
        let mut cut = hi - 1;
        for (i, &k) in rest.iter().enumerate().take(hi).skip(lo) {
            acc += w(k);
            if acc >= target {
                cut = i;
                break;
            }
        }
        let mut in_rest = vec![false; ws.len()];
        for &k in &rest[..=cut] {
            in_rest[id(k)] = true;
        }
        let kept = head_mass + ws.iter().zip(&in_rest).filter(|x| *x.1).map(|x| x.0).sum::<f64>();
        // The draw: the head in rank order, then the nucleus's rest in id order.
        let order = keys[..head].iter().map(|&k| id(k)).chain((0..ws.len()).filter(|&i| in_rest[i]));
        let mut r = u * kept;
        let mut last = id(keys[0]);
        for i in order {
            if r < ws[i] {
                return i as u32;
            }
            r -= ws[i];
            last = i;
        }
        // Rounding left a sliver past the last weight.
        last as u32
    }
}

/// Logits sorted at the head of a whole-row draw: the draw over the GPU's candidates
/// ([`TOPK_MAX`] of them where no top-k bounds it) walks them in the same order, so the
/// two agree token for token.
pub const SORTED_HEAD: usize = TOPK_MAX;

/// The outcome of a draw over sorted candidates.
enum Drawn {
    /// The token drawn.
    Token(u32),
    /// Which tokens are kept depends on tokens past the candidates (top-p's mass or
    /// min-p's floor not reached, a top-k past them).
    Undecided,
    /// Nothing is cut and the draw passes every candidate, with this much probability
    /// left to walk over the rest.
    Past(f64),
    /// No candidate (every logit NaN).
    Empty,
}

/// A row's softmax normalizer in parts, as the GPU's `rf_softmax_mass_f32` writes it for
/// a draw over top candidates ([`Sampler::sample_top`]).
#[derive(Debug, Clone, Copy)]
pub struct MassParts<'a> {
    /// `(m, s)` for each part of the row, in column order: the part's largest logit `m`
    /// and `sum exp(l / t - m / t)` over its non-NaN logits (`(-inf, 0)` for none).
    pub parts: &'a [f32],
    /// Columns in each part (the last may hold fewer).
    pub chunk: usize,
    /// Columns in the row.
    pub cols: usize,
}

impl MassParts<'_> {
    /// The row's normalizer at temperature `t` ([`merge_mass`]).
    pub fn mass(&self, t: f32) -> f64 {
        merge_mass(self.parts, t)
    }
}

/// A row's softmax normalizer at temperature `t` relative to its largest logit,
/// `sum exp(l / t - max / t)`, from parts `(m, s)` of it (the GPU's
/// `rf_softmax_mass_f32`: each part's largest logit `m` and its sum relative to `m`):
/// each part's sum rescaled to the row's largest, in f64. NaN where the parts hold an
/// infinite logit (the draw then takes the whole row).
pub fn merge_mass(parts: &[f32], t: f32) -> f64 {
    let top = parts.chunks_exact(2).map(|p| p[0]).fold(f32::NEG_INFINITY, f32::max);
    let top = f64::from(top / t);
    parts.chunks_exact(2).filter(|p| p[1] != 0.0).map(|p| f64::from(p[1]) * (f64::from(p[0] / t) - top).exp()).sum()
}

/// The order draws walk candidates in, as one u64: ascending keys are descending logits,
/// ties by ascending id (the id is the low 32 bits).
fn rank_key(id: u32, logit: f32) -> u64 {
    (u64::from(!order_key(logit)) << 32) | u64::from(id)
}

/// An order-preserving key of an f32 (a > b iff key(a) > key(b)), as the GPU's top-k
/// uses; NaN is filtered out before.
fn order_key(v: f32) -> u32 {
    let u = v.to_bits();
    if u & 0x8000_0000 != 0 {
        !u
    } else {
        u | 0x8000_0000
    }
}

/// Index of the largest logit (the first on ties; NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = (0usize, f32::NEG_INFINITY);
    for (i, &v) in logits.iter().enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0 as u32
}
