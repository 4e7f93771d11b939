//! What the `generate` and `chat` examples share: model selection, sampling flags and the
//! peak-memory reading.

#![allow(dead_code, reason = "each example uses a part")]

use std::path::PathBuf;

use clap::Args;
use rocmforge_models::sampling::SamplingParams;
use rocmforge_models::{LoadOptions, Model};

/// Which model to run and where.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Hugging Face model directory (config.json, *.safetensors, tokenizer.json; optional
    /// tokenizer_config.json with a chat template and generation_config.json). Without it,
    /// the built-in demo model runs (random weights, byte vocabulary).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Device to run on: `cpu`, or `cuda:N` in a build with `--features cuda` (with
    /// --model; the checkpoint's weights are also read for the CPU once).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Sampling flags; each unset flag falls back to the model's generation_config.json, then
/// to greedy decoding.
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Temperature; 0 is greedy.
    #[arg(long, allow_negative_numbers = true)]
    pub temperature: Option<f32>,
    /// Keep only the k most likely tokens (0: off).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass (1: off).
    #[arg(long, allow_negative_numbers = true)]
    pub top_p: Option<f32>,
    /// Drop tokens less likely than this fraction of the top token (0: off).
    #[arg(long, allow_negative_numbers = true)]
    pub min_p: Option<f32>,
    /// Repetition penalty as in HF transformers (1: off).
    #[arg(long, allow_negative_numbers = true)]
    pub repetition_penalty: Option<f32>,
    /// Presence penalty, subtracted once from tokens already seen (0: off).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub presence_penalty: f32,
    /// Frequency penalty, subtracted per earlier occurrence (0: off).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub frequency_penalty: f32,
    /// Seed of the sampler: the same seed, model and flags give the same output.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when this text appears (repeatable); it is not printed.
    #[arg(long = "stop", value_name = "TEXT")]
    pub stop: Vec<String>,
    /// Keep going past EOS tokens.
    #[arg(long)]
    pub ignore_eos: bool,
}

impl SamplingArgs {
    /// The flags over the model's defaults.
    pub fn params(&self, model: &Model) -> SamplingParams {
        let mut p = model.default_sampling();
        if let Some(t) = self.temperature {
            p.temperature = t;
        }
        if let Some(k) = self.top_k {
            p.top_k = k;
        }
        if let Some(v) = self.top_p {
            p.top_p = v;
        }
        if let Some(v) = self.min_p {
            p.min_p = v;
        }
        if let Some(v) = self.repetition_penalty {
            p.repetition_penalty = v;
        }
        p.presence_penalty = self.presence_penalty;
        p.frequency_penalty = self.frequency_penalty;
        p.seed = self.seed;
        p
    }
}

/// The CUDA ordinal of a `cuda:N` device name.
pub fn cuda_ordinal(device: &str) -> Option<usize> {
    device.strip_prefix("cuda:").and_then(|n| n.parse().ok())
}

/// Loads the model the flags name; `Ok((model, true))` for the built-in demo. `gpu_ok`:
/// the caller runs `cuda:N` itself (the tokenizer, template and defaults come from here).
pub fn load(args: &ModelArgs, gpu_ok: bool) -> Result<(Model, bool), String> {
    let gpu = cuda_ordinal(&args.device).is_some();
    if args.device != "cpu" && !(gpu && gpu_ok) {
        return Err(format!(
            "device `{}`: this program runs on `cpu`{}; the GPU forward runs in `generate` and `chat` with `--device cuda:N` \
             and in the `bench` example (build with --features cuda)",
            args.device,
            if gpu_ok { " or `cuda:N`" } else { " only" }
        ));
    }
    if gpu && !cfg!(feature = "cuda") {
        return Err(format!("device `{}` needs a build with the GPU: add `--features cuda` to the cargo command", args.device));
    }
    match &args.model {
        Some(dir) => {
            let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
            Model::load(dir, LoadOptions { progress }).map(|m| (m, false)).map_err(|e| e.to_string())
        }
        None if gpu => Err("the built-in demo model runs on the cpu only: pass --model DIR to run on the GPU".into()),
        None => rocmforge_models::demo::model(0x5eed).map(|m| (m, true)).map_err(|e| e.to_string()),
    }
}

/// `model` on GPU `ordinal`, weights in the checkpoint's dtype (bf16 where it declares
/// none), a KV cache of `max_kv_tokens` tokens for one sequence (`None`: sized from the
/// free memory), the upload drawn as a progress bar.
#[cfg(feature = "cuda")]
pub fn gpu_model(model: &Model, ordinal: usize, max_kv_tokens: Option<usize>) -> Result<rocmforge_models::gpu::GpuModel, String> {
    use rocmforge_models::config::WeightDType;
    use rocmforge_models::gpu::{GpuModel, GpuOptions};
    use rocmforge_runtime::DType;
    let dir = model.dir.as_ref().ok_or("the GPU path needs --model DIR")?;
    let cfg = model.transformer.config().clone();
    let dtype = match cfg.dtype {
        Some(WeightDType::F32) => DType::F32,
        Some(WeightDType::F16) => DType::F16,
        _ => DType::BF16,
    };
    let dev = rocmforge_runtime::cuda::CudaDevice::open(ordinal).map_err(|e| e.to_string())?;
    let ck = rocmforge_models::weights::Checkpoint::open(dir).map_err(|e| e.to_string())?;
    let gopts = GpuOptions { dtype, max_seqs: 1, max_kv_tokens, ..GpuOptions::default() };
    let bar = upload_bar();
    let loaded = GpuModel::load(&dev, cfg, &mut &ck, gopts, upload_progress(&bar));
    bar.finish_and_clear();
    loaded.map_err(|e| e.to_string())
}

/// The process's exit: success, or the error on stderr and a failure code.
pub fn exit(result: Result<(), String>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Peak resident memory of this process in bytes (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A progress bar of a weight upload to the GPU, in bytes, on stderr (indicatif hides it
/// where stderr is not a terminal); [`upload_progress`] feeds it.
pub fn upload_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("uploading weights [{bar:30}] {bytes}/{total_bytes} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// `GpuModel::load`'s progress callback (bytes done, bytes in all), drawn on `bar`.
pub fn upload_progress(bar: &indicatif::ProgressBar) -> impl FnMut(u64, u64) + '_ {
    |done, all| {
        bar.set_length(all);
        bar.set_position(done);
    }
}
