//! `sft-local`: the libtorch backend of `sft-run`.
//!
//! [`LocalBackend`] implements [`sft_run::Backend`] on this machine: it trains a plan's stages
//! with `sft-train` and evaluates the final model with `sft-llama` (generation) and `sft-eval`
//! (GSM8K, HumanEval, held-out loss, MT-Bench), on the `tch::Device` of its [`LocalOptions`].
//! It is the only part of the runner that links libtorch; `sft-run` itself (the orchestration,
//! the stage store, the run-directory format) does not.
//!
//! Its [`Error`] keeps every cause and maps to an [`sft_run::ErrorKind`] ([`Error::kind`]), which
//! the runner records in `status.json`: an interrupted training is `interrupted`, a NaN abort
//! `non_finite`, a libtorch error saying `out of memory` `oom`, a bad record or loss mask
//! `data`, bad settings or templates `config`, file system errors `io`, task failures `eval`.
//! Trainer errors are classified by `sft-train` itself ([`sft_train::Error::kind`]) and mapped
//! one-to-one.
//!
//! Training a stage is one [`sft_train::TrainJob`] run by [`sft_train::train`], the same path
//! as the `train` example; the job's self-contained `final/` (weights, config, tokenizer files,
//! `tokenizer_source.json`) is moved into the stage store as the stage's `model/`.
//!
//! Data-parallel plans ([`dist`]): rank 0 runs the runner with a [`dist::Leader`] in its
//! [`LocalOptions::leader`], which hands every stage it trains to the other ranks, and they
//! train it with it ([`dist::follow`]); `run_plan --nproc-per-node N` is the command.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let (model, run_dir, data_dir) = (std::path::PathBuf::from("m"), std::path::PathBuf::from("r"), std::path::PathBuf::from("d"));
//! let (plan, settings) = sft_run::load_plan_file(std::path::Path::new("plan.toml"))?;
//! let backend = sft_local::LocalBackend::new(sft_local::LocalOptions::new(tch::Device::Cpu, &model))?;
//! let opts = sft_run::RunOptions { run_dir, stage_store: None, data_dir, base_model: model, provenance: Default::default() };
//! let results = sft_run::run_plan(&plan, &settings, &opts, &backend)?;
//! # let _ = results; Ok(()) }
//! ```

#![deny(missing_docs)]

mod complete;
pub mod dist;
mod error;
pub mod hidden;
mod local;
mod train;

pub use complete::LocalCompleter;
pub use error::{Error, Result};
pub use local::{LocalBackend, LocalOptions};
