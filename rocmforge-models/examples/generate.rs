//! Generates text from a Hugging Face model directory on the CPU (or, built with
//! `--features cuda`, on an NVIDIA GPU with `--device cuda:0`), streaming it as it comes. With no `--model`, runs the built-in tiny demo model (deterministic random
//! weights, byte vocabulary), so it works on any machine.
//!
//! ```text
//! cargo run --release -p rocmforge-models --example generate
//! cargo run --release -p rocmforge-models --example generate -- --model DIR --prompt "Hello" --max-tokens 64
//! cargo run --release -p rocmforge-models --example generate -- --model DIR --chat --prompt "Hi" --output json
//! ```

#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a command-line program")]

mod common;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use common::{ModelArgs, SamplingArgs};
use rocmforge_models::tokenizer::Message;
use rocmforge_models::GenerateOptions;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Stream the text, then the speeds.
    Text,
    /// One JSON object at the end: prompt_ids, generated_ids, text, prefill_tok_s,
    /// decode_tok_s (null for a phase that did not run), finish, model, device,
    /// weight_bytes, peak_rss_bytes.
    Json,
}

/// Generate text with a RocmForge model (CPU, or an NVIDIA GPU with --device cuda:0).
#[derive(Parser, Debug)]
#[command(version, long_about = None)]
struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt.
    #[arg(long, default_value = "Once upon a time")]
    prompt: String,
    /// Treat the prompt as a user message and apply the model's chat template.
    #[arg(long)]
    chat: bool,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// New tokens at most.
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

fn main() -> ExitCode {
    common::exit(run(&Args::parse()))
}

fn run(args: &Args) -> Result<(), String> {
    let text_out = args.output == Output::Text;
    let (model, demo) = common::load(&args.model, true)?;
    let cfg = model.transformer.config();
    if demo && text_out {
        println!(
            "note: no --model given: running the built-in tiny demo model (deterministic random weights, {} layers, hidden {}); its text is meaningless",
            cfg.layers, cfg.hidden
        );
    }
    let prompt_text = if args.chat {
        let tmpl = model
            .chat_template
            .as_ref()
            .ok_or("--chat: this model has no chat template (tokenizer_config.json's chat_template or chat_template.jinja)")?;
        let mut msgs = Vec::new();
        if let Some(s) = &args.system {
            msgs.push(Message { role: "system".into(), content: s.clone() });
        }
        msgs.push(Message { role: "user".into(), content: args.prompt.clone() });
        tmpl.render(&msgs, true).map_err(|e| e.to_string())?
    } else {
        args.prompt.clone()
    };
    // A chat rendering carries its own special tokens; a plain prompt gets the tokenizer's.
    let prompt_ids = model.codec.encode(&prompt_text, !args.chat).map_err(|e| e.to_string())?;
    if prompt_ids.is_empty() {
        return Err("the prompt is empty: pass --prompt TEXT".into());
    }
    let opts = GenerateOptions {
        max_tokens: args.max_tokens,
        sampling: args.sampling.params(&model),
        stop: args.sampling.stop.clone(),
        eos: if args.sampling.ignore_eos { Vec::new() } else { model.eos_ids() },
    };
    // Bad sampling flags are refused before anything is printed or run.
    opts.sampling.validate().map_err(|e| e.to_string())?;
    let mut stdout = std::io::stdout();
    if text_out {
        print!("{prompt_text}");
        let _ = stdout.flush();
    }
    let mut on_text = |piece: &str| {
        if text_out {
            print!("{piece}");
            let _ = stdout.flush();
        }
    };
    let device = args.model.device.clone();
    let g = match common::cuda_ordinal(&device) {
        Some(ordinal) => gpu_generate(&model, ordinal, &prompt_ids, &opts, &mut on_text)?,
        None => model.generate(&prompt_ids, &opts, on_text).map_err(|e| e.to_string())?,
    };
    let name = model.dir.as_ref().map_or("demo".to_string(), |d| d.display().to_string());
    match args.output {
        Output::Text => {
            println!();
            // With nothing to generate the prompt is not run (generate returns at once);
            // the first new token comes from the prefill, so one token has no decode rate.
            let prefill = match g.prefill_tok_s {
                Some(r) => format!("{} tokens, {r:.1} tok/s", g.prompt_ids.len()),
                None => format!("{} tokens, not run (--max-tokens 0)", g.prompt_ids.len()),
            };
            let decode = match g.decode_tok_s {
                Some(r) => format!("{} tokens, {r:.1} tok/s", g.generated_ids.len()),
                None => format!("{} tokens, no decode step", g.generated_ids.len()),
            };
            eprintln!("\nprefill: {prefill}; decode: {decode}; stopped by {:?} ({device}, {})", g.finish, name);
        }
        Output::Json => {
            let obj = serde_json::json!({
                "model": name,
                "device": device,
                "prompt_ids": g.prompt_ids,
                "generated_ids": g.generated_ids,
                "text": g.text,
                "finish": g.finish,
                "prefill_tok_s": g.prefill_tok_s,
                "decode_tok_s": g.decode_tok_s,
                "weight_bytes": model.weight_bytes,
                "peak_rss_bytes": common::peak_rss_bytes(),
            });
            println!("{obj}");
        }
    }
    Ok(())
}

/// The generation on GPU `ordinal`: weights in the checkpoint's dtype (bf16 when it
/// declares none), a KV cache for this prompt and answer, greedy or top-k sampling on the
/// GPU.
#[cfg(feature = "cuda")]
fn gpu_generate(
    model: &rocmforge_models::Model,
    ordinal: usize,
    prompt_ids: &[u32],
    opts: &GenerateOptions,
    on_text: &mut dyn FnMut(&str),
) -> Result<rocmforge_models::Generation, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let tokens = prompt_ids.len() + opts.max_tokens + 1;
    let mut g = common::gpu_model(model, ordinal, Some(tokens))?;
    // The first launches compile or load kernels and capture the decode graphs: outside
    // the prefill's and the decode's timing.
    if opts.max_tokens > 0 {
        let chunks: Vec<usize> = prompt_ids.chunks(g.options().max_batch_tokens.max(1)).map(<[u32]>::len).collect();
        g.warm_up(&chunks, tokens).map_err(|e| err(&e))?;
    }
    // A conversation of one turn: greedy decode runs pipelined on the device, a step
    // staged on the host then two chains of greedy steps (each replayed as one graph) at
    // a time.
    let round = 1 + 2 * rocmforge_models::gpu::CHAIN;
    let mut conv = rocmforge_models::chat::Conversation::new(rocmforge_models::gpu::GpuDecoder::new(&mut g)).pipelined(round);
    conv.generate(&model.codec, prompt_ids, opts, on_text).map(|t| t.generation).map_err(|e| err(&e))
}

#[cfg(not(feature = "cuda"))]
fn gpu_generate(
    _model: &rocmforge_models::Model,
    _ordinal: usize,
    _prompt_ids: &[u32],
    _opts: &GenerateOptions,
    _on_text: &mut dyn FnMut(&str),
) -> Result<rocmforge_models::Generation, String> {
    Err("this build has no GPU support: add `--features cuda` to the cargo command".into())
}
