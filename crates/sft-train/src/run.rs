//! [`train`]: the one call a runner needs — load weights, tokenizer and data, train, save.

use std::path::Path;

use tch::Device;

use crate::chat::{tokenizer_path_for, TemplateEncoder, TOKENIZER_SOURCE};
use crate::config::TrainConfig;
use crate::data::{read_records, tokenize, DataReport, Example};
use crate::error::{Error, Result};
use crate::trainer::{pretty, train_model, RunOptions, TrainOutcome};

/// Where the starting weights and the tokenizer come from.
#[derive(Debug, Clone, Copy)]
pub struct ModelInput<'a> {
    /// An HF directory (a previous stage's `final/` or `checkpoints/step-N/` works) or a `.gguf`.
    pub model: &'a Path,
    /// Tokenizer (`.gguf`, HF dir or `tokenizer.json`); `None` = found from `model`
    /// ([`crate::chat::tokenizer_path_for`]).
    pub tokenizer: Option<&'a Path>,
}

/// Trains `input.model` on the chat JSONL or Parquet at `data` with `cfg`, writing everything under
/// `out_dir` (see [`crate::trainer::train_model`]); `out_dir/final/` also gets the tokenizer
/// files and `tokenizer_source.json`, so the next stage, `generate` or transformers load it as is.
pub fn train(
    input: ModelInput<'_>,
    data: &Path,
    cfg: &TrainConfig,
    out_dir: &Path,
    device: Device,
    opts: &RunOptions,
) -> Result<TrainOutcome> {
    cfg.validate()?;
    let (encoder, examples, report) = prepare(input, data, cfg)?;
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
    let mut loaded = crate::llama::load_model(input.model, device)?;
    let outcome = train_model(
        &loaded.model,
        &mut loaded.vs,
        &examples,
        &report,
        &encoder,
        cfg,
        out_dir,
        opts,
    )?;
    if let Some(dir) = &outcome.final_dir {
        // `final/` is a self-contained HF directory: weights, config and the tokenizer
        // (`tokenizer.json` + `tokenizer_config.json` with the chat template), so `generate`,
        // a next stage or transformers load it as it is; the source is recorded too.
        encoder.tokenizer().save_hf_dir(dir).map_err(|e| {
            Error::Model(format!("saving the tokenizer into {}: {e}", dir.display()))
        })?;
        let v = serde_json::json!({ "path": encoder.tokenizer_path, "template": encoder.template_name() });
        crate::checkpoint::write_atomic(&dir.join(TOKENIZER_SOURCE), pretty(&v)?.as_bytes())?;
    }
    Ok(outcome)
}

/// Held-out loss of the model at `model` on the chat JSONL or Parquet at `data` (mean per target token),
/// tokenized like training with `cfg`'s template, `max_len` and policies.
pub fn eval_loss_at(
    input: ModelInput<'_>,
    data: &Path,
    cfg: &TrainConfig,
    device: Device,
) -> Result<crate::trainer::EvalLoss> {
    let (_, examples, _) = prepare(input, data, cfg)?;
    let loaded = crate::llama::load_model(input.model, device)?;
    crate::trainer::eval_loss(&loaded.model, &examples, cfg.micro_batch_size, device)
}

/// The tokenizer + template of `input` (or the one its `final/` records), and `data` read and
/// tokenized with `cfg`'s template, `max_len` and policies.
fn prepare(
    input: ModelInput<'_>,
    data: &Path,
    cfg: &TrainConfig,
) -> Result<(TemplateEncoder, Vec<Example>, DataReport)> {
    let tok_path = match input.tokenizer {
        Some(p) => p.to_path_buf(),
        None => tokenizer_path_for(input.model)?,
    };
    let encoder = TemplateEncoder::new(&tok_path, &cfg.template)?;
    let records = read_records(data)?;
    let (examples, report) = tokenize(
        &records,
        &encoder,
        cfg.max_len,
        cfg.overlong,
        cfg.on_mask_error,
    )?;
    Ok((encoder, examples, report))
}
