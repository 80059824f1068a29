//! The manifest: exactly what went into a mixture, byte-identical for identical inputs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io_err, Error, Result};
use crate::format::{Container, SourceFormat};
use crate::load::LoadReport;
use crate::spec::{MixtureSpec, Order, SourceRole};
use crate::tagger::TaggingStats;
use crate::tags::TagFileStats;

/// One input file and its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    /// The source it belongs to.
    pub source: String,
    /// `data` or `tags`.
    pub kind: String,
    /// The path as given in the spec.
    pub path: PathBuf,
    /// Hex SHA-256 of the file's bytes.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// What a tag filter kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterStats {
    /// The expression as written.
    pub expr: String,
    /// The expression as parsed (fully parenthesized).
    pub parsed: String,
    /// Records before filtering.
    pub before: usize,
    /// Records kept.
    pub kept: usize,
    /// Records dropped.
    pub dropped: usize,
}

/// Per-source counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStats {
    /// The source name.
    pub name: String,
    /// Specialized or general, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<SourceRole>,
    /// The format used.
    pub format: SourceFormat,
    /// The container used.
    pub container: Container,
    /// Records in the file, good or bad.
    pub records_seen: usize,
    /// Records that loaded.
    pub loaded: usize,
    /// Records available for sampling (after the tag filter).
    pub available: usize,
    /// The amount asked for, e.g. `ratio 1/64` or `count 100`.
    pub take: String,
    /// The number of records that amount means: floor(available · ratio), at least 1.
    pub requested: usize,
    /// Records selected (equal to `requested`).
    pub selected: usize,
    /// Distinct records selected (less than `selected` when upsampling).
    pub unique_selected: usize,
    /// The load report (skipped counts per kind, duplicates, ShareGPT clean-up).
    pub load: LoadReport,
    /// Tag-filter statistics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterStats>,
    /// Tag-file statistics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_file: Option<TagFileStats>,
    /// Tagger statistics (per-rule counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tagging: Option<TaggingStats>,
}

/// The realized normalized ratio k.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KStats {
    /// Specialized records available.
    pub specialized_available: usize,
    /// General records available.
    pub general_available: usize,
    /// Specialized records selected.
    pub specialized_selected: usize,
    /// General records selected.
    pub general_selected: usize,
    /// (specialized selected / general selected) / (specialized available / general available).
    pub k: Option<f64>,
}

/// Everything needed to check or reproduce a mixture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version.
    pub format_version: u32,
    /// The crate name and version that wrote it.
    pub tool: String,
    /// The seed.
    pub seed: u64,
    /// The order.
    pub order: Order,
    /// The spec, echoed.
    pub spec: MixtureSpec,
    /// Every input file with its SHA-256.
    pub inputs: Vec<InputFile>,
    /// Per-source counts.
    pub sources: Vec<SourceStats>,
    /// The realized k, when the spec marks specialized and general sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<KStats>,
    /// Number of records.
    pub total: usize,
    /// The record ids in output order.
    pub record_ids: Vec<String>,
}

impl Manifest {
    /// Pretty JSON with a trailing newline; deterministic.
    pub fn to_json(&self) -> Result<String> {
        let mut s = serde_json::to_string_pretty(self).map_err(|source| Error::Json {
            path: PathBuf::from("<manifest>"),
            source,
        })?;
        s.push('\n');
        Ok(s)
    }

    /// Writes the manifest (atomically: a temporary file, then a rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = self.to_json()?;
        Ok(sft_record::write_atomic(path, text.as_bytes())?)
    }

    /// Reads a manifest.
    pub fn read(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let m: Manifest = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        if m.format_version != crate::spec::FORMAT_VERSION {
            return Err(Error::UnsupportedFormatVersion {
                found: m.format_version,
                supported: crate::spec::FORMAT_VERSION,
            });
        }
        Ok(m)
    }
}
