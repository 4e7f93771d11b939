//! Generates text. With no `--model`, runs the built-in tiny demo model (deterministic
//! random weights, byte vocabulary) on the CPU, so it works on any machine.

#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a command-line program")]

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use rocmforge_models::demo::{sample, DemoConfig, DemoModel, Rng};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Stream the text, then the speeds.
    Text,
    /// One JSON object at the end.
    Json,
}

/// Generate text with a RocmForge model.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Hugging Face model directory (config.json, *.safetensors, tokenizer.json).
    /// Without it, the built-in demo model runs.
    #[arg(long)]
    model: Option<std::path::PathBuf>,
    /// The prompt.
    #[arg(long, default_value = "Once upon a time")]
    prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Seed for the sampler (and the demo model's weights).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device: `cpu` (the only one this build runs models on).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(dir) = &args.model {
        eprintln!(
            "error: loading checkpoints (--model {}) is not available in this build yet; run without --model for the built-in demo model",
            dir.display()
        );
        return ExitCode::from(2);
    }
    if args.device != "cpu" {
        eprintln!("error: device `{}` cannot run models in this build; use --device cpu", args.device);
        return ExitCode::from(2);
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let text_out = args.output == Output::Text;
    let cfg = DemoConfig::default();
    if text_out {
        println!(
            "note: no --model given: running the built-in tiny demo model (deterministic random weights, {} layers, hidden {}); its text is meaningless",
            cfg.layers, cfg.hidden
        );
    }
    let mut model = DemoModel::new(cfg, 0x5eed);
    let mut rng = Rng::new(args.seed);
    let prompt_ids: Vec<u32> = args.prompt.bytes().map(u32::from).collect();
    if prompt_ids.is_empty() {
        return Err("the prompt is empty: pass --prompt TEXT".into());
    }
    let t0 = Instant::now();
    let mut logits = Vec::new();
    for &t in &prompt_ids {
        logits = model.forward(t)?;
    }
    let prefill_s = t0.elapsed().as_secs_f64();
    let mut generated = Vec::new();
    let t1 = Instant::now();
    let mut stdout = std::io::stdout();
    if text_out {
        print!("{}", args.prompt);
    }
    for step in 0..args.max_tokens {
        let next = sample(&logits, args.temperature, &mut rng);
        generated.push(next);
        if text_out {
            print!("{}", String::from_utf8_lossy(&[next as u8]).escape_debug());
            stdout.flush()?;
        }
        if step + 1 < args.max_tokens {
            logits = model.forward(next)?;
        }
    }
    let decode_s = t1.elapsed().as_secs_f64();
    let prefill_tok_s = prompt_ids.len() as f64 / prefill_s.max(1e-9);
    let decode_tok_s = generated.len() as f64 / decode_s.max(1e-9);
    let bytes: Vec<u8> = generated.iter().map(|&t| t as u8).collect();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    match args.output {
        Output::Text => println!(
            "\n\nprefill: {} tokens, {prefill_tok_s:.1} tok/s; decode: {} tokens, {decode_tok_s:.1} tok/s (cpu)",
            prompt_ids.len(),
            generated.len()
        ),
        Output::Json => {
            let obj = serde_json::json!({
                "model": "demo",
                "device": "cpu",
                "prompt_ids": prompt_ids,
                "generated_ids": generated,
                "text": text,
                "prefill_tok_s": prefill_tok_s,
                "decode_tok_s": decode_tok_s,
            });
            println!("{obj}");
        }
    }
    Ok(())
}
