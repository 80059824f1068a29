//! From a [`MixtureSpec`] to a [`Mixture`]: load (cached in a [`Catalog`]), tag, filter, sample, order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::load::{load_source, LoadOptions, LoadedSource};
use crate::manifest::{FilterStats, InputFile, KStats, Manifest, SourceStats};
use crate::sample::{fisher_yates, rng_for, select};
use crate::spec::{MixtureSpec, Order, SourceRole, SourceSpec, TaggerName, TagsSpec};
use crate::tagger::{apply_tagger, HeuristicTagger, TaggingStats};
use crate::tags::{apply_tag_file, load_tag_file, TagFileStats};
use sft_record::Record;

/// A loaded source with its tags applied.
#[derive(Debug, Clone)]
pub struct PreparedSource {
    /// The records and load report.
    pub loaded: LoadedSource,
    /// The tag file used, with its hash and stats.
    pub tag_file: Option<(PathBuf, String, TagFileStats)>,
    /// What the tagger did.
    pub tagging: Option<TaggingStats>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    name: String,
    path: PathBuf,
    options: LoadOptions,
    tags: Option<TagsSpec>,
}

/// Loads sources once and hands them to any number of compositions (the benchmark grid and
/// multi-stage plans reuse one catalog).
#[derive(Debug, Default)]
pub struct Catalog {
    cache: HashMap<CacheKey, Arc<PreparedSource>>,
    progress: bool,
}

impl Catalog {
    /// An empty catalog without progress bars.
    pub fn new() -> Self {
        Catalog::default()
    }

    /// Shows indicatif progress bars while loading.
    pub fn with_progress(mut self, progress: bool) -> Self {
        self.progress = progress;
        self
    }

    /// Loads and tags one source (or returns the cached copy).
    pub fn prepare(
        &mut self,
        source: &SourceSpec,
        lenient: bool,
        dedup: bool,
    ) -> Result<Arc<PreparedSource>> {
        let options = LoadOptions {
            format: source.format,
            container: source.container,
            lenient,
            dedup,
            progress: self.progress,
            ..LoadOptions::strict()
        };
        let key = CacheKey {
            name: source.name.clone(),
            path: source.path.clone(),
            options: LoadOptions {
                progress: false,
                ..options.clone()
            },
            tags: source.tags.clone(),
        };
        if let Some(hit) = self.cache.get(&key) {
            return Ok(hit.clone());
        }
        let mut loaded = load_source(&source.name, &source.path, &options)?;
        let mut tag_file = None;
        let mut tagging = None;
        if let Some(tags) = &source.tags {
            if let Some(path) = &tags.file {
                let file = load_tag_file(path)?;
                let stats = apply_tag_file(&file, &mut loaded.records);
                tracing::info!(source = %source.name, matched = stats.records_matched, "applied tag file");
                tag_file = Some((path.clone(), file.sha256, stats));
            }
            if let Some(TaggerName::Heuristic) = tags.tagger {
                let tagger = HeuristicTagger::new();
                let stats = apply_tagger(&tagger, &mut loaded.records);
                tracing::info!(source = %source.name, tagged = stats.records_tagged, rules = ?stats.per_rule, "tagged");
                tagging = Some(stats);
            }
        }
        let prepared = Arc::new(PreparedSource {
            loaded,
            tag_file,
            tagging,
        });
        self.cache.insert(key, prepared.clone());
        Ok(prepared)
    }
}

/// A composed mixture: references into the loaded sources, in output order.
#[derive(Debug, Clone)]
pub struct Mixture {
    spec: MixtureSpec,
    sources: Vec<Arc<PreparedSource>>,
    stats: Vec<SourceStats>,
    entries: Vec<(u32, u32)>,
    k: Option<KStats>,
}

/// Composes a mixture, loading every source from disk.
pub fn compose(spec: &MixtureSpec) -> Result<Mixture> {
    compose_with(spec, &mut Catalog::new())
}

/// Composes a mixture with sources from (and added to) `catalog`.
pub fn compose_with(spec: &MixtureSpec, catalog: &mut Catalog) -> Result<Mixture> {
    spec.validate()?;
    let span = tracing::info_span!("compose", seed = spec.seed, sources = spec.sources.len());
    let _guard = span.enter();
    let mut sources = Vec::with_capacity(spec.sources.len());
    let mut stats = Vec::with_capacity(spec.sources.len());
    let mut entries: Vec<(u32, u32)> = Vec::new();
    for (si, source) in spec.sources.iter().enumerate() {
        let prepared = catalog.prepare(source, spec.lenient, spec.dedup)?;
        let records = &prepared.loaded.records;
        let filter = source.parsed_filter()?;
        let available: Vec<usize> = match &filter {
            Some(f) => (0..records.len())
                .filter(|&i| f.matches(&records[i].tags))
                .collect(),
            None => (0..records.len()).collect(),
        };
        let filter_stats = filter.as_ref().map(|f| FilterStats {
            expr: source.filter.clone().unwrap_or_default(),
            parsed: f.to_string(),
            before: records.len(),
            kept: available.len(),
            dropped: records.len() - available.len(),
        });
        if available.is_empty() {
            return Err(Error::EmptyAfterFilter {
                source_name: source.name.clone(),
                filter: source.filter.clone().unwrap_or_default(),
                before: records.len(),
            });
        }
        let take = source.take()?;
        let requested = take.count_of(available.len());
        let mut rng = rng_for(spec.seed, &format!("sample/{}", source.name));
        let mut chosen: Vec<usize> = select(available.len(), take, &mut rng)
            .into_iter()
            .map(|i| available[i])
            .collect();
        if spec.order == Order::Concatenated {
            chosen.sort_unstable();
        }
        let unique = {
            let mut u = chosen.clone();
            u.sort_unstable();
            u.dedup();
            u.len()
        };
        let si32 = u32::try_from(si).map_err(|_| Error::Spec("too many sources".into()))?;
        for &i in &chosen {
            let i32_ = u32::try_from(i).map_err(|_| {
                Error::Spec(format!("source {:?} has too many records", source.name))
            })?;
            entries.push((si32, i32_));
        }
        tracing::info!(source = %source.name, available = available.len(), selected = chosen.len(), "selected");
        stats.push(SourceStats {
            name: source.name.clone(),
            role: source.role,
            format: prepared.loaded.format,
            container: prepared.loaded.container,
            records_seen: prepared.loaded.report.records_seen,
            loaded: prepared.loaded.records.len(),
            available: available.len(),
            take: take.to_string(),
            requested,
            selected: chosen.len(),
            unique_selected: unique,
            load: prepared.loaded.report.clone(),
            filter: filter_stats,
            tag_file: prepared.tag_file.as_ref().map(|(_, _, s)| s.clone()),
            tagging: prepared.tagging.clone(),
        });
        sources.push(prepared);
    }
    if spec.order == Order::Shuffled {
        let mut rng = rng_for(spec.seed, "order");
        fisher_yates(&mut entries, &mut rng);
    }
    let k = KStats::from_sources(&stats);
    Ok(Mixture {
        spec: spec.clone(),
        sources,
        stats,
        entries,
        k,
    })
}

impl Mixture {
    /// The spec it was composed from.
    pub fn spec(&self) -> &MixtureSpec {
        &self.spec
    }

    /// Number of records (with repeats).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Is it empty?
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The records, in output order.
    pub fn records(&self) -> impl ExactSizeIterator<Item = &Record> + '_ {
        self.entries
            .iter()
            .map(|&(s, i)| &self.sources[s as usize].loaded.records[i as usize])
    }

    /// The record ids, in output order.
    pub fn record_ids(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.records().map(|r| r.id.as_str())
    }

    /// Per-source counts.
    pub fn source_stats(&self) -> &[SourceStats] {
        &self.stats
    }

    /// The realized normalized ratio k, when the spec marks specialized and general sources.
    pub fn k(&self) -> Option<&KStats> {
        self.k.as_ref()
    }

    /// The loaded sources, in spec order.
    pub fn sources(&self) -> &[Arc<PreparedSource>] {
        &self.sources
    }

    /// The manifest describing this mixture.
    pub fn manifest(&self) -> Manifest {
        let mut inputs = Vec::new();
        for (spec, prepared) in self.spec.sources.iter().zip(&self.sources) {
            let l = &prepared.loaded;
            inputs.push(InputFile {
                source: spec.name.clone(),
                kind: "data".into(),
                path: l.path.clone(),
                sha256: l.sha256.clone(),
                bytes: l.bytes,
            });
            if let Some((path, sha, _)) = &prepared.tag_file {
                let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                inputs.push(InputFile {
                    source: spec.name.clone(),
                    kind: "tags".into(),
                    path: path.clone(),
                    sha256: sha.clone(),
                    bytes,
                });
            }
        }
        Manifest {
            format_version: crate::spec::FORMAT_VERSION,
            tool: format!("sft-compose {}", env!("CARGO_PKG_VERSION")),
            seed: self.spec.seed,
            order: self.spec.order,
            spec: self.spec.clone(),
            inputs,
            sources: self.stats.clone(),
            k: self.k.clone(),
            total: self.entries.len(),
            record_ids: self.record_ids().map(str::to_string).collect(),
        }
    }

    /// Writes the records to `path`: Parquet when it ends in `.parquet`, JSONL otherwise.
    pub fn write(&self, path: &Path) -> Result<u64> {
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
        {
            self.write_parquet(path)
        } else {
            self.write_jsonl(path)
        }
    }

    /// Writes the records as JSONL (chat format).
    pub fn write_jsonl(&self, path: &Path) -> Result<u64> {
        crate::write::write_jsonl(path, self.records())
    }

    /// Writes the records as Parquet (chat format).
    pub fn write_parquet(&self, path: &Path) -> Result<u64> {
        crate::write::write_atomically(path, |tmp| {
            crate::parquet_io::write_parquet(tmp, self.records())
        })
    }
}

impl KStats {
    fn from_sources(stats: &[SourceStats]) -> Option<KStats> {
        let sum = |role: SourceRole, f: fn(&SourceStats) -> usize| -> usize {
            stats.iter().filter(|s| s.role == Some(role)).map(f).sum()
        };
        let has = |role| stats.iter().any(|s| s.role == Some(role));
        if !has(SourceRole::Specialized) || !has(SourceRole::General) {
            return None;
        }
        let specialized_available = sum(SourceRole::Specialized, |s| s.available);
        let general_available = sum(SourceRole::General, |s| s.available);
        let specialized_selected = sum(SourceRole::Specialized, |s| s.selected);
        let general_selected = sum(SourceRole::General, |s| s.selected);
        Some(KStats {
            specialized_available,
            general_available,
            specialized_selected,
            general_selected,
            k: crate::spec::normalized_k(
                specialized_selected,
                general_selected,
                specialized_available,
                general_available,
            ),
        })
    }
}
