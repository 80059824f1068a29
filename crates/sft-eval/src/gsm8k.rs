//! GSM8K: prompts, answer extraction and accuracy, matching lm-evaluation-harness's `gsm8k` task.
//!
//! Extraction follows lm-eval's two filters:
//! - **strict-match**: the first match of `#### (\-?[0-9\.\,]+)`;
//! - **flexible-extract**: the last match of `(-?[$0-9.,]{2,})|(-?[0-9]+)` (first non-empty group).
//!
//! A response with no match becomes `[invalid]`. The metric is lm-eval's `exact_match` with
//! `ignore_case` and `regexes_to_ignore = [",", "\$", "(?s).*#### ", "\.$"]`, applied to both the
//! extracted prediction and the full reference solution. Because exact string match says
//! `18.00 ≠ 18`, each report also carries a numeric comparison (`numeric_*`) that parses both
//! sides as numbers after the same normalisation; lm-eval parity is `exact_match`.

use std::path::Path;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};
use crate::stats::{bootstrap_mean_ci, Estimate, MeanCi, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED};
use crate::Message;

/// What lm-eval's filters return when nothing matches.
pub const INVALID: &str = "[invalid]";

/// Stop sequences of lm-eval's `gsm8k` few-shot task (v3).
pub const FEWSHOT_STOP: &[&str] = &["Question:", "</s>", "<|im_end|>"];

static STRICT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"#### (\-?[0-9\.\,]+)").expect("static regex"));
static FLEXIBLE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(-?[$0-9.,]{2,})|(-?[0-9]+)").expect("static regex"));
static UP_TO_MARKER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?s).*#### ").expect("static regex"));

/// One GSM8K problem as stored in `openai/grade-school-math` (`{"question", "answer"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gsm8kItem {
    /// The word problem.
    pub question: String,
    /// The reference solution, ending in `#### <number>`.
    pub answer: String,
}

impl Gsm8kItem {
    /// The reference's final answer after lm-eval's normalisation (e.g. `"72"`).
    pub fn gold(&self) -> String {
        normalize(&self.answer)
    }
}

/// Loads a GSM8K JSONL file (`train.jsonl` / `test.jsonl`). Every answer must contain `#### `.
pub fn load(path: &Path) -> Result<Vec<Gsm8kItem>> {
    let items: Vec<Gsm8kItem> = crate::io::read_jsonl(path)?;
    if items.is_empty() {
        return Err(EvalError::BadFile {
            path: path.into(),
            message: "no GSM8K items".into(),
        });
    }
    for (i, item) in items.iter().enumerate() {
        if !item.answer.contains("#### ") {
            return Err(EvalError::BadFile {
                path: path.into(),
                message: format!(
                    "record {} (0-based): answer has no '#### ' final-answer marker",
                    i
                ),
            });
        }
    }
    Ok(items)
}

/// The zero-shot chat prompt used for SFT models: one user turn holding the question, exactly as
/// GSM8K training records are formatted. Apply the model's chat template to it.
pub fn prompt_zero_shot_chat(item: &Gsm8kItem) -> Vec<Message> {
    vec![Message::user(item.question.clone())]
}

/// lm-eval's plain-text few-shot prompt: each shot as `Question: q\nAnswer: a`, joined by blank
/// lines, then `Question: q\nAnswer:` for the item. Generate until [`FEWSHOT_STOP`].
pub fn prompt_fewshot(item: &Gsm8kItem, shots: &[Gsm8kItem]) -> String {
    let mut out = String::new();
    for shot in shots {
        out.push_str(&format!(
            "Question: {}\nAnswer: {}\n\n",
            shot.question, shot.answer
        ));
    }
    out.push_str(&format!("Question: {}\nAnswer:", item.question));
    out
}

/// The first `k` items of `train` after a seeded ChaCha8 shuffle (a reproducible shot set).
pub fn select_fewshot(train: &[Gsm8kItem], k: usize, seed: u64) -> Vec<Gsm8kItem> {
    use rand_chacha::ChaCha8Rng;
    use rand_core::{RngCore, SeedableRng};
    let mut idx: Vec<usize> = (0..train.len()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Fisher-Yates; modulo bias is irrelevant for picking demonstrations.
    for i in (1..idx.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        idx.swap(i, j);
    }
    idx.into_iter().take(k).map(|i| train[i].clone()).collect()
}

/// The indices of a seeded random subset of `n` of `len` items (all of them when `n ≥ len`),
/// ascending: the first `n` of a Fisher–Yates permutation (unbiased draws) by a ChaCha8 stream
/// keyed by `SHA-256("sft-eval/subset\0" ‖ task ‖ "\0" ‖ seed)`. The same `(task, seed)` gives
/// the same subset for every model scored, and a smaller `n` gives a subset of a larger one.
/// Used for GSM8K ([`subset`]) and HumanEval ([`crate::humaneval::subset`]).
pub fn seeded_subset_indices(len: usize, n: usize, task: &str, seed: u64) -> Vec<usize> {
    use rand_chacha::ChaCha8Rng;
    use rand_core::{RngCore, SeedableRng};
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"sft-eval/subset\0");
    h.update(task.as_bytes());
    h.update(b"\0");
    h.update(seed.to_le_bytes());
    let mut rng = ChaCha8Rng::from_seed(h.finalize().into());
    let mut idx: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        // Unbiased draw in 0..=i by rejection.
        let bound = i as u64 + 1;
        let zone = u64::MAX - (u64::MAX % bound);
        let j = loop {
            let x = rng.next_u64();
            if x < zone {
                break (x % bound) as usize;
            }
        };
        idx.swap(i, j);
    }
    idx.truncate(n.min(len));
    idx.sort_unstable();
    idx
}

/// A seeded random subset of `n` GSM8K items ([`seeded_subset_indices`] with task `gsm8k`):
/// their indices in `items` and the items, in file order.
pub fn subset(items: &[Gsm8kItem], n: usize, seed: u64) -> (Vec<usize>, Vec<Gsm8kItem>) {
    let idx = seeded_subset_indices(items.len(), n, "gsm8k", seed);
    let chosen = idx.iter().map(|&i| items[i].clone()).collect();
    (idx, chosen)
}

/// Cuts `text` at the earliest of `stops` (the stop sequence itself is removed).
pub fn truncate_at_stops<'a>(text: &'a str, stops: &[&str]) -> &'a str {
    let end = stops
        .iter()
        .filter_map(|s| text.find(s))
        .min()
        .unwrap_or(text.len());
    &text[..end]
}

/// lm-eval strict-match: the first `#### N`, or [`INVALID`].
pub fn extract_strict(response: &str) -> String {
    match STRICT.captures(response).and_then(|c| c.get(1)) {
        Some(m) => m.as_str().trim().to_string(),
        None => INVALID.to_string(),
    }
}

/// lm-eval flexible-extract: the last number-like span, or [`INVALID`].
pub fn extract_flexible(response: &str) -> String {
    match FLEXIBLE.captures_iter(response).last() {
        Some(c) => match c.get(1).or_else(|| c.get(2)) {
            Some(m) if !m.as_str().is_empty() => m.as_str().trim().to_string(),
            _ => INVALID.to_string(),
        },
        None => INVALID.to_string(),
    }
}

/// lm-eval's `exact_match` normalisation: drop `,` and `$`, everything up to the last `#### `, one
/// trailing `.` (Python's `\.$`, which also matches before a final newline), then lowercase.
pub fn normalize(text: &str) -> String {
    let s = text.replace([',', '$'], "");
    let mut s = UP_TO_MARKER.replace_all(&s, "").into_owned();
    if s.ends_with(".\n") {
        s.remove(s.len() - 2);
    } else if s.ends_with('.') {
        s.pop();
    }
    s.to_lowercase()
}

/// Both sides parse as the same number after [`normalize`] (so `18.00` equals `18`).
pub fn numeric_equal(prediction: &str, gold: &str) -> bool {
    let p = normalize(prediction);
    let g = normalize(gold);
    match (p.trim().parse::<f64>(), g.trim().parse::<f64>()) {
        (Ok(a), Ok(b)) => (a - b).abs() <= 1e-9 * b.abs().max(1.0),
        _ => false,
    }
}

/// One scored item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gsm8kItemResult {
    /// 0-based position in the item list.
    pub index: usize,
    /// Normalised reference answer.
    pub gold: String,
    /// The model's response as given.
    pub completion: String,
    /// strict-match extraction (before normalisation), or `[invalid]`.
    pub strict_extracted: String,
    /// flexible-extract extraction (before normalisation), or `[invalid]`.
    pub flexible_extracted: String,
    /// lm-eval exact match under strict-match.
    pub strict_correct: bool,
    /// lm-eval exact match under flexible-extract.
    pub flexible_correct: bool,
    /// Numeric equality under strict-match.
    pub strict_numeric_correct: bool,
    /// Numeric equality under flexible-extract.
    pub flexible_numeric_correct: bool,
}

/// Accuracy of one filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilterScore {
    /// Items counted correct.
    pub correct: usize,
    /// Items whose extraction was `[invalid]`.
    pub invalid: usize,
    /// Accuracy with its 95% bootstrap interval.
    pub accuracy: MeanCi,
}

/// The whole GSM8K report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gsm8kReport {
    /// Number of items.
    pub n: usize,
    /// lm-eval `exact_match,strict-match`.
    pub strict_match: FilterScore,
    /// lm-eval `exact_match,flexible-extract`.
    pub flexible_extract: FilterScore,
    /// Numeric equality after strict-match extraction.
    pub strict_numeric: FilterScore,
    /// Numeric equality after flexible-extract extraction.
    pub flexible_numeric: FilterScore,
    /// The headline: [`HEADLINE_FILTER`] (flexible-extract exact match) accuracy with its 95%
    /// Wilson interval ([`Estimate::wilson`]); what the runner reports as `gsm8k_acc`.
    pub estimate: Estimate,
    /// Per-item detail, in input order.
    pub items: Vec<Gsm8kItemResult>,
}

/// The filter of the report's headline [`Gsm8kReport::estimate`]: lm-eval's
/// `exact_match,flexible-extract` (the last number of the answer).
pub const HEADLINE_FILTER: &str = "flexible-extract";

/// Scores `completions[i]` against `items[i]`. The lengths must match.
pub fn score(items: &[Gsm8kItem], completions: &[String]) -> Result<Gsm8kReport> {
    if items.len() != completions.len() {
        return Err(EvalError::Mismatch(format!(
            "{} GSM8K items but {} completions",
            items.len(),
            completions.len()
        )));
    }
    let results: Vec<Gsm8kItemResult> = items
        .iter()
        .zip(completions)
        .enumerate()
        .map(|(index, (item, completion))| {
            let gold = item.gold();
            let strict = extract_strict(completion);
            let flexible = extract_flexible(completion);
            Gsm8kItemResult {
                index,
                strict_correct: normalize(&strict) == gold,
                flexible_correct: normalize(&flexible) == gold,
                strict_numeric_correct: numeric_equal(&strict, &gold),
                flexible_numeric_correct: numeric_equal(&flexible, &gold),
                gold,
                completion: completion.clone(),
                strict_extracted: strict,
                flexible_extracted: flexible,
            }
        })
        .collect();
    let filter = |ok: fn(&Gsm8kItemResult) -> bool, invalid: fn(&Gsm8kItemResult) -> bool| {
        let values: Vec<f64> = results
            .iter()
            .map(|r| if ok(r) { 1.0 } else { 0.0 })
            .collect();
        FilterScore {
            correct: results.iter().filter(|r| ok(r)).count(),
            invalid: results.iter().filter(|r| invalid(r)).count(),
            accuracy: bootstrap_mean_ci(&values, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED),
        }
    };
    let strict_invalid = |r: &Gsm8kItemResult| r.strict_extracted == INVALID;
    let flexible_invalid = |r: &Gsm8kItemResult| r.flexible_extracted == INVALID;
    let flexible_extract = filter(|r| r.flexible_correct, flexible_invalid);
    Ok(Gsm8kReport {
        n: results.len(),
        strict_match: filter(|r| r.strict_correct, strict_invalid),
        estimate: Estimate::wilson(flexible_extract.correct, results.len()),
        flexible_extract,
        strict_numeric: filter(|r| r.strict_numeric_correct, strict_invalid),
        flexible_numeric: filter(|r| r.flexible_numeric_correct, flexible_invalid),
        items: results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_are_seeded_nested_and_not_the_first_n() {
        let a = seeded_subset_indices(100, 10, "gsm8k", 42);
        assert_eq!(a.len(), 10);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(
            a,
            seeded_subset_indices(100, 10, "gsm8k", 42),
            "deterministic"
        );
        assert_ne!(
            a,
            (0..10).collect::<Vec<_>>(),
            "a random subset, not the first n"
        );
        assert_ne!(a, seeded_subset_indices(100, 10, "gsm8k", 43));
        assert_ne!(a, seeded_subset_indices(100, 10, "humaneval", 42));
        let wider = seeded_subset_indices(100, 30, "gsm8k", 42);
        assert!(
            a.iter().all(|i| wider.contains(i)),
            "nested in a larger subset"
        );
        assert_eq!(seeded_subset_indices(5, 9, "gsm8k", 1), vec![0, 1, 2, 3, 4]);
        assert!(seeded_subset_indices(5, 0, "gsm8k", 1).is_empty());
    }

    /// (response, strict, flexible) as lm-eval's RegexFilter returns them.
    const EXTRACTION_CASES: &[(&str, &str, &str)] = &[
        ("She pays 5 + 3 = 8 dollars.\n#### 8", "8", "8"),
        ("#### 1,234", "1,234", "1,234"),
        ("The answer is $1,234.50.", INVALID, "$1,234.50."),
        ("#### -7\nThe answer is 7.", "-7", "7."),
        ("No numbers here.", INVALID, INVALID),
        ("", INVALID, INVALID),
        ("Total is 12 apples and 3 pears", INVALID, "3"),
        ("####  5", INVALID, "5"),
        ("#### 18.0", "18.0", "18.0"),
        ("#### 42 then #### 43", "42", "43"),
        ("x = -3", INVALID, "-3"),
        ("value 0.5", INVALID, "0.5"),
        ("ends with a period 10.", INVALID, "10."),
        ("range 3-4", INVALID, "-4"),
        ("a 1 b 2 c", INVALID, "2"),
        ("#### $60", INVALID, "$60"),
        ("so 7 ,", INVALID, "7"),
        ("answer: 1,000,000", INVALID, "1,000,000"),
        ("#### .5", ".5", ".5"),
    ];

    #[test]
    fn extraction_matches_lm_eval_filters() {
        for &(resp, strict, flexible) in EXTRACTION_CASES {
            assert_eq!(extract_strict(resp), strict, "strict on {resp:?}");
            assert_eq!(extract_flexible(resp), flexible, "flexible on {resp:?}");
        }
    }

    #[test]
    fn normalisation_matches_lm_eval_exact_match() {
        assert_eq!(normalize("Natalia sold ...\n#### 72"), "72");
        assert_eq!(normalize("$1,234."), "1234");
        assert_eq!(normalize("1,234.50."), "1234.50");
        assert_eq!(normalize("5.\n"), "5\n");
        assert_eq!(normalize("[invalid]"), "[invalid]");
        assert_eq!(normalize("a #### b #### 9"), "9");
        assert_eq!(normalize("ABC"), "abc");
    }

    #[test]
    fn numeric_equality_accepts_trailing_zeros() {
        assert!(numeric_equal("18.0", "#### 18"));
        assert!(numeric_equal("$1,000.00", "1000"));
        assert!(!numeric_equal("18.5", "18"));
        assert!(!numeric_equal(INVALID, "18"));
    }

    fn item(q: &str, gold: &str) -> Gsm8kItem {
        Gsm8kItem {
            question: q.into(),
            answer: format!("work <<1+1=2>>\n#### {gold}"),
        }
    }

    #[test]
    fn score_counts_each_filter() {
        let items = vec![
            item("a", "8"),
            item("b", "1000"),
            item("c", "18"),
            item("d", "5"),
        ];
        let completions: Vec<String> = vec![
            "2 + 6 = 8\n#### 8".into(),     // both
            "So $1,000.".into(),            // flexible only
            "#### 18.0".into(),             // numeric only
            "I think 4 or 5, no, 6".into(), // wrong
        ];
        let r = score(&items, &completions).expect("lengths match");
        assert_eq!(r.n, 4);
        assert_eq!(r.strict_match.correct, 1);
        assert_eq!(r.flexible_extract.correct, 2);
        assert_eq!(r.strict_numeric.correct, 2);
        assert_eq!(r.flexible_numeric.correct, 3);
        assert_eq!(r.strict_match.invalid, 2);
        assert!((r.flexible_extract.accuracy.mean - 0.5).abs() < 1e-12);
        // The headline is flexible-extract's 2/4 with its Wilson interval.
        assert_eq!(r.estimate, Estimate::wilson(2, 4));
        assert!(r.items[1].flexible_correct && !r.items[1].strict_correct);
        assert!(score(&items, &completions[..3]).is_err());
    }

    #[test]
    fn prompts_have_lm_eval_shape() {
        let shots = vec![item("q1", "1"), item("q2", "2")];
        let p = prompt_fewshot(&item("q3", "3"), &shots);
        assert!(p.starts_with("Question: q1\nAnswer: work <<1+1=2>>\n#### 1\n\nQuestion: q2\n"));
        assert!(p.ends_with("\n\nQuestion: q3\nAnswer:"));
        let chat = prompt_zero_shot_chat(&item("q3", "3"));
        assert_eq!(chat.len(), 1);
        assert_eq!(chat[0].content, "q3");
        assert_eq!(
            truncate_at_stops(" 5\n#### 5\n\nQuestion: next", FEWSHOT_STOP),
            " 5\n#### 5\n\n"
        );
        let train: Vec<Gsm8kItem> = (0..50).map(|i| item(&format!("q{i}"), "1")).collect();
        assert_eq!(select_fewshot(&train, 5, 3), select_fewshot(&train, 5, 3));
        assert_ne!(select_fewshot(&train, 5, 3), select_fewshot(&train, 5, 4));
    }
}
