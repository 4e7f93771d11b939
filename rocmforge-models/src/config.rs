//! config.json of a Hugging Face checkpoint, in both the transformers 4.x form
//! (`rope_theta`, `rope_scaling`, `torch_dtype`) and the 5.x form (`rope_parameters`,
//! `dtype`), validated so that no later step divides by zero or indexes out of range.

use std::path::Path;

use rocmforge_dsl::rope::RopeScaling;
use serde_json::{Map, Value};

use crate::arch::{self, Arch};
use crate::error::{read_json, ModelError, Result};

/// Storage dtype of the weights as the config declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDType {
    /// float32.
    F32,
    /// float16.
    F16,
    /// bfloat16.
    BF16,
}

/// The model hyper-parameters the forward needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The architecture.
    pub arch: Arch,
    /// Hidden size.
    pub hidden: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// RoPE base.
    pub rope_theta: f32,
    /// RoPE frequency scaling.
    pub rope_scaling: RopeScaling,
    /// Longest context the model was built for.
    pub max_positions: usize,
    /// LM head shares the embedding matrix.
    pub tie_embeddings: bool,
    /// Bias on the q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    /// Bias on the MLP projections.
    pub mlp_bias: bool,
    /// Per-head RMSNorm of q and k before RoPE (Qwen3).
    pub qk_norm: bool,
    /// Per layer: the sliding window (tokens a query sees, itself included), or `None`.
    pub windows: Vec<Option<usize>>,
    /// Declared weight dtype, if any.
    pub dtype: Option<WeightDType>,
    /// BOS id from the config.
    pub bos_token_id: Option<u32>,
    /// EOS ids from the config.
    pub eos_token_ids: Vec<u32>,
}

/// Typed access to a JSON object's fields with errors that name the file and field.
pub(crate) struct Fields<'a> {
    pub(crate) path: &'a Path,
    pub(crate) map: &'a Map<String, Value>,
    pub(crate) prefix: &'a str,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(path: &'a Path, v: &'a Value, prefix: &'a str) -> Result<Self> {
        let map = v.as_object().ok_or_else(|| ModelError::BadField {
            path: path.to_path_buf(),
            field: if prefix.is_empty() { "(top level)".into() } else { prefix.into() },
            reason: "expected a JSON object".into(),
        })?;
        Ok(Fields { path, map, prefix })
    }
    fn name(&self, f: &str) -> String {
        if self.prefix.is_empty() {
            f.to_string()
        } else {
            format!("{}.{f}", self.prefix)
        }
    }
    pub(crate) fn bad(&self, f: &str, reason: impl Into<String>) -> ModelError {
        ModelError::BadField { path: self.path.to_path_buf(), field: self.name(f), reason: reason.into() }
    }
    fn missing(&self, f: &str) -> ModelError {
        ModelError::MissingField { path: self.path.to_path_buf(), field: self.name(f) }
    }
    /// The value, treating JSON null as absent.
    pub(crate) fn get(&self, f: &str) -> Option<&'a Value> {
        self.map.get(f).filter(|v| !v.is_null())
    }
    pub(crate) fn opt_usize(&self, f: &str) -> Result<Option<usize>> {
        match self.get(f) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.bad(f, format!("expected a non-negative integer, found {v}"))),
        }
    }
    /// A positive integer, at most `max` (keeps later size arithmetic far from overflow).
    pub(crate) fn dim(&self, f: &str, max: usize) -> Result<usize> {
        let n = self.opt_usize(f)?.ok_or_else(|| self.missing(f))?;
        self.check_dim(f, n, max)
    }
    pub(crate) fn check_dim(&self, f: &str, n: usize, max: usize) -> Result<usize> {
        if n == 0 || n > max {
            return Err(self.bad(f, format!("{n} is out of range (1..={max})")));
        }
        Ok(n)
    }
    pub(crate) fn opt_f64(&self, f: &str) -> Result<Option<f64>> {
        match self.get(f) {
            None => Ok(None),
            Some(v) => v.as_f64().filter(|x| x.is_finite()).map(Some).ok_or_else(|| self.bad(f, format!("expected a number, found {v}"))),
        }
    }
    pub(crate) fn opt_bool(&self, f: &str) -> Result<Option<bool>> {
        match self.get(f) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| self.bad(f, format!("expected true or false, found {v}"))),
        }
    }
    pub(crate) fn opt_str(&self, f: &str) -> Result<Option<&'a str>> {
        match self.get(f) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.bad(f, format!("expected a string, found {v}"))),
        }
    }
    /// An id or a list of ids (`eos_token_id` takes both forms).
    pub(crate) fn ids(&self, f: &str) -> Result<Vec<u32>> {
        let one = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
        match self.get(f) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => {
                a.iter().map(|v| one(v).ok_or_else(|| self.bad(f, format!("expected token ids, found {v}")))).collect()
            }
            Some(v) => one(v).map(|n| vec![n]).ok_or_else(|| self.bad(f, format!("expected a token id or a list of them, found {v}"))),
        }
    }
}

/// Largest accepted dimension: far above any real model, small enough that products of
/// three dimensions fit in usize on 64-bit targets.
const MAX_DIM: usize = 1 << 20;

impl ModelConfig {
    /// Reads `DIR/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        if !path.is_file() {
            return Err(ModelError::MissingFile { path, what: "config.json (the model's hyper-parameters)" });
        }
        let v = read_json(&path)?;
        Self::from_json(&path, &v)
    }

    /// Parses a config.json already read from `path`.
    pub fn from_json(path: &Path, v: &Value) -> Result<Self> {
        let f = Fields::new(path, v, "")?;
        let arch = detect_arch(&f)?;
        let hidden = f.dim("hidden_size", MAX_DIM)?;
        let heads = f.dim("num_attention_heads", 4096)?;
        let kv_heads = match f.opt_usize("num_key_value_heads")? {
            Some(n) => f.check_dim("num_key_value_heads", n, heads)?,
            None => heads,
        };
        if heads % kv_heads != 0 {
            return Err(f.bad("num_key_value_heads", format!("{kv_heads} does not divide num_attention_heads = {heads}")));
        }
        let head_dim = match f.opt_usize("head_dim")? {
            Some(d) => f.check_dim("head_dim", d, 4096)?,
            None if hidden % heads == 0 => hidden / heads,
            None => {
                return Err(f.bad("num_attention_heads", format!("{heads} does not divide hidden_size = {hidden} and no head_dim is given")))
            }
        };
        if head_dim % 2 != 0 {
            return Err(f.bad("head_dim", format!("{head_dim} is odd; rotary embeddings rotate pairs")));
        }
        if let Some(act) = f.opt_str("hidden_act")? {
            if act != "silu" {
                return Err(f.bad("hidden_act", format!("`{act}` is not supported (only silu, the SwiGLU MLP)")));
            }
        }
        let (rope_theta, rope_scaling) = rope(&f)?;
        let layers = f.dim("num_hidden_layers", 4096)?;
        let dtype = match f.opt_str("dtype")?.or(f.opt_str("torch_dtype")?) {
            None => None,
            Some("float32") => Some(WeightDType::F32),
            Some("float16") => Some(WeightDType::F16),
            Some("bfloat16") => Some(WeightDType::BF16),
            Some(other) => {
                let field = if f.get("dtype").is_some() { "dtype" } else { "torch_dtype" };
                return Err(f.bad(field, format!("`{other}` is not supported (float32, float16, bfloat16)")));
            }
        };
        let features = arch::features(arch, &f)?;
        let windows = windows(&f, arch, layers)?;
        let eps = f.opt_f64("rms_norm_eps")?.unwrap_or(1e-6);
        if eps <= 0.0 {
            return Err(f.bad("rms_norm_eps", "must be positive"));
        }
        Ok(ModelConfig {
            arch,
            hidden,
            intermediate: f.dim("intermediate_size", MAX_DIM)?,
            layers,
            heads,
            kv_heads,
            head_dim,
            vocab: f.dim("vocab_size", 1 << 24)?,
            eps: eps as f32,
            rope_theta,
            rope_scaling,
            max_positions: f.opt_usize("max_position_embeddings")?.unwrap_or(4096).max(1),
            tie_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(features.tie_default),
            qkv_bias: features.qkv_bias,
            o_bias: features.o_bias,
            mlp_bias: features.mlp_bias,
            qk_norm: features.qk_norm,
            windows,
            dtype,
            bos_token_id: f.ids("bos_token_id")?.first().copied(),
            eos_token_ids: f.ids("eos_token_id")?,
        })
    }

    /// Weight parameters (for sizes and the progress bar).
    pub fn parameter_count(&self) -> usize {
        let (h, q, kv, i) = (self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate);
        let layer = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h;
        let head = if self.tie_embeddings { 0 } else { self.vocab * h };
        self.vocab * h + self.layers * layer + h + head
    }
}

fn detect_arch(f: &Fields<'_>) -> Result<Arch> {
    let named = match f.get("architectures") {
        Some(Value::Array(a)) => a.first().and_then(Value::as_str).map(str::to_string),
        Some(v) => return Err(f.bad("architectures", format!("expected a list of class names, found {v}"))),
        None => None,
    };
    let found = match (named, f.opt_str("model_type")?) {
        (Some(n), _) => n,
        (None, Some(t)) => t.to_string(),
        (None, None) => return Err(f.missing("architectures")),
    };
    Arch::from_name(&found).ok_or_else(|| ModelError::UnknownArchitecture {
        path: f.path.to_path_buf(),
        found,
        supported: Arch::ALL.iter().map(|a| a.class_name()).collect(),
    })
}

/// RoPE base and scaling from `rope_parameters` (5.x) or `rope_theta` + `rope_scaling` (4.x).
fn rope(f: &Fields<'_>) -> Result<(f32, RopeScaling)> {
    let (params, pname) = match (f.get("rope_parameters"), f.get("rope_scaling")) {
        (Some(p), _) => (Some(p), "rope_parameters"),
        (None, Some(p)) => (Some(p), "rope_scaling"),
        (None, None) => (None, ""),
    };
    let sub = params.map(|p| Fields::new(f.path, p, pname)).transpose()?;
    let theta = match sub.as_ref().map(|s| s.opt_f64("rope_theta")).transpose()?.flatten() {
        Some(t) => t,
        None => f.opt_f64("rope_theta")?.unwrap_or(10_000.0),
    };
    if theta <= 1.0 {
        return Err(f.bad("rope_theta", format!("{theta} must be greater than 1")));
    }
    let Some(s) = sub else { return Ok((theta as f32, RopeScaling::Default)) };
    let kind = match s.opt_str("rope_type")? {
        Some(k) => k,
        None => s.opt_str("type")?.unwrap_or("default"),
    };
    let num = |name: &str| -> Result<f32> {
        let v = s.opt_f64(name)?.ok_or_else(|| s.missing(name))?;
        if v <= 0.0 {
            return Err(s.bad(name, format!("{v} must be positive")));
        }
        Ok(v as f32)
    };
    let orig = |s: &Fields<'_>| -> Result<f32> {
        match s.opt_f64("original_max_position_embeddings")? {
            Some(v) if v > 0.0 => Ok(v as f32),
            Some(v) => Err(s.bad("original_max_position_embeddings", format!("{v} must be positive"))),
            None => f.opt_usize("max_position_embeddings")?.map(|v| v as f32).ok_or_else(|| s.missing("original_max_position_embeddings")),
        }
    };
    let scaling = match kind {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear { factor: num("factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: orig(&s)?,
        },
        "yarn" => RopeScaling::Yarn {
            factor: num("factor")?,
            beta_fast: s.opt_f64("beta_fast")?.unwrap_or(32.0) as f32,
            beta_slow: s.opt_f64("beta_slow")?.unwrap_or(1.0) as f32,
            original_max_position_embeddings: orig(&s)?,
            attention_factor: s.opt_f64("attention_factor")?.map(|v| v as f32),
        },
        other => return Err(s.bad("rope_type", format!("`{other}` is not supported (default, linear, llama3, yarn)"))),
    };
    Ok((theta as f32, scaling))
}

/// Per-layer sliding windows: `layer_types` (5.x) where present, else the 4.x fields.
fn windows(f: &Fields<'_>, arch: Arch, layers: usize) -> Result<Vec<Option<usize>>> {
    let window = f.opt_usize("sliding_window")?.filter(|&w| w > 0);
    if let Some(Value::Array(types)) = f.get("layer_types") {
        if types.len() != layers {
            return Err(f.bad("layer_types", format!("{} entries for {layers} layers", types.len())));
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                Some("full_attention") => Ok(None),
                Some("sliding_attention") => {
                    window.map(Some).ok_or_else(|| f.bad("sliding_window", "layer_types has sliding layers but no window"))
                }
                _ => Err(f.bad("layer_types", format!("unsupported layer type {t}"))),
            })
            .collect();
    }
    let uses = arch.window_in_all_layers() || f.opt_bool("use_sliding_window")?.unwrap_or(false);
    let from = if arch.window_in_all_layers() { 0 } else { f.opt_usize("max_window_layers")?.unwrap_or(0) };
    Ok((0..layers).map(|l| if uses && l >= from { window } else { None }).collect())
}
