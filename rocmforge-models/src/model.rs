//! A model ready to generate: weights, tokenizer, chat template and generation defaults,
//! loaded from a Hugging Face directory; and the generation loop (streaming text, stop
//! strings, EOS, speeds).

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::chat::{Conversation, CpuDecoder};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::kv::KvPool;
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::{ChatTemplate, GenerationDefaults, TextCodec, TextStream};
use crate::transformer::Transformer;
use crate::weights::Checkpoint;

/// A loaded model.
#[derive(Debug)]
pub struct Model {
    /// The network.
    pub transformer: Transformer,
    /// Text in and out.
    pub codec: TextCodec,
    /// The chat template, where the checkpoint has one.
    pub chat_template: Option<ChatTemplate>,
    /// generation_config.json.
    pub defaults: GenerationDefaults,
    /// Where it was loaded from (`None` for the demo model).
    pub dir: Option<PathBuf>,
    /// Bytes of weight data in the checkpoint files.
    pub weight_bytes: usize,
}

/// Loading options.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Draw a progress bar on stderr (only when stderr is a terminal).
    pub progress: bool,
}

impl Model {
    /// Loads a Hugging Face model directory: config.json, safetensors (single or sharded,
    /// memory-mapped), tokenizer.json, the chat template and generation_config.json.
    pub fn load(dir: &Path, opts: LoadOptions) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::MissingFile {
                path: dir.to_path_buf(),
                what: "config.json, the safetensors weights and tokenizer.json in a directory",
            });
        }
        let cfg = ModelConfig::from_dir(dir)?;
        let codec = TextCodec::from_dir(dir)?;
        let chat_template = ChatTemplate::from_dir(dir)?;
        let defaults = GenerationDefaults::from_dir(dir)?;
        let ck = Checkpoint::open(dir)?;
        let weight_bytes = ck.data_bytes();
        let bar = if opts.progress {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template("loading {msg} [{bar:30}] {pos}/{len} tensors, {elapsed}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_message(dir.display().to_string());
            Some(bar)
        } else {
            None
        };
        let transformer = Transformer::from_checkpoint(cfg, &ck, |done, total| {
            if let Some(b) = &bar {
                b.set_length(total as u64);
                b.set_position(done as u64);
            }
        });
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        Ok(Model { transformer: transformer?, codec, chat_template, defaults, dir: Some(dir.to_path_buf()), weight_bytes })
    }

    /// The EOS ids: generation_config.json's, else config.json's.
    pub fn eos_ids(&self) -> Vec<u32> {
        if self.defaults.eos_token_ids.is_empty() {
            self.transformer.config().eos_token_ids.clone()
        } else {
            self.defaults.eos_token_ids.clone()
        }
    }

    /// Sampling settings from generation_config.json (greedy where it does not sample).
    pub fn default_sampling(&self) -> SamplingParams {
        let d = &self.defaults;
        let mut p = SamplingParams::default();
        if d.do_sample == Some(true) {
            p.temperature = d.temperature.unwrap_or(1.0);
            p.top_k = d.top_k.unwrap_or(0);
            p.top_p = d.top_p.unwrap_or(1.0);
            p.min_p = d.min_p.unwrap_or(0.0);
        }
        p.repetition_penalty = d.repetition_penalty.unwrap_or(1.0);
        p
    }

    /// A KV pool for up to `tokens` tokens (capped at the model's context length).
    pub fn kv_pool(&self, tokens: usize) -> Result<KvPool> {
        self.transformer.kv_pool(tokens.min(self.transformer.config().max_positions).max(1), 16)
    }

    /// Generates from `prompt_ids`, calling `on_text` with each piece of stable text.
    pub fn generate(&self, prompt_ids: &[u32], opts: &GenerateOptions, mut on_text: impl FnMut(&str)) -> Result<Generation> {
        if prompt_ids.is_empty() {
            return Err(ModelError::Invalid("the prompt has no tokens: pass a non-empty prompt".into()));
        }
        let max_pos = self.transformer.config().max_positions;
        let total = prompt_ids.len() + opts.max_tokens;
        if total > max_pos {
            return Err(ModelError::Invalid(format!(
                "{} prompt tokens + {} new tokens exceed the model's context of {max_pos}; lower --max-tokens or shorten the prompt",
                prompt_ids.len(),
                opts.max_tokens
            )));
        }
        let mut conv = Conversation::new(CpuDecoder::new(self, total)?);
        conv.generate(&self.codec, prompt_ids, opts, &mut on_text).map(|t| t.generation)
    }
}

/// The generation loop shared by the CPU and GPU paths: `step` feeds tokens (the prompt,
/// then each new token) and returns the next token drawn with the sampler. Streams stable
/// text to `on_text`, stops at EOS, a stop string or `max_tokens`, and times both phases.
pub fn generation_loop(
    codec: &TextCodec,
    prompt_ids: &[u32],
    opts: &GenerateOptions,
    on_text: &mut dyn FnMut(&str),
    step: &mut dyn FnMut(&[u32], &mut Sampler) -> Result<u32>,
) -> Result<Generation> {
    let mut sampler = Sampler::new(opts.sampling.clone())?;
    sampler.observe(prompt_ids);
    let t0 = Instant::now();
    let mut next = if opts.max_tokens > 0 { Some(step(prompt_ids, &mut sampler)?) } else { None };
    let prefill_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut stream = TextStream::default();
    let mut stop = StopFilter::new(&opts.stop);
    let mut generated = Vec::new();
    let mut finish = Finish::Length;
    let mut decode_steps = 0usize;
    while let Some(token) = next.take() {
        generated.push(token);
        if opts.eos.contains(&token) {
            finish = Finish::Eos;
            break;
        }
        let piece = stream.push(codec, token)?;
        if stop.push(&piece, on_text) {
            finish = Finish::Stop;
            break;
        }
        if generated.len() < opts.max_tokens {
            next = Some(step(&[token], &mut sampler)?);
            decode_steps += 1;
        }
    }
    if finish != Finish::Stop {
        stop.flush(on_text);
    }
    let decode_s = t1.elapsed().as_secs_f64();
    Ok(Generation {
        prompt_ids: prompt_ids.to_vec(),
        generated_ids: generated,
        text: stop.text,
        finish,
        // No prefill runs when no token is asked for, and no decode step when one is (the
        // prefill gives it): no speed to report for what did not run.
        prefill_tok_s: (opts.max_tokens > 0).then(|| prompt_ids.len() as f64 / prefill_s.max(1e-9)),
        decode_tok_s: (decode_steps > 0).then(|| decode_steps as f64 / decode_s.max(1e-9)),
    })
}

/// What ends a generation besides the model.
#[derive(Debug, Clone, Default)]
pub struct GenerateOptions {
    /// New tokens at most.
    pub max_tokens: usize,
    /// Sampling.
    pub sampling: SamplingParams,
    /// Strings that end generation (not included in the text).
    pub stop: Vec<String>,
    /// Token ids that end generation (included in the ids, not in the text).
    pub eos: Vec<u32>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    /// `max_tokens` reached.
    Length,
    /// An EOS token.
    Eos,
    /// A stop string.
    Stop,
}

/// The outcome of a generation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Generation {
    /// The prompt's ids.
    pub prompt_ids: Vec<u32>,
    /// The new ids.
    pub generated_ids: Vec<u32>,
    /// The new text (stop string and special tokens left out).
    pub text: String,
    /// Why it ended.
    pub finish: Finish,
    /// Prompt tokens per second; `None` when the prompt was not run (no token asked for).
    pub prefill_tok_s: Option<f64>,
    /// Decode steps per second; `None` when no decode step ran (at most one new token,
    /// which the prefill gives).
    pub decode_tok_s: Option<f64>,
}

/// Passes text through, holding back what could still become a stop string.
#[derive(Debug)]
struct StopFilter<'a> {
    stops: &'a [String],
    text: String,
    flushed: usize,
}

impl<'a> StopFilter<'a> {
    fn new(stops: &'a [String]) -> Self {
        StopFilter { stops, text: String::new(), flushed: 0 }
    }

    /// Adds text; returns true when a stop string has appeared (the text is cut before it).
    fn push(&mut self, piece: &str, out: &mut dyn FnMut(&str)) -> bool {
        let from = self.text.len().saturating_sub(self.stops.iter().map(String::len).max().unwrap_or(0));
        self.text.push_str(piece);
        let hit = self
            .stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| {
                (from..self.text.len()).filter(|&i| self.text.is_char_boundary(i)).find(|&i| self.text[i..].starts_with(s.as_str()))
            })
            .min();
        if let Some(at) = hit {
            self.text.truncate(at);
            self.flush(out);
            return true;
        }
        // Hold back the longest tail that is a proper prefix of a stop string.
        let hold = self
            .stops
            .iter()
            .flat_map(|s| (1..s.len()).filter(|&n| s.is_char_boundary(n) && self.text.ends_with(&s[..n])))
            .max()
            .unwrap_or(0);
        let upto = self.text.len() - hold;
        if upto > self.flushed {
            out(&self.text[self.flushed..upto]);
            self.flushed = upto;
        }
        false
    }

    fn flush(&mut self, out: &mut dyn FnMut(&str)) {
        if self.text.len() > self.flushed {
            out(&self.text[self.flushed..]);
            self.flushed = self.text.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut f = StopFilter::new(&stops);
        let mut streamed = String::new();
        let mut hit = false;
        for p in pieces {
            if f.push(p, &mut |s| streamed.push_str(s)) {
                hit = true;
                break;
            }
        }
        if !hit {
            f.flush(&mut |s| streamed.push_str(s));
        }
        (f.text, streamed, hit)
    }

    #[test]
    fn stop_string_split_across_pieces_is_cut_and_never_streamed() {
        let (text, streamed, hit) = run(&["</end>"], &["hello </", "en", "d> more"]);
        assert!(hit);
        assert_eq!(text, "hello ");
        assert_eq!(streamed, "hello ");
    }

    #[test]
    fn held_back_prefix_is_released_when_it_does_not_complete() {
        let (text, streamed, hit) = run(&["STOP"], &["a ST", "ART b"]);
        assert!(!hit);
        assert_eq!(text, "a START b");
        assert_eq!(streamed, "a START b");
    }
}
