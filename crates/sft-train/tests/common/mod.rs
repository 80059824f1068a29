//! Shared helpers: a byte-level toy chat encoder (vocab 64) and the tiny LLaMA fixture.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use sft_chat::EncodedChat;
use sft_record::{Message, Record};
use sft_train::ChatEncoder;

/// Renders `<role-token> content <eot>` per message; ids are `4 + byte % 60`.
/// Trained: assistant content and its end-of-turn token.
pub struct ToyEncoder;

pub const BOS: u32 = 1;
pub const EOT: u32 = 2;
pub const USER: u32 = 3;

impl ChatEncoder for ToyEncoder {
    fn encode(&self, messages: &[Message]) -> Result<EncodedChat, sft_chat::ChatError> {
        let mut ids = vec![BOS];
        let mut trained = vec![false];
        for m in messages {
            let assistant = m.role == sft_record::Role::Assistant;
            ids.push(if assistant { 0 } else { USER });
            trained.push(false);
            for b in m.content.bytes() {
                ids.push(4 + u32::from(b % 60));
                trained.push(assistant);
            }
            ids.push(EOT);
            trained.push(assistant);
        }
        Ok(encoded(ids, trained))
    }
    fn decode(&self, ids: &[i64]) -> String {
        ids.iter()
            .map(|&i| match i {
                0 => "<A>".to_string(),
                1 => "<s>".to_string(),
                2 => "<eot>".to_string(),
                3 => "<U>".to_string(),
                x => char::from(b'0' + ((x - 4) % 60) as u8).to_string(),
            })
            .collect()
    }
}

/// An [`EncodedChat`] with only ids and mask (a toy encoder renders no text).
pub fn encoded(ids: Vec<u32>, labels_mask: Vec<bool>) -> EncodedChat {
    EncodedChat {
        ids,
        labels_mask,
        text: String::new(),
        spans: Vec::new(),
        token_spans: Vec::new(),
    }
}

pub fn record(id: &str, source: &str, turns: &[(&str, &str)]) -> Record {
    Record {
        id: id.to_string(),
        source: source.to_string(),
        messages: turns
            .iter()
            .map(|(r, c)| Message::new(r.parse().expect("a role"), *c))
            .collect(),
        tags: Vec::new(),
        metadata: Default::default(),
    }
}

/// A small synthetic data set: arithmetic-looking Q/A pairs from two sources, some multi-turn.
pub fn toy_records(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let src = if i % 3 == 0 { "code" } else { "math" };
            let q = format!("q{} plus {}", i % 7, i % 5);
            let a = format!("is {}", i % 7 + i % 5);
            if i % 4 == 0 {
                record(
                    &format!("{src}:{i}"),
                    src,
                    &[
                        ("user", &q),
                        ("assistant", &a),
                        ("user", "again"),
                        ("assistant", &a),
                    ],
                )
            } else {
                record(
                    &format!("{src}:{i}"),
                    src,
                    &[("system", "be brief"), ("user", &q), ("assistant", &a)],
                )
            }
        })
        .collect()
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn tiny_llama_dir() -> PathBuf {
    workspace().join("fixtures/train/tiny-llama")
}

/// The toy records of [`toy_records`] tokenized with [`ToyEncoder`] at `max_len` 64.
pub fn toy_examples(n: usize) -> Vec<sft_train::Example> {
    sft_train::tokenize(
        &toy_records(n),
        &ToyEncoder,
        64,
        sft_train::Overlong::Truncate,
        sft_train::MaskErrorPolicy::Error,
    )
    .unwrap()
    .0
}

/// The small-batch config the training tests start from.
pub fn small_cfg() -> sft_train::TrainConfig {
    sft_train::TrainConfig {
        lr: 3e-3,
        epochs: 2,
        micro_batch_size: 2,
        grad_accum: 2,
        warmup_ratio: 0.1,
        schedule: sft_train::Schedule::Cosine,
        max_len: 64,
        keep_last: 2,
        ..sft_train::TrainConfig::default()
    }
}

/// The run `kill_during_save_then_resume` crashes (in `sft-train-crash-child`) and redoes:
/// 10 toy examples, 2 epochs, a checkpoint after every step.
pub fn crash_run() -> (Vec<sft_train::Example>, sft_train::TrainConfig) {
    (
        toy_examples(10),
        sft_train::TrainConfig {
            epochs: 2,
            save_every: 1,
            ..small_cfg()
        },
    )
}

/// Trains the tiny LLaMA (f32, CPU) on `exs` into `out`.
pub fn run_tiny(
    exs: &[sft_train::Example],
    cfg: &sft_train::TrainConfig,
    out: &Path,
    opts: &sft_train::RunOptions,
) -> sft_train::Result<sft_train::TrainOutcome> {
    let mut m = sft_train::llama::load_model(&tiny_llama_dir(), tch::Device::Cpu)?;
    sft_train::train_model(
        &sft_train::TrainContext {
            model: &m.model,
            examples: exs,
            data_report: &sft_train::DataReport::default(),
            encoder: &ToyEncoder,
            config: cfg,
            out_dir: out,
            run: opts,
            group: None,
        },
        &mut m.vs,
    )
}
