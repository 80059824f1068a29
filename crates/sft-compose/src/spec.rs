//! Mixture specs: the serde types that mirror spec files (TOML or JSON), versioned, plus the
//! helpers that express the paper's normalized ratio k.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io_err, Error, Result};
use crate::filter::TagFilter;
use crate::format::{Container, SourceFormat};
use crate::ratio::{Ratio, Take};

/// The spec and manifest format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// In what order the mixed records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// One seeded shuffle of all selected records.
    Shuffled,
    /// Sources in spec order; within a source, records in file order (repeats adjacent).
    Concatenated,
}

/// Which side of the paper's normalized ratio k a source is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceRole {
    /// Code and math data in the paper.
    Specialized,
    /// ShareGPT in the paper.
    General,
}

/// A named tagger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaggerName {
    /// [`crate::HeuristicTagger`] with its documented rules.
    Heuristic,
}

/// Where a source's tags come from, besides a `tags` field in the records (always read).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagsSpec {
    /// An InsTag-style tag file (see [`crate::load_tag_file`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// A tagger run over the records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tagger: Option<TaggerName>,
}

/// One source of a mixture: a file, how much of it, and an optional tag filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// The name, used as the record-id prefix (`math:17`). Letters, digits, `_`, `-`, `.`.
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// The format; detected from the first record when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<SourceFormat>,
    /// The container; detected from the extension or content when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    /// A proportion of the available records (`"1/64"`, `0.25`, `2`). Default 1 (all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<Ratio>,
    /// An exact number of records instead of a ratio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// A tag-filter expression; records it matches are kept (see [`crate::TagFilter`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Extra tag sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<TagsSpec>,
    /// Specialized or general, for reporting the realized k.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<SourceRole>,
}

impl SourceSpec {
    /// All of `path` as source `name`, format and container detected.
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        SourceSpec {
            name: name.into(),
            path: path.into(),
            format: None,
            container: None,
            ratio: None,
            count: None,
            filter: None,
            tags: None,
            role: None,
        }
    }

    /// Takes a proportion (clears any count).
    pub fn with_ratio(mut self, ratio: Ratio) -> Self {
        self.ratio = Some(ratio);
        self.count = None;
        self
    }

    /// Takes an exact count (clears any ratio).
    pub fn with_count(mut self, count: u64) -> Self {
        self.count = Some(count);
        self.ratio = None;
        self
    }

    /// Sets the format.
    pub fn with_format(mut self, format: SourceFormat) -> Self {
        self.format = Some(format);
        self
    }

    /// Sets the tag filter expression (checked in [`MixtureSpec::validate`]).
    pub fn with_filter(mut self, expr: impl Into<String>) -> Self {
        self.filter = Some(expr.into());
        self
    }

    /// Sets the tag sources.
    pub fn with_tags(mut self, tags: TagsSpec) -> Self {
        self.tags = Some(tags);
        self
    }

    /// Sets the k side.
    pub fn with_role(mut self, role: SourceRole) -> Self {
        self.role = Some(role);
        self
    }

    /// The resolved amount: the ratio, the count, or all.
    pub fn take(&self) -> Result<Take> {
        match (self.ratio, self.count) {
            (Some(_), Some(_)) => Err(Error::Spec(format!(
                "source {:?}: give either `ratio` or `count`, not both",
                self.name
            ))),
            (Some(r), None) => Ok(Take::Ratio(r)),
            (None, Some(c)) => Ok(Take::Count(c)),
            (None, None) => Ok(Take::ALL),
        }
    }

    /// The parsed filter, if any.
    pub fn parsed_filter(&self) -> Result<Option<TagFilter>> {
        self.filter.as_deref().map(TagFilter::parse).transpose()
    }
}

/// A mixture: sources, how much of each, a seed and an order.
///
/// Same spec + same input files + same seed ⇒ byte-identical output and manifest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixtureSpec {
    /// Must be [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The seed of every random choice.
    pub seed: u64,
    /// Output order.
    #[serde(default = "default_order")]
    pub order: Order,
    /// Skip and count bad records instead of failing.
    #[serde(default)]
    pub lenient: bool,
    /// Drop exact duplicates within each source.
    #[serde(default)]
    pub dedup: bool,
    /// The sources, in order.
    pub sources: Vec<SourceSpec>,
}

fn default_order() -> Order {
    Order::Shuffled
}

impl MixtureSpec {
    /// A shuffled, strict mixture of `sources`.
    pub fn new(seed: u64, sources: Vec<SourceSpec>) -> Self {
        MixtureSpec {
            format_version: FORMAT_VERSION,
            seed,
            order: Order::Shuffled,
            lenient: false,
            dedup: false,
            sources,
        }
    }

    /// Sets the order.
    pub fn with_order(mut self, order: Order) -> Self {
        self.order = order;
        self
    }

    /// Parses TOML text. Relative source and tag-file paths stay as written.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<MixtureSpec> {
        let spec: MixtureSpec = toml::from_str(text).map_err(|e| Error::Toml {
            path: origin.to_path_buf(),
            source: Box::new(e),
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Reads a TOML (or, for a `.json` extension, JSON) spec file. Relative paths inside it are
    /// taken relative to the spec file's directory.
    pub fn from_path(path: &Path) -> Result<MixtureSpec> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let mut spec: MixtureSpec = if is_json {
            serde_json::from_str(&text).map_err(|source| Error::Json {
                path: path.to_path_buf(),
                source,
            })?
        } else {
            toml::from_str(&text).map_err(|e| Error::Toml {
                path: path.to_path_buf(),
                source: Box::new(e),
            })?
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            for s in &mut spec.sources {
                if s.path.is_relative() {
                    s.path = dir.join(&s.path);
                }
                if let Some(file) = s.tags.as_mut().and_then(|t| t.file.as_mut()) {
                    if file.is_relative() {
                        *file = dir.join(&*file);
                    }
                }
            }
        }
        spec.validate()?;
        Ok(spec)
    }

    /// The spec as TOML.
    pub fn to_toml_string(&self) -> Result<String> {
        toml::to_string(self)
            .map_err(|e| Error::Spec(format!("cannot write the spec as TOML: {e}")))
    }

    /// Checks everything that can be checked without reading the sources.
    pub fn validate(&self) -> Result<()> {
        if self.format_version != FORMAT_VERSION {
            return Err(Error::UnsupportedFormatVersion {
                found: self.format_version,
                supported: FORMAT_VERSION,
            });
        }
        if self.sources.is_empty() {
            return Err(Error::Spec("no sources".into()));
        }
        let mut names = std::collections::BTreeSet::new();
        for s in &self.sources {
            if s.name.is_empty()
                || !s
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            {
                return Err(Error::Spec(format!(
                    "source name {:?} must be non-empty and use only letters, digits, '_', '-' and '.'",
                    s.name
                )));
            }
            if !names.insert(s.name.as_str()) {
                return Err(Error::Spec(format!(
                    "source name {:?} appears twice",
                    s.name
                )));
            }
            s.take()?;
            s.parsed_filter()?;
        }
        Ok(())
    }

    /// The source called `name`.
    pub fn source(&self, name: &str) -> Option<&SourceSpec> {
        self.sources.iter().find(|s| s.name == name)
    }

    /// The source called `name`, mutable.
    pub fn source_mut(&mut self, name: &str) -> Option<&mut SourceSpec> {
        self.sources.iter_mut().find(|s| s.name == name)
    }

    /// General data at proportion `general_ratio`, and every specialized source at
    /// `k · general_ratio`, which makes the normalized ratio k (per source counts are floored,
    /// so the realized k in the manifest can differ slightly).
    ///
    /// This is the paper's RQ3 building block: set-up 1 is `general_ratio = 1`, set-up 3 is
    /// `general_ratio = 1/64`.
    pub fn general_at_with_k(
        seed: u64,
        general: SourceSpec,
        general_ratio: Ratio,
        specialized: Vec<SourceSpec>,
        k: Ratio,
    ) -> Result<MixtureSpec> {
        let specialized_ratio = k.checked_mul(general_ratio)?;
        let mut sources = Vec::with_capacity(specialized.len() + 1);
        for s in specialized {
            sources.push(
                s.with_ratio(specialized_ratio)
                    .with_role(SourceRole::Specialized),
            );
        }
        sources.push(
            general
                .with_ratio(general_ratio)
                .with_role(SourceRole::General),
        );
        let spec = MixtureSpec::new(seed, sources);
        spec.validate()?;
        Ok(spec)
    }

    /// RQ3 set-up 1: all general data plus each specialized source at proportion k.
    pub fn full_general_specialized_at_k(
        seed: u64,
        general: SourceSpec,
        specialized: Vec<SourceSpec>,
        k: Ratio,
    ) -> Result<MixtureSpec> {
        MixtureSpec::general_at_with_k(seed, general, Ratio::ONE, specialized, k)
    }

    /// RQ3 set-up 2: all specialized data plus general data at proportion 1/k
    /// (k = (S/g)/(S/G) = G/g, so the paper's "general at 1/16" is k = 16).
    pub fn full_specialized_general_at_k(
        seed: u64,
        general: SourceSpec,
        specialized: Vec<SourceSpec>,
        k: Ratio,
    ) -> Result<MixtureSpec> {
        if k.is_zero() {
            return Err(Error::Spec(
                "k must be > 0 when the specialized data is used in full".into(),
            ));
        }
        let general_ratio = k.recip()?;
        let mut sources = Vec::with_capacity(specialized.len() + 1);
        for s in specialized {
            sources.push(s.with_ratio(Ratio::ONE).with_role(SourceRole::Specialized));
        }
        sources.push(
            general
                .with_ratio(general_ratio)
                .with_role(SourceRole::General),
        );
        let spec = MixtureSpec::new(seed, sources);
        spec.validate()?;
        Ok(spec)
    }
}

/// The paper's normalized ratio
/// k = (specialized used / general used) / (specialized all / general all).
///
/// Returns `None` when a denominator is zero (no general data used, or none available).
pub fn normalized_k(
    specialized_used: usize,
    general_used: usize,
    specialized_all: usize,
    general_all: usize,
) -> Option<f64> {
    if general_used == 0 || general_all == 0 || specialized_all == 0 {
        return None;
    }
    // (su/gu)/(sa/ga) = (su·ga)/(gu·sa), computed in f64 from exact integer products.
    let num = (specialized_used as u128 * general_all as u128) as f64;
    let den = (general_used as u128 * specialized_all as u128) as f64;
    Some(num / den)
}
