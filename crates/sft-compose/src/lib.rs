//! `sft-compose`: load SFT sources, filter them by tags, sample them at ratios, mix them, and
//! record exactly what was chosen.
//!
//! The paper this workspace reproduces (arXiv 2310.05492) trains on GSM8K(-RFT), Code Alpaca and
//! ShareGPT at proportions 1, 1/4, 1/16, 1/64 and 1/256, alone and mixed, and at normalized
//! specialized:general ratios k. Its findings only mean something if every run can say which
//! records it saw. This crate makes that cheap: a [`MixtureSpec`] (a serde type, TOML or JSON,
//! versioned by `format_version`) goes through [`compose`] to a [`Mixture`], which writes the
//! records ([`Mixture::write`]: JSONL or Parquet in one chat format) and a [`Manifest`] (spec, seed,
//! SHA-256 of every input, per-source counts, the ordered record ids).
//!
//! # Pipeline
//!
//! ```text
//! files ──load──▶ Record (id "<source>:<index>", messages, tags) ──tags/tagger──▶ filter ──▶
//!   sample (prefix of one seeded permutation per source) ──▶ order (seeded shuffle or concat) ──▶ Mixture
//! ```
//!
//! # Decisions
//!
//! - **One record model** ([`Record`]); every loader ([`SourceFormat`]) converts into it. Alpaca's
//!   input is appended to the instruction after a blank line; ShareGPT conversations lose leading
//!   assistant turns (as FastChat's trainer does) and have consecutive same-role turns merged
//!   (see `docs/compose.md`).
//! - **Strict by default.** A malformed record is an [`Error::Record`] naming `file:line` (or Parquet
//!   row) and an [`IssueKind`]; [`LoadOptions::lenient`] skips and counts instead.
//! - **Portable randomness.** ChaCha8 streams keyed by SHA-256 of (purpose, seed) and the crate's own
//!   Fisher–Yates ([`sample`]); results never change with a `rand` upgrade.
//! - **Nested subsets.** For one seed, a source's selection at 1/256 is a prefix of its selection at
//!   1/64, and so on up to all: the count is `floor(n·r)`, at least 1 when r > 0 ([`Ratio::count_of`]).
//!   Ratios above 1 upsample by whole repeats plus a seeded remainder.
//! - **Exact ratios.** [`Ratio`] is a rational; `0.1` means 1/10 exactly.
//! - **No tokenizer, no tensors, no libtorch**: this crate only reads and writes files.
//!
//! # Invariant
//!
//! **The same spec, input files and seed give byte-identical output and manifest files.**

#![deny(missing_docs)]

mod error;
mod filter;
mod format;
mod load;
mod manifest;
mod mix;
mod parquet_io;
mod ratio;
pub mod rft;
pub mod sample;
mod spec;
mod tagger;
mod tags;
mod write;

pub use error::{Error, IssueKind, Location, Result};
pub use filter::TagFilter;
pub use format::{Container, SourceFormat};
pub use load::{
    alpaca_input_is_empty, alpaca_user_turn, load_source, LoadOptions, LoadReport, LoadedSource,
    Truncation,
};
pub use manifest::{FilterStats, InputFile, KStats, Manifest, SourceStats};
pub use mix::{compose, compose_with, Catalog, Mixture, PreparedSource};
pub use parquet_io::{chat_schema, read_parquet_rows};
pub use ratio::{Ratio, Take};
pub use sft_record::{Message, Record, Role};
pub use spec::{
    normalized_k, MixtureSpec, Order, SourceRole, SourceSpec, TaggerName, TagsSpec, FORMAT_VERSION,
};
pub use tagger::{apply_tagger, HeuristicTagger, Rule, Scope, TagHit, Tagger, TaggingStats};
pub use tags::{apply_tag_file, load_tag_file, TagFile, TagFileStats};
pub use write::{write_jsonl, write_parquet};
