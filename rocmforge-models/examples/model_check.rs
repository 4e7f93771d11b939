//! GPU model check: the GPU forward against the CPU decoder on the committed fixtures
//! (tests/fixtures/models), and the engine kernels (argmax, top-k, gather, matrix-vector
//! products) against the host on fresh random inputs, and the paired products against
//! the launches they replace. Prints one line per check; exits non-zero on a failure.
//!
//! Per fixture and prompt, both paths feed the prompt and then the CPU's 24 greedy tokens
//! through their paged caches; at every step the GPU's last-position logits are compared
//! with the CPU's (normalized MSE `sum (gpu - cpu)^2 / sum cpu^2`) and the GPU's argmax
//! (on the GPU) must equal the CPU's greedy id at every step for f32 weights. Bounds, per weight dtype on the GPU:
//! - f32: 1e-9. Both sides compute in f32 and differ only in summation order (cuBLAS
//!   against a sequential dot product), relative ~1e-7 per value, nMSE ~1e-13 per op.
//! - f16 / bf16: the weights and every activation are rounded to 11 / 8 significant
//!   bits (relative 2^-12 / 2^-9 per value, nMSE ~6e-8 / 4e-6 per rounding), compounded
//!   over every projection and norm of the layers: 1e-4 for f16, 5e-3 for bf16, and the
//!   greedy ids are reported (a near tie may flip) but only f32 must match.
//!
//! A batched run (every prompt of a fixture as one batch, then batched decode) must give
//! the same logits as the one-sequence runs (nMSE 1e-9 in f32).

#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a command-line program")]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use rocmforge_models::gpu::{GpuModel, GpuOptions, RandomWeights, SeqTokens};
use rocmforge_models::kernels;
use rocmforge_models::sampling::{argmax, merge_mass, Rng, Sampler, SamplingParams};
use rocmforge_models::transformer::Logits;
use rocmforge_models::weights::{encode, Checkpoint};
use rocmforge_models::{LoadOptions, Model};
use rocmforge_runtime::cuda::CudaDevice;
use rocmforge_runtime::engine::{
    argmax_workspace, plan_argmax, plan_gather, plan_gemv, plan_gemv_pairs, plan_penalize, plan_qkv_post, plan_softmax_mass,
    plan_swiglu_rows, plan_topk_staged, softmax_mass_parts, topk_staged_workspace, EnginePlan, GemvFusion, PairEpilogue, QkvPost, RmsNorm,
    TOPK_MAX,
};
use rocmforge_runtime::{DType, TensorArg};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const STEPS: usize = 24;

fn nmse(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() || got.iter().any(|x| !x.is_finite()) {
        return f64::INFINITY;
    }
    let num: f64 = got.iter().zip(want).map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2)).sum();
    let den: f64 = want.iter().map(|&b| f64::from(b).powi(2)).sum();
    num / den.max(f64::MIN_POSITIVE)
}

fn bound(d: DType) -> f64 {
    match d {
        DType::F32 => 1e-9,
        DType::F16 => 1e-4,
        _ => 5e-3,
    }
}

struct Tally {
    pass: usize,
    fail: usize,
}

impl Tally {
    fn check(&mut self, ok: bool, line: String) {
        if ok {
            self.pass += 1;
        } else {
            self.fail += 1;
        }
        println!("{line}  {}", if ok { "pass" } else { "FAIL" });
    }
}

/// CPU: greedy ids and per-step last logits for `prompt`.
fn cpu_run(model: &Model, prompt: &[u32]) -> Res<(Vec<u32>, Vec<Vec<f32>>)> {
    let t = &model.transformer;
    let mut pool = t.kv_pool(prompt.len() + STEPS + 1, 16)?;
    let mut seq = pool.new_sequence();
    let mut logits = t.forward(&mut pool, &mut seq, prompt, Logits::Last)?;
    let (mut ids, mut all) = (Vec::new(), Vec::new());
    for _ in 0..STEPS {
        let next = argmax(&logits);
        all.push(logits);
        ids.push(next);
        logits = t.forward(&mut pool, &mut seq, &[next], Logits::Last)?;
    }
    pool.release(seq);
    Ok((ids, all))
}

/// GPU: fed the CPU's greedy tokens (so that logits compare position by position even
/// where a near tie makes the two argmaxes differ), with its own argmax on the GPU.
fn gpu_run(g: &mut GpuModel, prompt: &[u32], cpu_ids: &[u32]) -> Res<(Vec<u32>, Vec<Vec<f32>>)> {
    let mut seq = g.new_sequence();
    let mut sampler = Sampler::new(SamplingParams::default())?;
    let (mut ids, mut all) = (Vec::new(), Vec::new());
    let mut feed = prompt.to_vec();
    for &cpu_next in cpu_ids.iter().take(STEPS) {
        g.forward(&mut [SeqTokens { seq: &mut seq, tokens: &feed }])?;
        all.push(g.logits()?);
        ids.push(g.sample(&mut [&mut sampler])?[0]);
        feed = vec![cpu_next];
    }
    g.release(seq);
    Ok((ids, all))
}

/// GPU greedy ids of `n` steps after `prompt`, pipelined (`decode_greedy`, run first, so
/// its decode graph is captured inside the pipeline) and token by token (forward, argmax,
/// read the id, feed it).
fn gpu_greedy_both(g: &mut GpuModel, prompt: &[u32], n: usize) -> Res<(Vec<u32>, Vec<u32>)> {
    let mut sampler = Sampler::new(SamplingParams::default())?;
    let mut seq = g.new_sequence();
    g.forward(&mut [SeqTokens { seq: &mut seq, tokens: prompt }])?;
    let first = g.sample(&mut [&mut sampler])?[0];
    let mut piped = vec![first];
    piped.extend(g.decode_greedy(&mut seq, first, n - 1)?);
    g.release(seq);
    let mut seq = g.new_sequence();
    let (mut steps, mut feed) = (Vec::new(), prompt.to_vec());
    for _ in 0..n {
        g.forward(&mut [SeqTokens { seq: &mut seq, tokens: &feed }])?;
        let id = g.sample(&mut [&mut sampler])?[0];
        steps.push(id);
        feed = vec![id];
    }
    g.release(seq);
    Ok((piped, steps))
}

/// Every prompt as one batch (prefill together, then decode together).
fn gpu_batched(g: &mut GpuModel, prompts: &[Vec<u32>]) -> Res<Vec<Vec<Vec<f32>>>> {
    let mut seqs: Vec<_> = prompts.iter().map(|_| g.new_sequence()).collect();
    let mut feeds: Vec<Vec<u32>> = prompts.to_vec();
    let mut out = vec![Vec::new(); prompts.len()];
    let vocab = g.config().vocab;
    for _ in 0..STEPS {
        let mut batch: Vec<SeqTokens<'_>> = seqs.iter_mut().zip(&feeds).map(|(seq, f)| SeqTokens { seq, tokens: f }).collect();
        g.forward(&mut batch)?;
        let logits = g.logits()?;
        for (b, row) in logits.chunks_exact(vocab).enumerate() {
            out[b].push(row.to_vec());
            feeds[b] = vec![argmax(row)];
        }
    }
    for s in seqs {
        g.release(s);
    }
    Ok(out)
}

/// `warm_up(&[], len)` captures every decode graph a generation up to `len` positions
/// replays: the Llama fixture, its context raised to 1200 positions (four graph widths:
/// 16, 32, 64 pages, then the 75 the cache holds), is warmed up, fed a 300-token prompt
/// and decoded (pipelined, then token by token) to the end of its cache; no graph (nor
/// chain of greedy steps) may be captured after the warm-up. The tokens are not checked
/// (past the fixture's trained 256 positions they mean little); the decode must run.
fn check_warm_up(dev: &Arc<CudaDevice>, tally: &mut Tally) -> Res<()> {
    const LEN: usize = 1200;
    let dir = fixtures().join("llama");
    let model = Model::load(&dir, LoadOptions::default())?;
    let mut cfg = model.transformer.config().clone();
    cfg.max_positions = LEN;
    let ck = Checkpoint::open(&dir)?;
    let opts = GpuOptions { dtype: DType::BF16, max_batch_tokens: 128, max_seqs: 1, max_kv_tokens: Some(LEN), ..GpuOptions::default() };
    let mut g = GpuModel::load(dev, cfg, &mut &ck, opts, |_, _| {})?;
    g.warm_up(&[], LEN)?;
    let (warmed, chains) = (g.decode_graphs(), g.decode_chains());
    let mut sampler = Sampler::new(SamplingParams::default())?;
    let mut seq = g.new_sequence();
    let prompt: Vec<u32> = (0..300u32).map(|i| (i * 7 + 3) % g.config().vocab as u32).collect();
    for chunk in prompt.chunks(128) {
        g.forward(&mut [SeqTokens { seq: &mut seq, tokens: chunk }])?;
    }
    let first = g.sample(&mut [&mut sampler])?[0];
    let piped = g.decode_greedy(&mut seq, first, 600)?;
    let mut id = piped.last().copied().unwrap_or(first);
    while seq.len() < LEN {
        id = g.step(&mut seq, &[id], &mut sampler)?;
    }
    g.release(seq);
    let (after, chains_after) = (g.decode_graphs(), g.decode_chains());
    tally.check(
        warmed == 4 && after == warmed && chains == 4 && chains_after == chains,
        format!(
            "warm_up({LEN}): {warmed} decode graphs and {chains} chains captured (want 4 each), {after} and {chains_after} after a decode to {LEN} positions"
        ),
    );
    Ok(())
}

fn fixtures() -> PathBuf {
    let here = PathBuf::from("tests/fixtures/models");
    if here.is_dir() {
        here
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models")
    }
}

fn check_fixture(dev: &Arc<CudaDevice>, name: &str, tally: &mut Tally) -> Res<()> {
    let dir = fixtures().join(name);
    let model = Model::load(&dir, LoadOptions::default())?;
    // The bf16 copy of the Llama fixture shares the Llama fixture's prompts.
    let ref_dir = if name == "llama-bf16" { fixtures().join("llama") } else { dir.clone() };
    let reference: serde_json::Value = serde_json::from_slice(&std::fs::read(ref_dir.join("reference.json"))?)?;
    let prompts: Vec<Vec<u32>> = reference["prompts"]
        .as_array()
        .ok_or("reference.json has no prompts")?
        .iter()
        .map(|p| model.codec.encode(p["prompt"].as_str().unwrap_or(""), true))
        .collect::<Result<_, _>>()?;
    let cpu: Vec<_> = prompts.iter().map(|p| cpu_run(&model, p)).collect::<Res<_>>()?;
    let ck = Checkpoint::open(&dir)?;
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let opts = GpuOptions { dtype, max_batch_tokens: 256, max_seqs: 8, max_kv_tokens: Some(4096), ..GpuOptions::default() };
        let mut g = GpuModel::load(dev, model.transformer.config().clone(), &mut &ck, opts, |_, _| {})?;
        // f32 (the strictest checks) runs after `generate`'s warm-up, which must leave the
        // model as loaded; f16 and bf16 start cold.
        if dtype == DType::F32 {
            g.warm_up(&[16], 256)?;
        }
        // Pipelined greedy decode against token by token, to near the fixture's longest
        // context (256 positions).
        let p0 = &prompts[0];
        let n = 240usize.saturating_sub(p0.len()).clamp(2, 200);
        let (piped, steps) = gpu_greedy_both(&mut g, p0, n)?;
        let agree = piped.iter().zip(&steps).filter(|(a, b)| a == b).count();
        tally.check(
            piped == steps,
            format!("model {name:<10} {dtype:<5} pipelined greedy decode vs token by token: {agree}/{n} ids identical"),
        );
        let singles = against_cpu(&mut g, (name, dtype, ""), &prompts, &cpu, tally)?;
        // Every norm folded but a tied head's (f16 may keep some apart: its range).
        let cfg = model.transformer.config();
        let ((folded, norms), want) = (g.folded_norms(), 2 * cfg.layers + usize::from(!cfg.tie_embeddings));
        tally.check(
            folded == want || (dtype == DType::F16 && folded <= want),
            format!("model {name:<10} {dtype:<5} norm weights folded: {folded} of {norms} (tied head: {})", cfg.tie_embeddings),
        );
        // The norms' weights kept apart instead of folded into the products after them.
        let mut kept = GpuModel::load(dev, cfg.clone(), &mut &ck, GpuOptions { fold_norms: false, ..opts }, |_, _| {})?;
        tally.check(
            kept.folded_norms().0 == 0,
            format!("model {name:<10} {dtype:<5} --no-fold-norms: {} norms folded", kept.folded_norms().0),
        );
        against_cpu(&mut kept, (name, dtype, " norms unfolded"), &prompts, &cpu, tally)?;
        drop(kept);
        // The persistent decode step against the layered decode (one launch per stage):
        // the same products in the same order, attention split differently.
        let persistent = GpuOptions { persistent_decode: true, ..opts };
        let mut g2 = GpuModel::load(dev, model.transformer.config().clone(), &mut &ck, persistent, |_, _| {})?;
        if g2.persistent_decode() {
            let mut worst = 0.0f64;
            let mut same = 0;
            for ((p, (cpu_ids, _)), layered) in prompts.iter().zip(&cpu).zip(&singles) {
                let (_, persistent) = gpu_run(&mut g2, p, cpu_ids)?;
                // Step 0 is the prompt's prefill, the same launches in both.
                worst = persistent.iter().zip(layered).skip(1).map(|(a, b)| nmse(a, b)).fold(worst, f64::max);
                same += persistent.iter().zip(layered).skip(1).filter(|(a, b)| argmax(a) == argmax(b)).count();
            }
            let steps = prompts.len() * (STEPS - 1);
            tally.check(
                worst <= bound(dtype) && (same == steps || dtype != DType::F32),
                format!(
                    "model {name:<10} {dtype:<5} persistent decode step vs layered decode: logits nmse max {worst:.2e} (bound {:.0e}), argmax {same}/{steps} equal",
                    bound(dtype)
                ),
            );
            // Its chains of greedy steps take the argmax as a launch of its own (the LM
            // head is inside the step): pipelined against token by token.
            let (piped, steps) = gpu_greedy_both(&mut g2, p0, n)?;
            let agree = piped.iter().zip(&steps).filter(|(a, b)| a == b).count();
            tally.check(
                piped == steps,
                format!(
                    "model {name:<10} {dtype:<5} persistent step: pipelined greedy decode vs token by token: {agree}/{n} ids identical"
                ),
            );
        } else {
            println!("model {name:<10} {dtype:<5} persistent decode step: not taken (per-head q/k norms or windows)");
        }
        if dtype == DType::F32 {
            let batched = gpu_batched(&mut g, &prompts)?;
            let worst = batched.iter().zip(&singles).flat_map(|(b, s)| b.iter().zip(s).map(|(x, y)| nmse(x, y))).fold(0.0, f64::max);
            tally.check(
                worst <= 1e-9,
                format!("model {name:<10} {dtype:<5} batch of {} sequences vs one at a time: logits nmse max {worst:.2e}", prompts.len()),
            );
        }
    }
    Ok(())
}

/// Each prompt through the GPU model against the CPU's logits and greedy ids
/// ([`cpu_run`]): logits nMSE within the dtype's bound at every step, the same ids for
/// f32 weights. Returns the GPU's logits per prompt.
fn against_cpu(
    g: &mut GpuModel,
    (name, dtype, what): (&str, DType, &str),
    prompts: &[Vec<u32>],
    cpu: &[(Vec<u32>, Vec<Vec<f32>>)],
    tally: &mut Tally,
) -> Res<Vec<Vec<Vec<f32>>>> {
    let mut all = Vec::new();
    for (p, (cpu_ids, cpu_logits)) in prompts.iter().zip(cpu) {
        let (ids, logits) = gpu_run(g, p, cpu_ids)?;
        let (at, worst) =
            logits.iter().zip(cpu_logits).map(|(a, b)| nmse(a, b)).enumerate().fold((0, 0.0), |m, (i, e)| if e > m.1 { (i, e) } else { m });
        let same = ids == *cpu_ids;
        let agree = ids.iter().zip(cpu_ids).filter(|(a, b)| a == b).count();
        tally.check(
            worst <= bound(dtype) && (same || dtype != DType::F32),
            format!(
                "model {name:<10} {dtype:<5}{what} prompt {:>3} tokens: logits nmse max {worst:.2e} at step {at} (bound {:.0e}), greedy ids {agree}/{STEPS} identical",
                p.len(),
                bound(dtype)
            ),
        );
        all.push(logits);
    }
    Ok(all)
}

fn rand_rows(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| (rng.next_f32() * 2.0 - 1.0) * 8.0).collect()
}

/// nMSE bound of a matrix-vector product written in `out`: f32 accumulation of k
/// products (~k * 2^-24 relative) and, for 16-bit outputs, one rounding (2^-9 bf16,
/// 2^-12 f16 relative).
/// Warps a weight row of a planned matrix-vector product, as its symbol names them
/// (`rf_gemv<MT>x2_*`: two; else one).
fn warps_a_row(plan: &EnginePlan) -> u32 {
    if plan.symbol.contains("x2_") {
        2
    } else {
        1
    }
}

fn gemv_bound(out: DType) -> f64 {
    match out {
        DType::BF16 => 1e-5,
        DType::F16 => 1e-6,
        _ => 1e-10,
    }
}

fn engine_checks(dev: &Arc<CudaDevice>, rng: &mut Rng, tally: &mut Tally) -> Res<()> {
    let lim = *dev.limits();
    // One set of counters for every argmax below, of every shape, as the model uses
    // them: each launch must leave them zero for the next.
    let argmax_counters = dev.zeros(DType::U32, &[8])?;
    sampling_kernel_checks(dev, rng, tally)?;
    // The staged top-k on rows of ties: every value equal but a few (k taken among equals
    // across stages), and a row of two values.
    for (rows, cols, k) in [(2usize, 20_000usize, 1024usize), (1, 70_000, 300)] {
        let mut host: Vec<f32> = (0..rows * cols)
            .map(|i| {
                if i % 997 == 0 {
                    2.0
                } else if i % 2 == 0 {
                    1.0
                } else {
                    0.5
                }
            })
            .collect();
        host[rows * cols - 1] = 3.0;
        let x = dev.upload_bytes(DType::F32, &[rows, cols], &encode(&host, DType::F32))?;
        let (ok, _) = topk_staged_matches(dev, &x, &host, k)?;
        tally.check(ok, format!("engine topk staged f32 [{rows}, {cols}] k {k}, ties: values and ids match the host's top {k}"));
    }
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for (rows, cols) in [(1usize, 128_256usize), (5, 1000), (3, 32_000), (2, 17)] {
            let mut host = rand_rows(rng, rows * cols);
            // A tie for the maximum in row 0: the lower index must win.
            host[cols / 3] = 100.0;
            host[cols / 2] = 100.0;
            let rounded: Vec<f32> = host.iter().map(|&x| dtype.round_f32(x)).collect();
            let x = dev.upload_bytes(dtype, &[rows, cols], &encode(&host, dtype))?;
            let mut out = dev.alloc(DType::I32, &[rows])?;
            dev.poison(&mut out)?;
            let ws = dev.alloc(DType::F32, &[argmax_workspace(rows, cols)])?;
            // The second output (a decode's history) on every other shape.
            let mut also = dev.alloc(DType::I32, &[rows])?;
            dev.poison(&mut also)?;
            let with_also = cols % 2 == 0;
            dev.launch_engine(&plan_argmax(
                &lim,
                &x,
                &out,
                with_also.then_some(&also as &dyn rocmforge_runtime::TensorArg),
                &argmax_counters,
                &ws,
            )?)?;
            let ids = |t: &rocmforge_runtime::cuda::DeviceTensor| -> Res<Vec<u32>> {
                Ok(dev.read_bytes(t)?.chunks_exact(4).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as u32).collect())
            };
            let got = ids(&out)?;
            let want: Vec<u32> = rounded.chunks_exact(cols).map(argmax).collect();
            tally.check(got == want, format!("engine argmax {dtype:<5} [{rows}, {cols}] with a tie: {:?}", &got[..got.len().min(4)]));
            if with_also {
                let got2 = ids(&also)?;
                tally.check(
                    got2 == want,
                    format!("engine argmax {dtype:<5} [{rows}, {cols}], second output: {:?}", &got2[..got2.len().min(4)]),
                );
            }

            if dtype == DType::F32 {
                // The staged top-k (the sampler's; logits are f32), at k 50 and at the most
                // it takes.
                let mut ks = vec![50.min(cols), TOPK_MAX.min(cols)];
                ks.dedup();
                for k in ks {
                    let (ok, launches) = topk_staged_matches(dev, &x, &rounded, k)?;
                    tally.check(
                        ok,
                        format!(
                            "engine topk staged f32 [{rows}, {cols}] k {k} in {launches} launches: values and ids match the host's top {k}"
                        ),
                    );
                }
            }
        }
        // Matrix-vector products (decode) against an f64 host product: 16-byte and
        // element paths (k 72 and 77), 1 to 8 rows, k up to 14336 (4120 leaves a partial
        // round of loads), storage-dtype and f32 outputs.
        for (m, n, kk) in
            [(1usize, 300usize, 72usize), (3, 100, 77), (8, 257, 4096), (5, 64, 72), (1, 64, 14336), (2, 33, 4120), (3, 41, 2051)]
        {
            let xs = rand_rows(rng, m * kk);
            let ws = rand_rows(rng, n * kk);
            let round = |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| dtype.round_f32(x)).collect() };
            let (xr, wr) = (round(&xs), round(&ws));
            let want: Vec<f32> = (0..m * n)
                .map(|i| (0..kk).map(|c| f64::from(xr[(i / n) * kk + c]) * f64::from(wr[(i % n) * kk + c])).sum::<f64>() as f32)
                .collect();
            let x = dev.upload_bytes(dtype, &[m, kk], &encode(&xs, dtype))?;
            let w = dev.upload_bytes(dtype, &[n, kk], &encode(&ws, dtype))?;
            for out_dt in [dtype, DType::F32] {
                let mut out = dev.alloc(out_dt, &[m, n])?;
                dev.poison(&mut out)?;
                let plan = plan_gemv(&lim, &x, &w, &out, &Default::default())?;
                dev.launch_engine(&plan)?;
                let got = dev.download(&out)?.to_f32_vec();
                let e = nmse(&got, &want);
                let bound = gemv_bound(out_dt);
                let split = warps_a_row(&plan);
                tally.check(
                    e <= bound,
                    format!("engine gemv  {dtype:<5} -> {out_dt:<5} [{m}, {kk}] x [{n}, {kk}]^T, warps a row {split}: nmse {e:.2e} (bound {bound:.0e})"),
                );
            }
        }
        // The fused prologue and epilogue with rows cut over warps and without (n 300 and
        // 5000 rows): RMSNorm of x, bias, residual added in place, against f64 on the host.
        for (m, n, kk) in [(2usize, 300usize, 2048usize), (1, 5000, 2048)] {
            let round = |v: Vec<f32>| -> Vec<f32> { v.into_iter().map(|x| dtype.round_f32(x)).collect() };
            let (xr, wr, gr, br, rr) = (
                round(rand_rows(rng, m * kk)),
                round(rand_rows(rng, n * kk)),
                round(rand_rows(rng, kk)),
                round(rand_rows(rng, n)),
                round(rand_rows(rng, m * n)),
            );
            // f64 over x, the weights `wh` and, for the weighted norm, its weight `g`.
            let reference = |wh: &[f32], g: Option<&[f32]>| -> Vec<f32> {
                (0..m * n)
                    .map(|i| {
                        let (r, j) = (i / n, i % n);
                        let xrow = &xr[r * kk..(r + 1) * kk];
                        let ms = xrow.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / kk as f64;
                        let gc = |c: usize| g.map_or(1.0, |g| f64::from(g[c]));
                        let dot: f64 = (0..kk).map(|c| f64::from(xrow[c]) * gc(c) * f64::from(wh[j * kk + c])).sum();
                        (dot / (ms + 1e-5).sqrt() + f64::from(br[j]) + f64::from(rr[i])) as f32
                    })
                    .collect()
            };
            let up = |v: &[f32], shape: &[usize]| dev.upload_bytes(dtype, shape, &encode(v, dtype));
            let (x, w, g, b) = (up(&xr, &[m, kk])?, up(&wr, &[n, kk])?, up(&gr, &[kk])?, up(&br, &[n])?);
            // The norm's weight folded into w's columns on the device, as the model loader
            // does (the DSL's `scale_columns`, in place): bit for bit against the host's
            // rounding of w * g (one f32 product).
            let mut wf = up(&wr, &[n, kk])?;
            let k_scale = kernels::scale_columns::kernel()?;
            dev.launch(k_scale, &kernels::scale_columns::plan(&lim, &mut wf.view_mut(0, &[n, kk])?, &g)?)?;
            let wf_host: Vec<f32> = (0..n * kk).map(|i| dtype.round_f32(wr[i] * gr[i % kk])).collect();
            let (_, diff) = differing(dev, &wf, &up(&wf_host, &[n, kk])?, dtype)?;
            tally.check(
                diff == 0,
                format!("scale_columns {dtype:<5} [{n}, {kk}] in place: {diff} of {} elements differ from the host's w * g", n * kk),
            );
            // The product with the norm's weight, and without it (mode 3) over the folded
            // weights.
            for (what, wd, wh, norm, gh) in
                [("norm", &w, &wr, RmsNorm::new(&g, 1e-5), Some(&gr[..])), ("folded norm", &wf, &wf_host, RmsNorm::folded(1e-5), None)]
            {
                let want = reference(wh, gh);
                let out = up(&rr, &[m, n])?;
                let f = GemvFusion { norm: Some(norm), bias: Some(&b), residual: Some(&out), ..GemvFusion::default() };
                let plan = plan_gemv(&lim, &x, wd, &out, &f)?;
                dev.launch_engine(&plan)?;
                let e = nmse(&dev.download(&out)?.to_f32_vec(), &want);
                let bound = gemv_bound(dtype);
                let split = warps_a_row(&plan);
                tally.check(
                    e <= bound,
                    format!("engine gemv  {dtype:<5} [{m}, {kk}] x [{n}, {kk}]^T, {what} + bias + residual in place, warps a row {split}: nmse {e:.2e} (bound {bound:.0e})"),
                );
            }
        }
        // Gather: rows by index, one out of range (a zero row).
        let (rows, cols) = (100usize, 72usize);
        let host = rand_rows(rng, rows * cols);
        let table = dev.upload_bytes(dtype, &[rows, cols], &encode(&host, dtype))?;
        let idx: Vec<i32> = vec![5, 99, 0, 5, 1000, 42];
        let idx_d = dev.upload_bytes(DType::I32, &[idx.len()], &idx.iter().flat_map(|v| v.to_ne_bytes()).collect::<Vec<u8>>())?;
        let mut out = dev.alloc(dtype, &[idx.len(), cols])?;
        dev.poison(&mut out)?;
        dev.launch_engine(&plan_gather(&lim, &table, &idx_d, &out)?)?;
        let got = dev.read_bytes(&out)?;
        let want: Vec<u8> = idx
            .iter()
            .flat_map(|&i| {
                let row: Vec<f32> =
                    if (0..rows as i32).contains(&i) { host[i as usize * cols..(i as usize + 1) * cols].to_vec() } else { vec![0.0; cols] };
                encode(&row, dtype)
            })
            .collect();
        tally.check(got == want, format!("engine gather {dtype:<5} [{rows}, {cols}] by {idx:?}: bit-exact"));
        pair_checks(dev, rng, tally, dtype)?;
    }
    Ok(())
}

/// Whether a top-k's `vals` and `ids` `[rows, k]` hold the `k` largest of each row of
/// `rounded` (`[rows, cols]`): the same multiset of values, each id pointing at its value,
/// no id twice.
fn topk_matches(
    dev: &CudaDevice,
    rounded: &[f32],
    cols: usize,
    k: usize,
    vals: &rocmforge_runtime::cuda::DeviceTensor,
    ids: &rocmforge_runtime::cuda::DeviceTensor,
) -> Res<bool> {
    let gv: Vec<f32> = dev.read_bytes(vals)?.chunks_exact(4).map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]])).collect();
    let gi: Vec<i32> = dev.read_bytes(ids)?.chunks_exact(4).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]])).collect();
    let mut ok = true;
    for (r, row) in rounded.chunks_exact(cols).enumerate() {
        let mut sorted: Vec<f32> = row.to_vec();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let mut got: Vec<f32> = gv[r * k..(r + 1) * k].to_vec();
        got.sort_by(|a, b| b.total_cmp(a));
        ok &= got.iter().zip(&sorted[..k]).all(|(a, b)| a.to_bits() == b.to_bits());
        ok &= (0..k).all(|j| {
            let id = gi[r * k + j];
            id >= 0 && (id as usize) < cols && row[id as usize].to_bits() == gv[r * k + j].to_bits()
        });
        let mut uniq: Vec<i32> = gi[r * k..(r + 1) * k].to_vec();
        uniq.sort_unstable();
        uniq.dedup();
        ok &= uniq.len() == k;
    }
    Ok(ok)
}

/// The staged top-k of f32 `x` (`rounded` on the host) at `k`, outputs and workspaces
/// poisoned first: whether it matches the host's, and in how many launches.
fn topk_staged_matches(dev: &Arc<CudaDevice>, x: &rocmforge_runtime::cuda::DeviceTensor, rounded: &[f32], k: usize) -> Res<(bool, usize)> {
    let (rows, cols) = (x.shape()[0], x.shape()[1]);
    let ws_len = topk_staged_workspace(rows, cols, k).max(1);
    let mut ws_v = dev.alloc(DType::F32, &[ws_len])?;
    let mut ws_i = dev.alloc(DType::I32, &[ws_len])?;
    let mut vals = dev.alloc(DType::F32, &[rows, k])?;
    let mut ids = dev.alloc(DType::I32, &[rows, k])?;
    for t in [&mut ws_v, &mut ws_i, &mut vals, &mut ids] {
        dev.poison(t)?;
    }
    let plans = plan_topk_staged(dev.limits(), x, k, &vals, &ids, &ws_v, &ws_i)?;
    for p in &plans {
        dev.launch_engine(p)?;
    }
    Ok((topk_matches(dev, rounded, cols, k, &vals, &ids)?, plans.len()))
}

/// The penalties kernel against the host sampler's `penalize` (bit-exact), and the
/// softmax normalizer against an f64 host sum, on fresh random rows.
fn sampling_kernel_checks(dev: &Arc<CudaDevice>, rng: &mut Rng, tally: &mut Tally) -> Res<()> {
    let lim = *dev.limits();
    let (rows, cols) = (3usize, 50_000usize);
    let host = rand_rows(rng, rows * cols);
    let x = dev.upload_bytes(DType::F32, &[rows, cols], &encode(&host, DType::F32))?;
    // Row r's sampler has seen 500 distinct tokens, some more than once.
    let mut want = host.clone();
    let mut ent: Vec<i32> = Vec::new();
    for r in 0..rows {
        let params = SamplingParams {
            repetition_penalty: [1.0, 1.7, 0.6][r],
            presence_penalty: [0.5, 0.0, -0.25][r],
            frequency_penalty: [0.1, 0.3, 0.0][r],
            ..SamplingParams::default()
        };
        let mut s = Sampler::new(params)?;
        for _ in 0..800 {
            s.observe(&[(rng.next_u64() % 500) as u32 * 97 % cols as u32]);
        }
        s.penalize(&mut want[r * cols..(r + 1) * cols]);
        for (t, rep, sub) in s.penalties() {
            ent.extend([r as i32, t as i32, rep.to_bits() as i32, sub.to_bits() as i32]);
        }
    }
    // One entry out of range: skipped on the device.
    ent.extend([0, cols as i32, 2.0f32.to_bits() as i32, 1.0f32.to_bits() as i32]);
    let n = ent.len() / 4;
    let ent_d = dev.upload_bytes(DType::I32, &[n, 4], &ent.iter().flat_map(|v| v.to_ne_bytes()).collect::<Vec<u8>>())?;
    dev.launch_engine(&plan_penalize(&lim, &x, &ent_d)?)?;
    let got = dev.download(&x)?.to_f32_vec();
    let same = got.iter().zip(&want).filter(|(a, b)| a.to_bits() == b.to_bits()).count();
    tally.check(
        same == got.len() && want != host,
        format!("engine penalize f32 [{rows}, {cols}], {n} entries: {same}/{} logits bit-identical to the host's", got.len()),
    );
    // Normalizers at three temperatures and a greedy row (0), one row with a NaN.
    let temps = [0.7f32, 0.0, 1.5, 0.05];
    let mut rows4 = rand_rows(rng, 4 * cols);
    rows4[2 * cols + 17] = f32::NAN;
    let x4 = dev.upload_bytes(DType::F32, &[4, cols], &encode(&rows4, DType::F32))?;
    let t_d = dev.upload_bytes(DType::I32, &[4], &temps.iter().flat_map(|t| t.to_bits().to_ne_bytes()).collect::<Vec<u8>>())?;
    let parts = softmax_mass_parts(cols).0;
    let mut mass = dev.alloc(DType::F32, &[4, parts, 2])?;
    dev.poison(&mut mass)?;
    dev.launch_engine(&plan_softmax_mass(&lim, &x4, &t_d, &mass)?)?;
    let got_parts = dev.download(&mass)?.to_f32_vec();
    let got: Vec<f64> = temps.iter().enumerate().map(|(r, &t)| merge_mass(&got_parts[r * parts * 2..(r + 1) * parts * 2], t)).collect();
    let mut worst = 0.0f64;
    for (r, &t) in temps.iter().enumerate() {
        let row = &rows4[r * cols..(r + 1) * cols];
        let want = if t > 0.0 {
            let top = row.iter().copied().filter(|v| !v.is_nan()).fold(f32::NEG_INFINITY, f32::max);
            row.iter().filter(|v| !v.is_nan()).map(|&l| (f64::from(l / t) - f64::from(top / t)).exp()).sum::<f64>()
        } else {
            0.0
        };
        let e = if t > 0.0 { (got[r] / want - 1.0).abs() } else { got[r].abs() };
        worst = worst.max(e);
    }
    // f64 sums in another order, each part rounded once to f32: 2^-24 relative and a
    // little more.
    tally.check(
        worst <= 2e-7,
        format!("engine softmax_mass f32 [4, {cols}] in {parts} parts at t {temps:?}, merged: relative error max {worst:.1e} (bound 2e-7)"),
    );
    Ok(())
}

/// `GpuModel::sample` against host samplers on the same logits, three sequences at once
/// with a different setting each, over a random model with a 20,000-token vocabulary (so
/// that the top 1024 candidates are a part of each row): every drawn id must match, and
/// both the draws decided by the candidates and those that copied the row must occur.
fn check_sampling(dev: &Arc<CudaDevice>, tally: &mut Tally) -> Res<()> {
    let model = Model::load(&fixtures().join("llama"), LoadOptions::default())?;
    let mut cfg = model.transformer.config().clone();
    cfg.vocab = 20_000;
    let opts = GpuOptions { dtype: DType::F32, max_batch_tokens: 64, max_seqs: 4, max_kv_tokens: Some(1024), ..GpuOptions::default() };
    let mut g = GpuModel::load(dev, cfg, &mut RandomWeights { seed: 5 }, opts, |_, _| {})?;
    let settings = [
        [
            SamplingParams { temperature: 1.0, seed: 1, ..SamplingParams::default() },
            SamplingParams { temperature: 0.8, top_p: 0.9, seed: 2, ..SamplingParams::default() },
            SamplingParams { temperature: 0.05, seed: 3, ..SamplingParams::default() },
        ],
        [
            SamplingParams { temperature: 0.7, top_k: 50, repetition_penalty: 1.3, seed: 4, ..SamplingParams::default() },
            SamplingParams { temperature: 0.0, presence_penalty: 0.8, frequency_penalty: 0.3, ..SamplingParams::default() },
            SamplingParams { temperature: 0.2, min_p: 0.1, repetition_penalty: 1.2, seed: 6, ..SamplingParams::default() },
        ],
        [
            SamplingParams { temperature: 0.0, ..SamplingParams::default() },
            SamplingParams { temperature: 1.1, top_k: 2000, seed: 8, ..SamplingParams::default() },
            SamplingParams { temperature: 0.1, top_p: 0.5, presence_penalty: 0.5, seed: 9, ..SamplingParams::default() },
        ],
    ];
    let vocab = g.config().vocab;
    for set in settings {
        let mut seqs: Vec<_> = (0..3).map(|_| g.new_sequence()).collect();
        let prompts: Vec<Vec<u32>> = (0..3u32).map(|b| (0..10 + 3 * b).map(|i| (i * 7919 + b * 31) % vocab as u32).collect()).collect();
        let mut gpu_s: Vec<Sampler> = set.iter().map(|p| Sampler::new(p.clone())).collect::<Result<_, _>>()?;
        let mut host_s = gpu_s.clone();
        for (b, p) in prompts.iter().enumerate() {
            gpu_s[b].observe(p);
            host_s[b].observe(p);
        }
        let before = g.sample_stats();
        let mut feeds = prompts.clone();
        let (mut same, mut n) = (0usize, 0usize);
        for _ in 0..40 {
            let mut batch: Vec<SeqTokens<'_>> = seqs.iter_mut().zip(&feeds).map(|(seq, f)| SeqTokens { seq, tokens: f }).collect();
            g.forward(&mut batch)?;
            let logits = g.logits()?;
            let want: Vec<u32> =
                host_s.iter_mut().zip(logits.chunks_exact(vocab)).map(|(s, row)| s.sample(&mut row.to_vec())).collect::<Result<_, _>>()?;
            let mut refs: Vec<&mut Sampler> = gpu_s.iter_mut().collect();
            let got = g.sample(&mut refs)?;
            same += got.iter().zip(&want).filter(|(a, b)| a == b).count();
            n += got.len();
            // Each sequence goes on with the host's token, so one difference stays one.
            feeds = want.iter().map(|&t| vec![t]).collect();
            for (b, (&gt, &wt)) in got.iter().zip(&want).enumerate() {
                if gt != wt {
                    // Keep the penalty histories equal after a difference.
                    gpu_s[b] = host_s[b].clone();
                }
            }
        }
        for s in seqs {
            g.release(s);
        }
        let after = g.sample_stats();
        let (drawn, copied, parts) =
            (after.rows - before.rows, after.row_copies - before.row_copies, after.part_copies - before.part_copies);
        let names: Vec<String> = set
            .iter()
            .map(|p| format!("t {} k {} p {} min_p {} pen {}", p.temperature, p.top_k, p.top_p, p.min_p, p.has_penalties()))
            .collect();
        tally.check(
            same == n,
            format!(
                "sample on the GPU vs the host, [{}]: {same}/{n} ids identical; {drawn} rows over candidates, {copied} copied their row, {parts} parts copied",
                names.join("; ")
            ),
        );
    }
    let st = g.sample_stats();
    tally.check(
        st.row_copies > 0 && st.part_copies > 0 && st.row_copies < st.rows,
        format!(
            "sample on the GPU: {} rows drawn over candidates, {} copied their row, {} parts copied by draws past the candidates (every path taken)",
            st.rows, st.row_copies, st.part_copies
        ),
    );
    Ok(())
}

/// The nMSE of `got` against `want`, and how many of their `dtype` elements differ in
/// any bit.
fn differing(
    dev: &CudaDevice,
    got: &rocmforge_runtime::cuda::DeviceTensor,
    want: &rocmforge_runtime::cuda::DeviceTensor,
    dtype: DType,
) -> Res<(f64, usize)> {
    let (g, w) = (dev.download(got)?.to_f32_vec(), dev.download(want)?.to_f32_vec());
    let diff = dev
        .read_bytes(got)?
        .chunks_exact(dtype.size())
        .zip(dev.read_bytes(want)?.chunks_exact(dtype.size()))
        .filter(|(a, b)| a != b)
        .count();
    Ok((nmse(&g, &w), diff))
}

/// A fused norm of kind 0 (none), 1 (weighted by `nw`) or 2 (folded into the weights).
fn norm_of(kind: u8, nw: &rocmforge_runtime::cuda::DeviceTensor) -> Option<RmsNorm<'_>> {
    match kind {
        1 => Some(RmsNorm::new(nw, 1e-5)),
        2 => Some(RmsNorm::folded(1e-5)),
        _ => None,
    }
}

/// The paired matrix-vector kernel (SwiGLU and q/k/v stage epilogues) against the two
/// launches it replaces (`plan_gemv` then `plan_swiglu_rows` / `plan_qkv_post`), on
/// the same random inputs: both must write the same outputs (the same arithmetic in the
/// same order; the bound only allows for a contraction the compiler may pick
/// differently), and the caches must be unchanged outside the written slots.
fn pair_checks(dev: &Arc<CudaDevice>, rng: &mut Rng, tally: &mut Tally, dtype: DType) -> Res<()> {
    let lim = *dev.limits();
    let up = |v: &[f32], shape: &[usize]| dev.upload_bytes(dtype, shape, &encode(v, dtype));
    // The fused norm: none (and no bias), weighted, or folded into the weights.
    const KINDS: [&str; 3] = ["none", "weighted", "folded"];
    // SwiGLU after the gate/up product: with and without the norm (weighted or folded)
    // and bias, the 16-byte and element paths, 1 to 5 rows.
    for (m, inter, k, kind) in
        [(1usize, 300usize, 256usize, 1u8), (3, 64, 77, 0), (5, 129, 4120, 1), (2, 96, 2048, 1), (1, 256, 2048, 2), (3, 64, 77, 2)]
    {
        let x = up(&rand_rows(rng, m * k), &[m, k])?;
        let w = up(&rand_rows(rng, 2 * inter * k).iter().map(|v| v / 16.0).collect::<Vec<_>>(), &[2 * inter, k])?;
        let nw = up(&rand_rows(rng, k), &[k])?;
        let b = up(&rand_rows(rng, 2 * inter), &[2 * inter])?;
        let norm = norm_of(kind, &nw);
        let bias = (kind != 0).then_some(&b as &dyn rocmforge_runtime::TensorArg);
        let mut y = dev.alloc(dtype, &[m, 2 * inter])?;
        let mut want = dev.alloc(dtype, &[m, inter])?;
        let mut got = dev.alloc(dtype, &[m, inter])?;
        for t in [&mut y, &mut want, &mut got] {
            dev.poison(t)?;
        }
        let f = GemvFusion { norm, bias, ..GemvFusion::default() };
        dev.launch_engine(&plan_gemv(&lim, &x, &w, &y, &f)?)?;
        dev.launch_engine(&plan_swiglu_rows(&lim, &y, &want)?)?;
        dev.launch_engine(&plan_gemv_pairs(&lim, &x, &w, norm, bias, &PairEpilogue::SwiGlu { out: &got })?)?;
        let (e, diff) = differing(dev, &got, &want, dtype)?;
        tally.check(
            e <= 1e-12,
            format!("engine gemv pairs + SwiGLU {dtype:<5} [{m}, {k}] x [{}, {k}]^T, norm {}: nmse {e:.1e} vs gemv + swiglu_rows, {diff} of {} differ", 2 * inter, KINDS[kind as usize], m * inter),
        );
    }
    // The q/k/v stage: full and partial rotation, GQA 2, a skipped slot (-1), head dims
    // 64 and 128, with and without the norm and bias; the caches start random and must
    // equal the reference's everywhere (written slots and the rest).
    for (m, heads, kvh, hd, half, k, kind) in [
        (1usize, 4usize, 2usize, 64usize, 32usize, 256usize, 1u8),
        (2, 4, 2, 64, 16, 72, 0),
        (3, 8, 2, 128, 64, 77, 1),
        (1, 4, 2, 64, 32, 2048, 1),
        (1, 8, 2, 64, 32, 2048, 2),
        (2, 4, 2, 128, 64, 77, 2),
    ] {
        let (pages, page) = (4usize, 16usize);
        let n = (heads + 2 * kvh) * hd;
        let x = up(&rand_rows(rng, m * k), &[m, k])?;
        let w = up(&rand_rows(rng, n * k).iter().map(|v| v / 16.0).collect::<Vec<_>>(), &[n, k])?;
        let nw = up(&rand_rows(rng, k), &[k])?;
        let b = up(&rand_rows(rng, n), &[n])?;
        let norm = norm_of(kind, &nw);
        let bias = (kind != 0).then_some(&b as &dyn rocmforge_runtime::TensorArg);
        let i32s = |v: &[i32]| dev.upload_bytes(DType::I32, &[v.len()], &v.iter().flat_map(|x| x.to_ne_bytes()).collect::<Vec<u8>>());
        let pos = i32s(&[7, 1000, 3][..m])?;
        let slots = i32s(&[37, -1, 5][..m])?;
        let inv: Vec<f32> = (0..half).map(|i| 10000f32.powf(-(i as f32) / half as f32)).collect();
        let inv_freq = dev.upload_bytes(DType::F32, &[half], &inv.iter().flat_map(|x| x.to_ne_bytes()).collect::<Vec<u8>>())?;
        let cache0 = rand_rows(rng, pages * page * kvh * hd);
        let cshape = [pages, page, kvh, hd];
        let (kw, vw, kg, vg) = (up(&cache0, &cshape)?, up(&cache0, &cshape)?, up(&cache0, &cshape)?, up(&cache0, &cshape)?);
        let mut qkv = dev.alloc(dtype, &[m, n])?;
        let mut qw = dev.alloc(dtype, &[m, heads, hd])?;
        let mut qg = dev.alloc(dtype, &[m, heads, hd])?;
        for t in [&mut qkv, &mut qw, &mut qg] {
            dev.poison(t)?;
        }
        let f = GemvFusion { norm, bias, ..GemvFusion::default() };
        dev.launch_engine(&plan_gemv(&lim, &x, &w, &qkv, &f)?)?;
        let post =
            QkvPost { qkv: &qkv, q_out: &qw, k_cache: &kw, v_cache: &vw, pos: &pos, slots: &slots, inv_freq: &inv_freq, qk_norm: None };
        dev.launch_engine(&plan_qkv_post(&lim, &post, 0.9, 1e-5)?)?;
        let epi =
            PairEpilogue::QkvStage { q_out: &qg, k_cache: &kg, v_cache: &vg, pos: &pos, slots: &slots, inv_freq: &inv_freq, mscale: 0.9 };
        dev.launch_engine(&plan_gemv_pairs(&lim, &x, &w, norm, bias, &epi)?)?;
        let mut worst = 0f64;
        let mut diffs = Vec::new();
        for (g, r) in [(&qg, &qw), (&kg, &kw), (&vg, &vw)] {
            let (e, d) = differing(dev, g, r, dtype)?;
            worst = worst.max(e);
            diffs.push(d);
        }
        tally.check(
            worst <= 1e-12,
            format!("engine gemv pairs + q/k/v stage {dtype:<5} m {m} heads {heads}/{kvh} d {hd} rot {} k {k}, norm {}: nmse {worst:.1e} vs gemv + qkv_post, differing (q, k cache, v cache) {diffs:?}", 2 * half, KINDS[kind as usize]),
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let dev = match CudaDevice::open(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let seed = std::env::var("ROCMFORGE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(42);
    println!("device: {} ({}); seed {seed}", dev.name(), dev.arch());
    let mut rng = Rng::new(seed);
    let mut tally = Tally { pass: 0, fail: 0 };
    if let Err(e) = engine_checks(&dev, &mut rng, &mut tally) {
        println!("engine checks: error: {e}  FAIL");
        tally.fail += 1;
    }
    if let Err(e) = check_sampling(&dev, &mut tally) {
        println!("sampling: error: {e}  FAIL");
        tally.fail += 1;
    }
    if let Err(e) = check_warm_up(&dev, &mut tally) {
        println!("warm_up: error: {e}  FAIL");
        tally.fail += 1;
    }
    for name in ["llama", "llama-bf16", "mistral", "qwen2", "qwen3"] {
        if let Err(e) = check_fixture(&dev, name, &mut tally) {
            println!("model {name}: error: {e}  FAIL");
            tally.fail += 1;
        }
    }
    println!("{} passed, {} failed", tally.pass, tally.fail);
    if tally.fail == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
