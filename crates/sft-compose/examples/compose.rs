//! Compose a reproducible SFT mixture and its manifest.
//!
//! ```text
//! cargo run --release -p sft-compose --example compose -- \
//!     --source math=../shared/data/gsm8k/train.jsonl \
//!     --source code=../shared/data/code_alpaca/code_alpaca_20k.json \
//!     --source general=../shared/data/sharegpt/sharegpt_v3_sample_1011.json \
//!     --ratio math=1/64 --ratio code=1/64 --ratio general=1/64 \
//!     --seed 42 --out mix.jsonl --manifest mix.manifest.json
//! ```
//!
//! The same from a TOML spec: `--spec mix.toml --out mix.parquet`. See docs/compose.md.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use sft_compose::{
    compose_with, Catalog, Container, MixtureSpec, Order, Ratio, SourceFormat, SourceSpec,
    TaggerName, TagsSpec,
};

#[derive(Parser, Debug)]
#[command(about = "Compose a reproducible SFT data mixture and write its manifest")]
struct Args {
    /// A TOML (or .json) mixture spec; the flags below add to or override it.
    #[arg(long)]
    spec: Option<PathBuf>,
    /// A source: NAME=PATH (repeatable). Format and container are detected.
    #[arg(long = "source", value_name = "NAME=PATH")]
    sources: Vec<String>,
    /// Force a format: NAME=gsm8k|rft|alpaca|sharegpt|chat.
    #[arg(long = "format", value_name = "NAME=FORMAT")]
    formats: Vec<String>,
    /// Force a container: NAME=jsonl|json|parquet.
    #[arg(long = "container", value_name = "NAME=CONTAINER")]
    containers: Vec<String>,
    /// Proportion of a source: NAME=1/64, NAME=0.25, NAME=2 (upsample). Default 1.
    #[arg(long = "ratio", value_name = "NAME=RATIO")]
    ratios: Vec<String>,
    /// Exact number of records of a source: NAME=N.
    #[arg(long = "count", value_name = "NAME=N")]
    counts: Vec<String>,
    /// Keep only records whose tags match: [NAME=]EXPR (without NAME: every source).
    #[arg(long = "filter", value_name = "[NAME=]EXPR")]
    filters: Vec<String>,
    /// InsTag-style tag file for a source: NAME=PATH.
    #[arg(long = "tags", value_name = "NAME=PATH")]
    tags: Vec<String>,
    /// Run the offline heuristic code/math tagger on a source: NAME (repeatable).
    #[arg(long = "tagger", value_name = "NAME")]
    tagger: Vec<String>,
    /// The seed of every random choice.
    #[arg(long)]
    seed: Option<u64>,
    /// shuffled (default) or concatenated.
    #[arg(long)]
    order: Option<String>,
    /// Skip and count bad records instead of failing on the first.
    #[arg(long)]
    lenient: bool,
    /// Drop exact duplicates within each source.
    #[arg(long)]
    dedup: bool,
    /// The general source for --k (the others are specialized).
    #[arg(long, default_value = "general")]
    general: String,
    /// Normalized ratio k: specialized sources at k·(general ratio) (paper RQ3 set-ups 1 and 3).
    #[arg(long)]
    k: Option<String>,
    /// With --k: the general source's proportion (default 1; 1/64 for set-up 3).
    #[arg(long, value_name = "RATIO")]
    general_ratio: Option<String>,
    /// With --k: all specialized data and general at 1/k (set-up 2).
    #[arg(long)]
    full_specialized: bool,
    /// Output file: .parquet for Parquet, JSONL otherwise.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Manifest path (default: the output path with .manifest.json).
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Print the resolved spec as TOML and exit.
    #[arg(long)]
    print_spec: bool,
}

fn split_kv<'a>(flag: &str, text: &'a str) -> Result<(&'a str, &'a str)> {
    text.split_once('=')
        .with_context(|| format!("--{flag} expects NAME=VALUE, got {text:?}"))
}

fn source_mut<'a>(spec: &'a mut MixtureSpec, flag: &str, name: &str) -> Result<&'a mut SourceSpec> {
    let known: Vec<String> = spec.sources.iter().map(|s| s.name.clone()).collect();
    spec.source_mut(name)
        .with_context(|| format!("--{flag}: unknown source {name:?} (known: {known:?})"))
}

fn build_spec(args: &Args) -> Result<MixtureSpec> {
    let mut spec = match &args.spec {
        Some(path) => MixtureSpec::from_path(path)?,
        None => MixtureSpec::new(0, Vec::new()),
    };
    for s in &args.sources {
        let (name, path) = split_kv("source", s)?;
        if spec.source(name).is_some() {
            bail!("--source {name}: defined twice");
        }
        spec.sources.push(SourceSpec::new(name, path));
    }
    if let Some(seed) = args.seed {
        spec.seed = seed;
    } else if args.spec.is_none() {
        bail!("--seed is required without --spec");
    }
    if let Some(order) = &args.order {
        spec.order = match order.as_str() {
            "shuffled" => Order::Shuffled,
            "concatenated" => Order::Concatenated,
            other => bail!("--order: expected shuffled or concatenated, got {other:?}"),
        };
    }
    spec.lenient |= args.lenient;
    spec.dedup |= args.dedup;
    for f in &args.formats {
        let (name, v) = split_kv("format", f)?;
        let format: SourceFormat = v.parse().map_err(anyhow::Error::msg)?;
        source_mut(&mut spec, "format", name)?.format = Some(format);
    }
    for c in &args.containers {
        let (name, v) = split_kv("container", c)?;
        let container: Container = v.parse().map_err(anyhow::Error::msg)?;
        source_mut(&mut spec, "container", name)?.container = Some(container);
    }
    for r in &args.ratios {
        let (name, v) = split_kv("ratio", r)?;
        let ratio = Ratio::parse(v)?;
        let s = source_mut(&mut spec, "ratio", name)?;
        *s = s.clone().with_ratio(ratio);
    }
    for c in &args.counts {
        let (name, v) = split_kv("count", c)?;
        let count: u64 = v
            .parse()
            .with_context(|| format!("--count {name}: {v:?} is not a whole number"))?;
        let s = source_mut(&mut spec, "count", name)?;
        *s = s.clone().with_count(count);
    }
    for f in &args.filters {
        let names: Vec<String> = spec.sources.iter().map(|s| s.name.clone()).collect();
        match f.split_once('=') {
            Some((name, expr)) if names.iter().any(|n| n == name) => {
                source_mut(&mut spec, "filter", name)?.filter = Some(expr.to_string());
            }
            _ => {
                for s in &mut spec.sources {
                    s.filter = Some(f.clone());
                }
            }
        }
    }
    for t in &args.tags {
        let (name, path) = split_kv("tags", t)?;
        let s = source_mut(&mut spec, "tags", name)?;
        s.tags
            .get_or_insert(TagsSpec {
                file: None,
                tagger: None,
            })
            .file = Some(PathBuf::from(path));
    }
    for name in &args.tagger {
        let s = source_mut(&mut spec, "tagger", name)?;
        s.tags
            .get_or_insert(TagsSpec {
                file: None,
                tagger: None,
            })
            .tagger = Some(TaggerName::Heuristic);
    }
    if let Some(k) = &args.k {
        let k = Ratio::parse(k)?;
        let general_ratio = args
            .general_ratio
            .as_deref()
            .map(Ratio::parse)
            .transpose()?
            .unwrap_or(Ratio::ONE);
        if args.full_specialized && args.general_ratio.is_some() {
            bail!("--full-specialized sets the general ratio to 1/k; do not also pass --general-ratio");
        }
        let general = spec.source(&args.general).cloned().with_context(|| {
            format!(
                "--k needs a general source named {:?} (change it with --general)",
                args.general
            )
        })?;
        let specialized: Vec<SourceSpec> = spec
            .sources
            .iter()
            .filter(|s| s.name != args.general)
            .cloned()
            .collect();
        let base = if args.full_specialized {
            MixtureSpec::full_specialized_general_at_k(spec.seed, general, specialized, k)?
        } else {
            MixtureSpec::general_at_with_k(spec.seed, general, general_ratio, specialized, k)?
        };
        spec.sources = base.sources;
    } else if args.general_ratio.is_some() || args.full_specialized {
        bail!("--general-ratio and --full-specialized only make sense with --k");
    }
    spec.validate()?;
    Ok(spec)
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let spec = build_spec(&args)?;
    if args.print_spec {
        print!("{}", spec.to_toml_string()?);
        return Ok(());
    }
    let out = args
        .out
        .clone()
        .context("--out is required (or use --print-spec)")?;
    let manifest_path = args.manifest.clone().unwrap_or_else(|| {
        let stem = out
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "mix".into());
        out.with_file_name(format!("{stem}.manifest.json"))
    });
    let mut catalog = Catalog::new().with_progress(true);
    let mixture = compose_with(&spec, &mut catalog)?;
    let written = mixture.write(&out)?;
    let manifest = mixture.manifest();
    manifest.write(&manifest_path)?;
    for s in mixture.source_stats() {
        eprintln!(
            "{:<12} available {:>7}  {:<14} selected {:>7}  skipped {:>4}  duplicates {:>4}",
            s.name,
            s.available,
            s.take,
            s.selected,
            s.load.skipped_total(),
            s.load.duplicates
        );
    }
    if let Some(k) = mixture.k().and_then(|k| k.k) {
        eprintln!("normalized k = {k:.6}");
    }
    eprintln!(
        "wrote {written} records to {} and the manifest to {}",
        out.display(),
        manifest_path.display()
    );
    Ok(())
}
