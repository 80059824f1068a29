//! RFT data (rejection-sampling fine-tuning, Yuan et al. 2023): sample reasoning paths of GSM8K
//! questions from a model, then keep the correct, distinct ones as the RFT paper did.
//!
//! ```text
//! # k paths per question from the local model (or --base-url URL --model NAME for a server)
//! cargo run --release -p sft-examples --example rft -- sample \
//!     --model path/to/sft-model --questions $SFT_DATA_DIR/gsm8k/train.jsonl \
//!     --k 100 --temperature 0.7 --max-new-tokens 256 --prompt alpaca --seed 0 --out cand/
//! # the paper's filter, on these shards or on candidates from any other tool
//! cargo run --release -p sft-examples --example rft -- filter \
//!     --questions $SFT_DATA_DIR/gsm8k/train.jsonl --candidates cand/ \
//!     --out rft.jsonl --stats rft.stats.json
//! ```
//!
//! `sample` writes one shard per sample index and resumes a killed run at the first missing
//! shard (`sft_complete::rft`); `filter` is `sft_compose::rft`'s rule (docs/compose.md). The
//! output loads as source format `rft`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sft_complete::rft::{RftPrompt, SampleOptions};
use sft_complete::SamplingParams;
use sft_compose::rft::{filter_files, read_questions, write_records, FilterOptions};
use sft_examples::CompleterArgs;

#[derive(Parser, Debug)]
#[command(about = "RFT data: sample GSM8K reasoning paths, and filter them as the RFT paper did")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Sample k reasoning paths per question into resumable shards.
    Sample {
        #[command(flatten)]
        completer: CompleterArgs,
        /// Questions: GSM8K JSONL (`question`/`answer`) or RFT JSONL (`query`/`response`).
        #[arg(long)]
        questions: PathBuf,
        /// Only the first N questions.
        #[arg(long)]
        limit: Option<usize>,
        /// Samples per question (one shard each).
        #[arg(long, default_value_t = 100)]
        k: usize,
        /// Sampling temperature (the RFT paper: 0.7).
        #[arg(long, default_value_t = 0.7)]
        temperature: f64,
        /// Nucleus mass.
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        /// Tokens per path at most.
        #[arg(long, default_value_t = 256)]
        max_new_tokens: usize,
        /// `alpaca` (the RFT paper's prompt, as text) or `chat` (one user turn).
        #[arg(long, default_value = "alpaca")]
        prompt: RftPrompt,
        /// Base seed; every (sample, question) gets its own seed from it.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Requests per call to the model.
        #[arg(long, default_value_t = 64)]
        chunk: usize,
        /// The candidates directory (shards `sample-NNNN.jsonl` and `sample.json`).
        #[arg(long)]
        out: PathBuf,
    },
    /// Keep correct candidates whose calculations check, one per distinct equation list.
    Filter {
        /// Questions: GSM8K JSONL (`question`/`answer`) or RFT JSONL (`query`/`response`).
        #[arg(long)]
        questions: PathBuf,
        /// Candidates: a JSONL file of `{"query", "response"}` lines, or a directory whose
        /// `*.jsonl` files are read in sorted file-name order.
        #[arg(long)]
        candidates: PathBuf,
        /// The RFT JSONL to write: per question the gold answer, then the kept paths.
        #[arg(long)]
        out: PathBuf,
        /// Also write the counts as JSON here.
        #[arg(long)]
        stats: Option<PathBuf>,
        /// Keep every correct candidate (no calculation check, no distinct-path selection).
        #[arg(long)]
        no_dedup: bool,
    },
}

fn main() -> Result<()> {
    sft_examples::init_logging();
    match Args::parse().command {
        Command::Sample {
            completer,
            questions,
            limit,
            k,
            temperature,
            top_p,
            max_new_tokens,
            prompt,
            seed,
            chunk,
            out,
        } => {
            let mut qs = read_questions(&questions)?;
            if let Some(n) = limit {
                qs.truncate(n);
            }
            let options = SampleOptions {
                k,
                prompt,
                sampling: SamplingParams {
                    temperature,
                    top_p,
                    max_new_tokens,
                    stop: Vec::new(),
                },
                seed,
                chunk,
            };
            // Settings are checked before the model loads.
            options.sampling.validate()?;
            let model = completer.build(out.join("cache").join("requests.jsonl"))?;
            eprintln!(
                "sampling {k} paths for each of {} questions from {} into {}",
                qs.len(),
                completer.describe(),
                out.display()
            );
            let report =
                sft_complete::rft::sample(model.as_ref(), &qs, &questions, &options, &out, true)?;
            eprintln!(
                "{} shards written, {} already complete; {} completions ({} cached), {} tokens in \
                 {:.1} s ({:.1} tok/s) -> {}",
                report.shards_written,
                report.shards_skipped,
                report.completions,
                report.cached,
                report.tokens,
                report.secs,
                report.tokens as f64 / report.secs.max(1e-9),
                out.display()
            );
        }
        Command::Filter {
            questions,
            candidates,
            out,
            stats,
            no_dedup,
        } => {
            let options = FilterOptions { dedup: !no_dedup };
            let (records, s) = filter_files(&questions, &candidates, options)?;
            write_records(&out, &records)?;
            if let Some(path) = stats {
                let json = serde_json::to_string_pretty(&s)? + "\n";
                std::fs::write(&path, json)
                    .with_context(|| format!("{}: cannot write", path.display()))?;
            }
            eprintln!(
                "{} questions, {} candidates ({} unmatched): {} correct, {} fail the calculation \
                 check{}, {} kept; {} questions without a correct candidate -> {}",
                s.questions,
                s.candidates,
                s.unmatched_candidates,
                s.correct,
                s.calc_check_failed,
                if s.dedup { "" } else { " (kept: --no-dedup)" },
                s.kept,
                s.questions_without_correct,
                out.display()
            );
        }
    }
    Ok(())
}
