//! InsTag-style tags for a source, from the local model or an OpenAI-compatible server.
//!
//! ```text
//! # a server (vLLM, llama.cpp, a hosted API); the key is read from $OPENAI_API_KEY
//! cargo run --release -p sft-examples --example tag -- \
//!     --source general=$SFT_DATA_DIR/sharegpt/sharegpt_v3_sample_1011.json \
//!     --base-url http://127.0.0.1:8000/v1 --model OFA-Sys/InsTagger --prompt vicuna \
//!     --out general.tags.jsonl
//! # then drop what is tagged code or math, as the paper's ablation did
//! cargo run --release -p sft-compose --example compose -- --source general=... \
//!     --tags general=general.tags.jsonl --filter 'general=not (code|program|math)' --out ...
//! ```
//!
//! The prompt, parsing, normalisation and output are `sft_complete::instag`'s. The statistics
//! (tags per record, the top 50 tags, failures) go to `--stats` (default `OUT.stats.json`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use sft_complete::instag::{write_tag_file, LlmTagger, Normalizer, TagOptions, TagPrompt, Turns};
use sft_complete::SamplingParams;
use sft_compose::{load_source, LoadOptions, SourceFormat};
use sft_examples::CompleterArgs;

#[derive(Parser, Debug)]
#[command(about = "InsTag-style intention tags of a source's user queries, from a model")]
struct Args {
    /// The source: NAME=PATH (record ids are `NAME:index`, as `compose --source` gives them).
    #[arg(long, value_name = "NAME=PATH")]
    source: String,
    /// Force the format (gsm8k, rft, alpaca, sharegpt, chat); detected otherwise.
    #[arg(long)]
    format: Option<String>,
    /// Only the first N records.
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    completer: CompleterArgs,
    /// `chat` (InsTag's open-tagging prompt as system + user) or `vicuna` (the same in the Vicuna
    /// format InsTagger was trained on, as text).
    #[arg(long, default_value = "chat")]
    prompt: TagPrompt,
    /// Tag the first user turn or all of them (joined).
    #[arg(long, default_value = "first")]
    turns: Turns,
    /// Cut each query to this many characters.
    #[arg(long, default_value_t = 4000)]
    max_query_chars: usize,
    /// Tokens per reply at most.
    #[arg(long, default_value_t = 512)]
    max_new_tokens: usize,
    /// Extra attempts (with the next seed) for a reply with no parsable tag.
    #[arg(long, default_value_t = 2)]
    parse_retries: usize,
    /// Tags on fewer records than this are left out of `tags` (kept in `rare`).
    #[arg(long, default_value_t = 1)]
    min_frequency: usize,
    /// A JSON object {"alias": "canonical"} applied after normalisation.
    #[arg(long)]
    aliases: Option<PathBuf>,
    /// The tag file to write.
    #[arg(long)]
    out: PathBuf,
    /// Statistics as JSON (default OUT with `.stats.json`).
    #[arg(long)]
    stats: Option<PathBuf>,
}

fn main() -> Result<()> {
    sft_examples::init_logging();
    let args = Args::parse();
    let Some((name, path)) = args.source.split_once('=') else {
        bail!("--source expects NAME=PATH, got {:?}", args.source);
    };
    let normalizer = match &args.aliases {
        Some(p) => Normalizer::from_alias_file(p)?,
        None => Normalizer::default(),
    };
    let mut load = LoadOptions::strict();
    if let Some(f) = &args.format {
        load.format = Some(
            f.parse::<SourceFormat>()
                .map_err(|e| anyhow::anyhow!("--format: {e}"))?,
        );
    }
    load.progress = true;
    let mut source = load_source(name, std::path::Path::new(path), &load)?;
    if let Some(n) = args.limit {
        source.records.truncate(n);
    }
    let options = TagOptions {
        prompt: args.prompt,
        turns: args.turns,
        max_query_chars: args.max_query_chars,
        sampling: SamplingParams::greedy(args.max_new_tokens),
        parse_retries: args.parse_retries,
        ..TagOptions::default()
    };
    options.sampling.validate()?;
    let cache = args.out.with_extension("requests.cache.jsonl");
    let completer = args.completer.build(cache)?;
    let tagger = LlmTagger::new(completer.as_ref(), options, normalizer, args.min_frequency)?;
    eprintln!(
        "tagging {} records of {name} with {}",
        source.records.len(),
        args.completer.describe()
    );
    let (lines, stats) = tagger.tag_all(&source.records, true);
    write_tag_file(&args.out, &lines)?;
    let stats_path = args
        .stats
        .clone()
        .unwrap_or_else(|| args.out.with_extension("stats.json"));
    std::fs::write(&stats_path, serde_json::to_string_pretty(&stats)? + "\n")
        .with_context(|| format!("writing {}", stats_path.display()))?;
    let top: Vec<String> = stats
        .top_tags
        .iter()
        .take(10)
        .map(|(t, n)| format!("{t} ({n})"))
        .collect();
    eprintln!(
        "{} records: {} tagged, {} unparsable after retries, {} failed requests, {} without a \
         user turn; {} completions ({} cached); {:.2} tags per record; top: {} -> {}",
        stats.records,
        stats.tagged,
        stats.parse_failures,
        stats.request_failures,
        stats.no_query,
        stats.completions,
        stats.cached,
        stats.tags_per_record_mean,
        top.join(", "),
        args.out.display()
    );
    Ok(())
}
