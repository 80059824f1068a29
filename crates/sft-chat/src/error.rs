//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong loading a tokenizer, rendering a chat or building a loss mask.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file (tokenizer.json, tokenizer_config.json) is malformed.
    #[error("{path}: {message}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Reading GGUF metadata failed.
    #[error(transparent)]
    Gguf(#[from] sft_gguf::GgufError),
    /// The GGUF file describes a tokenizer this crate cannot rebuild.
    #[error("{path}: {message}")]
    UnsupportedTokenizer {
        /// The file.
        path: PathBuf,
        /// What is unsupported.
        message: String,
    },
    /// The `tokenizers` library failed (encoding, decoding or building).
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A template name that is not built in.
    #[error("unknown chat template {name:?}; known: vicuna_v1.1, vicuna_v1.1+eos, chatml, model (the tokenizer's own Jinja template)")]
    UnknownTemplate {
        /// The name given.
        name: String,
    },
    /// The Jinja template failed to compile or render (includes `raise_exception` messages).
    #[error("chat template: {0}")]
    Template(String),
    /// The conversation breaks the template's rules (roles out of order, empty message, ...).
    #[error("message {index}: {message}")]
    Conversation {
        /// Index of the offending message.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// The assistant spans of a Jinja template could not be located with certainty.
    #[error("cannot locate assistant span of message {index}: {message}")]
    SpanNotFound {
        /// Index of the assistant message.
        index: usize,
        /// Why.
        message: String,
    },
    /// A token straddles the boundary of an assistant span, so its label would be a guess.
    #[error("token {token_index} ({token:?}, bytes {start}..{end}) straddles the boundary of the assistant span {span_start}..{span_end} of message {message_index}")]
    AmbiguousBoundary {
        /// Index of the assistant message.
        message_index: usize,
        /// Token position.
        token_index: usize,
        /// The token's text.
        token: String,
        /// Token byte start.
        start: usize,
        /// Token byte end.
        end: usize,
        /// Span byte start.
        span_start: usize,
        /// Span byte end.
        span_end: usize,
    },
}

impl ChatError {
    pub(crate) fn tok(e: impl std::fmt::Display) -> Self {
        ChatError::Tokenizer(e.to_string())
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, ChatError>;
