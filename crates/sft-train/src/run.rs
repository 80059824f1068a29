//! [`train`]: the one training path — a [`TrainJob`] (weights, tokenizer, data, config, output
//! directory, device, run options) in, a [`TrainOutcome`] out. The `train` example and
//! `sft-local`'s backend both build a job and call it.

use std::path::{Path, PathBuf};

use sft_config::memory::{gib, DeviceKind, MemoryEstimate, ModelShape, Parallel};
use sft_record::Record;
use tch::Device;

use crate::chat::{tokenizer_path_for, TemplateEncoder, TokenizerSource, TOKENIZER_SOURCE};
use crate::config::TrainConfig;
use crate::data::{read_records, tokenize, DataReport, Example};
use crate::error::{Error, Result};
use crate::trainer::{pretty, train_model, RunOptions, TrainContext, TrainOutcome};

/// Where a job's training records come from.
#[derive(Debug, Clone)]
pub enum TrainData {
    /// A chat JSONL (`.jsonl`, `.jsonl.gz`) or Parquet file, read by [`read_records`].
    Path(PathBuf),
    /// Records already in memory.
    Records(Vec<Record>),
}

impl TrainData {
    /// The records (read from the file, or borrowed).
    fn records(&self) -> Result<std::borrow::Cow<'_, [Record]>> {
        Ok(match self {
            TrainData::Path(p) => std::borrow::Cow::Owned(read_records(p)?),
            TrainData::Records(r) => std::borrow::Cow::Borrowed(r.as_slice()),
        })
    }
}

/// One training run: everything [`train`] needs.
#[derive(Debug, Clone)]
pub struct TrainJob {
    /// Starting weights: an HF directory (a previous stage's `final/` or
    /// `checkpoints/step-N/` works) or a `.gguf`.
    pub model: PathBuf,
    /// Tokenizer (`.gguf`, HF dir or `tokenizer.json`); `None` = found from `model` by
    /// [`tokenizer_path_for`], the one lookup.
    pub tokenizer: Option<PathBuf>,
    /// The training records.
    pub data: TrainData,
    /// The resolved hyperparameters (validated again here).
    pub config: TrainConfig,
    /// Where `train_config.json`, `data_report.json`, `metrics.jsonl`, `checkpoints/` and
    /// `final/` go.
    pub out_dir: PathBuf,
    /// Where tensors live.
    pub device: Device,
    /// Resume policy, progress, stop flag, `stop_after`, batch dump, optimizer carry-over.
    pub run: RunOptions,
    /// Train as one rank of a data-parallel group (`None`: one process).
    pub distributed: Option<Distributed>,
}

/// How a job joins a data-parallel run: its rank and rendezvous, and the bound on every
/// collective (a rank that dies or hangs fails the others within it).
#[derive(Debug, Clone)]
pub struct Distributed {
    /// Rank, world size and rendezvous address ([`sft_dist::Launch::from_env`]).
    pub launch: sft_dist::Launch,
    /// Store, rendezvous and collective timeout.
    pub timeout: std::time::Duration,
}

impl Distributed {
    /// The default collective timeout: long enough for rank 0 to write a large checkpoint
    /// while the others wait in the next collective.
    pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1800);
}

impl TrainJob {
    /// A job with default [`RunOptions`] (resume when a checkpoint exists) and the tokenizer
    /// found from `model`.
    pub fn new(
        model: impl Into<PathBuf>,
        data: TrainData,
        config: TrainConfig,
        out_dir: impl Into<PathBuf>,
        device: Device,
    ) -> Self {
        TrainJob {
            model: model.into(),
            tokenizer: None,
            data,
            config,
            out_dir: out_dir.into(),
            device,
            run: RunOptions::default(),
            distributed: None,
        }
    }

    /// The tokenizer path: [`TrainJob::tokenizer`] or the one found from the model.
    pub fn tokenizer_path(&self) -> Result<PathBuf> {
        match &self.tokenizer {
            Some(p) => Ok(p.clone()),
            None => tokenizer_path_for(&self.model),
        }
    }
}

/// Where the starting weights and the tokenizer come from (for [`eval_loss_at`]).
#[derive(Debug, Clone, Copy)]
pub struct ModelInput<'a> {
    /// An HF directory (a previous stage's `final/` or `checkpoints/step-N/` works) or a `.gguf`.
    pub model: &'a Path,
    /// Tokenizer (`.gguf`, HF dir or `tokenizer.json`); `None` = found from `model`
    /// ([`crate::chat::tokenizer_path_for`]).
    pub tokenizer: Option<&'a Path>,
}

/// Runs `job`: validates the config, loads the tokenizer and the weights, reads and tokenizes
/// the data, trains ([`crate::trainer::train_model`]), and makes `out_dir/final/`
/// self-contained: weights, `config.json`, the tokenizer files (`tokenizer.json` +
/// `tokenizer_config.json` with the chat template) and `tokenizer_source.json`, so the next
/// stage, `generate` or transformers load it as it is. Failing to save the tokenizer is an
/// error. An interrupted run (signal or `stop_after`) is an outcome (`interrupted: true`, no
/// `final/`), not an error.
pub fn train(job: &TrainJob) -> Result<TrainOutcome> {
    let cfg = &job.config;
    cfg.validate()?;
    check_memory(job)?;
    // Freed activations go back to the OS, so the peak RSS is what the estimate counts.
    sft_llama::device::return_large_frees_to_os(4 << 20);
    let (encoder, examples, report) = prepare(&job.tokenizer_path()?, &job.data.records()?, cfg)?;
    log_report(&report, &encoder);
    let group = match &job.distributed {
        Some(d) => {
            let backend = sft_dist::Backend::for_device(job.device);
            let g = sft_dist::ProcessGroup::new(&d.launch.group_config(backend, d.timeout))?;
            tracing::info!(rank = g.rank(), world_size = g.world_size(), %backend, "joined");
            Some(g)
        }
        None => None,
    };
    let mut loaded = crate::llama::load_model(&job.model, job.device)?;
    let ctx = TrainContext {
        model: &loaded.model,
        examples: &examples,
        data_report: &report,
        encoder: &encoder,
        config: cfg,
        out_dir: &job.out_dir,
        run: &job.run,
        group: group.as_ref(),
    };
    let outcome = train_model(&ctx, &mut loaded.vs)?;
    let writer = group.as_ref().is_none_or(|g| g.rank() == 0);
    if let (Some(dir), true) = (&outcome.final_dir, writer) {
        save_tokenizer(dir, &encoder)?;
    }
    if let Some(g) = &group {
        g.barrier()?;
    }
    Ok(outcome)
}

/// The memory estimate of `job` (one process) on its device, when the model's shape can be read.
pub fn memory_estimate(job: &TrainJob) -> Option<MemoryEstimate> {
    let shape = match ModelShape::from_model_path(&job.model) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%e, "no memory estimate");
            return None;
        }
    };
    let kind = match job.device {
        Device::Cpu => DeviceKind::Cpu,
        _ => DeviceKind::Cuda,
    };
    let par = Parallel {
        world_size: job
            .distributed
            .as_ref()
            .map_or(1, |d| d.launch.world_size as u64),
        zero: job.config.zero,
    };
    Some(MemoryEstimate::new(&shape, &job.config, par, kind))
}

/// Refuses a job whose estimated peak exceeds the device's memory, before anything is loaded
/// (unless [`RunOptions::ignore_memory_estimate`]); logs the estimate either way.
fn check_memory(job: &TrainJob) -> Result<()> {
    let Some(est) = memory_estimate(job) else {
        return Ok(());
    };
    let have = sft_llama::device::device_memory_bytes(job.device);
    tracing::info!(
        peak = %gib(est.peak),
        available = %have.map(gib).unwrap_or_else(|| "unknown".into()),
        "memory estimate"
    );
    match have {
        Some(have) if est.peak > have && !job.run.ignore_memory_estimate => {
            Err(Error::PredictedOom {
                need: gib(est.peak),
                have: gib(have),
                device: format!("{:?}", job.device),
                table: est.table(),
            })
        }
        _ => Ok(()),
    }
}

/// Writes the tokenizer files and [`TOKENIZER_SOURCE`] into the model directory `dir`.
fn save_tokenizer(dir: &Path, encoder: &TemplateEncoder) -> Result<()> {
    encoder
        .tokenizer()
        .save_hf_dir(dir)
        .map_err(|source| Error::SaveTokenizer {
            dir: dir.to_path_buf(),
            source,
        })?;
    let v = TokenizerSource {
        path: encoder.tokenizer_path.clone(),
        template: encoder.template_name().to_string(),
    };
    crate::checkpoint::write_atomic(&dir.join(TOKENIZER_SOURCE), pretty(&v)?.as_bytes())
}

fn log_report(report: &DataReport, encoder: &TemplateEncoder) {
    tracing::info!(
        records = report.records,
        kept = report.kept,
        truncated = report.truncated,
        dropped_overlong = report.dropped_overlong,
        dropped_no_target = report.dropped_no_target,
        mask_errors = report.mask_errors.len(),
        target_tokens = report.target_tokens,
        template = encoder.template_name(),
        "tokenized"
    );
}

/// Held-out loss of the model at `model` on the chat JSONL or Parquet at `data` (mean per target token),
/// tokenized like training with `cfg`'s template, `max_len` and policies.
pub fn eval_loss_at(
    input: ModelInput<'_>,
    data: &Path,
    cfg: &TrainConfig,
    device: Device,
) -> Result<crate::trainer::EvalLoss> {
    let tok_path = match input.tokenizer {
        Some(p) => p.to_path_buf(),
        None => tokenizer_path_for(input.model)?,
    };
    let (_, examples, _) = prepare(&tok_path, &read_records(data)?, cfg)?;
    let loaded = crate::llama::load_model(input.model, device)?;
    crate::trainer::eval_loss(&loaded.model, &examples, cfg.micro_batch_size, device)
}

/// The tokenizer at `tokenizer` with `cfg`'s template, and `records` tokenized with `cfg`'s
/// template, `max_len` and policies: the one preparation of training and held-out data.
fn prepare(
    tokenizer: &Path,
    records: &[Record],
    cfg: &TrainConfig,
) -> Result<(TemplateEncoder, Vec<Example>, DataReport)> {
    let encoder = TemplateEncoder::new(tokenizer, &cfg.template)?;
    let (examples, report) = tokenize(
        records,
        &encoder,
        cfg.max_len,
        cfg.overlong,
        cfg.on_mask_error,
    )?;
    Ok((encoder, examples, report))
}
