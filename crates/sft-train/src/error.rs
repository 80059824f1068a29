//! The crate's error type: every variant names what failed and where.

use std::path::PathBuf;

/// Everything that can go wrong while preparing data, training or checkpointing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read, written, renamed or synced.
    #[error("{op} {path}: {source}")]
    Io {
        /// What we were doing (`read`, `write`, `rename`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A chat JSONL data file could not be read, or a line of it is not a record (the error
    /// names `path:line`).
    #[error(transparent)]
    Record(#[from] sft_record::Error),
    /// The chat template could not produce a trustworthy loss mask for a record.
    #[error("record {record_id}: cannot compute the loss mask: {message}")]
    Mask {
        /// The record's id.
        record_id: String,
        /// Why.
        message: String,
    },
    /// No record survived tokenisation, so there is nothing to train on.
    #[error("no trainable examples: {0}")]
    NoData(String),
    /// The configuration is inconsistent or a value is out of range.
    #[error("invalid config: {0}")]
    Config(String),
    /// A [`crate::TrainConfig`] setting is invalid (the error names the key) or its file could
    /// not be read.
    #[error("invalid config: {0}")]
    InvalidConfig(#[from] sft_config::Error),
    /// A chat Parquet data file could not be read, or a row of it is not a record.
    #[error("reading training data {path}: {source}")]
    Data {
        /// The file.
        path: PathBuf,
        /// `sft-compose`'s error (it names the row of a bad record).
        #[source]
        source: Box<sft_compose::Error>,
    },
    /// A TOML or JSON config/state file could not be parsed.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A libtorch operation failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The model failed (loading, forward pass or saving).
    #[error("model: {0}")]
    Model(String),
    /// `sft-llama` failed: loading a checkpoint (`path` says which) or a forward pass.
    #[error("model: {}{source}", .path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Llama {
        /// The checkpoint being loaded, when that is what failed.
        path: Option<PathBuf>,
        /// The model's error.
        #[source]
        source: sft_llama::Error,
    },
    /// A loss or gradient was NaN or infinite and the policy says abort.
    #[error("non-finite {what} at step {step} (batch records: {record_ids})")]
    NonFinite {
        /// `loss` or `gradient`.
        what: &'static str,
        /// The optimizer step (1-based) that failed.
        step: u64,
        /// The ids of the records in the offending global batch, comma-separated.
        record_ids: String,
    },
    /// A checkpoint is missing, incomplete, corrupt or does not match the run.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The process was asked to stop (SIGINT/SIGTERM) and stopped after checkpointing.
    #[error("interrupted at step {step}; checkpoint written to {checkpoint}")]
    Interrupted {
        /// The last completed step.
        step: u64,
        /// Where the state was saved.
        checkpoint: PathBuf,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
    pub(crate) fn ckpt(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }
}
