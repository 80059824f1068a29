//! MT-Bench: FastChat's question, answer, reference and judge-prompt files, two-turn generation
//! prompts, single-answer judging requests, verdict parsing and the score summary.
//!
//! Judging follows `fastchat/llm_judge/gen_judgment.py` in `single` mode:
//! - categories in [`NEED_REF_CATS`] (math, reasoning, coding) use `single-math-v1` for turn 1 and
//!   `single-math-v1-multi-turn` for turn 2, with the GPT-4 reference answers;
//! - the rest use `single-v1` and `single-v1-multi-turn`;
//! - turn 2 is judged with the whole two-turn conversation in the prompt.
//!
//! The judge call itself lives in [`judge`]. Scores come from `[[n]]`, falling back to `[n]`
//! (FastChat's two regexes); a verdict with neither, or a score outside 1–10, is counted with its
//! status and left out of the means, never silently dropped: the summary reports coverage.

pub mod judge;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{EvalError, Result};
use crate::stats::{median, Estimate};
use crate::Message;

/// Categories judged against reference answers (FastChat's `NEED_REF_CATS`).
pub const NEED_REF_CATS: &[&str] = &["math", "reasoning", "coding", "arena-hard-200"];

/// Coverage below which a summary is marked invalid.
pub const MIN_COVERAGE: f64 = 0.98;

static SCORE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\[\[(\d+\.?\d*)\]\]").expect("static regex"));
static SCORE_BACKUP: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\[(\d+\.?\d*)\]").expect("static regex"));

/// One MT-Bench question (`question.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Question {
    /// 81–160 in MT-Bench.
    pub question_id: u64,
    /// writing, roleplay, reasoning, math, coding, extraction, stem or humanities.
    pub category: String,
    /// The two user turns.
    pub turns: Vec<String>,
    /// An inline reference some questions carry (not used by single-answer judging).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Vec<String>>,
}

/// One choice of a model answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// Choice index (FastChat writes 0 for single-sample generation).
    pub index: usize,
    /// One assistant message per question turn.
    pub turns: Vec<String>,
}

/// One line of a FastChat `model_answer/<model>.jsonl` file (also the reference-answer format).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelAnswer {
    /// The question answered.
    pub question_id: u64,
    /// An id for this answer.
    pub answer_id: String,
    /// The model that answered.
    pub model_id: String,
    /// The answers; judging uses `choices[0]`.
    pub choices: Vec<Choice>,
    /// Unix time of generation.
    pub tstamp: f64,
}

impl ModelAnswer {
    /// An answer record for `turns`, with a deterministic `answer_id` (hash of model, question
    /// and text) and the current time.
    pub fn new(question_id: u64, model_id: &str, turns: Vec<String>) -> Self {
        let mut h = Sha256::new();
        h.update(model_id.as_bytes());
        h.update(question_id.to_le_bytes());
        for t in &turns {
            h.update((t.len() as u64).to_le_bytes());
            h.update(t.as_bytes());
        }
        let answer_id = hex::encode(&h.finalize()[..11]);
        let tstamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        ModelAnswer {
            question_id,
            answer_id,
            model_id: model_id.to_string(),
            choices: vec![Choice { index: 0, turns }],
            tstamp,
        }
    }

    fn turn(&self, i: usize) -> Option<&str> {
        self.choices
            .first()
            .and_then(|c| c.turns.get(i))
            .map(String::as_str)
    }
}

/// One judge prompt of `judge_prompts.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgePrompt {
    /// e.g. `single-v1`.
    pub name: String,
    /// `single` or `pairwise`.
    #[serde(rename = "type")]
    pub kind: String,
    /// System message for the judge.
    pub system_prompt: String,
    /// User message with `{placeholders}` (Python `str.format` syntax).
    pub prompt_template: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// `general` or `math`.
    #[serde(default)]
    pub category: String,
    /// `[[rating]]` for single-answer prompts.
    pub output_format: String,
}

/// Loads `question.jsonl`; ids must be unique and every question needs at least one turn.
pub fn load_questions(path: &Path) -> Result<Vec<Question>> {
    let qs: Vec<Question> = crate::io::read_jsonl(path)?;
    if qs.is_empty() {
        return Err(EvalError::BadFile {
            path: path.into(),
            message: "no questions".into(),
        });
    }
    let mut seen = BTreeMap::new();
    for (i, q) in qs.iter().enumerate() {
        if q.turns.is_empty() {
            return Err(EvalError::BadFile {
                path: path.into(),
                message: format!("question {} has no turns", q.question_id),
            });
        }
        if seen.insert(q.question_id, i).is_some() {
            return Err(EvalError::BadFile {
                path: path.into(),
                message: format!("question_id {} appears twice", q.question_id),
            });
        }
    }
    Ok(qs)
}

/// Loads a `model_answer` JSONL file keyed by question id (a later line wins, as in FastChat).
pub fn load_answers(path: &Path) -> Result<BTreeMap<u64, ModelAnswer>> {
    let answers: Vec<ModelAnswer> = crate::io::read_jsonl(path)?;
    Ok(answers.into_iter().map(|a| (a.question_id, a)).collect())
}

/// Loads reference answers (`reference_answer/gpt-4.jsonl`, same format as model answers).
pub fn load_references(path: &Path) -> Result<BTreeMap<u64, ModelAnswer>> {
    load_answers(path)
}

/// Loads `judge_prompts.jsonl` keyed by name.
pub fn load_judge_prompts(path: &Path) -> Result<BTreeMap<String, JudgePrompt>> {
    let prompts: Vec<JudgePrompt> = crate::io::read_jsonl(path)?;
    Ok(prompts.into_iter().map(|p| (p.name.clone(), p)).collect())
}

/// FastChat's generation temperature per category (`temperature_config`); 0.0 means greedy.
pub fn temperature_for(category: &str) -> f64 {
    match category {
        "writing" | "roleplay" => 0.7,
        "stem" | "humanities" => 0.1,
        "extraction" | "math" | "coding" | "reasoning" => 0.0,
        _ => 0.7,
    }
}

/// Chat messages for generating turn `previous_answers.len() + 1`: the user turns so far with
/// the model's own earlier answers between them. Apply the model's chat template to these.
pub fn turn_messages(question: &Question, previous_answers: &[String]) -> Result<Vec<Message>> {
    let t = previous_answers.len();
    if t >= question.turns.len() {
        return Err(EvalError::Mismatch(format!(
            "question {} has {} turns; cannot build turn {}",
            question.question_id,
            question.turns.len(),
            t + 1
        )));
    }
    let mut msgs = Vec::with_capacity(2 * t + 1);
    for (q, a) in question.turns.iter().zip(previous_answers) {
        msgs.push(Message::user(q.clone()));
        msgs.push(Message::assistant(a.clone()));
    }
    msgs.push(Message::user(question.turns[t].clone()));
    Ok(msgs)
}

/// Python `str.format` with named fields, in one pass over the template (so substituted text is
/// never re-expanded); `{{`/`}}` are literal braces. An unknown field is an error.
pub fn format_template(template: &str, fields: &[(&str, &str)]) -> Result<String> {
    let mut out = String::with_capacity(template.len() * 2);
    let mut rest = template;
    while let Some(pos) = rest.find(['{', '}']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
        } else if let Some(stripped) = tail.strip_prefix('{') {
            let end = stripped.find('}').ok_or_else(|| {
                EvalError::Mismatch("unclosed '{' in judge prompt template".into())
            })?;
            let name = &stripped[..end];
            let value = fields.iter().find(|(k, _)| *k == name).ok_or_else(|| {
                EvalError::Mismatch(format!(
                    "judge prompt template field {{{name}}} not provided"
                ))
            })?;
            out.push_str(value.1);
            rest = &stripped[end + 1..];
        } else {
            return Err(EvalError::Mismatch(
                "single '}' in judge prompt template".into(),
            ));
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// One judge call to make: the prompt for one (question, turn).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeRequest {
    /// The question.
    pub question_id: u64,
    /// Its category.
    pub category: String,
    /// 1 or 2.
    pub turn: u8,
    /// The model being judged.
    pub model: String,
    /// Judge prompt name (`single-v1`, ...).
    pub prompt_name: String,
    /// System message.
    pub system_prompt: String,
    /// User message.
    pub user_prompt: String,
}

/// Builds the single-answer judging requests for one model's answers, as FastChat's
/// `make_match_single` does: both turns of every question that has an answer, reference-guided
/// prompts (with `references`) for [`NEED_REF_CATS`]. A question without an answer is an error.
pub fn build_judge_requests(
    questions: &[Question],
    answers: &BTreeMap<u64, ModelAnswer>,
    model: &str,
    references: &BTreeMap<u64, ModelAnswer>,
    prompts: &BTreeMap<String, JudgePrompt>,
) -> Result<Vec<JudgeRequest>> {
    let prompt = |name: &str| {
        prompts.get(name).ok_or_else(|| {
            EvalError::Mismatch(format!("judge prompt {name} missing from the prompts file"))
        })
    };
    let mut out = Vec::new();
    for q in questions {
        let ans = answers.get(&q.question_id).ok_or_else(|| {
            EvalError::Mismatch(format!("no answer for question {}", q.question_id))
        })?;
        let need_ref = NEED_REF_CATS.contains(&q.category.as_str());
        let reference = if need_ref {
            Some(references.get(&q.question_id).ok_or_else(|| {
                EvalError::Mismatch(format!(
                    "question {} ({}) needs a reference answer but none was loaded",
                    q.question_id, q.category
                ))
            })?)
        } else {
            None
        };
        let a = |i: usize| {
            ans.turn(i).ok_or_else(|| {
                EvalError::Mismatch(format!(
                    "answer to question {} lacks turn {}",
                    q.question_id,
                    i + 1
                ))
            })
        };
        let r = |i: usize| {
            reference.and_then(|r| r.turn(i)).ok_or_else(|| {
                EvalError::Mismatch(format!(
                    "reference for question {} lacks turn {}",
                    q.question_id,
                    i + 1
                ))
            })
        };
        // Turn 1.
        let p1 = prompt(if need_ref {
            "single-math-v1"
        } else {
            "single-v1"
        })?;
        let mut fields = vec![("question", q.turns[0].as_str()), ("answer", a(0)?)];
        if need_ref {
            fields.push(("ref_answer_1", r(0)?));
        }
        out.push(JudgeRequest {
            question_id: q.question_id,
            category: q.category.clone(),
            turn: 1,
            model: model.to_string(),
            prompt_name: p1.name.clone(),
            system_prompt: p1.system_prompt.clone(),
            user_prompt: format_template(&p1.prompt_template, &fields)?,
        });
        // Turn 2, judged with the whole conversation.
        if q.turns.len() == 2 {
            let p2 = prompt(if need_ref {
                "single-math-v1-multi-turn"
            } else {
                "single-v1-multi-turn"
            })?;
            let mut fields = vec![
                ("question_1", q.turns[0].as_str()),
                ("question_2", q.turns[1].as_str()),
                ("answer_1", a(0)?),
                ("answer_2", a(1)?),
            ];
            if need_ref {
                fields.push(("ref_answer_1", r(0)?));
                fields.push(("ref_answer_2", r(1)?));
            }
            out.push(JudgeRequest {
                question_id: q.question_id,
                category: q.category.clone(),
                turn: 2,
                model: model.to_string(),
                prompt_name: p2.name.clone(),
                system_prompt: p2.system_prompt.clone(),
                user_prompt: format_template(&p2.prompt_template, &fields)?,
            });
        }
    }
    Ok(out)
}

/// What became of one judgment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JudgmentStatus {
    /// A score in 1–10 was parsed.
    Ok,
    /// Neither `[[n]]` nor `[n]` found.
    ParseError,
    /// A number was found but lies outside 1–10.
    OutOfRange,
    /// The request failed after retries (or at once on 400/401/403).
    RequestError,
}

/// FastChat's extraction: the first `[[n]]`, else the first `[n]`; `None` if neither.
pub fn parse_score(judgment: &str) -> Option<f64> {
    let caps = SCORE
        .captures(judgment)
        .or_else(|| SCORE_BACKUP.captures(judgment))?;
    caps.get(1)?.as_str().parse().ok()
}

/// Score and status of a judge's reply.
pub fn classify(judgment: &str) -> (f64, JudgmentStatus) {
    match parse_score(judgment) {
        Some(s) if (1.0..=10.0).contains(&s) => (s, JudgmentStatus::Ok),
        Some(_) => (-1.0, JudgmentStatus::OutOfRange),
        None => (-1.0, JudgmentStatus::ParseError),
    }
}

/// One line of FastChat's judgment JSONL (`model_judgment/<judge>_single.jsonl`), plus `status`
/// and `repeat`. `score` is -1 unless `status` is `ok`, as in FastChat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgment {
    /// The question.
    pub question_id: u64,
    /// The judged model.
    pub model: String,
    /// (judge model, prompt name).
    pub judge: (String, String),
    /// The user message sent to the judge.
    pub user_prompt: String,
    /// The judge's reply (FastChat's `$ERROR$` after a failed request).
    pub judgment: String,
    /// The rating, or -1.
    pub score: f64,
    /// 1 or 2.
    pub turn: u8,
    /// Unix time.
    pub tstamp: f64,
    /// What became of it.
    pub status: JudgmentStatus,
    /// 0-based repetition index when judging is repeated.
    pub repeat: usize,
    /// The question's category (not in FastChat's file, which joins it from questions).
    pub category: String,
}

/// Mean scores for a set of (question, turn) items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreGroup {
    /// Mean of turn-1 scores.
    pub turn1: Option<f64>,
    /// Mean of turn-2 scores.
    pub turn2: Option<f64>,
    /// Mean over both turns (FastChat's overall score).
    pub overall: Option<f64>,
    /// Items with a score.
    pub scored: usize,
    /// Items in the group.
    pub items: usize,
}

/// The MT-Bench result for one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MtBenchSummary {
    /// The judged model.
    pub model: String,
    /// The judge model.
    pub judge_model: String,
    /// Judgments per item; the item's score is the median of its valid ones.
    pub repeats: usize,
    /// All items.
    pub all: ScoreGroup,
    /// Per category.
    pub per_category: BTreeMap<String, ScoreGroup>,
    /// Judgment counts by status, over all repeats.
    pub status_counts: BTreeMap<JudgmentStatus, usize>,
    /// scored items / items.
    pub coverage: f64,
    /// `coverage >= MIN_COVERAGE`.
    pub valid: bool,
    /// The headline: the mean of the scored (question, turn) items' scores (the overall score)
    /// with mean ± 1.96 SE over those items ([`Estimate::mean_se`]); `None` when no item has a
    /// score. What the runner reports as `mtbench_score`.
    #[serde(default)]
    pub estimate: Option<Estimate>,
}

/// Summarises judgments: per (question, turn) the median of the valid repeats, then means per
/// turn, per category and overall. Items with no valid judgment are counted, not averaged.
pub fn summarize(
    judgments: &[Judgment],
    model: &str,
    judge_model: &str,
    repeats: usize,
) -> MtBenchSummary {
    let mut items: BTreeMap<(u64, u8), (String, Vec<f64>)> = BTreeMap::new();
    let mut status_counts = BTreeMap::new();
    for j in judgments {
        *status_counts.entry(j.status).or_insert(0) += 1;
        let e = items
            .entry((j.question_id, j.turn))
            .or_insert_with(|| (j.category.clone(), Vec::new()));
        if j.status == JudgmentStatus::Ok {
            e.1.push(j.score);
        }
    }
    let scored: Vec<(String, u8, Option<f64>)> = items
        .iter()
        .map(|(&(_, turn), (cat, s))| (cat.clone(), turn, median(s)))
        .collect();
    let group = |filter: &dyn Fn(&str) -> bool| {
        let sel: Vec<&(String, u8, Option<f64>)> =
            scored.iter().filter(|(c, _, _)| filter(c)).collect();
        let mean = |f: &dyn Fn(u8) -> bool| {
            let v: Vec<f64> = sel
                .iter()
                .filter(|(_, t, _)| f(*t))
                .filter_map(|(_, _, s)| *s)
                .collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        ScoreGroup {
            turn1: mean(&|t| t == 1),
            turn2: mean(&|t| t == 2),
            overall: mean(&|_| true),
            scored: sel.iter().filter(|(_, _, s)| s.is_some()).count(),
            items: sel.len(),
        }
    };
    let all = group(&|_| true);
    let item_scores: Vec<f64> = scored.iter().filter_map(|(_, _, s)| *s).collect();
    let estimate = (!item_scores.is_empty()).then(|| Estimate::mean_se(&item_scores));
    let mut per_category = BTreeMap::new();
    for (cat, _, _) in &scored {
        if !per_category.contains_key(cat) {
            per_category.insert(cat.clone(), group(&|c| c == cat));
        }
    }
    let coverage = if all.items == 0 {
        0.0
    } else {
        all.scored as f64 / all.items as f64
    };
    MtBenchSummary {
        model: model.to_string(),
        judge_model: judge_model.to_string(),
        repeats,
        valid: coverage >= MIN_COVERAGE,
        coverage,
        all,
        per_category,
        status_counts,
        estimate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_extraction_follows_fastchat() {
        assert_eq!(parse_score("Good. Rating: [[8]]"), Some(8.0));
        assert_eq!(parse_score("Rating: [[7.5]]"), Some(7.5));
        assert_eq!(parse_score("Rating: [6]"), Some(6.0));
        assert_eq!(parse_score("[[3]] then [[9]]"), Some(3.0));
        assert_eq!(parse_score("see [1] and [[4]]"), Some(4.0)); // double brackets win
        assert_eq!(parse_score("nine out of ten"), None);
        assert_eq!(parse_score("[[NaN]]"), None);
        assert_eq!(classify("[[11]]"), (-1.0, JudgmentStatus::OutOfRange));
        assert_eq!(classify("[[10]]"), (10.0, JudgmentStatus::Ok));
        assert_eq!(classify("nine"), (-1.0, JudgmentStatus::ParseError));
    }

    #[test]
    fn template_formatting_is_single_pass() {
        let t = "Q: {question}\nA: {answer} {{literal}}";
        let s = format_template(t, &[("question", "what is {answer}?"), ("answer", "42")])
            .expect("fields");
        assert_eq!(s, "Q: what is {answer}?\nA: 42 {literal}");
        assert!(format_template("{missing}", &[]).is_err());
    }

    #[test]
    fn turn_messages_interleave_answers() {
        let q = Question {
            question_id: 81,
            category: "writing".into(),
            turns: vec!["a".into(), "b".into()],
            reference: None,
        };
        let m = turn_messages(&q, &["x".into()]).expect("turn 2");
        let roles: Vec<&str> = m.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["user", "assistant", "user"]);
        assert_eq!(m[2].content, "b");
        assert!(turn_messages(&q, &["x".into(), "y".into()]).is_err());
        assert_eq!(temperature_for("math"), 0.0);
        assert_eq!(temperature_for("writing"), 0.7);
    }

    fn j(qid: u64, turn: u8, cat: &str, text: &str, repeat: usize) -> Judgment {
        let (score, status) = classify(text);
        Judgment {
            question_id: qid,
            model: "m".into(),
            judge: ("judge".into(), "single-v1".into()),
            user_prompt: String::new(),
            judgment: text.into(),
            score,
            turn,
            tstamp: 0.0,
            status,
            repeat,
            category: cat.into(),
        }
    }

    #[test]
    fn summary_uses_medians_and_counts_failures() {
        let js = vec![
            j(1, 1, "math", "[[2]]", 0),
            j(1, 1, "math", "[[4]]", 1),
            j(1, 1, "math", "[[9]]", 2),
            j(1, 2, "math", "[[6]]", 0),
            j(1, 2, "math", "oops", 1),
            j(1, 2, "math", "[[8]]", 2),
            j(2, 1, "writing", "nope", 0),
            j(2, 1, "writing", "nope", 1),
            j(2, 1, "writing", "[[11]]", 2),
            j(2, 2, "writing", "[[10]]", 0),
            j(2, 2, "writing", "[[10]]", 1),
            j(2, 2, "writing", "[[10]]", 2),
        ];
        let s = summarize(&js, "m", "judge", 3);
        assert_eq!(s.all.items, 4);
        assert_eq!(s.all.scored, 3);
        assert_eq!(s.per_category["math"].turn1, Some(4.0));
        assert_eq!(s.per_category["math"].turn2, Some(7.0));
        assert_eq!(s.per_category["writing"].turn1, None);
        assert_eq!(s.all.overall, Some((4.0 + 7.0 + 10.0) / 3.0));
        assert_eq!(s.status_counts[&JudgmentStatus::ParseError], 3);
        assert_eq!(s.status_counts[&JudgmentStatus::OutOfRange], 1);
        assert!((s.coverage - 0.75).abs() < 1e-12);
        assert!(!s.valid);
        // The headline is the mean over the 3 scored items, with its standard-error interval.
        assert_eq!(s.estimate, Some(Estimate::mean_se(&[4.0, 7.0, 10.0])));
        assert_eq!(s.estimate.unwrap().value, s.all.overall.unwrap());
        assert_eq!(summarize(&[], "m", "judge", 1).estimate, None);
    }
}
