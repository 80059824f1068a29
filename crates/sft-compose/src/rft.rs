//! RFT (rejection-sampling fine-tuning) data: filter sampled reasoning paths of GSM8K questions the
//! way the RFT paper (Yuan et al. 2023) did.
//!
//! The rule is the one of the paper's released script, `collect_rejection_sampling.py` in
//! OFA-Sys/gsm8k-ScRel, reimplemented without `eval`. Per question, candidates in input order:
//!
//! 1. **Answer.** The first match of `#### (\-?[0-9\.\,]+)` in the text before the first NUL
//!    character, commas removed, parsed as Python's `float` (`18.` and `.5` parse, `1.2.3` does
//!    not: no answer). A candidate is *correct* when that number equals the question's gold
//!    `#### N` as `f64`s ([`extract_answer`]).
//! 2. **Calculation check.** Every `<<…>>` span (regex `<<([^>]*)>>`) of a correct candidate must
//!    pass [`check_equation`]: it contains `=`, and the expression before the first `=`
//!    ([`eval_arith`], a safe evaluator of `+ - * / **`, parentheses and signs with Python's
//!    semantics) is within 1e-3 of the number between the first and second `=`. One failing span
//!    drops the candidate.
//! 3. **Distinct paths.** The key is the spans joined by `|` with spaces (U+0020) removed; no spans
//!    is the empty key. The first candidate with a new key is kept; a later candidate `q` with the
//!    key of a kept `p` replaces `p` (in `p`'s place) when the sum of its character (Unicode scalar)
//!    Levenshtein distances to the other kept paths of the question is larger than `p`'s sum.
//! 4. **Output**, per question in question order: the gold answer as `{"query", "response"}`, then
//!    the kept paths in kept order. With `dedup = false` (the CLI's `--no-dedup`) every correct
//!    candidate is kept instead, in input order, without the calculation check (the script's
//!    `pass_query` file); the check's failures are still counted.
//!
//! Decisions beyond the script (which pairs files by line position, not by text):
//!
//! - Candidates are matched to questions by **exact** query text. A candidate whose query matches
//!   no question is **ignored and counted** (`unmatched_candidates`, with a warning naming the
//!   first few): candidate files from another tool often cover more questions than one filter run.
//! - **Duplicate question texts** each receive every candidate with that text and judge it against
//!   their own gold answer (GSM8K train has none).
//! - A question whose gold answer has no valid `#### N` is an error naming the file and line (the
//!   script would crash on it).
//! - Questions: JSONL lines with `question`/`answer` (GSM8K) or `query`/`response` (RFT), detected
//!   per line. Candidates: JSONL lines with `query`/`response` (other fields ignored); a directory
//!   means every `*.jsonl` in it in byte-wise sorted file-name order (zero-pad shard numbers).
//!   Blank lines are skipped; anything else malformed is an error naming the file and line.

mod arith;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

pub use arith::{check_equation, eval_arith, parse_python_float, ArithError};

/// Errors of the RFT filter. The `Display` text names the file and line; the cause is kept as the
/// [`std::error::Error::source`] (not repeated in the text).
#[derive(Debug, thiserror::Error)]
pub enum RftError {
    /// A file or directory could not be read or written.
    #[error("{}: cannot {action}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was attempted ("read", "write", "list", …).
        action: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A line is not the JSON object expected.
    #[error("{}:{line}: invalid {what} line", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// "question" or "candidate".
        what: &'static str,
        /// The parse error (it names the column).
        #[source]
        source: serde_json::Error,
    },
    /// A line is valid JSON but not a usable record.
    #[error("{}:{line}: {detail}", path.display())]
    Record {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        detail: String,
    },
    /// A question's gold answer has no valid `#### N`.
    #[error("{}:{line}: the gold answer has no valid `#### N` (its end: {tail:?})", path.display())]
    GoldAnswer {
        /// The questions file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// The last characters of the answer.
        tail: String,
    },
    /// The questions file holds no question.
    #[error("{}: no questions", path.display())]
    NoQuestions {
        /// The questions file.
        path: PathBuf,
    },
    /// A candidate directory holds no `*.jsonl` file.
    #[error("{}: no *.jsonl candidate files in this directory", path.display())]
    NoCandidateFiles {
        /// The directory.
        path: PathBuf,
    },
}

/// The result type of this module.
pub type RftResult<T> = std::result::Result<T, RftError>;

/// A question with its gold solution (the `gsm8k` `question`/`answer` or `rft` `query`/`response`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Question {
    /// The question text; candidates refer to it verbatim.
    pub query: String,
    /// The gold solution, ending in `#### N`.
    pub response: String,
}

/// One line of RFT output: `{"query", "response"}` (loads in sft-compose as format `rft`).
pub type RftRecord = Question;

/// The options of [`RftFilter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterOptions {
    /// Apply the calculation check and keep distinct paths only (the default); `false` keeps every
    /// correct candidate.
    pub dedup: bool,
}

impl Default for FilterOptions {
    fn default() -> Self {
        FilterOptions { dedup: true }
    }
}

/// Counts of a filter run (the CLI's `--stats` file).
///
/// Per-candidate counts are over (question, candidate) pairs, which equal candidates unless
/// question texts repeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterStats {
    /// Whether the calculation check and distinct-path selection were applied.
    pub dedup: bool,
    /// Questions read.
    pub questions: usize,
    /// Questions whose text already occurred earlier in the questions file.
    pub duplicate_questions: usize,
    /// Candidate lines read.
    pub candidates: usize,
    /// Candidates whose query matches no question (ignored).
    pub unmatched_candidates: usize,
    /// Candidates with no valid `#### N` (the script's `[invalid]`).
    pub invalid_answer: usize,
    /// Candidates with a valid but wrong answer.
    pub wrong_answer: usize,
    /// Correct candidates.
    pub correct: usize,
    /// Correct candidates with a failing `<<…>>` span (dropped unless `dedup` is false).
    pub calc_check_failed: usize,
    /// Correct, checked candidates whose key was already kept and that did not replace the kept path.
    pub duplicate_paths: usize,
    /// Times a later candidate replaced a kept path with the same key (the kept count is unchanged).
    pub replaced: usize,
    /// Paths written besides the gold answers.
    pub kept: usize,
    /// Questions with no correct candidate.
    pub questions_without_correct: usize,
    /// Histogram: number of kept paths → number of questions with that many.
    pub paths_per_question: BTreeMap<usize, usize>,
}

/// The first match of `#### (\-?[0-9\.\,]+)` before any NUL, commas removed, as a number; `None`
/// is the script's `[invalid]`.
pub fn extract_answer(text: &str) -> Option<f64> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"#### (-?[0-9.,]+)").expect("valid regex"));
    let text = text.find('\0').map_or(text, |nul| &text[..nul]);
    let m = re.captures(text)?.get(1)?.as_str().replace(',', "");
    // The captured text is ASCII digits, dots and a leading '-', which Python's float() and
    // parse_python_float agree on.
    parse_python_float(&m)
}

/// The `<<…>>` calculator spans of a text (regex `<<([^>]*)>>`), in order.
pub fn calc_spans(text: &str) -> Vec<&str> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"<<([^>]*)>>").expect("valid regex"));
    re.captures_iter(text)
        .map(|c| c.get(1).expect("group 1").as_str())
        .collect()
}

/// The distinct-path key: the spans joined by `|`, spaces (U+0020 only) removed.
pub fn path_key(spans: &[&str]) -> String {
    spans.join("|").replace(' ', "")
}

/// Does every `<<…>>` span of `text` pass [`check_equation`]?
pub fn passes_calc_check(text: &str) -> bool {
    calc_spans(text).iter().all(|s| check_equation(s))
}

/// What happened to one candidate for one question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No valid `#### N`.
    InvalidAnswer,
    /// A valid answer that differs from the gold one.
    WrongAnswer,
    /// Correct, but a `<<…>>` span fails the check (dropped).
    CalcCheckFailed,
    /// Kept as a new path.
    Kept,
    /// Replaced the kept path with the same key.
    Replaced,
    /// Same key as a kept path that stays.
    Duplicate,
}

struct QuestionState {
    question: Question,
    gold: f64,
    kept: Vec<String>,
    keys: HashMap<String, usize>,
    correct: usize,
}

/// The filter, fed one candidate at a time (memory: the kept paths only).
pub struct RftFilter {
    options: FilterOptions,
    questions: Vec<QuestionState>,
    by_query: HashMap<String, Vec<usize>>,
    stats: FilterStats,
    unmatched_examples: Vec<String>,
}

impl RftFilter {
    /// A filter for these questions; the error is the index of the first question whose gold
    /// answer has no valid `#### N`.
    pub fn new(questions: Vec<Question>, options: FilterOptions) -> Result<Self, usize> {
        let mut by_query: HashMap<String, Vec<usize>> = HashMap::new();
        let mut states = Vec::with_capacity(questions.len());
        let mut stats = FilterStats {
            dedup: options.dedup,
            questions: questions.len(),
            ..FilterStats::default()
        };
        for (i, q) in questions.into_iter().enumerate() {
            let gold = extract_answer(&q.response).ok_or(i)?;
            let entry = by_query.entry(q.query.clone()).or_default();
            if !entry.is_empty() {
                stats.duplicate_questions += 1;
            }
            entry.push(i);
            states.push(QuestionState {
                question: q,
                gold,
                kept: Vec::new(),
                keys: HashMap::new(),
                correct: 0,
            });
        }
        Ok(RftFilter {
            options,
            questions: states,
            by_query,
            stats,
            unmatched_examples: Vec::new(),
        })
    }

    /// Judges one candidate for every question with its query text; returns the verdicts (empty when
    /// the query matches no question).
    pub fn push(&mut self, query: &str, response: &str) -> Vec<Verdict> {
        self.stats.candidates += 1;
        let Some(indices) = self.by_query.get(query) else {
            self.stats.unmatched_candidates += 1;
            if self.unmatched_examples.len() < 3 {
                self.unmatched_examples
                    .push(query.chars().take(80).collect());
            }
            return Vec::new();
        };
        let mut verdicts = Vec::with_capacity(indices.len());
        for &i in indices {
            let v = judge(&mut self.questions[i], response, self.options);
            match v {
                Verdict::InvalidAnswer => self.stats.invalid_answer += 1,
                Verdict::WrongAnswer => self.stats.wrong_answer += 1,
                Verdict::CalcCheckFailed => self.stats.calc_check_failed += 1,
                Verdict::Duplicate => self.stats.duplicate_paths += 1,
                Verdict::Replaced => self.stats.replaced += 1,
                Verdict::Kept => {}
            }
            verdicts.push(v);
        }
        verdicts
    }

    /// The first (up to 3) unmatched queries, cut to 80 characters.
    pub fn unmatched_examples(&self) -> &[String] {
        &self.unmatched_examples
    }

    /// The output records (per question: gold, then kept paths) and the stats.
    pub fn finish(self) -> (Vec<RftRecord>, FilterStats) {
        let mut stats = self.stats;
        let mut out = Vec::new();
        for q in self.questions {
            stats.correct += q.correct;
            if q.correct == 0 {
                stats.questions_without_correct += 1;
            }
            stats.kept += q.kept.len();
            *stats.paths_per_question.entry(q.kept.len()).or_default() += 1;
            let query = q.question.query;
            out.push(RftRecord {
                query: query.clone(),
                response: q.question.response,
            });
            out.extend(q.kept.into_iter().map(|response| RftRecord {
                query: query.clone(),
                response,
            }));
        }
        (out, stats)
    }
}

fn judge(q: &mut QuestionState, response: &str, options: FilterOptions) -> Verdict {
    match extract_answer(response) {
        None => return Verdict::InvalidAnswer,
        Some(a) if a != q.gold => return Verdict::WrongAnswer,
        Some(_) => q.correct += 1,
    }
    let spans = calc_spans(response);
    let passes = spans.iter().all(|s| check_equation(s));
    if !options.dedup {
        q.kept.push(response.to_string());
        return if passes {
            Verdict::Kept
        } else {
            Verdict::CalcCheckFailed
        };
    }
    if !passes {
        return Verdict::CalcCheckFailed;
    }
    let key = path_key(&spans);
    let Some(&slot) = q.keys.get(&key) else {
        q.keys.insert(key, q.kept.len());
        q.kept.push(response.to_string());
        return Verdict::Kept;
    };
    // The kept paths of a slot have distinct keys, so distinct texts: "every kept path except p"
    // is the script's `ref != now_query`.
    let p = &q.kept[slot];
    if p == response || q.kept.len() == 1 {
        return Verdict::Duplicate;
    }
    let (mut p_score, mut q_score) = (0usize, 0usize);
    for (j, other) in q.kept.iter().enumerate() {
        if j != slot {
            p_score += strsim::levenshtein(p, other);
            q_score += strsim::levenshtein(response, other);
        }
    }
    if q_score > p_score {
        q.kept[slot] = response.to_string();
        Verdict::Replaced
    } else {
        Verdict::Duplicate
    }
}

fn open(path: &Path) -> RftResult<BufReader<File>> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|source| RftError::Io {
            path: path.to_path_buf(),
            action: "read",
            source,
        })
}

/// Calls `f(line_number, line)` for every non-blank line of a UTF-8 text file.
fn for_each_line(path: &Path, mut f: impl FnMut(u64, &str) -> RftResult<()>) -> RftResult<()> {
    let mut reader = open(path)?;
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|source| RftError::Io {
                path: path.to_path_buf(),
                action: "read",
                source,
            })?;
        if n == 0 {
            return Ok(());
        }
        line_no += 1;
        let text = std::str::from_utf8(&buf).map_err(|e| RftError::Record {
            path: path.to_path_buf(),
            line: line_no,
            detail: format!("not UTF-8 (byte {} of the line)", e.valid_up_to()),
        })?;
        let text = if line_no == 1 {
            text.trim_start_matches('\u{feff}')
        } else {
            text
        };
        if text.trim().is_empty() {
            continue;
        }
        f(line_no, text)?;
    }
}

#[derive(Deserialize)]
struct QuestionRow {
    question: Option<String>,
    answer: Option<String>,
    query: Option<String>,
    response: Option<String>,
}

fn read_questions_with_lines(path: &Path) -> RftResult<Vec<(u64, Question)>> {
    let mut out = Vec::new();
    for_each_line(path, |line, text| {
        let row: QuestionRow = serde_json::from_str(text).map_err(|source| RftError::Json {
            path: path.to_path_buf(),
            line,
            what: "question",
            source,
        })?;
        let q = match row {
            QuestionRow {
                question: Some(query),
                answer: Some(response),
                ..
            }
            | QuestionRow {
                query: Some(query),
                response: Some(response),
                ..
            } => Question { query, response },
            _ => return Err(RftError::Record {
                path: path.to_path_buf(),
                line,
                detail:
                    "a question needs string fields question+answer (GSM8K) or query+response (RFT)"
                        .into(),
            }),
        };
        out.push((line, q));
        Ok(())
    })?;
    if out.is_empty() {
        return Err(RftError::NoQuestions {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

/// Reads a questions file (GSM8K `question`/`answer` or RFT `query`/`response` JSONL).
pub fn read_questions(path: &Path) -> RftResult<Vec<Question>> {
    Ok(read_questions_with_lines(path)?
        .into_iter()
        .map(|(_, q)| q)
        .collect())
}

/// The candidate files of `path`: the file itself, or every `*.jsonl` of a directory in byte-wise
/// sorted file-name order.
pub fn candidate_files(path: &Path) -> RftResult<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let list_err = |source| RftError::Io {
        path: path.to_path_buf(),
        action: "list",
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(list_err)? {
        let entry = entry.map_err(list_err)?;
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "jsonl") && p.is_file() {
            files.push(p);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    if files.is_empty() {
        return Err(RftError::NoCandidateFiles {
            path: path.to_path_buf(),
        });
    }
    Ok(files)
}

#[derive(Deserialize)]
struct CandidateRow {
    query: String,
    response: String,
}

/// Reads `questions` and the candidates (a JSONL file or a directory of them) and filters.
pub fn filter_files(
    questions: &Path,
    candidates: &Path,
    options: FilterOptions,
) -> RftResult<(Vec<RftRecord>, FilterStats)> {
    let qs = read_questions_with_lines(questions)?;
    for (line, q) in &qs {
        if extract_answer(&q.response).is_none() {
            let chars: Vec<char> = q.response.chars().collect();
            let tail = chars[chars.len().saturating_sub(40)..].iter().collect();
            return Err(RftError::GoldAnswer {
                path: questions.to_path_buf(),
                line: *line,
                tail,
            });
        }
    }
    let mut filter = RftFilter::new(qs.into_iter().map(|(_, q)| q).collect(), options)
        .expect("gold answers were checked above");
    for file in candidate_files(candidates)? {
        for_each_line(&file, |line, text| {
            let row: CandidateRow =
                serde_json::from_str(text).map_err(|source| RftError::Json {
                    path: file.clone(),
                    line,
                    what: "candidate",
                    source,
                })?;
            filter.push(&row.query, &row.response);
            Ok(())
        })?;
    }
    let examples = filter.unmatched_examples().to_vec();
    let (records, stats) = filter.finish();
    if stats.unmatched_candidates > 0 {
        tracing::warn!(
            unmatched = stats.unmatched_candidates,
            "candidates whose query matches no question were ignored, e.g. {examples:?}"
        );
    }
    Ok((records, stats))
}

/// Writes records as JSONL (`{"query", "response"}` per line) through a temporary file renamed
/// into place.
pub fn write_records(path: &Path, records: &[RftRecord]) -> RftResult<()> {
    let tmp = path.with_extension("jsonl.tmp");
    let werr = |p: &Path| {
        let p = p.to_path_buf();
        move |source| RftError::Io {
            path: p,
            action: "write",
            source,
        }
    };
    let file = File::create(&tmp).map_err(werr(&tmp))?;
    let mut w = BufWriter::new(file);
    for r in records {
        serde_json::to_writer(&mut w, r).map_err(|e| RftError::Io {
            path: tmp.clone(),
            action: "write",
            source: e.into(),
        })?;
        w.write_all(b"\n").map_err(werr(&tmp))?;
    }
    w.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .map_err(werr(&tmp))?;
    std::fs::rename(&tmp, path).map_err(werr(path))
}
