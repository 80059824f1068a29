//! The crate's error type: every variant names what failed and where, keeps its cause, and has
//! a [`ErrorKind`] ([`Error::kind`]) a runner maps to its own failure classes.

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
    #[error("record {record_id}: cannot compute the loss mask: {source}")]
    Mask {
        /// The record's id.
        record_id: String,
        /// Why.
        #[source]
        source: crate::data::MaskError,
    },
    /// No record survived tokenisation, so there is nothing to train on.
    #[error("no trainable examples: {0}")]
    NoData(String),
    /// Training data in a format the trainer does not read.
    #[error(
        "{path}: training data must be chat JSONL (.jsonl) or chat Parquet (.parquet), as \
         `sft-compose` writes them"
    )]
    DataFormat {
        /// The file.
        path: PathBuf,
    },
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
    /// A JSON state file (`trainer_state.json`, `manifest.json`, `tokenizer_source.json`) could
    /// not be parsed.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A value could not be serialised to JSON.
    #[error("serialising {what} as JSON: {source}")]
    Serialize {
        /// What (`metrics line`, `trainer state`, ...).
        what: &'static str,
        /// The serialiser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A libtorch operation failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// `sft-llama` failed: loading a checkpoint (`path` says which) or a forward pass.
    #[error("model: {}{source}", .path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Llama {
        /// The checkpoint being loaded, when that is what failed.
        path: Option<PathBuf>,
        /// The model's error.
        #[source]
        source: sft_llama::Error,
    },
    /// The tokenizer at `path` could not be loaded.
    #[error("tokenizer {path}: {source}")]
    Tokenizer {
        /// A `.gguf`, HF directory or `tokenizer.json`.
        path: PathBuf,
        /// `sft-chat`'s error.
        #[source]
        source: sft_chat::ChatError,
    },
    /// A model directory has neither `tokenizer.json` nor a readable `tokenizer_source.json`.
    #[error(
        "{model}: no tokenizer.json and no readable {} ({source}); name the tokenizer",
        crate::chat::TOKENIZER_SOURCE
    )]
    NoTokenizer {
        /// The model directory.
        model: PathBuf,
        /// Why `tokenizer_source.json` could not be read.
        #[source]
        source: std::io::Error,
    },
    /// A chat template does not resolve for the tokenizer.
    #[error("template `{name}`: {source}")]
    Template {
        /// The template name.
        name: String,
        /// `sft-chat`'s error.
        #[source]
        source: sft_chat::ChatError,
    },
    /// The tokenizer files could not be written into a model directory (`final/`).
    #[error("saving the tokenizer into {dir}: {source}")]
    SaveTokenizer {
        /// The directory.
        dir: PathBuf,
        /// `sft-chat`'s error.
        #[source]
        source: sft_chat::ChatError,
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
    /// A checkpoint file is unreadable or not what it should be (`what` says which check).
    #[error("checkpoint {path}: {what}: {source}")]
    CheckpointFile {
        /// The file.
        path: PathBuf,
        /// What failed (`unreadable`, `not a valid safetensors file`, ...).
        what: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The optimizer state of another run (`optimizer_state = "carry"`) could not be loaded.
    #[error("checkpoint {dir}: carrying optimizer state: {source}")]
    Carry {
        /// The checkpoint it was read from.
        dir: PathBuf,
        /// Why it does not fit.
        #[source]
        source: Box<Error>,
    },
    /// The memory estimate says the run does not fit the device (checked before anything is
    /// loaded; [`crate::RunOptions::ignore_memory_estimate`] overrides).
    #[error(
        "the run is estimated to need {need} on {device} but {have} is available (out of memory \
         predicted before start); lower micro_batch_size or max_len, or set \
         activation_checkpointing = true and loss_chunk = 512, or override the check\n{table}"
    )]
    PredictedOom {
        /// The estimated peak, formatted.
        need: String,
        /// The device's memory, formatted.
        have: String,
        /// The device.
        device: String,
        /// The estimate's table.
        table: String,
    },
    /// A data-parallel collective or the rendezvous failed (a rank died, hung or never came).
    #[error("data-parallel training: {0}")]
    Distributed(#[from] sft_dist::Error),
    /// The process was asked to stop (SIGINT/SIGTERM) and stopped after checkpointing.
    #[error("interrupted at step {step}; checkpoint written to {checkpoint}")]
    Interrupted {
        /// The last completed step.
        step: u64,
        /// Where the state was saved.
        checkpoint: PathBuf,
    },
}

/// The class of a trainer failure; `sft-local` maps it to `sft_run::ErrorKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Stopped by a signal after checkpointing.
    Interrupted,
    /// A NaN/inf loss or gradient under `nan_policy = abort` (or too many skips).
    NonFinite,
    /// The device ran out of memory (a cause says `out of memory`).
    Oom,
    /// Bad training data: unreadable records, loss masks, no trainable example.
    Data,
    /// Bad settings, template or trainer config.
    Config,
    /// Files, checkpoints, the tokenizer or model on disk, other libtorch failures.
    Io,
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
    pub(crate) fn ckpt_file(
        path: impl Into<PathBuf>,
        what: &'static str,
    ) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> Self {
        let path = path.into();
        move |source| Error::CheckpointFile { path, what, source }
    }

    /// The class of the failure. Out of memory is found first, anywhere in the cause chain
    /// (libtorch's CUDA and CPU allocators both say `out of memory`).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Interrupted { .. } => return ErrorKind::Interrupted,
            Error::NonFinite { .. } => return ErrorKind::NonFinite,
            _ => {}
        }
        if mentions_oom(self) {
            return ErrorKind::Oom;
        }
        match self {
            Error::Interrupted { .. } => ErrorKind::Interrupted,
            Error::NonFinite { .. } => ErrorKind::NonFinite,
            Error::PredictedOom { .. } => ErrorKind::Oom,
            Error::Distributed(e) => match e.kind() {
                sft_dist::ErrorKind::Config => ErrorKind::Config,
                _ => ErrorKind::Io,
            },
            Error::Record(_)
            | Error::Mask { .. }
            | Error::NoData(_)
            | Error::DataFormat { .. }
            | Error::Data { .. } => ErrorKind::Data,
            Error::Config(_) | Error::InvalidConfig(_) | Error::Template { .. } => {
                ErrorKind::Config
            }
            Error::Io { .. }
            | Error::Json { .. }
            | Error::Serialize { .. }
            | Error::Torch(_)
            | Error::Llama { .. }
            | Error::Tokenizer { .. }
            | Error::NoTokenizer { .. }
            | Error::SaveTokenizer { .. }
            | Error::Checkpoint { .. }
            | Error::CheckpointFile { .. }
            | Error::Carry { .. } => ErrorKind::Io,
        }
    }
}

/// Whether `e` or one of its causes says the device ran out of memory (libtorch's CUDA and CPU
/// allocators both say `out of memory`): the one OOM test, also used by `sft-local`.
pub fn mentions_oom(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err
            .to_string()
            .to_ascii_lowercase()
            .contains("out of memory")
        {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let oom = Error::Torch(tch::TchError::Torch(
            "CUDA out of memory. Tried to allocate 1 GiB".into(),
        ));
        assert_eq!(oom.kind(), ErrorKind::Oom);
        let other = Error::Torch(tch::TchError::Torch("shape mismatch".into()));
        assert_eq!(other.kind(), ErrorKind::Io);
        let nan = Error::NonFinite {
            what: "loss",
            step: 3,
            record_ids: "a".into(),
        };
        assert_eq!(nan.kind(), ErrorKind::NonFinite);
        let mask = Error::Mask {
            record_id: "r".into(),
            source: crate::data::MaskError::NoAssistantTurn,
        };
        assert_eq!(mask.kind(), ErrorKind::Data);
        assert_eq!(
            Error::DataFormat {
                path: "x.csv".into()
            }
            .kind(),
            ErrorKind::Data
        );
        assert_eq!(Error::Config("x".into()).kind(), ErrorKind::Config);
        let carried = Error::Carry {
            dir: "d".into(),
            source: Box::new(other),
        };
        assert_eq!(carried.kind(), ErrorKind::Io);
        // The cause is kept, not flattened into a message.
        let json = serde_json::from_str::<u32>("x").unwrap_err();
        let e = Error::Json {
            path: "s.json".into(),
            source: json,
        };
        assert!(std::error::Error::source(&e).is_some());
    }
}
