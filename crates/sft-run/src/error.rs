//! The crate's error type.

use std::path::PathBuf;

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
    /// A JSON or TOML file the runner reads is malformed.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong (with line and column when the parser gives them).
        message: String,
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
    /// Training a stage failed.
    #[error("stage {index} ({name}, key {key}): {message}")]
    Stage {
        /// The stage's index.
        index: usize,
        /// The stage's name.
        name: String,
        /// Its content key (short form).
        key: String,
        /// What went wrong.
        message: String,
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
    /// The model crates failed (loading, tokenizing, training, generating).
    #[error("{context}: {message}")]
    Model {
        /// What was being done.
        context: String,
        /// The underlying error, rendered.
        message: String,
    },
    /// Evaluation failed.
    #[error("evaluating {task}: {message}")]
    Eval {
        /// The task (`gsm8k`, `humaneval`, `general_heldout_loss`, `mtbench`).
        task: String,
        /// The underlying error, rendered.
        message: String,
    },
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

    pub(crate) fn model(context: impl Into<String>) -> impl FnOnce(String) -> Error {
        let context = context.into();
        move |message| Error::Model { context, message }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
