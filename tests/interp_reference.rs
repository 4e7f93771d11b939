//! The interpreter (the reference semantics of every GPU run) against independent,
//! naive f64 implementations of each standard kernel, on random values and shapes.
//!
//! Inputs are drawn in f32, rounded to the dtype under test, and the f64 reference
//! reads the same rounded values, so the comparison measures the interpreter's
//! arithmetic and output rounding only. Bounds on the normalized MSE
//! `sum (a - b)^2 / sum b^2`: the output rounding dominates, a relative error of at
//! most 2^-24 (f32), 2^-11 (f16), 2^-8 (bf16) per element, so the nMSE stays under
//! its square; the bounds leave about 10x room over that, for f32 arithmetic on top
//! (f32: exp of arguments up to ~16 amplifies the input's 2^-24 rounding ~16x).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr,
    clippy::needless_range_loop,
    reason = "tests fail loudly"
)]

use proptest::prelude::*;
use rocmforge::dsl::interp::{HostArg, HostTensor};
use rocmforge::dsl::rope::{inv_freq, RopeScaling};
use rocmforge::dsl::DType;
use rocmforge::models::kernels;

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

fn bound(d: DType) -> f64 {
    match d {
        DType::F32 => 1e-10,
        DType::F16 => 1e-6,
        _ => 2e-5,
    }
}

fn nmse(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let num: f64 = got.iter().zip(want).map(|(&g, &w)| (f64::from(g) - w).powi(2)).sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    if den == 0.0 {
        num
    } else {
        num / den
    }
}

/// The squared error against `want` (rounded once to the dtype: what an ideal kernel
/// stores, so f16 underflow of tiny GELU tails is not counted as error), normalized by
/// `scale` squared, per output at least `|want|`, and held to the dtype's bound.
fn check_scaled(name: &str, d: DType, got: &[f32], want: &[f64], scale: &[f64]) {
    assert!(got.iter().all(|v| v.is_finite()), "{name} {d}: non-finite output");
    assert_eq!((got.len(), scale.len()), (want.len(), want.len()));
    let want: Vec<f64> = want.iter().map(|&w| f64::from(d.round_f32(w as f32))).collect();
    let num: f64 = got.iter().zip(&want).map(|(&g, &w)| (f64::from(g) - w).powi(2)).sum();
    let den: f64 = scale.iter().zip(&want).map(|(m, w)| m.abs().max(w.abs()).powi(2)).sum();
    let e = if den == 0.0 { num } else { num / den };
    assert!(e <= bound(d), "{name} {d}: normalized squared error {e:e} over bound {:e}", bound(d));
}

/// Normalized MSE against `want`.
fn check(name: &str, d: DType, got: &[f32], want: &[f64]) {
    check_scaled(name, d, got, want, want);
}

/// Random values rounded to `d`, returned as the tensor and as f64.
fn tensor(d: DType, shape: &[usize], vals: &[f32]) -> (HostTensor, Vec<f64>) {
    let t = HostTensor::from_f32(d, shape, vals).expect("shape matches values");
    let v = t.to_f32_vec().into_iter().map(f64::from).collect();
    (t, v)
}

fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    // splitmix64: deterministic per case, independent of the kernels under test.
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn out_f32(args: &[HostArg], i: usize) -> Vec<f32> {
    args[i].tensor().expect("tensor").to_f32_vec()
}

fn sizes() -> impl Strategy<Value = usize> {
    prop_oneof![Just(1usize), Just(3), Just(4097), 1usize..3000]
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

fn gelu_tanh(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn swiglu_and_geglu(n in sizes(), di in 0usize..3, seed in any::<u64>()) {
        let d = DTYPES[di];
        let (g, gv) = tensor(d, &[n], &values(n, seed, 6.0));
        let (u, uv) = tensor(d, &[n], &values(n, seed ^ 1, 3.0));
        let out = HostTensor::from_f32(d, &[n], &vec![f32::NAN; n]).unwrap();
        let mut args = vec![HostArg::Tensor(g.clone()), HostArg::Tensor(u.clone()), HostArg::Tensor(out.clone())];
        kernels::swiglu::run_host(&mut args).unwrap();
        let want: Vec<f64> = gv.iter().zip(&uv).map(|(&a, &b)| silu(a) * b).collect();
        check("swiglu", d, &out_f32(&args, 2), &want);

        let mut args = vec![HostArg::Tensor(g), HostArg::Tensor(u), HostArg::Tensor(out)];
        kernels::geglu::run_host(&mut args).unwrap();
        let want: Vec<f64> = gv.iter().zip(&uv).map(|(&a, &b)| gelu_tanh(a) * b).collect();
        check("geglu", d, &out_f32(&args, 2), &want);
    }

    #[test]
    fn softmax(rows in 1usize..5, cols in sizes(), di in 0usize..3, scale in 0.05f32..2.0, seed in any::<u64>()) {
        let d = DTYPES[di];
        let (x, xv) = tensor(d, &[rows, cols], &values(rows * cols, seed, 8.0));
        let out = HostTensor::from_f32(d, &[rows, cols], &vec![f32::NAN; rows * cols]).unwrap();
        let mut args = vec![HostArg::Tensor(x), HostArg::Tensor(out), HostArg::F32(scale)];
        kernels::softmax::run_host(&mut args).unwrap();
        let mut want = Vec::new();
        for r in 0..rows {
            let row: Vec<f64> = xv[r * cols..(r + 1) * cols].iter().map(|v| v * f64::from(scale)).collect();
            let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = row.iter().map(|v| (v - m).exp()).sum();
            want.extend(row.iter().map(|v| (v - m).exp() / z));
        }
        check("softmax", d, &out_f32(&args, 1), &want);
    }

    #[test]
    fn rmsnorm_and_add_rmsnorm(rows in 1usize..4, cols in sizes(), di in 0usize..3, seed in any::<u64>()) {
        let d = DTYPES[di];
        let eps = 1e-5f32;
        let (x, xv) = tensor(d, &[rows, cols], &values(rows * cols, seed, 4.0));
        let (res, rv) = tensor(d, &[rows, cols], &values(rows * cols, seed ^ 7, 4.0));
        let (w, wv) = tensor(d, &[cols], &values(cols, seed ^ 3, 2.0));
        let nan = HostTensor::from_f32(d, &[rows, cols], &vec![f32::NAN; rows * cols]).unwrap();

        let norm = |h: &[f64]| -> Vec<f64> {
            let mut out = Vec::new();
            for r in 0..rows {
                let row = &h[r * cols..(r + 1) * cols];
                let ms = row.iter().map(|v| v * v).sum::<f64>() / cols as f64;
                let inv = 1.0 / (ms + f64::from(eps)).sqrt();
                out.extend(row.iter().zip(&wv).map(|(v, w)| v * inv * w));
            }
            out
        };
        let mut args = vec![HostArg::Tensor(x.clone()), HostArg::Tensor(w.clone()), HostArg::Tensor(nan.clone()), HostArg::F32(eps)];
        kernels::rmsnorm::run_host(&mut args).unwrap();
        check("rmsnorm", d, &out_f32(&args, 2), &norm(&xv));

        let mut args = vec![HostArg::Tensor(x), HostArg::Tensor(res), HostArg::Tensor(w), HostArg::Tensor(nan), HostArg::F32(eps)];
        kernels::add_rmsnorm::run_host(&mut args).unwrap();
        let h: Vec<f64> = xv.iter().zip(&rv).map(|(a, b)| a + b).collect();
        check("add_rmsnorm.res", d, &out_f32(&args, 1), &h);
        check("add_rmsnorm.out", d, &out_f32(&args, 3), &norm(&h));
    }

    #[test]
    fn gemv_kernels(m in prop_oneof![Just(1usize), 1usize..11], n in 1usize..24,
                    k in prop_oneof![Just(1usize), Just(8), Just(1000), 1usize..1200], di in 0usize..3, seed in any::<u64>()) {
        let d = DTYPES[di];
        let eps = 1e-5f32;
        let (x, xv) = tensor(d, &[m, k], &values(m * k, seed, 2.0));
        let (w, wv) = tensor(d, &[n, k], &values(n * k, seed ^ 5, 1.0));
        let (w2, w2v) = tensor(d, &[n, k], &values(n * k, seed ^ 9, 1.0));
        let (g, gv) = tensor(d, &[k], &values(k, seed ^ 3, 2.0));
        let (res, rv) = tensor(d, &[m, n], &values(m * n, seed ^ 7, 4.0));
        let nan = HostTensor::from_f32(d, &[m, n], &vec![f32::NAN; m * n]).unwrap();
        // want[i * n + r] = sum_c w[r, c] * f(x[i, c], c), in f64.
        let product = |wv: &[f64], f: &dyn Fn(usize, usize) -> f64| -> Vec<f64> {
            let mut out = Vec::with_capacity(m * n);
            for i in 0..m {
                for r in 0..n {
                    out.push((0..k).map(|c| wv[r * k + c] * f(i, c)).sum());
                }
            }
            out
        };
        let plain = product(&wv, &|i, c| xv[i * k + c]);
        // The same sums over absolute values: a rounded dot product's error scales with
        // its terms' magnitude, not with the (possibly cancelled) result, so the products'
        // checks are normalized by these.
        let abs = |v: &[f64]| -> Vec<f64> { v.iter().map(|x| x.abs()).collect() };
        let (wa, w2a) = (abs(&wv), abs(&w2v));
        let plain_mag = product(&wa, &|i, c| xv[i * k + c].abs());

        let mut args = vec![HostArg::Tensor(x.clone()), HostArg::Tensor(w.clone()), HostArg::Tensor(nan.clone())];
        kernels::linear::run_host(&mut args).unwrap();
        check_scaled("linear", d, &out_f32(&args, 2), &plain, &plain_mag);

        let mut args = vec![HostArg::Tensor(x.clone()), HostArg::Tensor(w.clone()), HostArg::Tensor(res)];
        kernels::linear_residual::run_host(&mut args).unwrap();
        let want: Vec<f64> = plain.iter().zip(&rv).map(|(p, r)| p + r).collect();
        let mag: Vec<f64> = plain_mag.iter().zip(&rv).map(|(p, r)| p + r.abs()).collect();
        check_scaled("linear_residual", d, &out_f32(&args, 2), &want, &mag);

        let inv: Vec<f64> = (0..m)
            .map(|i| 1.0 / ((0..k).map(|c| xv[i * k + c].powi(2)).sum::<f64>() / k as f64 + f64::from(eps)).sqrt())
            .collect();
        let normed = product(&wv, &|i, c| xv[i * k + c] * gv[c]);
        let want: Vec<f64> = normed.iter().enumerate().map(|(e, v)| v * inv[e / n]).collect();
        let normed_mag = product(&wa, &|i, c| (xv[i * k + c] * gv[c]).abs());
        let mag: Vec<f64> = normed_mag.iter().enumerate().map(|(e, v)| v * inv[e / n]).collect();
        let mut args = vec![HostArg::Tensor(x.clone()), HostArg::Tensor(g.clone()), HostArg::Tensor(w.clone()), HostArg::Tensor(nan.clone()), HostArg::F32(eps)];
        kernels::rmsnorm_linear::run_host(&mut args).unwrap();
        check_scaled("rmsnorm_linear", d, &out_f32(&args, 3), &want, &mag);

        let logits = HostTensor::from_f32(DType::F32, &[m, n], &vec![f32::NAN; m * n]).unwrap();
        let mut args = vec![HostArg::Tensor(x.clone()), HostArg::Tensor(g), HostArg::Tensor(w), HostArg::Tensor(logits), HostArg::F32(eps)];
        kernels::lm_head::run_host(&mut args).unwrap();
        check_scaled("lm_head", DType::F32, &out_f32(&args, 3), &want, &mag);

        let up = product(&w2v, &|i, c| xv[i * k + c]);
        let want: Vec<f64> = plain.iter().zip(&up).map(|(a, b)| silu(*a) * b).collect();
        let (wg, _) = tensor(d, &[n, k], &values(n * k, seed ^ 5, 1.0));
        let mut args = vec![HostArg::Tensor(x), HostArg::Tensor(wg), HostArg::Tensor(w2), HostArg::Tensor(nan)];
        kernels::gate_up_swiglu::run_host(&mut args).unwrap();
        // |silu(a) b| <= |a| |b|, and its error is within about twice (|a| |b|)'s.
        let up_mag = product(&w2a, &|i, c| xv[i * k + c].abs());
        let mag: Vec<f64> = plain_mag.iter().zip(&up_mag).map(|(a, b)| a * b).collect();
        check_scaled("gate_up_swiglu", d, &out_f32(&args, 3), &want, &mag);

        // The MLP's norm, gate/up products and SwiGLU: silu(gate(rmsnorm(x))) * up(rmsnorm(x)).
        let up_normed = product(&w2v, &|i, c| xv[i * k + c] * gv[c]);
        let want: Vec<f64> =
            (0..m * n).map(|e| silu(normed[e] * inv[e / n]) * (up_normed[e] * inv[e / n])).collect();
        let (g2, _) = tensor(d, &[k], &values(k, seed ^ 3, 2.0));
        let (wg2, _) = tensor(d, &[n, k], &values(n * k, seed ^ 5, 1.0));
        let (wu2, _) = tensor(d, &[n, k], &values(n * k, seed ^ 9, 1.0));
        let (x2, _) = tensor(d, &[m, k], &values(m * k, seed, 2.0));
        let nan = HostTensor::from_f32(d, &[m, n], &vec![f32::NAN; m * n]).unwrap();
        let mut args = vec![HostArg::Tensor(x2), HostArg::Tensor(g2), HostArg::Tensor(wg2), HostArg::Tensor(wu2), HostArg::Tensor(nan), HostArg::F32(eps)];
        kernels::mlp_gate_up::run_host(&mut args).unwrap();
        let up_normed_mag = product(&w2a, &|i, c| (xv[i * k + c] * gv[c]).abs());
        let mag: Vec<f64> = (0..m * n).map(|e| normed_mag[e] * inv[e / n] * up_normed_mag[e] * inv[e / n]).collect();
        check_scaled("mlp_gate_up", d, &out_f32(&args, 4), &want, &mag);
    }

    #[test]
    fn rope(tokens in prop_oneof![Just(1usize), Just(17), 1usize..40], qh in 1usize..5, kh in 1usize..3,
            hdi in 0usize..5, partial in any::<bool>(), gptj in any::<bool>(), scaling in 0usize..4,
            di in 0usize..3, seed in any::<u64>()) {
        let d = DTYPES[di];
        let hd = [64usize, 80, 96, 128, 256][hdi];
        let rot = if partial { hd / 2 } else { hd };
        let scaling = [
            RopeScaling::Default,
            RopeScaling::Linear { factor: 4.0 },
            RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192.0 },
            RopeScaling::Yarn { factor: 4.0, beta_fast: 32.0, beta_slow: 1.0, original_max_position_embeddings: 4096.0, attention_factor: None },
        ][scaling];
        let (freq, mscale) = inv_freq(rot, 500_000.0, scaling);
        let pos: Vec<i32> = values(tokens, seed ^ 9, 1.0).iter().map(|v| ((v + 1.0) * 4096.0) as i32).collect();
        let (q, qv) = tensor(d, &[tokens, qh, hd], &values(tokens * qh * hd, seed, 2.0));
        let (k, kv) = tensor(d, &[tokens, kh, hd], &values(tokens * kh * hd, seed ^ 5, 2.0));
        let mut args = vec![
            HostArg::Tensor(q), HostArg::Tensor(k),
            HostArg::Tensor(HostTensor::from_i32(&[tokens], pos.clone()).unwrap()),
            HostArg::Tensor(HostTensor::from_f32(DType::F32, &[rot / 2], &freq).unwrap()),
            HostArg::F32(mscale),
        ];
        if gptj { kernels::rope_gptj::run_host(&mut args).unwrap(); } else { kernels::rope_neox::run_host(&mut args).unwrap(); }
        // The angle is the f32 product pos * inv_freq, as HF transformers computes it;
        // everything after it is f64.
        let rotate = |x: &[f64], heads: usize| -> Vec<f64> {
            let mut y = x.to_vec();
            for t in 0..tokens {
                for h in 0..heads {
                    let base = (t * heads + h) * hd;
                    for (i, &f) in freq.iter().enumerate() {
                        let theta = f64::from(pos[t] as f32 * f);
                        let (s, c) = (theta.sin() * f64::from(mscale), theta.cos() * f64::from(mscale));
                        let (a, b) = if gptj { (base + 2 * i, base + 2 * i + 1) } else { (base + i, base + i + rot / 2) };
                        y[a] = x[a] * c - x[b] * s;
                        y[b] = x[b] * c + x[a] * s;
                    }
                }
            }
            y
        };
        // f32 sin/cos of angles up to ~8000 rad carry ~1e-7 relative error in the
        // rounding of the angle's reduction: allow 1e-9 for f32 here.
        let b = |d: DType| if d == DType::F32 { 1e-9 } else { bound(d) };
        let e = nmse(&out_f32(&args, 0), &rotate(&qv, qh));
        prop_assert!(e <= b(d), "rope q {d}: {e:e}");
        let e = nmse(&out_f32(&args, 1), &rotate(&kv, kh));
        prop_assert!(e <= b(d), "rope k {d}: {e:e}");
    }
}

#[test]
fn fully_random_custom_kernel_matches_reference() {
    // A declaration outside the standard library, parsed at run time.
    let k = rocmforge::dsl::parse::parse_str("elementwise", "fn quick_gelu(x: &[f32], out: &mut [f32]) { *out = x * sigmoid(1.702 * x); }")
        .unwrap();
    let vals = values(1001, 42, 5.0);
    let mut args = vec![
        HostArg::Tensor(HostTensor::from_f32(DType::F32, &[1001], &vals).unwrap()),
        HostArg::Tensor(HostTensor::from_f32(DType::F32, &[1001], &[f32::NAN; 1001]).unwrap()),
    ];
    rocmforge::dsl::interp::run(&k, &mut args).unwrap();
    let want: Vec<f64> = vals.iter().map(|&x| f64::from(x) / (1.0 + (-1.702 * f64::from(x)).exp())).collect();
    check("quick_gelu", DType::F32, &out_f32(&args, 1), &want);
}
