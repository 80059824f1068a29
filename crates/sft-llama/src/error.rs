//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while configuring, loading, running or saving a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file (config, shard index) does not parse.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error (it names line and column).
        source: serde_json::Error,
    },
    /// A configuration value is missing or out of range.
    #[error("invalid model config{}: {message}", at(.path))]
    Config {
        /// The file it came from, when there is one.
        path: Option<PathBuf>,
        /// What is wrong.
        message: String,
    },
    /// The checkpoint is not a LLaMA-architecture model.
    #[error("unsupported architecture `{found}`{}: sft-llama runs LLaMA-architecture models (model_type `llama`, GGUF general.architecture `llama`)", at(.path))]
    UnsupportedArchitecture {
        /// The file it came from.
        path: Option<PathBuf>,
        /// What the file says.
        found: String,
    },
    /// A RoPE scaling type other than `linear` and `llama3`.
    #[error("unsupported rope_scaling type `{found}`{}: supported are default, linear and llama3", at(.path))]
    UnsupportedRopeScaling {
        /// The file it came from.
        path: Option<PathBuf>,
        /// The type named in the file.
        found: String,
    },
    /// A weight the model needs is not in the checkpoint.
    #[error("{path}: missing tensor `{name}`")]
    MissingTensor {
        /// The checkpoint file or directory.
        path: PathBuf,
        /// The HF parameter name (or GGUF tensor name).
        name: String,
    },
    /// A weight has the wrong shape.
    #[error("{path}: tensor `{name}` has shape {found:?}, the model expects {expected:?}")]
    ShapeMismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// The parameter name.
        name: String,
        /// The model's shape.
        expected: Vec<i64>,
        /// The checkpoint's shape.
        found: Vec<i64>,
    },
    /// A tensor element type this crate cannot read.
    #[error("{path}: tensor `{name}` has unsupported dtype {dtype}")]
    UnsupportedDtype {
        /// The checkpoint file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// The dtype as the file names it.
        dtype: String,
    },
    /// A safetensors file is malformed.
    #[error("{path}: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The decoder's message.
        message: String,
    },
    /// Reading or dequantizing a GGUF file failed.
    #[error("{path}: {source}")]
    Gguf {
        /// The GGUF file.
        path: PathBuf,
        /// The reader's error.
        source: sft_gguf::GgufError,
    },
    /// Inputs to a forward pass or to generation are malformed.
    #[error("invalid input: {0}")]
    Input(String),
    /// The tokenizer failed to encode or decode.
    #[error("tokenizer: {context}: {source}")]
    Tokenizer {
        /// What was being encoded or decoded.
        context: String,
        /// The tokenizer's error.
        #[source]
        source: sft_chat::ChatError,
    },
    /// libtorch reported an error.
    #[error("libtorch: {}", torch_message(.0))]
    Torch(#[from] tch::TchError),
}

/// libtorch's message without the C++ stack trace it appends.
fn torch_message(e: &tch::TchError) -> String {
    let s = e.to_string();
    match s.find("\nException raised from") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn at(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!(" in {}", p.display()),
        None => String::new(),
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn config(path: Option<&std::path::Path>, message: impl Into<String>) -> Self {
        Self::Config {
            path: path.map(Into::into),
            message: message.into(),
        }
    }
}
