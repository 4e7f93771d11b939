//! An interactive chat on the CPU: each line you type is a user message; the model's
//! chat template renders the whole history and the reply streams back.
//! `/reset` forgets the history, `/quit` (or end of input) leaves.
//!
//! ```text
//! cargo run --release -p rocmforge-models --example chat -- --model DIR [--system "You are ..."]
//! ```

#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a command-line program")]

mod common;

use std::io::{BufRead, Write};
use std::process::ExitCode;

use clap::Parser;
use common::{ModelArgs, SamplingArgs};
use rocmforge_models::tokenizer::{ChatTemplate, Message};
use rocmforge_models::GenerateOptions;

/// Chat with a RocmForge model (CPU).
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// System message at the start of the conversation.
    #[arg(long)]
    system: Option<String>,
    /// New tokens per reply at most.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
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
    let (model, demo) = common::load(&args.model, false)?;
    if demo {
        println!("note: no --model given: chatting with the built-in tiny demo model (random weights); its replies are meaningless");
    }
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
    let mut sampling = args.sampling.params(&model);
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
        let result = model.generate(&ids, &opts, |piece| {
            print!("{piece}");
            let _ = stdout.flush();
        });
        println!();
        match result {
            Ok(g) => {
                match g.decode_tok_s {
                    Some(r) => eprintln!("[{} tokens, {r:.1} tok/s]", g.generated_ids.len()),
                    None => eprintln!("[{} tokens]", g.generated_ids.len()),
                }
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
