//! Token sampling: greedy, temperature, top-k, top-p, min-p, and repetition / presence /
//! frequency penalties, seeded for reproducible runs. The order follows HF transformers'
//! logits processors: penalties, temperature, top-k, top-p, min-p, then the draw.

use std::collections::HashMap;

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

    /// Applies the penalties to `logits` in place.
    pub fn penalize(&self, logits: &mut [f32]) {
        let p = &self.params;
        for (&t, &n) in &self.counts {
            let Some(l) = logits.get_mut(t as usize) else { continue };
            if p.repetition_penalty != 1.0 {
                *l = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
            }
            *l -= p.presence_penalty + p.frequency_penalty * n as f32;
        }
    }

    /// Picks the next token from `logits` (which it may modify) and records it.
    pub fn sample(&mut self, logits: &mut [f32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(ModelError::Invalid("cannot sample from empty logits".into()));
        }
        self.penalize(logits);
        let token = if self.params.temperature == 0.0 { argmax(logits) } else { self.draw(logits) };
        self.observe(&[token]);
        Ok(token)
    }

    fn draw(&mut self, logits: &[f32]) -> u32 {
        let pairs = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
        self.draw_pairs(pairs).unwrap_or_else(|| argmax(logits))
    }

    /// The settings.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Whether the penalties change logits (they need every logit, not only the top ones).
    pub fn has_penalties(&self) -> bool {
        !self.counts.is_empty() && self.params.has_penalties()
    }

    /// Picks the next token from candidate `(id, logit)` pairs that hold at least the
    /// `top_k` most likely tokens (the GPU's top-k selection), and records it. Same draw
    /// as [`Sampler::sample`] on the full logits when there are no penalties.
    pub fn sample_candidates(&mut self, pairs: Vec<(u32, f32)>) -> Result<u32> {
        let token = if self.params.temperature == 0.0 {
            pairs
                .iter()
                .filter(|p| !p.1.is_nan())
                .fold(None, |best: Option<(u32, f32)>, &(i, l)| match best {
                    Some((bi, bl)) if bl > l || (bl == l && bi < i) => Some((bi, bl)),
                    _ => Some((i, l)),
                })
                .map(|p| p.0)
        } else {
            self.draw_pairs(pairs)
        };
        let token = token.ok_or_else(|| ModelError::Invalid("cannot sample from empty or all-NaN logits".into()))?;
        self.observe(&[token]);
        Ok(token)
    }

    fn draw_pairs(&mut self, mut pairs: Vec<(u32, f32)>) -> Option<u32> {
        let p = &self.params;
        // Candidates sorted by logit, highest first (ties by id for determinism).
        pairs.retain(|x| !x.1.is_nan());
        pairs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 {
            pairs.truncate(p.top_k);
        }
        let first = pairs.first()?.1;
        let top = f64::from(first / p.temperature);
        let mut probs: Vec<f64> = pairs.iter().map(|&(_, l)| (f64::from(l / p.temperature) - top).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);
        if p.top_p < 1.0 {
            // Keep the shortest prefix whose mass reaches top_p (at least one token).
            let mut acc = 0.0;
            let keep = probs
                .iter()
                .position(|&x| {
                    acc += x;
                    acc >= f64::from(p.top_p)
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
        }
        if p.min_p > 0.0 {
            let floor = probs[0] * f64::from(p.min_p);
            let keep = probs.iter().take_while(|&&x| x >= floor).count().max(1);
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut r = self.rng.next_f64() * total;
        for (i, &x) in probs.iter().enumerate() {
            if r < x {
                return Some(pairs[i].0);
            }
            r -= x;
        }
        Some(pairs[probs.len() - 1].0)
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
