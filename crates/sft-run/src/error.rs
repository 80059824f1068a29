//! The crate's error types: [`Error`] (everything that can stop a run), [`BackendError`] (what a
//! [`crate::Backend`] returns) and [`ErrorKind`] (the class of a failure, recorded in
//! `status.json` as `error_kind`).

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Any error, boxed: the cause a [`BackendError`] wraps.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The class of a failure: what a sweep (or a person) does about it differs by kind.
///
/// Serialized in snake_case (`status.json`'s `error_kind`, the sweep's state and tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Training was stopped (a signal or a step limit) after checkpointing; rerunning resumes.
    Interrupted,
    /// A loss or gradient was NaN or infinite and the policy aborts.
    NonFinite,
    /// The device ran out of memory.
    Oom,
    /// The plan, the runner settings or the training settings are wrong.
    Config,
    /// A data file or record is bad (unreadable, malformed, no trainable example, bad mask).
    Data,
    /// A file system (or other I/O) operation failed, or a file the runner wrote is corrupt;
    /// also libtorch failures that are none of the above.
    Io,
    /// An evaluation task failed (its data, its sandbox, its judge).
    Eval,
}

impl ErrorKind {
    /// Every kind, in declaration order.
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::Interrupted,
        ErrorKind::NonFinite,
        ErrorKind::Oom,
        ErrorKind::Config,
        ErrorKind::Data,
        ErrorKind::Io,
        ErrorKind::Eval,
    ];

    /// The serialized name (`non_finite`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Interrupted => "interrupted",
            ErrorKind::NonFinite => "non_finite",
            ErrorKind::Oom => "oom",
            ErrorKind::Config => "config",
            ErrorKind::Data => "data",
            ErrorKind::Io => "io",
            ErrorKind::Eval => "eval",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a [`crate::Backend`] returns when training or evaluating fails: a kind, what was being
/// done, and the cause.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct BackendError {
    /// The class of the failure.
    pub kind: ErrorKind,
    /// What was being done (`training`, `evaluating gsm8k`, …).
    pub context: String,
    /// The cause.
    #[source]
    pub source: BoxError,
}

impl BackendError {
    /// A backend error of `kind` while doing `context`, caused by `source` (an error, or a
    /// message: `&str` and `String` convert).
    pub fn new(kind: ErrorKind, context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        BackendError {
            kind,
            context: context.into(),
            source: source.into(),
        }
    }
}

/// Everything that can stop a run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {action}: {source}")]
    Io {
        /// What was being done (`read`, `write`, `create`, …).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file the runner reads or writes is malformed (or a value does not serialize).
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// A file of the run directory or the stage store says something inconsistent.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The plan's `[run]` table does not match the runner settings' schema.
    #[error("{path}: [run] table: {source}")]
    RunTable {
        /// The plan file.
        path: PathBuf,
        /// The parser's error (naming the key).
        #[source]
        source: serde_json::Error,
    },
    /// The plan is invalid.
    #[error(transparent)]
    Plan(#[from] sft_schedule::Error),
    /// Composing a stage's data failed.
    #[error(transparent)]
    Compose(#[from] sft_compose::Error),
    /// The runner settings (`[run]` table or flags) are inconsistent.
    #[error("run settings: {0}")]
    Settings(String),
    /// The backend refused a stage's settings before anything trained
    /// ([`crate::Backend::check_stage`]).
    #[error("stage {index} ({name}): {source}")]
    StageSettings {
        /// The stage's index.
        index: usize,
        /// The stage's name.
        name: String,
        /// The backend's error.
        #[source]
        source: BackendError,
    },
    /// Training a stage failed.
    #[error("stage {index} ({name}, key {key}): {source}")]
    Stage {
        /// The stage's index.
        index: usize,
        /// The stage's name.
        name: String,
        /// Its content key (short form).
        key: String,
        /// The backend's error.
        #[source]
        source: BackendError,
    },
    /// A stored stage was trained (or partly trained) under other training/chat semantics
    /// versions than this build's, and the policy is `stale_stages = "refuse"`.
    #[error("stage {index} ({name}, key {key}) in {dir} was {what} under {recorded}; this build is {current}. It is not reused: delete {dir} or set `stale_stages = \"retrain\"` in the plan's [run] table (run_plan: --stale-stages retrain) to retrain it")]
    StaleStage {
        /// The stage's index.
        index: usize,
        /// The stage's name.
        name: String,
        /// Its content key (short form).
        key: String,
        /// Its store directory.
        dir: PathBuf,
        /// `trained`, or `partly trained` for an interrupted stage.
        what: &'static str,
        /// The versions it was trained under (e.g. `training v1, chat v1`).
        recorded: String,
        /// This build's versions.
        current: String,
    },
    /// Another live process holds a stage's lock.
    #[error("{path}: stage is being trained by another process (pid {pid}); wait for it or remove the lock if that process is gone")]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// The owner's pid.
        pid: u32,
    },
    /// The backend failed outside training a stage (evaluating a task); its context names the
    /// task.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }

    /// The class of the failure (recorded in `status.json` as `error_kind`).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { .. } | Error::Json { .. } | Error::Parse { .. } | Error::Locked { .. } => {
                ErrorKind::Io
            }
            Error::RunTable { .. }
            | Error::Plan(_)
            | Error::Settings(_)
            | Error::StaleStage { .. } => ErrorKind::Config,
            Error::Compose(_) => ErrorKind::Data,
            Error::Stage { source, .. } | Error::StageSettings { source, .. } => source.kind,
            Error::Backend(e) => e.kind,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_serialize_in_snake_case() {
        for k in ErrorKind::ALL {
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::json!(k.as_str())
            );
            assert_eq!(k.to_string(), k.as_str());
        }
        assert_eq!(ErrorKind::NonFinite.as_str(), "non_finite");
    }

    #[test]
    fn a_stage_error_has_its_backend_errors_kind_and_keeps_it_as_source() {
        let e = Error::Stage {
            index: 1,
            name: "general".into(),
            key: "abc".into(),
            source: BackendError::new(ErrorKind::NonFinite, "training", "non-finite loss"),
        };
        assert_eq!(e.kind(), ErrorKind::NonFinite);
        assert_eq!(
            e.to_string(),
            "stage 1 (general, key abc): training: non-finite loss"
        );
        let src = std::error::Error::source(&e).unwrap();
        assert_eq!(src.to_string(), "training: non-finite loss");
    }
}
