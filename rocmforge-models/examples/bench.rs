//! `bench`: llama-bench style throughput of the GPU forward.
//!
//! Loads a checkpoint (`--model DIR`) or builds a preset shape with deterministic random
//! weights (`--preset llama3-8b`), then reports, per test:
//! - `pp N`: prompt processing, N tokens of one sequence (in chunks of
//!   `--max-batch-tokens`), tokens/s;
//! - `tg N`: generation, N greedy tokens of one sequence after a one-token prompt
//!   (argmax on the GPU, pipelined: `GpuModel::decode_greedy` feeds each token to the next
//!   step on the device and reads the ids at the end), tokens/s, and that as a fraction
//!   of the bandwidth limit (the copy bandwidth measured in the same run over the weight
//!   bytes); `tg N token by token` is the same with the host reading each token before
//!   the next step (the `step` loop);
//! - `decode bN`: N sequences (32-token prompts) decoding together, tokens/s summed;
//! - `ctx N`: one sequence prefilled to N tokens then decoding (checks the context fits).
//!
//! Each figure is the median of `--reps` runs after a warm-up of the same shape (for `ctx N`,
//! the decode graphs of its widths captured before its one run). `--output json` prints
//! one JSON object instead of the table.

#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a command-line program")]

mod common;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use rocmforge_models::config::ModelConfig;
use rocmforge_models::gpu::{GpuModel, GpuOptions, RandomWeights, SeqTokens};
use rocmforge_models::memory::ModelPreset;
use rocmforge_models::sampling::{Sampler, SamplingParams};
use rocmforge_models::weights::Checkpoint;
use rocmforge_runtime::cuda::{CudaDevice, CudaError};
use rocmforge_runtime::DType;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Preset {
    /// Llama-3-8B: 32 layers, hidden 4096, 32/8 heads of 128, MLP 14336, vocab 128256.
    #[value(name = "llama3-8b")]
    Llama3_8b,
    /// Llama-3.2-1B: 16 layers, hidden 2048, 32/8 heads of 64, MLP 8192, tied embeddings.
    #[value(name = "llama3.2-1b")]
    Llama32_1b,
    /// Qwen2.5-7B: 28 layers, hidden 3584, 28/4 heads of 128, MLP 18944, QKV bias.
    #[value(name = "qwen2.5-7b")]
    Qwen25_7b,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum WeightType {
    F16,
    Bf16,
    F32,
}

/// Throughput of the GPU forward, llama-bench style: prompt processing (pp), generation
/// (tg) at batch 1 against the bandwidth limit, batched decode, and a long context.
#[derive(Debug, Parser)]
#[command(version, long_about = None)]
struct Args {
    /// A Hugging Face model directory (config.json + safetensors).
    #[arg(long, conflicts_with = "preset")]
    model: Option<PathBuf>,
    /// A built-in shape with deterministic random weights.
    #[arg(long, value_enum, default_value = "llama3.2-1b")]
    preset: Preset,
    /// Weight and activation dtype on the GPU.
    #[arg(long, value_enum, default_value = "bf16")]
    dtype: WeightType,
    /// Prompt lengths to time (comma-separated; empty to skip).
    #[arg(short = 'p', long, value_parser = sizes, default_value = "512,2048")]
    prompt: Sizes,
    /// Generated tokens to time at batch 1.
    #[arg(short = 'n', long, default_value_t = 128)]
    gen: usize,
    /// Batch sizes of the batched decode table (comma-separated; empty to skip).
    #[arg(short = 'b', long, value_parser = sizes, default_value = "1,4,16,64")]
    batch: Sizes,
    /// Context length for the long-context check (0 to skip).
    #[arg(long, default_value_t = 8192)]
    context: usize,
    /// Repetitions per test (the median is reported).
    #[arg(short = 'r', long, default_value_t = 3)]
    reps: usize,
    /// Share of the free GPU memory to use for weights, activations and the KV cache.
    #[arg(long, default_value_t = 0.9)]
    gpu_memory_fraction: f32,
    /// Most tokens per forward (longer prompts run in chunks).
    #[arg(long, default_value_t = 2048)]
    max_batch_tokens: usize,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Decode products through cuBLAS instead of the matrix-vector kernel.
    #[arg(long)]
    no_gemv: bool,
    /// Decode with the SwiGLU and the q/k/v stage as kernels of their own instead of
    /// epilogues of the gate/up and q/k/v products.
    #[arg(long)]
    no_pair_epilogues: bool,
    /// Keep each RMSNorm's weight apart instead of folding it into the columns of the
    /// product after it at load (the decode products then load and apply it).
    #[arg(long)]
    no_fold_norms: bool,
    /// Decode of one sequence as one persistent launch of the whole step (every layer and
    /// the LM head, grid barriers between the phases) instead of one launch per stage.
    /// Slower so far; see benches/RESULTS.md.
    #[arg(long)]
    persistent: bool,
    /// With --persistent: print the last step's phase times (device clock at each grid
    /// barrier).
    #[arg(long)]
    step_clock: bool,
    /// Also time decode at batch 1 with sampling (temperature, top-k/top-p/min-p,
    /// penalties): the draw on the GPU's top candidates, against copying every logit to
    /// the host and drawing there, with the share of draws that needed the whole row.
    #[arg(long)]
    sampling: bool,
    /// Decode without CUDA graphs (one launch per kernel).
    #[arg(long)]
    no_graphs: bool,
    /// Also time every stage of the forward with events (one pp and one tg run each; the
    /// events slow the runs, so the throughput rows come from runs without them).
    #[arg(long)]
    profile: bool,
    /// Table or JSON.
    #[arg(long, value_enum, default_value = "table")]
    output: Output,
}

impl From<Preset> for ModelPreset {
    fn from(p: Preset) -> Self {
        match p {
            Preset::Llama3_8b => ModelPreset::Llama3_8b,
            Preset::Llama32_1b => ModelPreset::Llama32_1b,
            Preset::Qwen25_7b => ModelPreset::Qwen25_7b,
        }
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// A comma-separated list of sizes, possibly empty (`-b ""` skips the batched table).
#[derive(Debug, Clone)]
struct Sizes(Vec<usize>);

fn sizes(s: &str) -> Result<Sizes, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().map_err(|e| format!("`{p}` is not a size: {e}")))
        .collect::<Result<_, _>>()
        .map(Sizes)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Device-to-device copy bandwidth (bytes read + written per second) over 1 GiB.
fn copy_bandwidth(dev: &Arc<CudaDevice>) -> Res<f64> {
    let n = 1usize << 28;
    let src = dev.alloc(DType::F32, &[n])?;
    let mut dst = dev.alloc(DType::F32, &[n])?;
    for _ in 0..3 {
        dev.copy(&src, &mut dst)?;
    }
    let (a, b) = (dev.event()?, dev.event()?);
    let iters = 20;
    dev.record(&a)?;
    for _ in 0..iters {
        dev.copy(&src, &mut dst)?;
    }
    dev.record(&b)?;
    dev.synchronize()?;
    let ms = a.elapsed_ms(&b)? as f64;
    Ok(2.0 * (n * 4) as f64 * iters as f64 / (ms * 1e-3))
}

fn tokens(n: usize, vocab: usize, salt: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + salt * 104_729 + 13) % vocab) as u32).collect()
}

/// Prompt processing of `n` tokens: tokens/s.
fn pp(g: &mut GpuModel, n: usize) -> Res<f64> {
    let vocab = g.config().vocab;
    let chunk = g.options().max_batch_tokens;
    let prompt = tokens(n, vocab, 1);
    let mut seq = g.new_sequence();
    g.device().synchronize()?;
    let t = Instant::now();
    let r = (|| -> Res<()> {
        for c in prompt.chunks(chunk) {
            g.forward(&mut [SeqTokens { seq: &mut seq, tokens: c }])?;
        }
        g.device().synchronize()?;
        Ok(())
    })();
    let s = t.elapsed().as_secs_f64();
    g.release(seq);
    r?;
    Ok(n as f64 / s)
}

/// `steps` decode steps of `batch` sequences after `prompt`-token prompts, greedy on the
/// GPU: tokens/s over all sequences.
fn decode(g: &mut GpuModel, batch: usize, prompt: usize, steps: usize) -> Res<f64> {
    let vocab = g.config().vocab;
    let chunk = g.options().max_batch_tokens;
    let mut seqs: Vec<_> = (0..batch).map(|_| g.new_sequence()).collect();
    let mut samplers: Vec<Sampler> = (0..batch).map(|_| Sampler::new(SamplingParams::default())).collect::<Result<_, _>>()?;
    let r = (|| -> Res<f64> {
        // Prefill each sequence (in chunks), then decode all together.
        let mut next = Vec::with_capacity(batch);
        for (b, seq) in seqs.iter_mut().enumerate() {
            let p = tokens(prompt, vocab, b + 2);
            for c in p.chunks(chunk) {
                g.forward(&mut [SeqTokens { seq, tokens: c }])?;
            }
            next.push(g.sample(&mut [&mut samplers[b]])?[0]);
        }
        g.device().synchronize()?;
        let t = Instant::now();
        for _ in 0..steps {
            let feeds: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
            let mut items: Vec<SeqTokens<'_>> = seqs.iter_mut().zip(&feeds).map(|(seq, f)| SeqTokens { seq, tokens: f }).collect();
            g.forward(&mut items)?;
            let mut refs: Vec<&mut Sampler> = samplers.iter_mut().collect();
            next = g.sample(&mut refs)?;
        }
        Ok((batch * steps) as f64 / t.elapsed().as_secs_f64())
    })();
    for s in seqs {
        g.release(s);
    }
    r
}

/// `steps` decode steps of one sequence drawing with `params`: on the GPU's candidates
/// (`GpuModel::sample`), or (`host`) every logit copied to the host and drawn there.
/// Tokens/s, and the shares of GPU draws that copied their whole row and a part of it.
fn decode_sampled(g: &mut GpuModel, params: &SamplingParams, host: bool, steps: usize) -> Res<(f64, f64, f64)> {
    let vocab = g.config().vocab;
    let mut seq = g.new_sequence();
    let mut sampler = Sampler::new(params.clone())?;
    let prompt = tokens(32, vocab, 3);
    sampler.observe(&prompt);
    let before = g.sample_stats();
    let r = (|| -> Res<f64> {
        g.forward(&mut [SeqTokens { seq: &mut seq, tokens: &prompt }])?;
        let mut next = g.sample(&mut [&mut sampler])?[0];
        g.device().synchronize()?;
        let t = Instant::now();
        for _ in 0..steps {
            g.forward(&mut [SeqTokens { seq: &mut seq, tokens: &[next] }])?;
            next = if host { sampler.sample(&mut g.logits()?)? } else { g.sample(&mut [&mut sampler])?[0] };
        }
        Ok(steps as f64 / t.elapsed().as_secs_f64())
    })();
    g.release(seq);
    let after = g.sample_stats();
    let rows = ((after.rows - before.rows) as f64).max(1.0);
    let rows_share = (after.row_copies - before.row_copies) as f64 / rows;
    let parts_share = (after.part_copies - before.part_copies) as f64 / rows;
    Ok((r?, rows_share, parts_share))
}

/// `steps` greedy tokens of one sequence after a one-token prompt, pipelined on the GPU
/// (`GpuModel::decode_greedy`); tokens/s of the decode steps.
fn tg_pipelined(g: &mut GpuModel, steps: usize) -> Res<f64> {
    let vocab = g.config().vocab;
    let mut seq = g.new_sequence();
    let mut sampler = Sampler::new(SamplingParams::default())?;
    let r = (|| -> Res<f64> {
        g.forward(&mut [SeqTokens { seq: &mut seq, tokens: &tokens(1, vocab, 1) }])?;
        let first = g.sample(&mut [&mut sampler])?[0];
        g.device().synchronize()?;
        let t = Instant::now();
        let ids = g.decode_greedy(&mut seq, first, steps)?;
        Ok(ids.len() as f64 / t.elapsed().as_secs_f64())
    })();
    g.release(seq);
    r
}

fn run(args: &Args) -> Res<serde_json::Value> {
    let dtype = match args.dtype {
        WeightType::F16 => DType::F16,
        WeightType::Bf16 => DType::BF16,
        WeightType::F32 => DType::F32,
    };
    let (name, cfg, ck) = match &args.model {
        Some(dir) => (dir.display().to_string(), ModelConfig::from_dir(dir)?, Some(Checkpoint::open(dir)?)),
        None => {
            let p = ModelPreset::from(args.preset).config();
            (
                format!(
                    "{} (random weights, seed {})",
                    args.preset.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default(),
                    args.seed
                ),
                p,
                None,
            )
        }
    };
    let opts = GpuOptions {
        dtype,
        max_batch_tokens: args.max_batch_tokens,
        gpu_memory_fraction: args.gpu_memory_fraction,
        cuda_graphs: !args.no_graphs,
        gemv: !args.no_gemv,
        pair_epilogues: !args.no_pair_epilogues,
        fold_norms: !args.no_fold_norms,
        persistent_decode: args.persistent,
        step_clock: args.step_clock,
        ..GpuOptions::default()
    };
    // The arguments and the model are checked before the device is opened, so a typo
    // is reported as itself even on a machine without a GPU.
    opts.validate()?;
    if args.context > 0 && args.context <= 32 {
        return Err(format!(
            "--context {}: the long-context check prefills N - 32 tokens and decodes 32; give more than 32, or 0 to skip it",
            args.context
        )
        .into());
    }
    // The runtime's own advice (choose the cpu device) does not apply here: bench
    // measures the GPU forward only.
    let dev = CudaDevice::open(0).map_err(|e| match e {
        CudaError::NoDevice(why) => format!(
            "no NVIDIA GPU available ({why}): bench measures the GPU forward and needs one; check the driver with \
             nvidia-smi (`generate` runs models on the CPU)"
        )
        .into(),
        e => Box::new(e) as Box<dyn std::error::Error>,
    })?;
    let (free0, total) = dev.memory_info()?;
    let bar = common::upload_bar();
    let progress = common::upload_progress(&bar);
    let t = Instant::now();
    let mut g = match &ck {
        Some(ck) => GpuModel::load(&dev, cfg, &mut &*ck, opts, progress)?,
        None => GpuModel::load(&dev, cfg, &mut RandomWeights { seed: args.seed }, opts, progress)?,
    };
    bar.finish_and_clear();
    let load_s = t.elapsed().as_secs_f64();
    let (free1, _) = dev.memory_info()?;
    let mem = *g.memory();
    let bw = copy_bandwidth(&dev)?;
    let limit = bw / mem.weights as f64;
    eprintln!(
        "{name}: {} on {}, weights {:.2} GB, KV cache {} tokens ({:.2} GB), {:.2} GB of {:.2} GB used, loaded in {load_s:.1} s",
        dtype,
        dev.name(),
        mem.weights as f64 / 1e9,
        mem.kv_tokens,
        mem.kv_bytes() as f64 / 1e9,
        (free0 - free1) as f64 / 1e9,
        total as f64 / 1e9
    );
    let (compile_s, compiled, cached) = dev.compile_stats();
    eprintln!("kernels at load: {compiled} modules compiled, {cached} read from the disk cache, {compile_s:.1} s (summed over threads)");
    eprintln!("copy bandwidth {:.0} GB/s -> decode limit {limit:.1} tok/s", bw / 1e9);
    let (folded, norms) = g.folded_norms();
    eprintln!("norm weights folded into the products after them: {folded} of {norms}");
    let reps = args.reps.max(1);
    let mut results = Vec::new();
    let mut row = |test: String, tok_s: f64, extra: serde_json::Value| {
        if args.output == Output::Table {
            let frac = extra.get("fraction_of_limit").and_then(|v| v.as_f64()).map_or(String::new(), |f| format!("{f:.3} of limit"));
            println!("{test:<14} {tok_s:>12.1} tok/s  {frac}");
        }
        let mut o = serde_json::json!({ "test": test, "tok_s": tok_s });
        if let (Some(o), Some(e)) = (o.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        results.push(o);
    };
    for &n in &args.prompt.0 {
        // The warm-up has the measured length: the vendor BLAS loads a product's kernel
        // the first time a shape picks it (tens of milliseconds).
        pp(&mut g, n)?;
        let v: Vec<f64> = (0..reps).map(|_| pp(&mut g, n)).collect::<Res<_>>()?;
        row(format!("pp{n}"), median(v), serde_json::json!({}));
    }
    if args.gen > 0 {
        // The warm-up has the measured length: it captures the decode graphs and the
        // chains of greedy steps the timed runs replay.
        tg_pipelined(&mut g, args.gen)?;
        let v: Vec<f64> = (0..reps).map(|_| tg_pipelined(&mut g, args.gen)).collect::<Res<_>>()?;
        let tok_s = median(v);
        if let Some(t) = g.step_phase_times()? {
            eprintln!(
                "persistent step phases (us, last step, per layer): qkv {:.2} attention {:.2} o {:.2} gate_up {:.2} down {:.2}; lm_head {:.2}; an empty barrier {:.2}",
                t[0], t[1], t[2], t[3], t[4], t[5], t[6]
            );
        }
        row(
            format!("tg{}", args.gen),
            tok_s,
            serde_json::json!({ "fraction_of_limit": tok_s / limit, "limit_tok_s": limit, "pipelined": true }),
        );
        decode(&mut g, 1, 1, 8)?;
        let v: Vec<f64> = (0..reps).map(|_| decode(&mut g, 1, 1, args.gen)).collect::<Res<_>>()?;
        let tok_s = median(v);
        row(
            format!("tg{} token by token", args.gen),
            tok_s,
            serde_json::json!({ "fraction_of_limit": tok_s / limit, "limit_tok_s": limit, "pipelined": false }),
        );
    }
    if args.sampling {
        let d = SamplingParams::default();
        let settings = [
            ("t0.6 top-p0.9", SamplingParams { temperature: 0.6, top_p: 0.9, ..d.clone() }),
            ("t1.0", SamplingParams { temperature: 1.0, ..d.clone() }),
            ("t0.7 top-k40", SamplingParams { temperature: 0.7, top_k: 40, ..d.clone() }),
            ("t0.2 min-p0.1", SamplingParams { temperature: 0.2, min_p: 0.1, ..d.clone() }),
            ("t0.8 top-p0.9 rep1.1", SamplingParams { temperature: 0.8, top_p: 0.9, repetition_penalty: 1.1, ..d.clone() }),
            ("greedy rep1.1", SamplingParams { repetition_penalty: 1.1, ..d.clone() }),
        ];
        let steps = args.gen.max(1);
        for (label, params) in settings {
            decode_sampled(&mut g, &params, false, 4)?;
            let mut gpu = Vec::new();
            let mut host = Vec::new();
            let (mut rows_share, mut parts_share) = (0.0, 0.0);
            for _ in 0..reps {
                let (t, r, p) = decode_sampled(&mut g, &params, false, steps)?;
                gpu.push(t);
                (rows_share, parts_share) = (r, p);
                host.push(decode_sampled(&mut g, &params, true, steps)?.0);
            }
            let (gpu, host) = (median(gpu), median(host));
            let extra = serde_json::json!({
                "steps": steps,
                "host_draw_tok_s": host,
                "row_copy_share": rows_share,
                "part_copies_per_draw": parts_share,
            });
            row(format!("sampled {label}"), gpu, extra);
            if args.output == Output::Table {
                println!(
                    "  drawn on GPU candidates ({:.0}% of draws copied the row, {:.2} parts copied a draw); every logit drawn on the host: {host:.1} tok/s",
                    rows_share * 100.0,
                    parts_share
                );
            }
        }
    }
    for &b in &args.batch.0 {
        decode(&mut g, b, 32, 2)?;
        let v: Vec<f64> = (0..reps).map(|_| decode(&mut g, b, 32, 64)).collect::<Res<_>>()?;
        row(format!("decode b{b}"), median(v), serde_json::json!({ "batch": b, "prompt": 32, "steps": 64 }));
    }
    if args.context > 0 {
        // The decode graphs of every width up to the context, captured before the timing.
        g.warm_up(&[], args.context)?;
        let v = decode(&mut g, 1, args.context - 32, 32)?;
        row(format!("ctx{}", args.context), v, serde_json::json!({ "context": args.context, "steps": 32 }));
    }
    let mut profile = serde_json::Map::new();
    if args.profile {
        let n = args.prompt.0.first().copied().unwrap_or(512);
        for (label, batch) in [("pp", 0), ("tg", 1), ("b4", 4)] {
            g.set_profiling(true);
            if batch == 0 {
                pp(&mut g, n)?;
            } else {
                decode(&mut g, batch, 1, 32)?;
            }
            g.set_profiling(false);
            let stages = g.take_profile();
            let total: f64 = stages.iter().filter(|s| !s.0.starts_with('(')).map(|s| s.1).sum();
            // One host-enqueue entry per forward (the stages count once per layer).
            let forwards = stages.iter().find(|s| s.0 == "(host enqueue)").map_or(1, |s| s.2).max(1);
            eprintln!("profile {label}: {:.3} ms of GPU time per forward over {forwards} forwards", total / forwards as f64);
            for (stage, ms, _) in &stages {
                eprintln!("  {stage:<16} {:>9.3} ms/forward {:>6.1}%", ms / forwards as f64, 100.0 * ms / total.max(1e-12));
                profile.insert(format!("{label}.{stage}"), serde_json::json!(ms / forwards as f64));
            }
        }
    }
    Ok(serde_json::json!({
        "profile_ms_per_forward": profile,
        "model": name,
        "device": dev.name(),
        "dtype": dtype.to_string(),
        "decode_products": if args.no_gemv { "cublas" } else { "gemv kernel at one sequence, cublas at more" },
        "cuda_graphs": !args.no_graphs,
        "pair_epilogues": !args.no_gemv && !args.no_pair_epilogues,
        "fold_norms": !args.no_fold_norms,
        "folded_norms": g.folded_norms().0,
        "persistent_decode": g.persistent_decode(),
        "weight_bytes": mem.weights,
        "kv_cache_tokens": mem.kv_tokens,
        "kv_cache_bytes": mem.kv_bytes(),
        "memory_used_bytes": free0 - free1,
        "copy_bandwidth_bytes_s": bw,
        "decode_limit_tok_s": limit,
        "load_s": load_s,
        "results": results,
    }))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(v) => {
            if args.output == Output::Json {
                println!("{v}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
