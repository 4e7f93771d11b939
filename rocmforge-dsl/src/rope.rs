//! Rotary frequency tables with the scalings of HF transformers' `rope_init_fn`s:
//! default, linear, llama3 and YaRN. The kernel takes the table (`inv_freq`, one entry
//! per rotated pair) and an amplitude `mscale`, so every scaling runs the same kernel.

/// Frequency scaling of a rotary embedding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// `inv_freq[i] = base^(-2i/d)`.
    Default,
    /// Positions divided by `factor` (inv_freq divided by it).
    Linear {
        /// Scaling factor.
        factor: f32,
    },
    /// Llama 3.1's wavelength-dependent scaling.
    Llama3 {
        /// Scaling factor.
        factor: f32,
        /// Low-frequency factor.
        low_freq_factor: f32,
        /// High-frequency factor.
        high_freq_factor: f32,
        /// Context length the model was trained with.
        original_max_position_embeddings: f32,
    },
    /// YaRN (NTK-by-parts with attention temperature).
    Yarn {
        /// Scaling factor.
        factor: f32,
        /// Fast-rotation boundary (HF default 32).
        beta_fast: f32,
        /// Slow-rotation boundary (HF default 1).
        beta_slow: f32,
        /// Context length the model was trained with.
        original_max_position_embeddings: f32,
        /// Explicit attention factor; `None` uses `0.1 * ln(factor) + 1`.
        attention_factor: Option<f32>,
    },
}

/// The frequency table (`rotary_dim / 2` entries) and the cos/sin amplitude.
pub fn inv_freq(rotary_dim: usize, base: f32, scaling: RopeScaling) -> (Vec<f32>, f32) {
    let d = rotary_dim as f64;
    let base = f64::from(base);
    let plain: Vec<f64> = (0..rotary_dim / 2).map(|i| 1.0 / base.powf((2 * i) as f64 / d)).collect();
    match scaling {
        RopeScaling::Default => (plain.iter().map(|&f| f as f32).collect(), 1.0),
        RopeScaling::Linear { factor } => (plain.iter().map(|&f| (f / f64::from(factor)) as f32).collect(), 1.0),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
            let (factor, lo, hi, old) =
                (f64::from(factor), f64::from(low_freq_factor), f64::from(high_freq_factor), f64::from(original_max_position_embeddings));
            let low_wavelen = old / lo;
            let high_wavelen = old / hi;
            let out = plain
                .iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    let v = if wavelen > low_wavelen {
                        f / factor
                    } else if wavelen < high_wavelen {
                        f
                    } else {
                        let smooth = (old / wavelen - lo) / (hi - lo);
                        (1.0 - smooth) * f / factor + smooth * f
                    };
                    v as f32
                })
                .collect();
            (out, 1.0)
        }
        RopeScaling::Yarn { factor, beta_fast, beta_slow, original_max_position_embeddings, attention_factor } => {
            let factor64 = f64::from(factor);
            let old = f64::from(original_max_position_embeddings);
            let correction_dim = |rot: f64| (d * (old / (rot * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * base.ln());
            let low = correction_dim(f64::from(beta_fast)).floor().max(0.0);
            let high = correction_dim(f64::from(beta_slow)).ceil().min(d - 1.0);
            let high = if (high - low).abs() < f64::EPSILON { high + 0.001 } else { high };
            let out = plain
                .iter()
                .enumerate()
                .map(|(i, &f)| {
                    let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                    let extrapolation_factor = 1.0 - ramp;
                    let interpolation = f / factor64;
                    (interpolation * (1.0 - extrapolation_factor) + f * extrapolation_factor) as f32
                })
                .collect();
            let mscale = attention_factor.unwrap_or_else(|| if factor <= 1.0 { 1.0 } else { 0.1 * factor.ln() + 1.0 });
            (out, mscale)
        }
    }
}
