//! `sft-run`: runs a training plan end to end and records everything.
//!
//! A researcher states a strategy once (an [`sft_schedule::Plan`]); this crate composes each
//! stage's data with `sft-compose`, trains the stages in order with `sft-train` (each from the
//! previous stage's weights), evaluates the final model with `sft-eval` (GSM8K and HumanEval from
//! generations by `sft-llama`, general ability as held-out loss, MT-Bench when a judge is
//! configured), and writes a run directory whose layout is a contract (`docs/formats.md`).
//!
//! Why a crate and not an example: the sweep driver, the DMT demo and the generic `run_plan`
//! binary all need the same guarantees:
//!
//! * **Content-keyed stages.** A stage is stored under its key ([`sft_schedule::Plan::stage_keys`])
//!   in a shared stage store, and a stage whose `done.json` exists is never trained again: the
//!   code + math stage of mixed sequential and of every DMT plan is trained once.
//! * **Resumable.** Rerunning a plan skips finished stages and evaluations; an interrupted stage
//!   resumes from the trainer's last checkpoint in the stage's `train/` directory.
//! * **Honest status.** `status.json` says `running`, `done` or `failed` (with the error), and
//!   `results.json` exists only for a finished run.
//! * **No held-out leakage.** Each source's held-out records are drawn first, with the split
//!   seed, and filtered out of its pool, so no stage can select them ([`data`]); every model of
//!   the plan (the base model, each stage, the final model) is scored on them ([`heldout`]).
//!
//! The orchestration ([`run_plan`]) talks to models only through the [`Backend`] trait;
//! `sft_local::LocalBackend` (crate `sft-local`) is the real one (libtorch on a given
//! `tch::Device`). This crate does not link libtorch: its dependency tree is tch-free, so the
//! runner, the run-directory types and their tests build without it.
//!
//! Errors carry an [`ErrorKind`] ([`Error::kind`]): `status.json` records it as `error_kind`
//! beside the message, and the sweep reports it per failed cell.

#![deny(missing_docs)]

mod backend;
pub mod data;
mod error;
pub mod files;
pub mod heldout;
pub mod items;
mod runner;
mod settings;
pub mod table;

pub use backend::{
    Backend, EvalRequest, HiddenRequest, LossRequest, Metric, RecordLoss, Task, TaskDone,
    TrainReport, TrainRequest,
};
pub use error::{BackendError, BoxError, Error, ErrorKind, Result};
pub use runner::{
    run_plan, RunOptions, RunResults, StageDone, StageResult, Status, HIDDEN_DIR,
    RESULTS_FORMAT_VERSION,
};
pub use settings::{
    default_sources, DataSettings, EvalDtype, EvalSettings, Heldout, HiddenSettings, JudgeSettings,
    RunSettings, ServerSettings, SourceSettings, StaleStages,
};

use std::path::Path;

use sft_schedule::{Plan, PlanSpec};

/// Reads a plan file: the plan (validated against the sources its `[run]` table configures, every
/// stage's training settings resolved over the trainer defaults with the run's seed and
/// validated, so a bad setting fails here, naming the file, the stage and the key) and the
/// runner settings.
pub fn load_plan_file(path: &Path) -> Result<(Plan, RunSettings)> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
        action: "read",
        path: path.to_path_buf(),
        source: e,
    })?;
    let spec = PlanSpec::from_toml_str(&text, &path.display().to_string())?;
    let settings = RunSettings::from_plan_value(spec.run.as_ref(), path)?;
    let plan = spec.resolve(&settings.source_names(), &settings.base_train_config())?;
    Ok((plan, settings))
}
