//! An InsTag-style tagger (Lu et al. 2023, "#InsTag: Instruction Tagging for Analyzing
//! Supervised Fine-tuning of Large Language Models"): ask a model for the intention tags of each
//! user query, parse its JSON, normalise the tags as InsTag's rule aggregation does, and write the
//! tag file that `sft_compose::load_tag_file` reads.
//!
//! - **Prompts** ([`TagPrompt`]): InsTag's open-tagging prompt as a chat (system: [`INSTAG_SYSTEM`],
//!   user: the query), or the same instruction in the Vicuna v1.1 format that InsTag's released
//!   tagger model (InsTagger, a fine-tuned LLaMA) was trained on, sent as plain text.
//! - **Query** ([`Turns`]): the first user turn, or every user turn joined by blank lines; cut to
//!   [`TagOptions::max_query_chars`] characters.
//! - **Parsing** ([`parse_tags`]): code fences, one object, a list of objects, an object holding
//!   a `tags` list, objects one per line, plain strings, and text before or after the JSON. A
//!   reply with no tag is retried with the next seed up to [`TagOptions::parse_retries`] times,
//!   then counted as a failure and written with `"status": "failed"` (never dropped silently).
//! - **Normalisation** ([`Normalizer`]): lowercase, every character that is not a letter or a digit
//!   to a space, each word stemmed (Snowball English, the `rust-stemmers` crate), an optional alias
//!   table applied to the normalised form, and an optional minimum frequency over the run (rarer
//!   tags are left out of `tags`, kept in `raw`).
//!
//! Output, one JSONL line per record in input order:
//! `{"id", "orig_id"?, "status": "ok"|"failed", "tags": [{"tag", "explanation", "raw"}], "error"?}`.
//! `tags[].tag` is the normalised tag; `compose --tags NAME=FILE` reads it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::completer::{Completer, CompletionRequest, Prompt, SamplingParams};
use crate::error::{Error, Result};
use sft_compose::{Record, Role, TagHit, Tagger};
use sft_record::Message;

/// InsTag's open-tagging instruction (the system prompt of its ChatGPT annotation).
pub const INSTAG_SYSTEM: &str = "You are a helpful assistant. Please identify tags of user intentions in the following user query and provide an explanation for each tag. Please respond in the JSON format {\"tag\": str, \"explanation\": str}.";

/// The Vicuna v1.1 system line InsTagger was fine-tuned under.
pub const VICUNA_SYSTEM: &str = "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.";

/// How the tagging request is phrased.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TagPrompt {
    /// System [`INSTAG_SYSTEM`], user the query (`/chat/completions`, or the local model's chat
    /// template).
    Chat,
    /// `"{VICUNA_SYSTEM} USER: {INSTAG_SYSTEM}\nUser query: {query} ASSISTANT:"` as plain text
    /// (`/completions`, or the local model without a template).
    Vicuna,
}

impl std::str::FromStr for TagPrompt {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "chat" => Ok(TagPrompt::Chat),
            "vicuna" => Ok(TagPrompt::Vicuna),
            other => Err(format!("unknown tag prompt {other:?} (chat or vicuna)")),
        }
    }
}

/// Which user turns make the query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Turns {
    /// The first user turn (InsTag tags single queries).
    First,
    /// Every user turn, joined by blank lines.
    All,
}

impl std::str::FromStr for Turns {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "first" => Ok(Turns::First),
            "all" => Ok(Turns::All),
            other => Err(format!("unknown turns {other:?} (first or all)")),
        }
    }
}

/// Settings of a tagging run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TagOptions {
    /// The prompt format.
    pub prompt: TagPrompt,
    /// Which user turns are tagged.
    pub turns: Turns,
    /// The query is cut to this many characters (long ShareGPT turns would exceed small models'
    /// contexts).
    pub max_query_chars: usize,
    /// Sampling of the tagging request (InsTag: greedy).
    pub sampling: SamplingParams,
    /// Seed of the first attempt; retry `r` uses `seed + r`.
    pub seed: u64,
    /// Extra attempts for a reply with no parsable tag.
    pub parse_retries: usize,
    /// Requests per call to the completer (bounds memory and shows progress).
    pub chunk: usize,
}

impl Default for TagOptions {
    fn default() -> Self {
        TagOptions {
            prompt: TagPrompt::Chat,
            turns: Turns::First,
            max_query_chars: 4000,
            sampling: SamplingParams::greedy(512),
            seed: 0,
            parse_retries: 2,
            chunk: 64,
        }
    }
}

/// The query of a record: its first user turn or all of them. `None` when it has no user turn.
pub fn query_of(record: &Record, turns: Turns, max_chars: usize) -> Option<String> {
    let mut users = record
        .messages
        .iter()
        .filter(|m| m.role == Role::User)
        .map(|m| m.content.as_str());
    let text = match turns {
        Turns::First => users.next()?.to_string(),
        Turns::All => {
            let all: Vec<&str> = users.collect();
            if all.is_empty() {
                return None;
            }
            all.join("\n\n")
        }
    };
    Some(text.chars().take(max_chars).collect())
}

/// The request for one query.
pub fn tag_request(query: &str, options: &TagOptions, attempt: usize) -> CompletionRequest {
    let prompt = match options.prompt {
        TagPrompt::Chat => Prompt::Chat(vec![Message::system(INSTAG_SYSTEM), Message::user(query)]),
        TagPrompt::Vicuna => Prompt::Text(format!(
            "{VICUNA_SYSTEM} USER: {INSTAG_SYSTEM}\nUser query: {query} ASSISTANT:"
        )),
    };
    CompletionRequest {
        prompt,
        sampling: options.sampling.clone(),
        seed: options.seed.wrapping_add(attempt as u64),
    }
}

/// A tag as the model gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawTag {
    /// The tag text.
    pub tag: String,
    /// The model's explanation (empty when it gave none).
    pub explanation: String,
}

fn tags_from_value(v: &Value, out: &mut Vec<RawTag>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| tags_from_value(i, out)),
        Value::String(s) if !s.trim().is_empty() => out.push(RawTag {
            tag: s.trim().to_string(),
            explanation: String::new(),
        }),
        Value::Object(map) => {
            if let Some(tag) = map.get("tag").and_then(Value::as_str) {
                if !tag.trim().is_empty() {
                    out.push(RawTag {
                        tag: tag.trim().to_string(),
                        explanation: map
                            .get("explanation")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .trim()
                            .to_string(),
                    });
                }
            } else if let Some(inner) = map.get("tags") {
                tags_from_value(inner, out);
            }
        }
        _ => {}
    }
}

/// The tags in a model reply: every JSON value found in it (after code fences are removed), in
/// order; text around and between values is skipped. `Err` says why nothing was found.
pub fn parse_tags(reply: &str) -> std::result::Result<Vec<RawTag>, String> {
    let text: String = reply
        .lines()
        .filter(|l| !l.trim_start().starts_with("```"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut tags = Vec::new();
    let mut values = 0;
    let mut rest = text.as_str();
    while let Some(start) = rest.find(['[', '{']) {
        let mut stream = serde_json::Deserializer::from_str(&rest[start..]).into_iter::<Value>();
        match stream.next() {
            Some(Ok(v)) => {
                values += 1;
                tags_from_value(&v, &mut tags);
                rest = &rest[start + stream.byte_offset()..];
            }
            _ => rest = &rest[start + 1..],
        }
    }
    if tags.is_empty() {
        let shown: String = reply.chars().take(120).collect();
        return Err(if values == 0 {
            format!("no JSON in the reply: {shown:?}")
        } else {
            format!("JSON without a tag in the reply: {shown:?}")
        });
    }
    Ok(tags)
}

/// InsTag-style normalisation of tag texts.
pub struct Normalizer {
    stemmer: rust_stemmers::Stemmer,
    aliases: HashMap<String, String>,
}

impl std::fmt::Debug for Normalizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Normalizer")
            .field("aliases", &self.aliases.len())
            .finish()
    }
}

impl Default for Normalizer {
    fn default() -> Self {
        Normalizer::new(HashMap::new())
    }
}

impl Normalizer {
    /// A normaliser with an alias table (`alias → canonical`; both sides are normalised first,
    /// so either spelling works).
    pub fn new(aliases: HashMap<String, String>) -> Self {
        let mut n = Normalizer {
            stemmer: rust_stemmers::Stemmer::create(rust_stemmers::Algorithm::English),
            aliases: HashMap::new(),
        };
        n.aliases = aliases
            .iter()
            .map(|(a, c)| (n.base(a), n.base(c)))
            .filter(|(a, _)| !a.is_empty())
            .collect();
        n
    }

    /// Reads an alias file: a JSON object `{"alias": "canonical", ...}`.
    pub fn from_alias_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let map: HashMap<String, String> =
            serde_json::from_str(&text).map_err(|e| Error::BadLine {
                path: path.to_path_buf(),
                line: e.line(),
                message: format!("an alias file is a JSON object of strings: {e}"),
            })?;
        Ok(Normalizer::new(map))
    }

    fn base(&self, tag: &str) -> String {
        let lowered: String = tag
            .to_lowercase()
            .chars()
            .map(|c| if c.is_alphanumeric() { c } else { ' ' })
            .collect();
        lowered
            .split_whitespace()
            .map(|w| self.stemmer.stem(w).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The normalised tag (empty when nothing is left of it).
    pub fn normalize(&self, tag: &str) -> String {
        let base = self.base(tag);
        self.aliases.get(&base).cloned().unwrap_or(base)
    }
}

/// One tagged tag in the output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagEntry {
    /// The normalised tag.
    pub tag: String,
    /// The model's explanation.
    pub explanation: String,
    /// The tag as the model wrote it.
    pub raw: String,
}

/// One line of the tag file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaggedRecord {
    /// The record id (`general:17`).
    pub id: String,
    /// The source's own id (`metadata.orig_id`), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orig_id: Option<String>,
    /// `ok`, `failed` (no parsable tag after the retries, or the request failed) or `no_query`.
    pub status: String,
    /// Normalised tags, de-duplicated, in the model's order; below-minimum-frequency ones left out.
    pub tags: Vec<TagEntry>,
    /// Raw tags left out by the minimum frequency.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rare: Vec<TagEntry>,
    /// Why the record failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a tagging run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TagStats {
    /// The completer's model.
    pub model: String,
    /// Records read.
    pub records: usize,
    /// Records tagged.
    pub tagged: usize,
    /// Records with no parsable tag after the retries.
    pub parse_failures: usize,
    /// Records whose request failed for good (HTTP or local model).
    pub request_failures: usize,
    /// Records without a user turn.
    pub no_query: usize,
    /// Completions asked for (first attempts and retries).
    pub completions: usize,
    /// Of those, served from the cache.
    pub cached: usize,
    /// Retries after an unparsable reply.
    pub parse_retries: usize,
    /// Distinct raw tags.
    pub distinct_raw: usize,
    /// Distinct normalised tags (before the minimum frequency).
    pub distinct_normalized: usize,
    /// Normalised tags dropped by the minimum frequency.
    pub below_min_frequency: usize,
    /// Mean normalised tags per tagged record.
    pub tags_per_record_mean: f64,
    /// Histogram: tags per tagged record → records.
    pub tags_per_record: BTreeMap<usize, usize>,
    /// The 50 most frequent normalised tags with their record counts.
    pub top_tags: Vec<(String, usize)>,
    /// The first few failure messages.
    pub failure_examples: Vec<String>,
}

/// What became of one record's tagging.
enum Outcome {
    /// The model's tags.
    Tagged(Vec<RawTag>),
    /// The record has no user turn to tag.
    NoQuery,
    /// No reply could be parsed (the last reason).
    Unparsable(String),
    /// The request failed for good.
    RequestFailed(String),
}

/// The tagger: a completer, the options and the normaliser.
pub struct LlmTagger<'a> {
    completer: &'a dyn Completer,
    options: TagOptions,
    normalizer: Normalizer,
    min_frequency: usize,
    name: String,
}

impl std::fmt::Debug for LlmTagger<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmTagger")
            .field("name", &self.name)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<'a> LlmTagger<'a> {
    /// A tagger over `completer`. `min_frequency` (≥ 1) applies to [`LlmTagger::tag_all`].
    pub fn new(
        completer: &'a dyn Completer,
        options: TagOptions,
        normalizer: Normalizer,
        min_frequency: usize,
    ) -> Result<Self> {
        options.sampling.validate()?;
        if options.chunk == 0 || options.max_query_chars == 0 {
            return Err(Error::Config(
                "chunk and max_query_chars must be positive".into(),
            ));
        }
        let name = format!(
            "instag-llm:{}:{}",
            completer.model_name(),
            match options.prompt {
                TagPrompt::Chat => "chat",
                TagPrompt::Vicuna => "vicuna",
            }
        );
        Ok(LlmTagger {
            completer,
            options,
            normalizer,
            min_frequency: min_frequency.max(1),
            name,
        })
    }

    /// Tags every record (progress on stderr when `progress`), then applies the minimum
    /// frequency. One line per record, in input order.
    pub fn tag_all(&self, records: &[Record], progress: bool) -> (Vec<TaggedRecord>, TagStats) {
        self.run(records, progress, self.min_frequency)
    }

    fn run(
        &self,
        records: &[Record],
        progress: bool,
        min_frequency: usize,
    ) -> (Vec<TaggedRecord>, TagStats) {
        let mut stats = TagStats {
            model: self.completer.model_name(),
            records: records.len(),
            ..Default::default()
        };
        let queries: Vec<Option<String>> = records
            .iter()
            .map(|r| query_of(r, self.options.turns, self.options.max_query_chars))
            .collect();
        // Per record: the raw tags, or the last failure.
        let mut outcome: Vec<Outcome> = queries
            .iter()
            .map(|q| match q {
                Some(_) => Outcome::Unparsable(String::new()),
                None => Outcome::NoQuery,
            })
            .collect();
        let bar = if progress {
            indicatif::ProgressBar::new(records.len() as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "tagging {bar:40} {pos}/{len} [{elapsed}<{eta}] {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let todo: Vec<usize> = (0..records.len())
            .filter(|&i| queries[i].is_some())
            .collect();
        for chunk in todo.chunks(self.options.chunk) {
            let mut pending: Vec<usize> = chunk.to_vec();
            for attempt in 0..=self.options.parse_retries {
                if pending.is_empty() {
                    break;
                }
                if attempt > 0 {
                    stats.parse_retries += pending.len();
                }
                let requests: Vec<CompletionRequest> = pending
                    .iter()
                    .map(|&i| {
                        tag_request(queries[i].as_deref().unwrap_or(""), &self.options, attempt)
                    })
                    .collect();
                let results = self.completer.complete(&requests);
                stats.completions += requests.len();
                let mut again = Vec::new();
                for (&i, result) in pending.iter().zip(results) {
                    match result {
                        Ok(c) => {
                            stats.cached += usize::from(c.cached);
                            match parse_tags(&c.text) {
                                Ok(tags) => outcome[i] = Outcome::Tagged(tags),
                                Err(why) => {
                                    outcome[i] = Outcome::Unparsable(why);
                                    again.push(i);
                                }
                            }
                        }
                        // A request that failed after the client's own retries is not retried
                        // here.
                        Err(e) => outcome[i] = Outcome::RequestFailed(e.to_string()),
                    }
                }
                pending = again;
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        self.finish(records, outcome, stats, min_frequency)
    }

    fn finish(
        &self,
        records: &[Record],
        outcome: Vec<Outcome>,
        mut stats: TagStats,
        min_frequency: usize,
    ) -> (Vec<TaggedRecord>, TagStats) {
        let mut raw_distinct = std::collections::HashSet::new();
        for o in &outcome {
            if let Outcome::Tagged(tags) = o {
                raw_distinct.extend(tags.iter().map(|t| t.tag.as_str()));
            }
        }
        stats.distinct_raw = raw_distinct.len();
        // Normalise and de-duplicate per record, then count records per normalised tag.
        let normalized: Vec<Option<Vec<TagEntry>>> = outcome
            .iter()
            .map(|o| match o {
                Outcome::Tagged(tags) => {
                    let mut seen = std::collections::HashSet::new();
                    Some(
                        tags.iter()
                            .filter_map(|t| {
                                let n = self.normalizer.normalize(&t.tag);
                                (!n.is_empty() && seen.insert(n.clone())).then(|| TagEntry {
                                    tag: n,
                                    explanation: t.explanation.clone(),
                                    raw: t.tag.clone(),
                                })
                            })
                            .collect(),
                    )
                }
                _ => None,
            })
            .collect();
        let mut freq: HashMap<String, usize> = HashMap::new();
        for tags in normalized.iter().flatten() {
            for t in tags {
                *freq.entry(t.tag.clone()).or_insert(0) += 1;
            }
        }
        stats.distinct_normalized = freq.len();
        stats.below_min_frequency = freq.values().filter(|&&n| n < min_frequency).count();
        let mut lines = Vec::with_capacity(records.len());
        let mut total_tags = 0usize;
        for ((record, o), norm) in records.iter().zip(outcome).zip(normalized) {
            let mut line = TaggedRecord {
                id: record.id.clone(),
                orig_id: record.orig_id(),
                status: "failed".into(),
                tags: Vec::new(),
                rare: Vec::new(),
                error: None,
            };
            let failure = match o {
                Outcome::Tagged(_) => {
                    let (tags, rare): (Vec<TagEntry>, Vec<TagEntry>) = norm
                        .unwrap_or_default()
                        .into_iter()
                        .partition(|t| freq.get(&t.tag).copied().unwrap_or(0) >= min_frequency);
                    stats.tagged += 1;
                    total_tags += tags.len();
                    *stats.tags_per_record.entry(tags.len()).or_insert(0) += 1;
                    line.status = "ok".into();
                    line.tags = tags;
                    line.rare = rare;
                    None
                }
                Outcome::NoQuery => {
                    stats.no_query += 1;
                    line.status = "no_query".into();
                    line.error = Some("no user turn".into());
                    None
                }
                Outcome::Unparsable(why) => {
                    stats.parse_failures += 1;
                    Some(why)
                }
                Outcome::RequestFailed(why) => {
                    stats.request_failures += 1;
                    Some(why)
                }
            };
            if let Some(why) = failure {
                if stats.failure_examples.len() < 10 {
                    stats.failure_examples.push(format!("{}: {why}", record.id));
                }
                line.error = Some(why);
            }
            lines.push(line);
        }
        stats.tags_per_record_mean = total_tags as f64 / stats.tagged.max(1) as f64;
        let mut top: Vec<(String, usize)> = freq
            .into_iter()
            .filter(|(_, n)| *n >= min_frequency)
            .collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(50);
        stats.top_tags = top;
        (lines, stats)
    }
}

impl Tagger for LlmTagger<'_> {
    fn name(&self) -> &str {
        &self.name
    }

    /// Tags one record (no minimum frequency: that needs the whole run). A failure gives no tag
    /// and a warning; [`LlmTagger::tag_all`] counts failures instead.
    fn tag(&self, record: &Record) -> Vec<TagHit> {
        let (lines, _) = self.run(std::slice::from_ref(record), false, 1);
        let Some(line) = lines.into_iter().next() else {
            return Vec::new();
        };
        if let Some(e) = &line.error {
            tracing::warn!(record = %record.id, "tagging failed: {e}");
        }
        line.tags
            .into_iter()
            .map(|t| TagHit {
                tag: t.tag,
                rule: t.explanation,
            })
            .collect()
    }
}

/// Writes the tag file (atomically).
pub fn write_tag_file(path: &Path, lines: &[TaggedRecord]) -> Result<()> {
    sft_record::write_jsonl(path, lines)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_shapes_models_write() {
        let one = r#"{"tag": "Python Programming", "explanation": "asks for code"}"#;
        assert_eq!(parse_tags(one).unwrap()[0].tag, "Python Programming");
        let fenced = "Sure!\n```json\n[{\"tag\": \"a\", \"explanation\": \"x\"},\n {\"tag\": \"b\"}]\n```\nHope this helps.";
        let t = parse_tags(fenced).unwrap();
        assert_eq!(
            t.iter().map(|t| t.tag.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(t[1].explanation, "");
        let lines = "{\"tag\": \"math\", \"explanation\": \"e\"}\n{\"tag\": \"word problem\", \"explanation\": \"f\"}";
        assert_eq!(parse_tags(lines).unwrap().len(), 2);
        assert_eq!(
            parse_tags(r#"{"tags": ["x", {"tag": "y"}]}"#)
                .unwrap()
                .len(),
            2
        );
        // A broken object before a good one is skipped.
        assert_eq!(
            parse_tags(r#"{"tag": "bro [{"tag": "ok"}]"#).unwrap()[0].tag,
            "ok"
        );
        assert!(parse_tags("I cannot tag this.")
            .unwrap_err()
            .contains("no JSON"));
        assert!(parse_tags(r#"{"label": "x"}"#)
            .unwrap_err()
            .contains("without a tag"));
        assert!(parse_tags(r#"[{"tag": "  "}]"#).is_err());
    }

    #[test]
    fn normalisation_follows_instag_rules() {
        let n = Normalizer::default();
        assert_eq!(n.normalize("Python Programming"), "python program");
        assert_eq!(n.normalize("python-programming!"), "python program");
        assert_eq!(n.normalize("Mathematics"), "mathemat");
        assert_eq!(n.normalize("  ***  "), "");
        let aliases = Normalizer::new(HashMap::from([(
            "Coding".to_string(),
            "Programming".to_string(),
        )]));
        assert_eq!(aliases.normalize("coding"), "program");
        assert_eq!(aliases.normalize("Codings"), "program");
    }

    #[test]
    fn query_and_prompts() {
        let r = Record {
            id: "g:0".into(),
            source: "g".into(),
            messages: vec![
                Message::user("first question"),
                Message::assistant("answer"),
                Message::user("second"),
            ],
            tags: vec![],
            metadata: Default::default(),
        };
        assert_eq!(query_of(&r, Turns::First, 100).unwrap(), "first question");
        assert_eq!(
            query_of(&r, Turns::All, 100).unwrap(),
            "first question\n\nsecond"
        );
        assert_eq!(query_of(&r, Turns::First, 5).unwrap(), "first");
        let o = TagOptions {
            prompt: TagPrompt::Vicuna,
            ..TagOptions::default()
        };
        let Prompt::Text(t) = tag_request("Q?", &o, 1).prompt else {
            panic!("vicuna is text")
        };
        assert!(t.starts_with(VICUNA_SYSTEM) && t.ends_with("User query: Q? ASSISTANT:"));
        assert_eq!(tag_request("Q?", &o, 1).seed, 1);
    }
}
