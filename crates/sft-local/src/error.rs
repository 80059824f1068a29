//! The backend's error type, and its [`ErrorKind`].

use std::path::PathBuf;

use sft_run::{BackendError, BoxError, ErrorKind};
use sft_train::mentions_oom;

/// What can go wrong while the local backend trains or evaluates; every variant keeps its cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {action}: {source}")]
    Io {
        /// What was being done (`create`, `remove`, `rename`, …).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Writing a report through the runner's file helpers failed.
    #[error(transparent)]
    Run(#[from] sft_run::Error),
    /// The stage's settings are inconsistent with what is on disk or with each other.
    #[error("run settings: {0}")]
    Settings(String),
    /// A chat template does not resolve for the tokenizer.
    #[error("chat template {name:?}: {source}")]
    Template {
        /// The template name.
        name: String,
        /// The chat crate's error.
        #[source]
        source: sft_chat::ChatError,
    },
    /// Loading the tokenizer or a model failed.
    #[error("{context}: {source}")]
    Model {
        /// What was being loaded.
        context: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// Reading, tokenizing or training on a stage's data failed in the trainer.
    #[error("{context}: {source}")]
    Train {
        /// What was being done (`training` a stage; the trainer's error names the file or record).
        context: &'static str,
        /// The trainer's error.
        #[source]
        source: sft_train::Error,
    },
    /// Training stopped (a signal or `stop_after`) after checkpointing; a rerun resumes.
    #[error("training: interrupted at step {step} of {total}; rerun to resume")]
    Interrupted {
        /// The last completed step.
        step: u64,
        /// The planned steps.
        total: u64,
    },
    /// A collective of a data-parallel plan's control group failed (a rank lost, a timeout).
    #[error("{context}: {source}")]
    Dist {
        /// What was being done.
        context: String,
        /// sft-dist's error (c10d's text).
        #[source]
        source: sft_dist::Error,
    },
    /// Rank 0's run of a data-parallel plan failed (what a follower exits with).
    #[error("rank 0's run failed: {0}")]
    Leader(String),
    /// Evaluating a task failed.
    #[error("evaluating {task}: {source}")]
    Eval {
        /// The task (`gsm8k`, `humaneval`, `general_heldout_loss`, `mtbench`).
        task: String,
        /// The cause (an error of `sft-eval`, `sft-llama`, `sft-chat`, `sft-train`, or a message).
        #[source]
        source: BoxError,
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

    pub(crate) fn train(context: &'static str) -> impl FnOnce(sft_train::Error) -> Error {
        move |source| Error::Train { context, source }
    }

    /// The class of the failure: `interrupted`, `non_finite`, `oom` (any cause saying `out of
    /// memory`), `data` (bad records, masks, no trainable example), `config` (settings,
    /// templates, trainer config), `io` (files, checkpoints, model loading, other libtorch
    /// failures), `eval` (a task's data, sandbox, judge or generation).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Interrupted { .. } => ErrorKind::Interrupted,
            // The trainer classifies its own errors (out of memory included).
            Error::Train { source, .. } => train_kind(source.kind()),
            Error::Settings(_) => ErrorKind::Config,
            Error::Dist { source, .. } if source.kind() == sft_dist::ErrorKind::Config => {
                ErrorKind::Config
            }
            Error::Dist { .. } | Error::Leader(_) => ErrorKind::Io,
            _ if mentions_oom(self) => ErrorKind::Oom,
            Error::Io { .. } | Error::Model { .. } => ErrorKind::Io,
            Error::Run(e) => e.kind(),
            Error::Template { .. } => ErrorKind::Config,
            Error::Eval { .. } => ErrorKind::Eval,
        }
    }
}

/// The runner's kind of a trainer error kind.
fn train_kind(kind: sft_train::ErrorKind) -> ErrorKind {
    use sft_train::ErrorKind as T;
    match kind {
        T::Interrupted => ErrorKind::Interrupted,
        T::NonFinite => ErrorKind::NonFinite,
        T::Oom => ErrorKind::Oom,
        T::Data => ErrorKind::Data,
        T::Config => ErrorKind::Config,
        T::Io => ErrorKind::Io,
    }
}

impl From<Error> for BackendError {
    fn from(e: Error) -> Self {
        BackendError::new(e.kind(), "local backend", e)
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_is_found_in_the_cause_chain() {
        let e = BackendError::new(
            ErrorKind::Io,
            "training",
            "CUDA out of memory. Tried to allocate 2.00 GiB",
        );
        assert!(mentions_oom(&e));
        let e = BackendError::new(ErrorKind::Io, "training", "shape mismatch");
        assert!(!mentions_oom(&e));
    }

    fn eval(msg: &str) -> Error {
        Error::Eval {
            task: "gsm8k".into(),
            source: msg.into(),
        }
    }

    #[test]
    fn kinds_of_trainer_and_task_errors() {
        let nan = Error::Train {
            context: "training",
            source: sft_train::Error::NonFinite {
                what: "loss",
                step: 3,
                record_ids: "a,b".into(),
            },
        };
        assert_eq!(nan.kind(), ErrorKind::NonFinite);
        assert_eq!(
            Error::Interrupted { step: 2, total: 9 }.kind(),
            ErrorKind::Interrupted
        );
        let mask = Error::Train {
            context: "tokenizing stage data",
            source: sft_train::Error::Mask {
                record_id: "r1".into(),
                source: sft_train::MaskError::NothingTrained,
            },
        };
        assert_eq!(mask.kind(), ErrorKind::Data);
        let cfg = Error::Train {
            context: "training",
            source: sft_train::Error::Config("lr must be positive".into()),
        };
        assert_eq!(cfg.kind(), ErrorKind::Config);
        assert_eq!(Error::Settings("x".into()).kind(), ErrorKind::Config);
        assert_eq!(eval("judge unreachable").kind(), ErrorKind::Eval);
        let oom = Error::Train {
            context: "training",
            source: sft_train::Error::Torch(tch::TchError::Torch(
                "CUDA out of memory. Tried to allocate 1 GiB".into(),
            )),
        };
        assert_eq!(oom.kind(), ErrorKind::Oom);
        assert_eq!(eval("CUDA error: out of memory").kind(), ErrorKind::Oom);
        let io = Error::io("rename", "/x")(std::io::Error::other("denied"));
        assert_eq!(io.kind(), ErrorKind::Io);
    }

    #[test]
    fn the_backend_error_keeps_the_kind_and_the_cause() {
        let b: BackendError = Error::Interrupted { step: 2, total: 9 }.into();
        assert_eq!(b.kind, ErrorKind::Interrupted);
        let src = std::error::Error::source(&b).unwrap();
        assert!(
            src.to_string().contains("interrupted at step 2 of 9"),
            "{src}"
        );
    }
}
