//! Records → token ids and labels.
//!
//! A [`ChatEncoder`] renders a conversation and says, per token, whether it is trained (assistant
//! content plus its end-of-turn token). [`tokenize`] turns that into labels (`-100` elsewhere),
//! applies the over-long policy and refuses masks it cannot trust: a mask whose length differs
//! from the ids, or one with no trained token, is an error or a counted skip, never trained.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{MaskErrorPolicy, Overlong};
use crate::error::{Error, Result};

/// The label value the loss ignores (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// A training record in the chat JSONL format written by `sft-compose`:
/// `{"id", "source", "messages": [{"role", "content"}], "tags"}` (extra fields are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainRecord {
    /// Stable record id (`<source>:<index>`).
    pub id: String,
    /// Source name; losses are also reported per source.
    pub source: String,
    /// The conversation.
    pub messages: Vec<Turn>,
}

/// Reads chat JSONL. Blank lines are skipped; a bad line is an error naming `path:line`.
pub fn read_jsonl(path: &Path) -> Result<Vec<TrainRecord>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Error::io("read", path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = (i + 1).to_string();
        let rec: TrainRecord = serde_json::from_str(&line).map_err(|e| Error::Record {
            path: path.to_path_buf(),
            at: at.clone(),
            message: e.to_string(),
        })?;
        out.push(check_roles(rec, path, at)?);
    }
    Ok(out)
}

/// Reads the chat Parquet files `sft-compose` writes (`id`, `source`, `messages` columns; other
/// columns are ignored). A bad row is an error naming `path:row N` (0-based).
pub fn read_parquet(path: &Path) -> Result<Vec<TrainRecord>> {
    let rows = sft_compose::read_parquet_rows(path).map_err(|e| Error::Data {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.into_iter().enumerate() {
        let at = format!("row {i}");
        let rec: TrainRecord = serde_json::from_value(row).map_err(|e| Error::Record {
            path: path.to_path_buf(),
            at: at.clone(),
            message: e.to_string(),
        })?;
        out.push(check_roles(rec, path, at)?);
    }
    Ok(out)
}

/// Reads training records by extension: `.parquet` → [`read_parquet`], `.jsonl`/`.json` →
/// [`read_jsonl`]; anything else is an error that says what is read.
pub fn read_records(path: &Path) -> Result<Vec<TrainRecord>> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("parquet") => read_parquet(path),
        Some("jsonl") | Some("json") => read_jsonl(path),
        _ => Err(Error::Config(format!(
            "{}: training data must be chat JSONL (.jsonl) or chat Parquet (.parquet), as \
             `sft-compose` writes them",
            path.display()
        ))),
    }
}

fn check_roles(rec: TrainRecord, path: &Path, at: String) -> Result<TrainRecord> {
    if let Some(m) = rec
        .messages
        .iter()
        .find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant"))
    {
        return Err(Error::Record {
            path: path.to_path_buf(),
            at,
            message: format!("record {}: unknown role `{}`", rec.id, m.role),
        });
    }
    Ok(rec)
}

/// A rendered conversation: token ids and, per token, whether the loss covers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedChat {
    /// Token ids of the whole rendered conversation.
    pub ids: Vec<i64>,
    /// `true` on assistant content and its end-of-turn token.
    pub trained: Vec<bool>,
}

/// Renders conversations with a chat template and tokenizes them with an exact loss mask.
///
/// Implemented over `sft-chat` by the callers that build one; the trainer only needs this.
pub trait ChatEncoder {
    /// Encodes one conversation, or explains why its mask cannot be computed.
    fn encode(&self, messages: &[Turn]) -> std::result::Result<EncodedChat, String>;
    /// Decodes ids to text (used for the readable batch dump).
    fn decode(&self, ids: &[i64]) -> String;
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
    records: &[TrainRecord],
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
        let checked = encoder.encode(&rec.messages).and_then(|enc| {
            if enc.ids.len() != enc.trained.len() {
                return Err(format!(
                    "mask has {} entries for {} tokens",
                    enc.trained.len(),
                    enc.ids.len()
                ));
            }
            if !rec.messages.iter().any(|m| m.role == "assistant") {
                return Err("no assistant turn".to_string());
            }
            if !enc.trained.iter().skip(1).any(|&t| t) {
                return Err("the template marked no assistant token as trained".to_string());
            }
            Ok(enc)
        });
        let enc = match checked {
            Ok(enc) => enc,
            Err(message) => match on_mask_error {
                MaskErrorPolicy::Error => {
                    return Err(Error::Mask {
                        record_id: rec.id.clone(),
                        message,
                    })
                }
                MaskErrorPolicy::Skip => {
                    tracing::warn!(record = %rec.id, %message, "skipping record: mask cannot be computed");
                    report.mask_errors.push(rec.id.clone());
                    continue;
                }
            },
        };
        let mut ids = enc.ids;
        let mut labels: Vec<i64> = ids
            .iter()
            .zip(&enc.trained)
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
