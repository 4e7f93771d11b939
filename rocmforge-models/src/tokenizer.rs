//! Text in and out: the HF tokenizer (tokenizer.json through the tokenizers crate) or the
//! demo model's bytes, the chat template of tokenizer_config.json (or chat_template.jinja)
//! rendered with minijinja as transformers renders it, and generation_config.json.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::Fields;
use crate::error::{read, read_json, ModelError, Result};

/// Turns text into token ids and back.
#[derive(Debug)]
pub enum TextCodec {
    /// A Hugging Face tokenizer.
    Hf {
        /// The tokenizer.
        tokenizer: Box<tokenizers::Tokenizer>,
        /// Where it came from, for messages.
        path: PathBuf,
    },
    /// One token per byte (the demo model).
    Bytes,
}

impl TextCodec {
    /// Loads `DIR/tokenizer.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(ModelError::MissingFile { path, what: "tokenizer.json (the tokenizer, in the HF tokenizers format)" });
        }
        let tokenizer =
            tokenizers::Tokenizer::from_file(&path).map_err(|e| ModelError::Tokenizer { path: path.clone(), reason: e.to_string() })?;
        Ok(TextCodec::Hf { tokenizer: Box::new(tokenizer), path })
    }

    /// Token ids of `text`; `special` adds the tokenizer's BOS/EOS as its post-processor says
    /// (as HF `tokenizer(text)` does).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        match self {
            TextCodec::Hf { tokenizer, path } => tokenizer
                .encode(text, special)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| ModelError::Tokenizer { path: path.clone(), reason: e.to_string() }),
            TextCodec::Bytes => Ok(text.bytes().map(u32::from).collect()),
        }
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match self {
            TextCodec::Hf { tokenizer, path } => {
                tokenizer.decode(ids, true).map_err(|e| ModelError::Tokenizer { path: path.clone(), reason: e.to_string() })
            }
            TextCodec::Bytes => Ok(String::from_utf8_lossy(&ids.iter().map(|&t| t.min(255) as u8).collect::<Vec<_>>()).into_owned()),
        }
    }

    /// The id of a token string, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        match self {
            TextCodec::Hf { tokenizer, .. } => tokenizer.token_to_id(token),
            TextCodec::Bytes => None,
        }
    }
}

/// Incremental detokenization: emits text only once it is stable (no partial UTF-8), using
/// a short window of previous tokens so each step decodes a few tokens, not the whole output.
#[derive(Debug, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl TextStream {
    /// Adds a token; returns the new text it completes, if any.
    pub fn push(&mut self, codec: &TextCodec, id: u32) -> Result<String> {
        self.ids.push(id);
        let before = codec.decode(&self.ids[self.prefix..self.read])?;
        let now = codec.decode(&self.ids[self.prefix..])?;
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') && now.is_char_boundary(before.len()) {
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(now[before.len()..].to_string())
        } else {
            Ok(String::new())
        }
    }
}

/// A chat message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// A model's chat template, ready to render.
#[derive(Debug)]
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// The template of `DIR/tokenizer_config.json` (`chat_template`, a string or the
    /// `default` entry of a list) or `DIR/chat_template.jinja`; `None` when there is none.
    pub fn from_dir(dir: &Path) -> Result<Option<Self>> {
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg = if cfg_path.is_file() { Some(read_json(&cfg_path)?) } else { None };
        let fields = cfg.as_ref().map(|v| Fields::new(&cfg_path, v, "")).transpose()?;
        let mut source = None;
        if let Some(f) = &fields {
            source = match f.get("chat_template") {
                None => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
                    .map(str::to_string),
                Some(v) => return Err(f.bad("chat_template", format!("expected a template string, found {}", kind(v)))),
            };
        }
        let jinja = dir.join("chat_template.jinja");
        if source.is_none() && jinja.is_file() {
            source = Some(String::from_utf8(read(&jinja)?).map_err(|_| ModelError::Template(format!("{} is not UTF-8", jinja.display())))?);
        }
        let Some(source) = source else { return Ok(None) };
        let token = |name: &str| -> String {
            fields.as_ref().and_then(|f| f.get(name)).map_or(String::new(), |v| match v {
                Value::String(s) => s.clone(),
                other => other.get("content").and_then(Value::as_str).unwrap_or_default().to_string(),
            })
        };
        Self::new(source, token("bos_token"), token("eos_token")).map(Some)
    }

    /// Compiles a template with the environment transformers uses (trim_blocks,
    /// lstrip_blocks, Python string methods, `raise_exception`).
    pub fn new(source: String, bos: String, eos: String) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source).map_err(|e| ModelError::Template(describe(&e)))?;
        Ok(ChatTemplate { env, bos, eos })
    }

    /// The prompt text for a conversation, ending with the assistant's turn opened when
    /// `add_generation_prompt`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self.env.get_template("chat").map_err(|e| ModelError::Template(describe(&e)))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos,
            eos_token => self.eos,
        })
        .map_err(|e| ModelError::Template(describe(&e)))
    }
}

fn describe(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    s
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// generation_config.json: EOS ids and sampling defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationDefaults {
    /// Ids that end generation.
    pub eos_token_ids: Vec<u32>,
    /// BOS id.
    pub bos_token_id: Option<u32>,
    /// `do_sample`.
    pub do_sample: Option<bool>,
    /// `temperature`.
    pub temperature: Option<f32>,
    /// `top_k`.
    pub top_k: Option<usize>,
    /// `top_p`.
    pub top_p: Option<f32>,
    /// `min_p`.
    pub min_p: Option<f32>,
    /// `repetition_penalty`.
    pub repetition_penalty: Option<f32>,
    /// `max_new_tokens`.
    pub max_new_tokens: Option<usize>,
}

impl GenerationDefaults {
    /// Reads `DIR/generation_config.json`; an absent file gives no defaults.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("generation_config.json");
        if !path.is_file() {
            return Ok(Self::default());
        }
        let v = read_json(&path)?;
        let f = Fields::new(&path, &v, "")?;
        let float = |n: &str| f.opt_f64(n).map(|o| o.map(|x| x as f32));
        Ok(GenerationDefaults {
            eos_token_ids: f.ids("eos_token_id")?,
            bos_token_id: f.ids("bos_token_id")?.first().copied(),
            do_sample: f.opt_bool("do_sample")?,
            temperature: float("temperature")?,
            top_k: f.opt_usize("top_k")?,
            top_p: float("top_p")?,
            min_p: float("min_p")?,
            repetition_penalty: float("repetition_penalty")?,
            max_new_tokens: f.opt_usize("max_new_tokens")?,
        })
    }
}
