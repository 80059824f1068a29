//! Representation analysis: how separable are a model's hidden states of queries from each
//! source? The paper's discussion (t-SNE of layer-15 states of 100 GSM8K, Code Alpaca and
//! ShareGPT queries, LLaMA-13B vs DMT-13B) as a command, with a number instead of a glance.
//!
//! ```text
//! cargo run --release --example analyze -- hidden \
//!     --model base.gguf --label base --model runs/dmt/.../model --label dmt \
//!     --source math=gsm8k/train.jsonl --source code=code_alpaca/code_alpaca_20k.json \
//!     --source general=sharegpt/sharegpt_v3_sample_1011.json \
//!     --n 100 --layer 15 --pool mean --template model --out analysis/
//! ```
//! Source paths resolve against `--data-dir` (default `SFT_DATA_DIR`) when relative and not
//! found as given. Writes `embeddings.parquet`, `tsne.csv`, `tsne.png`, `tsne.svg`,
//! `separation.json` and `run.json` (settings, inputs, timings) to `--out`, and prints the
//! separation table. See `docs/analysis.md`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use sft_analyze::{AnalysisSettings, Pool};
use sft_compose::{load_source, LoadOptions, SourceFormat};
use sft_examples::{init_logging, DeviceSpec};
use sft_llama::device::DType;
use sft_local::hidden::{self, HiddenRequest, QueryView};

#[derive(Parser)]
#[command(about = "Representation analysis of a model's hidden states")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Layer-L hidden states of queries from each source: PCA, t-SNE, separation scores.
    Hidden(HiddenArgs),
}

#[derive(Args)]
struct HiddenArgs {
    /// A model (HF directory or .gguf); repeatable, compared in the order given (the first is
    /// the reference of the changes). Default: the embedded SmolLM2-135M-Instruct.
    #[arg(long)]
    model: Vec<PathBuf>,
    /// The label of each --model, in order (default: the file or directory name).
    #[arg(long)]
    label: Vec<String>,
    /// A source as NAME=PATH (any format sft-compose reads); repeatable, at least two.
    #[arg(long, required = true)]
    source: Vec<String>,
    /// A source's format as NAME=FORMAT when detection is not enough (repeatable).
    #[arg(long)]
    format: Vec<String>,
    /// Skip malformed records (counted) instead of failing on the first.
    #[arg(long)]
    lenient: bool,
    /// Where relative source paths are looked up (default: `SFT_DATA_DIR`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Queries per source (seeded sample).
    #[arg(long, default_value_t = 100)]
    n: usize,
    /// Seed of the query sample, the probe's folds, the bootstrap and t-SNE.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Hidden state in transformers' numbering: 0 the embeddings, L the last (final-norm)
    /// state; negative counts from the end.
    #[arg(long, default_value_t = 15, allow_hyphen_values = true)]
    layer: i64,
    /// Pooling over the query's tokens: mean or last.
    #[arg(long, default_value = "mean")]
    pool: Pool,
    /// Chat template the query is rendered in, with the generation prompt (`model` = the
    /// tokenizer's own).
    #[arg(long, default_value = "model", conflicts_with = "raw")]
    template: String,
    /// Use the first user message's text as is instead of a chat template.
    #[arg(long)]
    raw: bool,
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
    /// f32, bf16 or f16 (default: bf16 on CUDA, f32 on the CPU).
    #[arg(long)]
    dtype: Option<DType>,
    /// Queries per forward pass.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Longer queries are cut to their first this-many tokens.
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    /// PCA dimensions the scores and t-SNE work in.
    #[arg(long, default_value_t = 50)]
    pca_dims: usize,
    #[arg(long, default_value_t = 30.0)]
    perplexity: f64,
    /// t-SNE iterations.
    #[arg(long, default_value_t = 1000)]
    iterations: usize,
    /// Threads for t-SNE (fixed, so reruns give the same bytes).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    init_logging();
    match Cli::parse().command {
        Command::Hidden(args) => hidden_cmd(args),
    }
}

/// `NAME=VALUE` split at the first `=`.
fn name_value<'a>(flag: &str, s: &'a str) -> anyhow::Result<(&'a str, &'a str)> {
    match s.split_once('=') {
        Some((n, v)) if !n.is_empty() && !v.is_empty() => Ok((n, v)),
        _ => bail!("--{flag} {s:?}: expected NAME=VALUE"),
    }
}

fn resolve_source(path: &str, data_dir: Option<&Path>) -> PathBuf {
    let p = PathBuf::from(path);
    match data_dir {
        Some(d) if p.is_relative() && !p.exists() => d.join(p),
        _ => p,
    }
}

fn hidden_cmd(args: HiddenArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    // Everything that can be checked before a model loads is checked here.
    let device = args.device.resolve()?;
    let dtype = args.dtype.unwrap_or(if device.is_cuda() {
        DType::Bf16
    } else {
        DType::F32
    });
    let models = if args.model.is_empty() {
        vec![sft_examples::default_model()?]
    } else {
        args.model.clone()
    };
    if !args.label.is_empty() && args.label.len() != models.len() {
        bail!(
            "{} --label for {} --model: give one label per model, or none",
            args.label.len(),
            models.len()
        );
    }
    let labels: Vec<String> = if args.label.is_empty() {
        models
            .iter()
            .map(|m| {
                m.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| m.display().to_string())
            })
            .collect()
    } else {
        args.label.clone()
    };
    if let Some(dup) = labels
        .iter()
        .enumerate()
        .find(|(i, l)| labels[..*i].contains(l))
    {
        bail!("label {:?} is given twice: labels must differ", dup.1);
    }
    for m in &models {
        anyhow::ensure!(
            m.exists(),
            "--model {}: no such file or directory",
            m.display()
        );
    }
    if args.source.len() < 2 {
        bail!("at least two --source NAME=PATH are needed to measure separation");
    }
    let mut formats = std::collections::BTreeMap::new();
    for f in &args.format {
        let (name, fmt) = name_value("format", f)?;
        let fmt: SourceFormat = fmt
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--format {f}: {e}"))?;
        formats.insert(name.to_string(), fmt);
    }
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| std::env::var_os("SFT_DATA_DIR").map(PathBuf::from));
    let mut sources = Vec::new();
    for s in &args.source {
        let (name, path) = name_value("source", s)?;
        if sources.iter().any(|(n, _): &(String, _)| n == name) {
            bail!("--source {name} is given twice");
        }
        let path = resolve_source(path, data_dir.as_deref());
        let mut opts = if args.lenient {
            LoadOptions::lenient()
        } else {
            LoadOptions::strict()
        };
        opts.format = formats.remove(name);
        opts.progress = true;
        let loaded = load_source(name, &path, &opts)
            .with_context(|| format!("--source {name}={}", path.display()))?;
        tracing::info!(source = name, path = %path.display(), records = loaded.records.len(), "loaded");
        sources.push((name.to_string(), loaded.records));
    }
    if let Some(name) = formats.keys().next() {
        bail!("--format {name}=…: there is no --source {name}");
    }
    let queries = hidden::sample_queries(&sources, args.n, args.seed)?;
    let view = if args.raw {
        QueryView::Raw
    } else {
        QueryView::Template(args.template.clone())
    };
    let settings = AnalysisSettings {
        pca_dims: args.pca_dims,
        perplexity: args.perplexity,
        iterations: args.iterations,
        seed: args.seed,
        threads: args.threads,
        ..AnalysisSettings::default()
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    let req = HiddenRequest {
        label: String::new(),
        layer: args.layer,
        pool: args.pool,
        view: view.clone(),
        batch_size: args.batch_size,
        max_tokens: args.max_tokens,
        progress: true,
    };
    let pairs: Vec<(&str, &Path)> = labels
        .iter()
        .map(String::as_str)
        .zip(models.iter().map(PathBuf::as_path))
        .collect();
    let done = hidden::analyze_models(
        &pairs,
        None,
        &queries,
        &req,
        &settings,
        device,
        dtype.kind(),
        &args.out,
    )?;
    let summary = done.summary();
    let run = serde_json::json!({
        "command": std::env::args().collect::<Vec<_>>(),
        "models": summary["models"],
        "sources": sources.iter().map(|(n, r)| serde_json::json!({"name": n, "records": r.len()})).collect::<Vec<_>>(),
        "n": args.n, "seed": args.seed, "layer": args.layer, "pool": args.pool.to_string(),
        "view": view.to_string(), "max_tokens": args.max_tokens, "batch_size": args.batch_size,
        "device": format!("{device:?}"), "dtype": dtype.to_string(),
        "threads": tch::get_num_threads(),
        "timings": {
            "analysis_s": done.analysis_s, "write_s": done.write_s,
            "total_s": started.elapsed().as_secs_f64(),
        },
        "revision": sft_examples::git_revision().map(|(r, dirty)| if dirty { format!("{r}+dirty") } else { r }),
    });
    let run_json = args.out.join("run.json");
    std::fs::write(&run_json, serde_json::to_string_pretty(&run)? + "\n")
        .with_context(|| format!("writing {}", run_json.display()))?;
    println!("{}", sft_analyze::separation_table(&done.analysis));
    eprintln!(
        "wrote {} in {:.1} s",
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
