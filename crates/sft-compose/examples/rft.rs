//! RFT data (rejection-sampling fine-tuning, Yuan et al. 2023): filter sampled reasoning paths.
//!
//! ```text
//! cargo run --release -p sft-compose --example rft -- filter \
//!     --questions ../shared/data/gsm8k/train.jsonl --candidates CAND_DIR \
//!     --out rft.jsonl --stats rft.stats.json
//! ```
//!
//! The rule is `sft_compose::rft`'s (the paper's `collect_rejection_sampling.py`); see
//! docs/compose.md. The output loads as format `rft`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sft_compose::rft::{filter_files, write_records, FilterOptions};

#[derive(Parser, Debug)]
#[command(about = "RFT data: filter sampled GSM8K reasoning paths as the RFT paper did")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Args::parse().command {
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
