//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while loading benchmark files, running samples or calling a judge.
///
/// Variants about files carry the path and, where there is one, the 1-based line number.
/// No variant ever carries an API key: judge errors are built from redacted text.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSONL or JSON file could not be read or written (a bad line names `path:line`).
    #[error(transparent)]
    File(#[from] sft_record::Error),
    /// A file parsed but its content is unusable as a whole (empty, duplicated ids, missing keys).
    #[error("{path}: {message}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// Inputs that do not fit together (e.g. a completion for an unknown task id).
    #[error("{0}")]
    Mismatch(String),
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The HumanEval sandbox cannot be set up; code is never run unsandboxed as a fallback.
    #[error("sandbox unavailable: {0} (refusing to execute untrusted code without it)")]
    SandboxUnavailable(String),
    /// One sandbox mode cannot be used on this host (the next weaker one may still be).
    #[error("sandbox mode {mode} unavailable: {reason}")]
    ModeUnavailable {
        /// The mode (`cgroup_v1`, `cgroup_v2`, `rlimit`).
        mode: &'static str,
        /// Why, in words.
        reason: String,
        /// The OS error behind it, when there is one.
        #[source]
        source: Option<std::io::Error>,
    },
    /// A per-sample cgroup could not be created, written or removed.
    #[error("cannot {action} cgroup {path}: {source}")]
    Cgroup {
        /// The cgroup directory or interface file.
        path: PathBuf,
        /// `create`, `write` or `remove`.
        action: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Starting or supervising a sandboxed process failed.
    #[error("sandbox: {0}")]
    Sandbox(String),
    /// A judge request failed for good (after retries, or at once on 400/401/403).
    #[error("judge request failed: {0}")]
    Judge(#[from] sft_complete::Error),
}

/// Shorthand for this crate's results.
pub type Result<T, E = EvalError> = std::result::Result<T, E>;

impl EvalError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EvalError::Io {
            path: path.into(),
            source,
        }
    }
}
