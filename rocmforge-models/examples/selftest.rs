//! Self-check: every standard kernel x specialization x dtype on the GPU against the
//! CPU reference (the IR interpreter) on fresh random inputs. Outputs are poisoned with
//! NaN before each run; shapes include odd sizes, unaligned rows and rows wider than
//! the register cache. Prints one line per case and exits non-zero on any failure.
//!
//! Bounds on the normalized MSE `sum (gpu - ref)^2 / sum ref^2`, in the spirit of
//! llama.cpp's test-backend-ops: both sides compute in f32, so they differ only by
//! libm ulps and summation order (relative ~1e-7, nMSE ~1e-13): f32 outputs get 1e-7.
//! 16-bit outputs can additionally round to neighbouring values when the f32 results
//! straddle a rounding boundary, one ulp (2^-11 f16, 2^-8 bf16) on rare elements:
//! 1e-6 for f16 and 1e-5 for bf16. NaN or Inf never passes.

#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a command-line program")]

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use rocmforge_dsl::ir::{GemvRole, Kind, Layout, ParamTy, ScalarTy};
use rocmforge_dsl::rope::{inv_freq, RopeScaling};
use rocmforge_dsl::spec::RowMode;
use rocmforge_models::kernels;
use rocmforge_models::sampling::Rng;
use rocmforge_runtime::cuda::{CudaDevice, DeviceTensor};
use rocmforge_runtime::{plan_attention_with, plan_spec, Arg, AttnSeqs, DType, HostArg, HostTensor, Kernel, KvIndex, Spec};

#[path = "../../tests/common/attn_ref.rs"]
mod attn_ref;

fn bound(d: DType) -> f64 {
    match d {
        DType::F16 => 1e-6,
        DType::BF16 => 1e-5,
        _ => 1e-7,
    }
}

fn rand_vec(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| (rng.next_f32() * 2.0 - 1.0) * scale).collect()
}

/// A scalar argument from the declaration: `eps` is small, other f32 scalars (softmax's
/// scale) near 1.
fn scalar_arg(name: &str, ty: ScalarTy, rng: &mut Rng) -> HostArg {
    match ty {
        ScalarTy::F32 if name == "eps" => HostArg::F32(1e-5),
        ScalarTy::F32 => HostArg::F32(0.3 + rng.next_f32()),
        ScalarTy::I32 => HostArg::I32(3),
        ScalarTy::U32 => HostArg::U32(3),
    }
}

fn shapes(k: &Kernel, spec: &Spec, rng: &mut Rng) -> Vec<Vec<HostArg>> {
    let d = spec.dtype.unwrap_or(DType::F32);
    let t = |rng: &mut Rng, shape: &[usize], scale: f32| {
        let n = shape.iter().product();
        HostArg::Tensor(HostTensor::from_f32(d, shape, &rand_vec(rng, n, scale)).unwrap_or_else(|| unreachable!()))
    };
    let mut out = Vec::new();
    match k.kind {
        // Attention has its own cases (`attention_cases`), with sequence layouts.
        Kind::Attention => {}
        Kind::Elementwise => {
            for n in [1usize, 3, 4097, 300_001] {
                out.push(vec![t(rng, &[n], 6.0), t(rng, &[n], 3.0), t(rng, &[n], 1.0)]);
            }
        }
        Kind::Rowwise => {
            let cap = k.row_capacity(spec) as usize;
            let cases: Vec<(usize, usize)> = match spec.row_mode {
                Some(RowMode::Warp) => vec![(37, 1), (5, 3), (64, 100), (9, cap)],
                _ => vec![(3, 3), (7, 4097), (2, cap), (3, cap + 5), (2, 20_000)],
            };
            for (rows, cols) in cases {
                // From the declaration: Rows<T> is [rows, cols], &[T] a vector over the
                // columns; `eps` is small, other f32 scalars (softmax's scale) near 1.
                let args = k
                    .params
                    .iter()
                    .map(|p| match p.ty {
                        ParamTy::Tensor { layout: Layout::Rows, .. } => t(rng, &[rows, cols], 4.0),
                        ParamTy::Tensor { .. } => t(rng, &[cols], 2.0),
                        ParamTy::Scalar(ty) => scalar_arg(&p.name, ty, rng),
                    })
                    .collect();
                out.push(args);
            }
        }
        Kind::Gemv => {
            let roles = k.gemv_roles();
            // (m, n, k): a 1B projection at one sequence, odd sizes, columns not a whole
            // number of 16-byte groups (the per-column path), rows in several groups of 8,
            // a wide output.
            for (m, n, kk) in [(1usize, 2048usize, 2048usize), (1, 33, 1000), (3, 64, 4096), (5, 17, 37), (20, 100, 512), (2, 50_000, 256)]
            {
                let args = k
                    .params
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let dt = k.param_dtype(i, spec).unwrap_or(d);
                        let rows = matches!(p.ty, ParamTy::Tensor { layout: Layout::Rows, .. });
                        let (shape, scale) = match (roles[i], rows) {
                            (Some(GemvRole::Weight), _) => (vec![n, kk], 1.0),
                            (Some(GemvRole::Input), true) => (vec![m, kk], 2.0),
                            (Some(GemvRole::Input), false) => (vec![kk], 2.0),
                            (_, true) => (vec![m, n], 4.0),
                            (_, false) => (vec![n], 2.0),
                        };
                        match p.ty {
                            ParamTy::Tensor { .. } => {
                                let vals = rand_vec(rng, shape.iter().product(), scale);
                                HostArg::Tensor(HostTensor::from_f32(dt, &shape, &vals).unwrap_or_else(|| unreachable!()))
                            }
                            ParamTy::Scalar(ty) => scalar_arg(&p.name, ty, rng),
                        }
                    })
                    .collect();
                out.push(args);
            }
        }
        Kind::Rope(_) => {
            let hd = spec.head_dim.unwrap_or(64) as usize;
            for (tokens, qh, kh, rot, scaling) in [
                (1usize, 4usize, 2usize, hd, RopeScaling::Default),
                (17, 3, 1, hd / 2, RopeScaling::Linear { factor: 2.0 }),
                (
                    300,
                    8,
                    2,
                    hd,
                    RopeScaling::Llama3 {
                        factor: 8.0,
                        low_freq_factor: 1.0,
                        high_freq_factor: 4.0,
                        original_max_position_embeddings: 8192.0,
                    },
                ),
                (
                    33,
                    2,
                    2,
                    hd,
                    RopeScaling::Yarn {
                        factor: 4.0,
                        beta_fast: 32.0,
                        beta_slow: 1.0,
                        original_max_position_embeddings: 4096.0,
                        attention_factor: None,
                    },
                ),
            ] {
                let (freq, mscale) = inv_freq(rot, 500_000.0, scaling);
                let pos: Vec<i32> = (0..tokens).map(|_| (rng.next_f32() * 8192.0) as i32).collect();
                out.push(vec![
                    t(rng, &[tokens, qh, hd], 2.0),
                    t(rng, &[tokens, kh, hd], 2.0),
                    HostArg::Tensor(HostTensor::from_i32(&[tokens], pos).unwrap_or_else(|| unreachable!())),
                    HostArg::Tensor(HostTensor::from_f32(DType::F32, &[rot / 2], &freq).unwrap_or_else(|| unreachable!())),
                    HostArg::F32(mscale),
                ]);
            }
        }
    }
    out
}

fn nmse(got: &[f32], want: &[f32]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(&g, &w)| (f64::from(g) - f64::from(w)).powi(2)).sum();
    let den: f64 = want.iter().map(|&w| f64::from(w).powi(2)).sum();
    if got.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    if den == 0.0 {
        num
    } else {
        num / den
    }
}

fn run_case(dev: &Arc<CudaDevice>, k: &Kernel, spec: Spec, host: &[HostArg]) -> Result<Vec<(String, f64)>, Box<dyn std::error::Error>> {
    let written: Vec<usize> = k.stores.iter().map(|s| s.param).collect();
    let mut dev_args: Vec<Option<DeviceTensor>> = Vec::new();
    for (i, a) in host.iter().enumerate() {
        match a {
            HostArg::Tensor(t) => {
                let mut d = dev.upload(t)?;
                // Pure outputs start as NaN; in-place tensors (read too) keep their input.
                let read = k.lets.iter().any(|l| reads(&l.value, i)) || k.stores.iter().any(|s| reads(&s.value, i));
                let in_place = matches!(k.kind, Kind::Rope(_));
                if written.contains(&i) && !read && !in_place {
                    dev.poison(&mut d)?;
                }
                dev_args.push(Some(d));
            }
            _ => dev_args.push(None),
        }
    }
    let args = launch_args(host, &dev_args);
    let plan = plan_spec(k, dev.limits(), &args, Some(spec))?;
    dev.launch(k, &plan)?;
    dev.synchronize()?;
    let mut want = host.to_vec();
    rocmforge_dsl::interp::run(k, &mut want)?;
    let mut out = Vec::new();
    let outputs: Vec<usize> = if matches!(k.kind, Kind::Rope(_)) { vec![0, 1] } else { written };
    for i in outputs {
        let (Some(d), Some(w)) = (&dev_args[i], want[i].tensor()) else { continue };
        let got = dev.download(d)?.to_f32_vec();
        out.push((k.params[i].name.clone(), nmse(&got, &w.to_f32_vec())));
    }
    Ok(out)
}

/// Launch arguments: the uploaded tensor where there is one, else the host scalar.
fn launch_args<'a>(host: &[HostArg], dev: &'a [Option<DeviceTensor>]) -> Vec<Arg<'a>> {
    host.iter()
        .zip(dev)
        .map(|(h, d)| match (h, d) {
            (_, Some(t)) => Arg::Tensor(t),
            (HostArg::F32(v), None) => Arg::F32(*v),
            (HostArg::I32(v), None) => Arg::I32(*v),
            (HostArg::U32(v), None) => Arg::U32(*v),
            (HostArg::Tensor(_), None) => Arg::F32(f32::NAN),
        })
        .collect()
}

fn reads(e: &rocmforge_dsl::ir::Expr, i: usize) -> bool {
    let mut r = false;
    e.visit(&mut |x| r |= matches!(x, rocmforge_dsl::ir::Expr::Tensor(j) if *j == i));
    r
}

fn describe(h: &[HostArg]) -> String {
    h.iter().filter_map(|a| a.tensor()).map(|t| format!("{:?}", t.shape)).collect::<Vec<_>>().join(" ")
}

fn main() -> ExitCode {
    let dev = match CudaDevice::open(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "device: {} ({}), {:.1} GiB, limits {:?}",
        dev.name(),
        dev.arch(),
        dev.total_memory() as f64 / (1u64 << 30) as f64,
        dev.limits()
    );
    let seed = std::env::var("ROCMFORGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1));
    println!("seed: {seed} (set ROCMFORGE_SEED to repeat)");
    let mut rng = Rng::new(seed);
    let ks = match kernels::all() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Compile every kernel first, to report the cold/warm module time on its own.
    let t0 = Instant::now();
    if let Err(e) = dev.prepare(&ks) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let (secs, compiled, hits) = dev.compile_stats();
    println!(
        "modules: {} kernels, {} specializations ready in {:.3} s wall ({secs:.3} s summed over threads): {compiled} compiled by NVRTC, {hits} from the disk cache",
        ks.len(),
        ks.iter().map(|k| k.specs(dev.limits().warp_size).len()).sum::<usize>(),
        t0.elapsed().as_secs_f64()
    );
    println!(
        "{:<12} {:<28} {:<6} {:<28} {:<8} {:>10} {:>8}  result",
        "kernel", "specialization", "dtype", "shape", "output", "nmse", "bound"
    );
    let (mut pass, mut fail) = (0usize, 0usize);
    let only = std::env::var("ROCMFORGE_SELFTEST_ONLY").ok();
    for k in &ks {
        if only.as_ref().is_some_and(|o| !k.name.starts_with(o.as_str())) {
            continue;
        }
        if k.kind == Kind::Attention {
            for spec in k.specs(dev.limits().warp_size) {
                let (p, f) = attention_cases(&dev, k, spec, &mut rng);
                pass += p;
                fail += f;
            }
            continue;
        }
        for spec in k.specs(dev.limits().warp_size) {
            let d = spec.dtype.unwrap_or(DType::F32);
            for host in shapes(k, &spec, &mut rng) {
                let sym = rocmforge_dsl::symbol_name(&k.name, &spec);
                match run_case(&dev, k, spec, &host) {
                    Ok(results) => {
                        for (out, e) in results {
                            let ok = e <= bound(d);
                            if ok {
                                pass += 1
                            } else {
                                fail += 1
                            }
                            println!(
                                "{:<12} {:<28} {:<6} {:<28} {:<8} {:>10.2e} {:>8.0e}  {}",
                                k.name,
                                sym,
                                d,
                                describe(&host),
                                out,
                                e,
                                bound(d),
                                if ok { "pass" } else { "FAIL" }
                            );
                        }
                    }
                    Err(e) => {
                        fail += 1;
                        println!("{:<12} {:<28} {:<6} {:<28} error: {e}", k.name, sym, d, describe(&host));
                    }
                }
            }
        }
    }
    let (cpass, cfail) = if only.is_some() { (0, 0) } else { concurrency(&ks, seed) };
    pass += cpass;
    fail += cfail;
    println!("{pass} passed, {fail} failed");
    if fail == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Attention bounds on the nMSE against the f64 reference (the 5e-4 for bf16
/// and 1e-5 for f32). P is rounded to the input dtype before P V on the matrix cores,
/// and the output is rounded: f16 has an 8x finer mantissa than bf16, so 1e-4 for it.
fn attention_bound(d: DType) -> f64 {
    match d {
        DType::BF16 => 5e-4,
        DType::F16 => 1e-4,
        _ => 1e-5,
    }
}

/// Every attention case of one specialization on the GPU, against the f64 reference:
/// prefill (odd lengths, GQA 1/4/8, over a paged cache), decode (1 and 4 queries,
/// scattered pages of 16 and 32, lengths 1 to 4097, splits), each long case also
/// through the portable kernel, and the paged K/V store. Returns (passed, failed).
fn attention_cases(dev: &Arc<CudaDevice>, k: &Kernel, spec: Spec, rng: &mut Rng) -> (usize, usize) {
    use attn_ref::{build, variant_of, Problem};
    let d = spec.dtype.unwrap_or(DType::F32);
    let hd = spec.head_dim.unwrap_or(64) as usize;
    let extra = match k.name.as_str() {
        "attention_window" => Some(HostArg::I32(37)),
        "attention_softcap" => Some(HostArg::F32(5.0)),
        "attention_alibi" => Some(HostArg::F32(-1.0)),
        _ => None,
    };
    let sval = match extra {
        Some(HostArg::I32(v)) => v as f32,
        Some(HostArg::F32(v)) => v,
        _ => 0.0,
    };
    let Some(var) = variant_of(&k.name, sval) else { return (0, 1) };
    let p = |heads, kv_heads, q_lens: &[usize], kv_lens: &[usize]| Problem {
        heads,
        kv_heads,
        d: hd,
        q_lens: q_lens.to_vec(),
        kv_lens: kv_lens.to_vec(),
    };
    let mut cases: Vec<(Problem, Option<usize>)> = vec![
        (p(8, 2, &[1, 17, 300], &[1, 17, 300]), None),
        (p(8, 1, &[129], &[129]), None),
        (p(4, 4, &[64, 65], &[64, 65]), Some(16)),
        (p(8, 2, &[100, 37], &[300, 37]), Some(16)),
        (p(8, 1, &[1, 1, 1, 1], &[1, 17, 1000, 4097]), Some(32)),
        (p(8, 2, &[4, 4], &[4, 700]), Some(16)),
        (p(8, 2, &[1], &[4097]), None),
    ];
    if d == DType::BF16 && hd == 128 && matches!(k.name.as_str(), "attention_causal" | "attention") {
        cases.push((p(2, 1, &[1000, 4097], &[1000, 4097]), None));
    }
    let (mut pass, mut fail) = (0, 0);
    let scale = 1.0 / (hd as f32).sqrt();
    for (prob, page) in &cases {
        let mut scalars = vec![HostArg::F32(scale)];
        scalars.extend(extra.clone());
        let case = build(prob, d, *page, &scalars, 2.0, &mut || rng.next_f32());
        let want = case.reference(prob, f64::from(scale), var);
        // The planner's choice (matrix cores where it can), then the portable kernel.
        let modes: &[Option<bool>] = &[None, Some(true)];
        for &mode in modes {
            let label = format!(
                "{} {}q={:?} kv={:?} h={}/{}",
                if mode == Some(true) { "portable" } else { "auto" },
                page.map(|ps| format!("paged{ps} ")).unwrap_or_default(),
                prob.q_lens,
                prob.kv_lens,
                prob.heads,
                prob.kv_heads
            );
            let sym = rocmforge_dsl::symbol_name(&k.name, &spec);
            match run_attention(dev, k, &case, mode) {
                Ok((symbol, got)) => {
                    let e = attn_ref::nmse(&got, &want);
                    let ok = e <= attention_bound(d);
                    if ok {
                        pass += 1;
                    } else {
                        fail += 1;
                    }
                    println!(
                        "{:<17} {:<32} {:<6} {:<44} {:>10.2e} {:>8.0e}  {}",
                        k.name,
                        symbol,
                        d,
                        label,
                        e,
                        attention_bound(d),
                        if ok { "pass" } else { "FAIL" }
                    );
                    if !ok {
                        // Where it went wrong: (token, head) of the first wrong rows.
                        let row = prob.heads * hd;
                        let bad: Vec<(usize, usize)> = (0..got.len() / hd)
                            .filter(|&r| {
                                (0..hd).any(|j| !got[r * hd + j].is_finite() || (f64::from(got[r * hd + j]) - want[r * hd + j]).abs() > 0.1)
                            })
                            .map(|r| (r * hd / row, r % prob.heads))
                            .collect();
                        println!(
                            "    {} of {} rows wrong, first (token, head): {:?}",
                            bad.len(),
                            got.len() / hd,
                            &bad[..bad.len().min(12)]
                        );
                    }
                }
                Err(e) => {
                    fail += 1;
                    println!("{:<17} {:<32} {:<6} {:<44} error: {e}", k.name, sym, d, label);
                }
            }
        }
    }
    match kv_store_case(dev, k, d, hd, rng) {
        Ok(true) => pass += 1,
        Ok(false) => {
            fail += 1;
            println!("{:<17} kv store {d} hd{hd}: FAIL (cache contents differ)", k.name);
        }
        Err(e) => {
            fail += 1;
            println!("{:<17} kv store {d} hd{hd}: error: {e}", k.name);
        }
    }
    (pass, fail)
}

fn run_attention(
    dev: &Arc<CudaDevice>,
    k: &Kernel,
    case: &attn_ref::Case,
    mode: Option<bool>,
) -> Result<(String, Vec<f32>), Box<dyn std::error::Error>> {
    let mut tensors = Vec::new();
    for h in &case.host {
        if let HostArg::Tensor(t) = h {
            tensors.push(Some(dev.upload(t)?));
        } else {
            tensors.push(None);
        }
    }
    let n = k.params.len();
    let args = launch_args(&case.host[..n], &tensors[..n]);
    let idx: Vec<&DeviceTensor> = tensors[n..].iter().flatten().collect();
    let kv = match idx.len() {
        2 => KvIndex::Contiguous { cu_k: idx[1] },
        _ => KvIndex::Paged { block_table: idx[1], kv_lens: idx[2] },
    };
    let seqs = AttnSeqs { cu_q: idx[0], kv, max_q: case.max_q, max_kv: case.max_kv };
    let plan = plan_attention_with(k, dev.limits(), &args, &seqs, mode)?;
    dev.launch(k, &plan)?;
    dev.synchronize()?;
    let out = tensors[3].as_ref().ok_or("no output tensor")?;
    Ok((plan.symbol.clone(), dev.download(out)?.to_f32_vec()))
}

/// New K/V rows written through scattered slots (one skipped with -1) into a cache
/// poisoned with NaN; the written slots must hold exactly the rows, the rest stay NaN.
fn kv_store_case(dev: &Arc<CudaDevice>, k: &Kernel, d: DType, hd: usize, rng: &mut Rng) -> Result<bool, Box<dyn std::error::Error>> {
    let (tokens, kvh, pages, ps) = (37usize, 2usize, 8usize, 16usize);
    let rand = |rng: &mut Rng, n: usize| -> Vec<f32> { (0..n).map(|_| rng.next_f32() * 2.0 - 1.0).collect() };
    let kn = HostTensor::from_f32(d, &[tokens, kvh, hd], &rand(rng, tokens * kvh * hd)).ok_or("shape")?;
    let vn = HostTensor::from_f32(d, &[tokens, kvh, hd], &rand(rng, tokens * kvh * hd)).ok_or("shape")?;
    let mut order: Vec<i32> = (0..(pages * ps) as i32).collect();
    for i in (1..order.len()).rev() {
        let j = ((rng.next_f32() * (i + 1) as f32) as usize).min(i);
        order.swap(i, j);
    }
    let mut slots: Vec<i32> = order[..tokens].to_vec();
    slots[5] = -1;
    let st = HostTensor::from_i32(&[tokens], slots.clone()).ok_or("shape")?;
    let (kn_d, vn_d, st_d) = (dev.upload(&kn)?, dev.upload(&vn)?, dev.upload(&st)?);
    let mut kc = dev.alloc(d, &[pages, ps, kvh, hd])?;
    let mut vc = dev.alloc(d, &[pages, ps, kvh, hd])?;
    dev.poison(&mut kc)?;
    dev.poison(&mut vc)?;
    let plan = rocmforge_runtime::plan_kv_store(k, dev.limits(), &kn_d, &vn_d, &kc, &vc, &st_d)?;
    dev.launch(k, &plan)?;
    let (kc_h, vc_h) = (dev.download(&kc)?.to_f32_vec(), dev.download(&vc)?.to_f32_vec());
    let (kn_h, vn_h) = (kn.to_f32_vec(), vn.to_f32_vec());
    let row = kvh * hd;
    let mut written = vec![false; pages * ps];
    for (t, &s) in slots.iter().enumerate() {
        if s < 0 {
            continue;
        }
        written[s as usize] = true;
        let (c, n) = (&kc_h[s as usize * row..][..row], &kn_h[t * row..][..row]);
        let (cv, nv) = (&vc_h[s as usize * row..][..row], &vn_h[t * row..][..row]);
        if c.iter().zip(n).any(|(a, b)| a.to_bits() != b.to_bits()) || cv.iter().zip(nv).any(|(a, b)| a.to_bits() != b.to_bits()) {
            return Ok(false);
        }
    }
    let untouched = written.iter().enumerate().filter(|(_, w)| !**w).all(|(s, _)| kc_h[s * row..][..row].iter().all(|x| x.is_nan()));
    Ok(untouched)
}

/// Many threads launching at once on a fresh device whose module cache is empty and
/// whose disk cache is a new directory: every module is compiled while other threads
/// look up, compile and launch. Returns (passed, failed) outputs.
fn concurrency(ks: &[&'static Kernel], seed: u64) -> (usize, usize) {
    const THREADS: usize = 16;
    let dir = std::env::temp_dir().join(format!("rocmforge-concurrency-{}", std::process::id()));
    // Set before any thread of this phase starts; the earlier phase's threads are joined.
    std::env::set_var("ROCMFORGE_CACHE_DIR", &dir);
    let dev = match CudaDevice::open(0) {
        Ok(d) => d,
        Err(e) => {
            println!("concurrency: error: {e}");
            return (0, 1);
        }
    };
    let start = std::sync::Barrier::new(THREADS);
    let t0 = Instant::now();
    let results: Vec<(usize, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (dev, start) = (&dev, &start);
                s.spawn(move || {
                    let mut rng = Rng::new(seed ^ (t as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                    let (mut pass, mut fail) = (0, 0);
                    start.wait();
                    for k in ks {
                        let specs = k.specs(dev.limits().warp_size);
                        // Threads share specializations (the same module, wanted at once)
                        // and differ in others.
                        let spec = specs[(t / 2) % specs.len()];
                        let d = spec.dtype.unwrap_or(DType::F32);
                        for host in shapes(k, &spec, &mut rng).into_iter().take(2) {
                            match run_case(dev, k, spec, &host) {
                                Ok(r) => r.iter().for_each(|(_, e)| if *e <= bound(d) { pass += 1 } else { fail += 1 }),
                                Err(e) => {
                                    println!("concurrency: thread {t}: {}: {e}", k.name);
                                    fail += 1;
                                }
                            }
                        }
                    }
                    (pass, fail)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or((0, 1))).collect()
    });
    let (pass, fail) = results.iter().fold((0, 0), |a, r| (a.0 + r.0, a.1 + r.1));
    let (_, compiled, hits) = dev.compile_stats();
    println!(
        "concurrency: {THREADS} threads launching at once on a fresh device: {pass} outputs passed, {fail} failed, {compiled} modules compiled and {hits} read from the new disk cache, in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
    (pass, fail)
}
