//! An interactive chat on the CPU, or on an NVIDIA GPU with `--device cuda:N` (a build
//! with `--features cuda`): each line you type is a user message; the model's chat
//! template renders the whole history and the reply streams back. The KV cache is kept
//! between turns: each turn prefills only what follows the part of the rendered history
//! that is already cached. `/reset` forgets the history, `/quit` (or end of input) leaves.
//!
//! ```text
//! cargo run --release -p rocmforge-models --example chat -- --model DIR [--system "You are ..."]
//! cargo run --release -p rocmforge-models --features cuda --example chat -- --model DIR --device cuda:0
//! ```

#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a command-line program")]

mod common;

use std::io::{BufRead, Write};
use std::process::ExitCode;

use clap::Parser;
use common::{ModelArgs, SamplingArgs};
use rocmforge_models::chat::{Conversation, CpuDecoder, Decoder};
use rocmforge_models::tokenizer::{ChatTemplate, Message};
use rocmforge_models::{GenerateOptions, Model};

/// Chat with a RocmForge model (CPU, or an NVIDIA GPU with --device cuda:0).
#[derive(Parser, Debug)]
#[command(version, long_about = None)]
struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// System message at the start of the conversation.
    #[arg(long)]
    system: Option<String>,
    /// New tokens per reply at most.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Tokens the conversation may hold, prompts and replies together (at most the
    /// model's context); the KV cache is sized for it. A turn past it is refused: /reset.
    #[arg(long, default_value_t = 4096)]
    context: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
}

/// Used when the model has no template of its own (the demo model).
const FALLBACK_TEMPLATE: &str =
    "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";

fn main() -> ExitCode {
    common::exit(run(&Args::parse()))
}

fn run(args: &Args) -> Result<(), String> {
    let (model, demo) = common::load(&args.model, true)?;
    if demo {
        println!("note: no --model given: chatting with the built-in tiny demo model (random weights); its replies are meaningless");
    }
    if args.context == 0 {
        return Err("--context must be at least 1 token".into());
    }
    let context = args.context.min(model.transformer.config().max_positions);
    match common::cuda_ordinal(&args.model.device) {
        Some(ordinal) => gpu_chat(args, &model, ordinal, context),
        None => chat(args, &model, Conversation::new(CpuDecoder::new(&model, context).map_err(|e| e.to_string())?)),
    }
}

#[cfg(feature = "cuda")]
fn gpu_chat(args: &Args, model: &Model, ordinal: usize, context: usize) -> Result<(), String> {
    let mut g = common::gpu_model(model, ordinal, Some(context))?;
    // Kernels loaded (compiled at first use) and decode graphs captured before the first
    // turn; the prompts' lengths are not known yet: prefills of 16 tokens and each power
    // of two up to the batch.
    let batch = g.options().max_batch_tokens.min(context);
    let prefills: Vec<usize> = std::iter::successors(Some(16), |&n| (n < batch).then(|| (2 * n).min(batch))).collect();
    g.warm_up(&prefills, context).map_err(|e| e.to_string())?;
    chat(args, model, Conversation::new(rocmforge_models::gpu::GpuDecoder::new(&mut g)))
}

#[cfg(not(feature = "cuda"))]
fn gpu_chat(_args: &Args, _model: &Model, _ordinal: usize, _context: usize) -> Result<(), String> {
    Err("this build has no GPU support: add `--features cuda` to the cargo command".into())
}

/// The read-reply loop on `conv`.
fn chat<D: Decoder>(args: &Args, model: &Model, mut conv: Conversation<D>) -> Result<(), String> {
    let fallback;
    let tmpl = match &model.chat_template {
        Some(t) => t,
        None => {
            eprintln!("note: the model has no chat template; using a plain `role: text` format");
            fallback = ChatTemplate::new(FALLBACK_TEMPLATE.into(), String::new(), String::new()).map_err(|e| e.to_string())?;
            &fallback
        }
    };
    let mut history: Vec<Message> = Vec::new();
    let reset = |h: &mut Vec<Message>| {
        h.clear();
        if let Some(s) = &args.system {
            h.push(Message { role: "system".into(), content: s.clone() });
        }
    };
    reset(&mut history);
    let mut sampling = args.sampling.params(model);
    // Bad sampling flags are refused before the first prompt.
    sampling.validate().map_err(|e| e.to_string())?;
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    loop {
        print!("> ");
        let _ = stdout.flush();
        let mut line = String::new();
        if stdin.lock().read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            println!();
            return Ok(());
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "" => continue,
            "/quit" | "/exit" => return Ok(()),
            "/reset" => {
                reset(&mut history);
                conv.reset();
                println!("(history cleared)");
                continue;
            }
            _ => {}
        }
        history.push(Message { role: "user".into(), content: line.to_string() });
        let prompt = match tmpl.render(&history, true) {
            Ok(p) => p,
            Err(e) => {
                history.pop();
                eprintln!("error: {e}");
                continue;
            }
        };
        let ids = model.codec.encode(&prompt, false).map_err(|e| e.to_string())?;
        let opts = GenerateOptions {
            max_tokens: args.max_tokens,
            sampling: sampling.clone(),
            stop: args.sampling.stop.clone(),
            eos: if args.sampling.ignore_eos { Vec::new() } else { model.eos_ids() },
        };
        let result = conv.generate(&model.codec, &ids, &opts, &mut |piece| {
            print!("{piece}");
            let _ = stdout.flush();
        });
        println!();
        match result {
            Ok(turn) => {
                let g = &turn.generation;
                let rate = g.decode_tok_s.map(|r| format!(", {r:.1} tok/s")).unwrap_or_default();
                // The prefill rate counts the whole prompt: its time is that of the part fed.
                let prefill = g.prefill_tok_s.map(|r| format!(" in {:.2} ms", ids.len() as f64 / r * 1e3)).unwrap_or_default();
                eprintln!(
                    "[{} tokens{rate}; prompt {} tokens, {} cached, {} prefilled{prefill}; {} of {} context tokens held]",
                    g.generated_ids.len(),
                    ids.len(),
                    turn.reused,
                    ids.len() - turn.reused,
                    conv.cached(),
                    conv.context()
                );
                history.push(Message { role: "assistant".into(), content: g.text.trim().to_string() });
                // A new draw each turn, reproducible from the seed.
                sampling.seed = sampling.seed.wrapping_add(1);
            }
            Err(e) => {
                history.pop();
                eprintln!("error: {e}");
            }
        }
    }
}
