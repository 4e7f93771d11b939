//! The models crate's typed errors. Each names the file and the field or tensor at fault
//! and, where there is one, what to do about it.

use std::path::PathBuf;

use crate::kv::KvError;

/// Everything that can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A required file is absent from the model directory.
    #[error("{}: missing; a Hugging Face model directory needs {what}", path.display())]
    MissingFile {
        /// The file looked for.
        path: PathBuf,
        /// What it holds.
        what: &'static str,
    },
    /// A JSON file does not parse.
    #[error("{}: not valid JSON: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A needed field of a JSON file is absent.
    #[error("{}: missing field `{field}`", path.display())]
    MissingField {
        /// The file.
        path: PathBuf,
        /// The field.
        field: String,
    },
    /// A field of a JSON file has a value that cannot be used.
    #[error("{}: field `{field}`: {reason}", path.display())]
    BadField {
        /// The file.
        path: PathBuf,
        /// The field.
        field: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The checkpoint's architecture is not one this crate runs.
    #[error("{}: architecture `{found}` is not supported; supported: {}", path.display(), supported.join(", "))]
    UnknownArchitecture {
        /// config.json.
        path: PathBuf,
        /// What the config names.
        found: String,
        /// What is supported.
        supported: Vec<&'static str>,
    },
    /// A safetensors file is malformed (truncated, offsets overlapping or past the end, ...).
    #[error("{}: not a valid safetensors file: {reason}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The format error.
        reason: String,
    },
    /// A tensor the architecture needs is in no weight file.
    #[error("tensor `{name}` is missing from the checkpoint (looked in {})", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "))]
    MissingTensor {
        /// The tensor.
        name: String,
        /// The weight files searched.
        files: Vec<PathBuf>,
    },
    /// A tensor has the wrong shape or an unsupported dtype.
    #[error("{}: tensor `{name}`: {reason}", path.display())]
    BadTensor {
        /// The file holding it.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Expected versus found.
        reason: String,
    },
    /// The tokenizer could not be loaded or failed to encode/decode.
    #[error("tokenizer ({}): {reason}", path.display())]
    Tokenizer {
        /// tokenizer.json.
        path: PathBuf,
        /// The tokenizers crate's message.
        reason: String,
    },
    /// The chat template failed to parse or render.
    #[error("chat template: {0}")]
    Template(String),
    /// A token id outside the vocabulary was fed to the model.
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// The vocabulary size.
        vocab: usize,
    },
    /// The KV cache could not hold the sequence.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// A host allocation failed.
    #[error("out of host memory allocating {bytes} bytes for {what}")]
    OutOfMemory {
        /// Bytes asked for.
        bytes: usize,
        /// What for.
        what: &'static str,
    },
    /// The GPU failed (driver, compiler, launch or BLAS error).
    #[error("GPU: {0}")]
    Gpu(String),
    /// The model does not fit the GPU memory it may use.
    #[error(
        "the model does not fit on {device}: weights {weights} B + activations {scratch} B + a KV cache of at least {kv_min} B \
         exceed the {budget} B allowed ({fraction} of {free} B free); use a GPU with more memory, raise --gpu-memory-fraction, \
         lower --max-batch-tokens, or use a smaller model or dtype"
    )]
    DoesNotFit {
        /// The device.
        device: String,
        /// Weight bytes.
        weights: u64,
        /// Activation (scratch) bytes.
        scratch: u64,
        /// The smallest KV cache that serves one full chunk.
        kv_min: u64,
        /// Bytes allowed.
        budget: u64,
        /// The fraction of free memory allowed.
        fraction: f32,
        /// Free device memory.
        free: u64,
    },
    /// An argument of the caller is unusable (empty prompt, ...).
    #[error("{0}")]
    Invalid(String),
}

/// The crate's result type.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// Allocates `n` copies of `v` or returns a typed out-of-memory error.
pub(crate) fn try_vec<T: Clone>(n: usize, v: T, what: &'static str) -> Result<Vec<T>> {
    let mut out = Vec::new();
    out.try_reserve_exact(n).map_err(|_| ModelError::OutOfMemory { bytes: n.saturating_mul(std::mem::size_of::<T>()), what })?;
    out.resize(n, v);
    Ok(out)
}

/// Reads a file, naming it in the error.
pub(crate) fn read(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })
}

/// Reads and parses a JSON file, naming it in the error.
pub(crate) fn read_json(path: &std::path::Path) -> Result<serde_json::Value> {
    let bytes = read(path)?;
    serde_json::from_slice(&bytes).map_err(|source| ModelError::Json { path: path.to_path_buf(), source })
}
