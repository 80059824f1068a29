//! Records → token ids and labels.
//!
//! A [`ChatEncoder`] renders a conversation and says, per token, whether it is trained (assistant
//! content plus its end-of-turn token). [`tokenize`] turns that into labels (`-100` elsewhere),
//! applies the over-long policy and refuses masks it cannot trust: a mask whose length differs
//! from the ids, or one with no trained token, is an error or a counted skip, never trained.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use sft_chat::EncodedChat;
use sft_record::{Message, Record, Role};

use crate::config::{MaskErrorPolicy, Overlong};
use crate::error::{Error, Result};

/// The label value the loss ignores (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// Reads training records by extension: `.jsonl` (also `.json`, or gzip `.gz`) through
/// [`sft_record::read_records`], `.parquet` through [`sft_compose::read_parquet_rows`] (the chat
/// format `sft-compose` writes, both). Roles other than `system`, `user` and `assistant` are
/// errors naming the line or row; any other extension is an error that says what is read.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("parquet") => sft_compose::read_parquet_rows(path).map_err(|source| Error::Data {
            path: path.to_path_buf(),
            source: Box::new(source),
        }),
        Some("jsonl") | Some("json") | Some("gz") => Ok(sft_record::read_records(path)?),
        _ => Err(Error::DataFormat {
            path: path.to_path_buf(),
        }),
    }
}

/// Renders conversations with a chat template and tokenizes them with an exact loss mask.
///
/// Implemented over `sft-chat` by [`crate::TemplateEncoder`] (tests implement toy encoders);
/// the trainer only needs this. Ids are `sft-chat`'s `u32`; [`tokenize`] widens them to the
/// `i64` tensors need, in one place.
pub trait ChatEncoder {
    /// Encodes one conversation, or says (as `sft-chat`'s error) why its mask cannot be
    /// computed.
    fn encode(&self, messages: &[Message])
        -> std::result::Result<EncodedChat, sft_chat::ChatError>;
    /// Decodes ids to text (used for the readable batch dump).
    fn decode(&self, ids: &[i64]) -> String;
}

/// Why a record's loss mask cannot be trusted ([`crate::Error::Mask`]'s cause).
#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    /// The encoder could not render or locate the assistant spans.
    #[error(transparent)]
    Encode(#[from] sft_chat::ChatError),
    /// The mask's length differs from the ids'.
    #[error("mask has {mask} entries for {ids} tokens")]
    Length {
        /// Mask entries.
        mask: usize,
        /// Token ids.
        ids: usize,
    },
    /// The conversation has no assistant message to train on.
    #[error("no assistant turn")]
    NoAssistantTurn,
    /// The template marked no token after the first as trained.
    #[error("the template marked no assistant token as trained")]
    NothingTrained,
}

/// One tokenized training example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Example {
    /// The record id it came from.
    pub record_id: String,
    /// The record's source.
    pub source: String,
    /// Token ids.
    pub input_ids: Vec<i64>,
    /// Same length; the token id where trained, [`IGNORE`] elsewhere (unshifted, HF convention).
    pub labels: Vec<i64>,
}

impl Example {
    /// Number of label positions that contribute to the loss (the first token never does).
    pub fn target_tokens(&self) -> usize {
        self.labels.iter().skip(1).filter(|&&l| l != IGNORE).count()
    }
}

/// What tokenization did to the records, for logs and `data_report.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DataReport {
    /// Records read.
    pub records: usize,
    /// Examples kept.
    pub kept: usize,
    /// Kept but cut to `max_len`.
    pub truncated: usize,
    /// Dropped for being longer than `max_len` (drop policy).
    pub dropped_overlong: usize,
    /// Dropped because no trained token was left (e.g. the prompt alone fills `max_len`).
    pub dropped_no_target: usize,
    /// Skipped because the mask could not be computed (skip policy); their ids.
    pub mask_errors: Vec<String>,
    /// Total tokens of kept examples.
    pub tokens: usize,
    /// Total target tokens of kept examples.
    pub target_tokens: usize,
    /// Kept examples per source.
    pub per_source: BTreeMap<String, usize>,
}

/// Tokenizes and masks every record; see the module docs for the policies.
pub fn tokenize(
    records: &[Record],
    encoder: &dyn ChatEncoder,
    max_len: usize,
    overlong: Overlong,
    on_mask_error: MaskErrorPolicy,
) -> Result<(Vec<Example>, DataReport)> {
    let mut report = DataReport {
        records: records.len(),
        ..DataReport::default()
    };
    let mut out = Vec::with_capacity(records.len());
    for rec in records {
        let checked = encoder
            .encode(&rec.messages)
            .map_err(MaskError::from)
            .and_then(|enc| {
                if enc.ids.len() != enc.labels_mask.len() {
                    return Err(MaskError::Length {
                        mask: enc.labels_mask.len(),
                        ids: enc.ids.len(),
                    });
                }
                if !rec.messages.iter().any(|m| m.role == Role::Assistant) {
                    return Err(MaskError::NoAssistantTurn);
                }
                if !enc.labels_mask.iter().skip(1).any(|&t| t) {
                    return Err(MaskError::NothingTrained);
                }
                Ok(enc)
            });
        let enc = match checked {
            Ok(enc) => enc,
            Err(source) => match on_mask_error {
                MaskErrorPolicy::Error => {
                    return Err(Error::Mask {
                        record_id: rec.id.clone(),
                        source,
                    })
                }
                MaskErrorPolicy::Skip => {
                    tracing::warn!(record = %rec.id, error = %source, "skipping record: mask cannot be computed");
                    report.mask_errors.push(rec.id.clone());
                    continue;
                }
            },
        };
        // The one u32 → i64 widening of token ids.
        let mut ids: Vec<i64> = enc.ids.iter().map(|&id| i64::from(id)).collect();
        let mut labels: Vec<i64> = ids
            .iter()
            .zip(&enc.labels_mask)
            .map(|(&id, &t)| if t { id } else { IGNORE })
            .collect();
        if ids.len() > max_len {
            match overlong {
                Overlong::Drop => {
                    report.dropped_overlong += 1;
                    continue;
                }
                Overlong::Truncate => {
                    ids.truncate(max_len);
                    labels.truncate(max_len);
                    report.truncated += 1;
                }
            }
        }
        let ex = Example {
            record_id: rec.id.clone(),
            source: rec.source.clone(),
            input_ids: ids,
            labels,
        };
        let targets = ex.target_tokens();
        if targets == 0 {
            report.dropped_no_target += 1;
            continue;
        }
        report.kept += 1;
        report.tokens += ex.input_ids.len();
        report.target_tokens += targets;
        *report.per_source.entry(ex.source.clone()).or_default() += 1;
        out.push(ex);
    }
    if out.is_empty() {
        return Err(Error::NoData(format!(
            "{} records, {} over-long dropped, {} without targets, {} mask errors",
            report.records,
            report.dropped_overlong,
            report.dropped_no_target,
            report.mask_errors.len()
        )));
    }
    Ok((out, report))
}
