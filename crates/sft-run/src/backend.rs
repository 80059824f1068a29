//! What the runner needs from a model stack: train one stage, evaluate a final model on a set
//! of tasks.
//!
//! `sft_local::LocalBackend` (crate `sft-local`) implements it with `sft-llama`, `sft-train`,
//! `sft-chat` and `sft-eval` on a `tch::Device`. The trait keeps the orchestration (keys, store,
//! resume, reports) separate from the tensors, so the orchestration's guarantees are tested on
//! their own, and this crate does not link libtorch.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sft_compose::Record;
use sft_schedule::{Stage, TrainConfig};

use crate::error::{BackendError, Error};
use crate::settings::{EvalDtype, EvalSettings, HiddenSettings};

/// One stage to train.
#[derive(Debug, Clone, Copy)]
pub struct TrainRequest<'a> {
    /// The stage (its [`Stage::config`] is the resolved, validated trainer config).
    pub stage: &'a Stage,
    /// The stage's content key.
    pub key: &'a str,
    /// The weights to start from: the base model, or the previous stage's `model/` directory.
    pub init_model: &'a Path,
    /// The previous stage's trainer directory, when the plan carries optimizer state over.
    pub init_optimizer: Option<&'a Path>,
    /// Keep this stage's optimizer state once it is done (the next stage carries it over).
    /// Otherwise a backend may delete its checkpoints after writing `model_out`: they hold
    /// twice the model's size in optimizer moments and are not needed again.
    pub keep_optimizer_state: bool,
    /// The stage's training data (`sft-compose` chat JSONL).
    pub data: &'a Path,
    /// The run's seed (already the trainer's seed in [`Stage::config`] unless the plan's
    /// settings set one).
    pub seed: u64,
    /// The trainer's own directory: checkpoints there let an interrupted stage resume.
    pub work_dir: &'a Path,
    /// Where the final weights must be, complete, when `train` returns (HF layout).
    pub model_out: &'a Path,
}

/// What training a stage did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// Optimizer steps.
    pub steps: u64,
    /// Examples trained on (after tokenization).
    pub examples: usize,
    /// The last step's loss.
    pub final_train_loss: Option<f64>,
    /// The checkpoint step training resumed from, when an earlier attempt was interrupted.
    pub resumed_from: Option<u64>,
}

/// An evaluation task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Task {
    /// GSM8K exact-match accuracy (`gsm8k_acc`).
    Gsm8k,
    /// HumanEval pass@1 (`humaneval_pass@1`).
    HumanEval,
    /// MT-Bench single-answer judge score (`mtbench_score`).
    MtBench,
}

impl Task {
    /// Every task, in report order.
    ///
    /// Held-out losses are not a task: the runner asks for them per model
    /// ([`Backend::heldout_losses`]), for the base model and after every stage.
    pub const ALL: [Task; 3] = [Task::Gsm8k, Task::HumanEval, Task::MtBench];

    /// The metric name in `results.json` (see `docs/formats.md`).
    pub fn metric_name(self) -> &'static str {
        match self {
            Task::Gsm8k => "gsm8k_acc",
            Task::HumanEval => "humaneval_pass@1",
            Task::MtBench => "mtbench_score",
        }
    }

    /// A short name for file names (`eval/<name>.report.json`).
    pub fn file_name(self) -> &'static str {
        match self {
            Task::Gsm8k => "gsm8k",
            Task::HumanEval => "humaneval",
            Task::MtBench => "mtbench",
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.file_name())
    }
}

/// One metric with its 95% interval, sample size and interval method: `sft-eval`'s
/// [`sft_eval::Estimate`], the headline a task's report carries, copied unchanged into
/// `results.json` (constructors in [`sft_eval::stats`]).
pub type Metric = sft_eval::Estimate;

/// One evaluation to run on a final model.
#[derive(Debug, Clone, Copy)]
pub struct EvalRequest<'a> {
    /// The model (HF directory of the last stage, or the base model for a zero-stage baseline).
    pub model: &'a Path,
    /// The data directory (GSM8K test and HumanEval files resolve against it).
    pub data_dir: &'a Path,
    /// Sizes and generation limits.
    pub settings: &'a EvalSettings,
    /// Where to write the task's report and completions (`<run>/eval/`).
    pub out_dir: &'a Path,
    /// The run's seed.
    pub seed: u64,
    /// The seed of the benchmark subsets ([`crate::RunSettings::split_seed`]): the same for
    /// every strategy and replicate.
    pub split_seed: u64,
    /// The last stage's resolved trainer config (its chat template and `max_len` apply to
    /// evaluation); `None` for a model no stage trained (the trainer defaults apply).
    pub final_stage_train: Option<&'a TrainConfig>,
    /// The dtype to load the model in: `settings.dtype` resolved by [`Backend::eval_dtype`]
    /// (the runner never passes [`EvalDtype::Auto`]; a backend given it resolves it itself).
    pub dtype: EvalDtype,
}

/// One model to score on held-out records ([`Backend::heldout_losses`]).
#[derive(Debug, Clone, Copy)]
pub struct LossRequest<'a> {
    /// The model (the base model, or a stage's `model/` directory).
    pub model: &'a Path,
    /// The held-out records of every source.
    pub records: &'a [Record],
    /// The trainer config whose chat template, `max_len` and overlong policy apply: the
    /// trainer's own tokenization and masking (assistant tokens only).
    pub config: &'a TrainConfig,
    /// The dtype to load the model in (already resolved by [`Backend::eval_dtype`]).
    pub dtype: EvalDtype,
}

/// The loss of one held-out record: the mean per-token cross entropy (nats) over its trained
/// (assistant) tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordLoss {
    /// The record's id.
    pub id: String,
    /// Its source.
    pub source: String,
    /// Mean loss per target token.
    pub loss: f64,
    /// Target tokens scored.
    pub tokens: u64,
}

/// One representation analysis ([`Backend::analyze_hidden`], `[run.eval.hidden]`).
#[derive(Debug, Clone, Copy)]
pub struct HiddenRequest<'a> {
    /// (label, model) pairs in order: the first is the reference the changes are measured
    /// against (the runner passes `base`, then `final`).
    pub models: &'a [(&'a str, &'a Path)],
    /// The queries (held-out records, each with its source), the same for every model.
    pub records: &'a [Record],
    /// Layer, pooling, rendering, batch and analysis settings.
    pub settings: &'a HiddenSettings,
    /// The chat template the queries are rendered in (`None`: raw, `settings.raw`): already
    /// resolved by the runner from `settings.template` or the final stage's template.
    pub template: Option<&'a str>,
    /// The seed of the probe's folds and of the bootstrap (the run's split seed).
    pub seed: u64,
    /// The dtype the models load in (resolved by [`Backend::eval_dtype`]).
    pub dtype: EvalDtype,
    /// Where the analysis files go (`<run>/hidden/`: `embeddings.parquet`, `tsne.csv`,
    /// `tsne.png`, `tsne.svg`, `separation.json`).
    pub out_dir: &'a Path,
}

/// What [`Backend::evaluate`] calls with each task's result as soon as that task is done
/// (`None`: not configured). The runner caches the result there, so a failure in a later task
/// keeps it; an error it returns stops the evaluation and must be returned (wrapped).
pub type TaskDone<'a> = dyn FnMut(Task, Option<Metric>) -> Result<(), Error> + 'a;

/// Trains stages and evaluates models.
pub trait Backend {
    /// Facts for `provenance.json` (device, libtorch version, …).
    fn describe(&self) -> BTreeMap<String, String>;

    /// The versions of what training computes, by component (e.g. `training` =
    /// `sft_train::TRAINING_SEMANTICS_VERSION`, `chat` = `sft_train::CHAT_SEMANTICS_VERSION`).
    /// The runner records them in each stage's `done.json` and never reuses a stage trained
    /// under other versions (see [`crate::StaleStages`]); a backend bumps one whenever its
    /// numerics or outputs change for the same inputs.
    fn semantics(&self) -> BTreeMap<String, u32>;

    /// How many data-parallel ranks train each stage (1: one process, the default). A stage
    /// trained by `N` ranks has a global batch of `N × micro_batch_size × grad_accum`, so for
    /// `N > 1` the runner puts `N` in the stage keys ([`sft_schedule::KeyContext::world_size`]):
    /// stages trained with another number of ranks are never reused for each other.
    fn world_size(&self) -> usize {
        1
    }

    /// Checks, before anything trains, what only the backend can check of a stage's resolved
    /// settings (e.g. that its chat template exists for the tokenizer). The runner calls it for
    /// every stage of a plan first, so a bad later stage fails in seconds, not after the earlier
    /// stages have trained. The default accepts every stage.
    fn check_stage(&self, stage: &Stage) -> Result<(), BackendError> {
        let _ = stage;
        Ok(())
    }

    /// Trains one stage; must leave complete weights in `req.model_out`. May be called again for
    /// the same stage after an interruption, with the same `work_dir`, and should then resume.
    /// An error says its [`crate::ErrorKind`] (an interruption is [`crate::ErrorKind::Interrupted`]).
    fn train(&self, req: &TrainRequest<'_>) -> Result<TrainReport, BackendError>;

    /// The dtype an evaluation asking for `requested` runs in on this backend's device
    /// (never [`EvalDtype::Auto`]: see [`EvalDtype::resolve`]). The runner puts it in the
    /// [`EvalRequest`] and in the cached metrics' key.
    fn eval_dtype(&self, requested: EvalDtype) -> EvalDtype;

    /// The loss of the model `req.model` on each of `req.records` (one forward pass per record,
    /// no gradients), with the trainer's tokenization and masking under `req.config`. A record
    /// the trainer would drop (mask error, no target token left) is left out of the result;
    /// the others keep their order.
    fn heldout_losses(&self, req: &LossRequest<'_>) -> Result<Vec<RecordLoss>, BackendError>;

    /// Checks, before anything trains, what only the backend can check of `[run.eval.hidden]`:
    /// that `settings.layer` exists in the base model (read from its configuration, without the
    /// weights). The runner calls it only when the analysis is configured. The default accepts.
    fn check_hidden(
        &self,
        base_model: &Path,
        settings: &HiddenSettings,
    ) -> Result<(), BackendError> {
        let _ = (base_model, settings);
        Ok(())
    }

    /// Runs the representation analysis of `req.models` on `req.records`: each model's pooled
    /// hidden states of the queries, then `sft_analyze::analyze` and its files under
    /// `req.out_dir`. Returns [`sft_analyze::Analysis::metrics`] (`<label>.<scope>.<score>`,
    /// and `<label>-vs-<first label>.…` for the changes). The default fails with
    /// [`crate::ErrorKind::Config`]: a backend without hidden states cannot run it.
    fn analyze_hidden(
        &self,
        req: &HiddenRequest<'_>,
    ) -> Result<BTreeMap<String, Metric>, BackendError> {
        let _ = req;
        Err(BackendError::new(
            crate::ErrorKind::Config,
            "[run.eval.hidden]",
            "this backend does not compute hidden states",
        ))
    }

    /// Evaluates the model `req.model` on `tasks` (distinct, in [`Task::ALL`] order), loading it
    /// at most once for all of them. For each task, in order, it writes the task's report under
    /// `req.out_dir` (its headline [`Metric`] in the report's `estimate` field) and calls
    /// `done(task, metric)` before starting the next one; `None` when the task is not
    /// configured (e.g. MT-Bench without a judge, or a size of 0). It returns after the last
    /// task, or at the first failure (a task's error, whose context names the task, or the
    /// error `done` returned), having reported the tasks finished before it.
    fn evaluate(
        &self,
        req: &EvalRequest<'_>,
        tasks: &[Task],
        done: &mut TaskDone<'_>,
    ) -> Result<(), BackendError>;
}
