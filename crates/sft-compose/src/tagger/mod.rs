//! Taggers: give records InsTag-style tags when no tag file exists.

mod base;
mod heuristic;

pub use base::{apply_tagger, TagHit, Tagger, TaggingStats};
pub use heuristic::{HeuristicTagger, Rule, Scope};
