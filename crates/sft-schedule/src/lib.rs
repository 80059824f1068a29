//! `sft-schedule`: training strategies as plans of stages.
//!
//! The paper (Dong et al., arXiv 2310.05492, RQ4) compares *how* the same three data sources are
//! fed to a model: all at once (multi-task), one after another (sequential), specialized data
//! first and general data last (mixed sequential), or its proposal, Dual-stage Mixed Fine-tuning
//! (DMT), which adds a proportion `k` of the specialized data back into the last stage.
//! This crate states such a strategy once, as data, so that a runner can compose, train and
//! evaluate it without knowing which strategy it is.
//!
//! * A [`Plan`] is an ordered list of [`Stage`]s. Each stage names the proportion of each source's
//!   pool it trains on (its mixture) and its training settings: typed overrides of the trainer's
//!   configuration ([`TrainOverrides`], from the libtorch-free `sft-config`) and the resolved,
//!   validated [`TrainConfig`] they give, so a typo or a bad value in any stage fails when the
//!   plan is loaded, naming the file, the stage and the key.
//! * Stage `i + 1` starts from the weights stage `i` produced; the optimizer and learning-rate
//!   schedule restart per stage ([`OptimizerState::Restart`]), as the paper's separate SFT runs
//!   did, unless a plan asks to carry them over.
//! * Built-in strategies come from [`Strategy`] (`individual:math`, `multi-task`, `sequential`,
//!   `mixed-sequential`, `dmt:1/256`); any other plan is written in TOML ([`PlanSpec`]).
//! * A stage's identity is a content key ([`Plan::stage_keys`]): SHA-256 over its mixture, its
//!   parent's key, its resolved training config (less the operational checkpoint/dump settings), the base model and the sources it reads. Two plans that
//!   share a stage (the code + math stage of mixed sequential and of every DMT plan) share the key,
//!   so a runner trains it once.
//!
//! The crate does no I/O beyond parsing text it is handed.

mod canonical;
mod error;
mod plan;
mod strategy;

pub use canonical::canonical_json;
pub use error::{Error, Result};
pub use plan::{
    KeyContext, OptimizerState, Plan, PlanSpec, Stage, StageKey, StageSpec, FORMAT_VERSION,
};
pub use sft_compose::Ratio;
pub use sft_config::{TrainConfig, TrainOverrides, OPERATIONAL_KEYS};
pub use strategy::{Strategy, CODE, DMT_K_GRID, GENERAL, MATH, STANDARD_SOURCES};
