//! `sft-train`: supervised fine-tuning of LLaMA-architecture models on libtorch.
//!
//! Every grid cell of the paper is an SFT run, so the trainer has to be right, fast and safe to
//! interrupt. The pipeline:
//!
//! ```text
//! records (chat JSONL) ─ChatEncoder─▶ Example {input_ids, labels}   (data)
//!   ─epoch_plan(seed, epoch)─▶ StepPlan [micro-batches]            (batch)
//!   ─collate─▶ tensors (+ block-diagonal mask when packing)
//!   ─CausalLm::forward─▶ token losses ─Σ / targets of the global batch─▶ backward
//!   ─clip (pre-clip norm reported)─▶ AdamW(lr from schedule)        (optim, schedule)
//!   ─▶ metrics.jsonl, checkpoints/step-N (atomic), final/ (HF)      (trainer, checkpoint)
//! ```
//!
//! Key decisions:
//! - **Exact masks or nothing.** Labels come from the template's per-token trained flags;
//!   a mask that cannot be computed is an error or a counted skip ([`data::tokenize`]).
//! - **Token-normalised loss.** The step loss is the sum of token losses over the whole global
//!   batch divided by its target tokens, so the micro-batch split does not change it.
//! - **Own AdamW.** Written in tensor ops after `torch.optim.AdamW` so its moments can be
//!   checkpointed; resume is bit-identical on CPU because the data order is a pure function of
//!   `(seed, epoch)` and every piece of state is saved.
//! - **Atomic checkpoints** with a hashed manifest as commit marker ([`checkpoint`]).
//! - The device is always an argument; binaries pick it.

#![deny(missing_docs)]

pub mod backprop;
pub mod batch;
pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dump;
mod error;
pub mod llama;
pub mod loss;
pub mod model;
pub mod optim;
mod run;
pub mod schedule;
pub mod trainer;
pub mod zero;

/// Version of what training computes: bump it whenever a change to `sft-train` changes the
/// numbers or files a training run produces for the same inputs (loss, masking of the
/// examples it is given, batching, data order, optimizer, schedule, precision handling,
/// checkpoint contents). `sft-run` records it in every stage's `done.json` and never reuses a
/// stage trained under another version (see `docs/train.md`, "Versions").
pub const TRAINING_SEMANTICS_VERSION: u32 = 3;

/// Version of how conversations become token ids and loss masks: bump it whenever a change to
/// `sft-chat` (templates, tokenizer loading, span location) or to [`chat`] changes the ids or
/// masks of the same records. Recorded and checked like [`TRAINING_SEMANTICS_VERSION`].
pub const CHAT_SEMANTICS_VERSION: u32 = 1;

pub use backprop::{forward_backward, Memory};
pub use chat::{tokenizer_path_for, TemplateEncoder, TokenizerSource};
pub use config::{
    Dtype, MaskErrorPolicy, NanPolicy, Overlong, Schedule, TrainConfig, TrainOverrides,
    OPERATIONAL_KEYS,
};
pub use data::{read_records, tokenize, ChatEncoder, DataReport, Example, MaskError, IGNORE};
pub use error::{mentions_oom, Error, ErrorKind, Result};
pub use model::{BlockStack, CausalLm};
pub use run::{eval_loss_at, memory_estimate, train, Distributed, ModelInput, TrainData, TrainJob};
pub use trainer::{
    eval_loss, install_stop_handler, per_example_losses, train_model, EvalLoss, Resume, RunOptions,
    StepMetrics, TrainContext, TrainOutcome,
};
