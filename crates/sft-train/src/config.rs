//! [`TrainConfig`]: every hyperparameter of a run, with the paper's FastChat recipe as defaults.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Learning-rate schedule after warm-up (the HF `transformers` definitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Linear warm-up, then half a cosine period down to 0 (FastChat's choice).
    Cosine,
    /// Linear warm-up, then linear decay to 0.
    Linear,
    /// Linear warm-up, then constant.
    Constant,
}

impl std::str::FromStr for Schedule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cosine" => Ok(Self::Cosine),
            "linear" => Ok(Self::Linear),
            "constant" => Ok(Self::Constant),
            _ => Err(Error::Config(format!(
                "unknown schedule `{s}` (cosine, linear, constant)"
            ))),
        }
    }
}

/// What to do with a conversation longer than `max_len` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlong {
    /// Keep the first `max_len` tokens (FastChat's behaviour); counted.
    Truncate,
    /// Leave the record out; counted.
    Drop,
}

/// What to do when a loss or gradient is NaN or infinite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NanPolicy {
    /// Stop before the optimizer update; the weights stay those of the previous step.
    Abort,
    /// Skip the update, count it, and abort after `max_consecutive_skips` in a row.
    Skip,
}

/// What to do with a record whose loss mask cannot be computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskErrorPolicy {
    /// Fail the run, naming the record.
    Error,
    /// Leave the record out and count it (listed in the data report).
    Skip,
}

/// Compute precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// Everything in f32 (the only choice on CPU).
    F32,
    /// f32 master weights and optimizer state, forward/backward on a bf16 copy of the weights
    /// (CUDA only; see `docs/train.md`).
    Bf16,
}

/// All hyperparameters of one SFT run.
///
/// `Default` is the recipe the paper used (FastChat `train.py` on the HF Trainer): lr 2e-5,
/// 3 epochs, global batch 16, warm-up ratio 0.03, cosine, weight decay 0, max length 2048,
/// Adam betas (0.9, 0.999), eps 1e-8, gradient clipping at 1.0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Chat template name (`vicuna_v1.1`, `chatml`, or `model` for the model's own template).
    pub template: String,
    /// Peak learning rate.
    pub lr: f64,
    /// Passes over the data.
    pub epochs: u32,
    /// Stop after this many optimizer steps (also shortens the schedule).
    pub max_steps: Option<u64>,
    /// Sequences (or packed rows) per forward pass.
    pub micro_batch_size: usize,
    /// Micro-batches per optimizer step; global batch = micro × accumulation.
    pub grad_accum: usize,
    /// Fraction of the total steps spent warming up (rounded up, as in HF).
    pub warmup_ratio: f64,
    /// Schedule after warm-up.
    pub schedule: Schedule,
    /// Decoupled weight decay; never applied to norms and biases.
    pub weight_decay: f64,
    /// Adam β1.
    pub adam_beta1: f64,
    /// Adam β2.
    pub adam_beta2: f64,
    /// Adam ε.
    pub adam_eps: f64,
    /// Clip the global gradient norm to this (0 disables clipping; the norm is still reported).
    pub max_grad_norm: f64,
    /// Maximum tokens per sequence (and per packed row).
    pub max_len: usize,
    /// Over-long records: truncate or drop.
    pub overlong: Overlong,
    /// Pack several conversations into each row (block-diagonal attention, positions reset).
    pub packing: bool,
    /// Without packing, sort micro-batches by length inside shuffled mega-batches to cut padding.
    pub group_by_length: bool,
    /// Seed of the data order (epoch `e` uses `seed + e`) and of libtorch.
    pub seed: u64,
    /// Compute precision.
    pub dtype: Dtype,
    /// Non-finite loss/gradient policy.
    pub nan_policy: NanPolicy,
    /// With `nan_policy = skip`, abort after this many skipped steps in a row.
    pub max_consecutive_skips: u32,
    /// Records whose mask cannot be computed: error or counted skip.
    pub on_mask_error: MaskErrorPolicy,
    /// Write a checkpoint every this many steps (0 = only at the end and on interrupt).
    pub save_every: u64,
    /// Keep this many newest checkpoints (at least 1).
    pub keep_last: usize,
    /// How many global batches `--dump-batches` writes.
    pub dump_batches: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            template: "vicuna_v1.1".to_string(),
            lr: 2e-5,
            epochs: 3,
            max_steps: None,
            micro_batch_size: 2,
            grad_accum: 8,
            warmup_ratio: 0.03,
            schedule: Schedule::Cosine,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            max_grad_norm: 1.0,
            max_len: 2048,
            overlong: Overlong::Truncate,
            packing: false,
            group_by_length: true,
            seed: 42,
            dtype: Dtype::F32,
            nan_policy: NanPolicy::Abort,
            max_consecutive_skips: 5,
            on_mask_error: MaskErrorPolicy::Error,
            save_every: 0,
            keep_last: 2,
            dump_batches: 2,
        }
    }
}

impl TrainConfig {
    /// Reads a TOML file; missing keys take the defaults, unknown keys are an error.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
        let cfg: TrainConfig = toml::from_str(&text).map_err(|e| Error::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Global batch size in micro-batch rows.
    pub fn global_batch(&self) -> usize {
        self.micro_batch_size * self.grad_accum
    }

    /// Checks ranges; called by [`crate::train`] before any work.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad(format!("lr must be finite and >= 0, got {}", self.lr));
        }
        if self.micro_batch_size == 0 || self.grad_accum == 0 {
            return bad("micro_batch_size and grad_accum must be >= 1".into());
        }
        if self.max_len < 2 {
            return bad(format!("max_len must be >= 2, got {}", self.max_len));
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return bad(format!(
                "warmup_ratio must be in [0, 1], got {}",
                self.warmup_ratio
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "weight_decay must be >= 0, got {}",
                self.weight_decay
            ));
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return bad(format!(
                "max_grad_norm must be >= 0, got {}",
                self.max_grad_norm
            ));
        }
        if !(0.0..1.0).contains(&self.adam_beta1) || !(0.0..1.0).contains(&self.adam_beta2) {
            return bad("adam betas must be in [0, 1)".into());
        }
        if self.keep_last == 0 {
            return bad("keep_last must be >= 1".into());
        }
        if self.epochs == 0 && self.max_steps.is_none() {
            return bad("epochs must be >= 1".into());
        }
        Ok(())
    }

    /// The fields that must not change when a run is resumed, as `(name, value)` pairs.
    pub(crate) fn resume_fingerprint(&self) -> Vec<(&'static str, String)> {
        vec![
            ("seed", self.seed.to_string()),
            ("micro_batch_size", self.micro_batch_size.to_string()),
            ("grad_accum", self.grad_accum.to_string()),
            ("max_len", self.max_len.to_string()),
            ("packing", self.packing.to_string()),
            ("group_by_length", self.group_by_length.to_string()),
            ("template", self.template.clone()),
            ("epochs", self.epochs.to_string()),
            ("max_steps", format!("{:?}", self.max_steps)),
            ("overlong", format!("{:?}", self.overlong)),
        ]
    }
}
