//! RFT candidates by rejection sampling's first half: `k` sampled reasoning paths per GSM8K
//! question from any [`Completer`], written as the shards that `sft_compose::rft::filter_files`
//! reads (the second half).
//!
//! Layout of the output directory:
//!
//! - `sample.json`: the settings (model, questions file and its SHA-256, prompt, temperature,
//!   `top_p`, `max_new_tokens`, seed). A rerun into the same directory must use the same settings
//!   (an error names the first that differs); only `k` may change (more shards are added).
//! - `sample-0000.jsonl` … one shard per sample index `i`: for every question in file order
//!   `{"query", "response", "sample", "finish_reason"}`. A shard is written atomically once all its
//!   completions exist, so a killed run continues at the first missing shard and never redoes a
//!   finished one. (With a server, the client's request cache also keeps the finished part of an
//!   interrupted shard.)
//! - Keep anything else out of the directory's top level: the filter reads every `*.jsonl` in it
//!   (the `rft` command keeps a server's request cache in `cache/`).
//!
//! Each request's seed is derived from (seed, sample index, question index), so shard `i` is the
//! same whatever `k` and whatever the batching.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::completer::{Completer, CompletionRequest, Prompt, SamplingParams};
use crate::error::{Error, ErrorKind, Result};
use sft_compose::rft::Question;
use sft_record::Message;

/// The RFT paper's prompt (Alpaca's, as in OFA-Sys/gsm8k-ScRel); `{query}` is the question.
pub const ALPACA_PROMPT: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{query}\n\n### Response:";

/// How a question is put to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RftPrompt {
    /// [`ALPACA_PROMPT`] as plain text (the RFT paper's).
    Alpaca,
    /// The question as one user turn (the model's chat template, or `/chat/completions`).
    Chat,
}

impl std::str::FromStr for RftPrompt {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "alpaca" => Ok(RftPrompt::Alpaca),
            "chat" => Ok(RftPrompt::Chat),
            other => Err(format!("unknown prompt {other:?} (alpaca or chat)")),
        }
    }
}

/// Settings of a sampling run (everything but `k` is recorded in `sample.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleOptions {
    /// Samples per question (one shard each).
    #[serde(skip)]
    pub k: usize,
    /// The prompt.
    pub prompt: RftPrompt,
    /// Temperature (the RFT paper: 0.7), top-p and length.
    pub sampling: SamplingParams,
    /// Base seed.
    pub seed: u64,
    /// Requests per call to the completer.
    #[serde(skip)]
    pub chunk: usize,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions {
            k: 100,
            prompt: RftPrompt::Alpaca,
            sampling: SamplingParams {
                temperature: 0.7,
                top_p: 1.0,
                max_new_tokens: 256,
                stop: Vec::new(),
            },
            seed: 0,
            chunk: 64,
        }
    }
}

/// The settings file of an output directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SampleManifest {
    format_version: u32,
    model: String,
    questions: String,
    questions_sha256: String,
    n_questions: usize,
    #[serde(flatten)]
    options: SampleOptions,
}

/// One candidate line of a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// The question, verbatim.
    pub query: String,
    /// The sampled reasoning path.
    pub response: String,
    /// The sample index (the shard).
    pub sample: usize,
    /// Why generation ended, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
}

/// What a sampling run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SampleReport {
    /// Shards written by this run.
    pub shards_written: usize,
    /// Shards that already existed and were left alone.
    pub shards_skipped: usize,
    /// Completions produced by this run.
    pub completions: usize,
    /// Of those, served from a cache.
    pub cached: usize,
    /// Tokens generated (where the backend reports them).
    pub tokens: usize,
    /// Wall time, seconds.
    pub secs: f64,
}

/// The shard file of sample `i`.
pub fn shard_path(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("sample-{i:04}.jsonl"))
}

/// The seed of (sample `i`, question `q`): SplitMix64 over the three.
pub fn request_seed(seed: u64, sample: usize, question: usize) -> u64 {
    let mut z = seed
        ^ (sample as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (question as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The prompt of a question.
pub fn rft_prompt(prompt: RftPrompt, query: &str) -> Prompt {
    match prompt {
        RftPrompt::Alpaca => Prompt::Text(ALPACA_PROMPT.replace("{query}", query)),
        RftPrompt::Chat => Prompt::Chat(vec![Message::user(query)]),
    }
}

/// Samples `options.k` paths per question into `out_dir` (see the module docs), resuming where a
/// previous run stopped. `questions_file` is recorded (with its hash) for provenance.
pub fn sample(
    completer: &dyn Completer,
    questions: &[Question],
    questions_file: &Path,
    options: &SampleOptions,
    out_dir: &Path,
    progress: bool,
) -> Result<SampleReport> {
    options.sampling.validate()?;
    if options.k == 0 || options.chunk == 0 {
        return Err(Error::Config("k and chunk must be positive".into()));
    }
    if questions.is_empty() {
        return Err(Error::Config(format!(
            "{}: no questions",
            questions_file.display()
        )));
    }
    let bytes = std::fs::read(questions_file).map_err(|e| Error::io(questions_file, e))?;
    let manifest = SampleManifest {
        format_version: 1,
        model: completer.model_name(),
        questions: questions_file.display().to_string(),
        questions_sha256: hex::encode(Sha256::digest(&bytes)),
        n_questions: questions.len(),
        options: options.clone(),
    };
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    check_manifest(&out_dir.join("sample.json"), &manifest)?;

    let start = Instant::now();
    let mut report = SampleReport::default();
    let todo: Vec<usize> = (0..options.k)
        .filter(|&i| !shard_path(out_dir, i).exists())
        .collect();
    report.shards_skipped = options.k - todo.len();
    if report.shards_skipped > 0 {
        tracing::info!(
            skipped = report.shards_skipped,
            "shards already complete in {}; continuing with the rest",
            out_dir.display()
        );
    }
    let bar = if progress {
        indicatif::ProgressBar::new((todo.len() * questions.len()) as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "rft sample {bar:40} {pos}/{len} [{elapsed}<{eta}] {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut failed_shards = Vec::new();
    let mut first_error = None;
    for &i in &todo {
        let mut lines = Vec::with_capacity(questions.len());
        let mut failed = None;
        for (c, chunk) in questions.chunks(options.chunk).enumerate() {
            let requests: Vec<CompletionRequest> = chunk
                .iter()
                .enumerate()
                .map(|(j, q)| CompletionRequest {
                    prompt: rft_prompt(options.prompt, &q.query),
                    sampling: options.sampling.clone(),
                    seed: request_seed(options.seed, i, c * options.chunk + j),
                })
                .collect();
            for (q, result) in chunk.iter().zip(completer.complete(&requests)) {
                match result {
                    Ok(done) => {
                        report.completions += 1;
                        report.cached += usize::from(done.cached);
                        report.tokens += done.tokens.unwrap_or(0);
                        lines.push(Candidate {
                            query: q.query.clone(),
                            response: done.text,
                            sample: i,
                            finish_reason: done.finish_reason,
                        });
                    }
                    Err(e) => {
                        if failed.is_none() {
                            failed = Some(e);
                        }
                    }
                }
            }
            bar.inc(chunk.len() as u64);
            let secs = start.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "shard {i}: {:.1} tok/s",
                report.tokens as f64 / secs
            ));
        }
        match failed {
            None => {
                sft_record::write_jsonl(&shard_path(out_dir, i), &lines)?;
                report.shards_written += 1;
                tracing::info!(shard = i, "written");
            }
            Some(e) => {
                tracing::error!(shard = i, "not written: {e}");
                let fatal = matches!(e.kind(), ErrorKind::Auth | ErrorKind::Config);
                failed_shards.push(i);
                first_error.get_or_insert(e);
                if fatal {
                    break;
                }
            }
        }
    }
    bar.finish_and_clear();
    report.secs = start.elapsed().as_secs_f64();
    if let Some(e) = first_error {
        return Err(Error::Request {
            status: None,
            message: format!(
                "{} shard(s) incomplete ({:?}; rerun to fill them in): the first failure was: {e}",
                failed_shards.len(),
                failed_shards
            ),
        });
    }
    Ok(report)
}

fn check_manifest(path: &Path, manifest: &SampleManifest) -> Result<()> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let old: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::BadLine {
                    path: path.to_path_buf(),
                    line: e.line(),
                    message: format!("not a sample.json: {e}"),
                })?;
            let new = serde_json::to_value(manifest)
                .map_err(|e| Error::io(path, std::io::Error::other(e)))?;
            for key in [
                "model",
                "questions_sha256",
                "n_questions",
                "prompt",
                "sampling",
                "seed",
            ] {
                if old.get(key) != new.get(key) {
                    return Err(Error::Config(format!(
                        "{}: this directory was sampled with {key} = {}, this run has {}; use another \
                         --out or the same settings",
                        path.display(),
                        old.get(key).map(|v| v.to_string()).unwrap_or_else(|| "nothing".into()),
                        new.get(key).map(|v| v.to_string()).unwrap_or_default()
                    )));
                }
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            sft_record::write_json(path, manifest)?;
            Ok(())
        }
        Err(e) => Err(Error::io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_differ_by_sample_and_question() {
        let s = request_seed(7, 0, 0);
        assert_ne!(s, request_seed(7, 1, 0));
        assert_ne!(s, request_seed(7, 0, 1));
        assert_ne!(request_seed(7, 1, 0), request_seed(7, 0, 1));
        assert_eq!(s, request_seed(7, 0, 0));
    }

    #[test]
    fn the_alpaca_prompt_is_the_rft_papers() {
        let Prompt::Text(t) = rft_prompt(RftPrompt::Alpaca, "What is 2+2?") else {
            panic!("text")
        };
        assert_eq!(t, "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nWhat is 2+2?\n\n### Response:");
    }
}
