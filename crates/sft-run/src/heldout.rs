//! Held-out losses per source: for the base model, after every stage, and for the final model.
//!
//! The runner scores every model of a plan on the same held-out records ([`crate::data`]), with
//! the trainer's masking ([`crate::Backend::heldout_losses`]), and writes every per-record loss
//! to `<run>/heldout_loss.json` ([`HeldoutLosses`]), so two models (two strategies, or a model and
//! the base model) can be compared record by record: [`paired`] is the paired bootstrap of
//! `sft_eval::stats` over the records both were scored on.
//!
//! A model's losses are cached beside it (`<stage>/heldout/<hash>.json` in the stage store, or
//! `<store>/base/<fingerprint>/heldout/` for the base model), keyed by the held-out ids, the
//! template and length settings, the dtype and the backend's semantics versions: a rerun, or
//! another plan sharing a stage, scores nothing again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::backend::{Backend, LossRequest, Metric, RecordLoss};
use crate::error::{Error, Result};
use crate::files::{read_json, sha256_hex, write_json};
use crate::settings::EvalDtype;

/// The file name in a run directory.
pub const FILE: &str = "heldout_loss.json";

/// The version of `heldout_loss.json`.
pub const FORMAT_VERSION: u32 = 1;

/// Bootstrap resamples of the paired intervals.
pub const RESAMPLES: usize = sft_eval::stats::BOOTSTRAP_RESAMPLES;

/// Seed of the paired intervals' bootstrap.
pub const BOOTSTRAP_SEED: u64 = sft_eval::stats::BOOTSTRAP_SEED;

/// `<run>/heldout_loss.json`: the held-out ids and every model's per-record losses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldoutLosses {
    /// Always [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The seed that drew the held-out records.
    pub split_seed: u64,
    /// Source name → held-out ids (file order).
    pub ids: BTreeMap<String, Vec<String>>,
    /// The base model, then one entry per stage in order (the last is the final model).
    pub models: Vec<ModelLosses>,
}

/// One model's losses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelLosses {
    /// `base`, or the stage's name.
    pub label: String,
    /// The stage's index (`None` for the base model).
    pub stage: Option<usize>,
    /// The stage key, or `base:<model fingerprint>`.
    pub model_key: String,
    /// Source name → per-record losses (records the trainer dropped are absent).
    pub losses: BTreeMap<String, Vec<RecordLoss>>,
}

impl ModelLosses {
    /// Source name → the mean of the per-record losses with mean ± 1.96 SE over records.
    pub fn estimates(&self) -> BTreeMap<String, Metric> {
        self.losses
            .iter()
            .map(|(s, l)| {
                let v: Vec<f64> = l.iter().map(|r| r.loss).collect();
                (s.clone(), Metric::mean_se(&v))
            })
            .collect()
    }

    /// Record id → loss, for one source.
    pub fn by_id(&self, source: &str) -> BTreeMap<&str, f64> {
        self.losses
            .get(source)
            .map(|l| l.iter().map(|r| (r.id.as_str(), r.loss)).collect())
            .unwrap_or_default()
    }
}

impl HeldoutLosses {
    /// The base model's losses.
    pub fn base(&self) -> Option<&ModelLosses> {
        self.models.iter().find(|m| m.stage.is_none())
    }

    /// The final model's losses (the last stage's, or the base model's for a plan without
    /// stages).
    pub fn final_model(&self) -> Option<&ModelLosses> {
        self.models.last()
    }

    /// Reads `<run_dir>/heldout_loss.json`.
    pub fn read(run_dir: &Path) -> Result<HeldoutLosses> {
        read_json(&run_dir.join(FILE))
    }
}

/// The paired difference `a − b` of two models' losses on one source, over the records both
/// were scored on (matched by id, in `a`'s order): [`sft_eval::Estimate::paired_bootstrap`] with [`RESAMPLES`]
/// draws and [`BOOTSTRAP_SEED`]. `None` when they share no record of `source`.
pub fn paired(a: &ModelLosses, b: &ModelLosses, source: &str) -> Option<Metric> {
    let theirs = b.by_id(source);
    // In `a`'s record order (the held-out file order), so the draws are those of the same
    // values passed to `paired_bootstrap` in that order.
    let (x, y): (Vec<f64>, Vec<f64>) = a
        .losses
        .get(source)?
        .iter()
        .filter_map(|r| theirs.get(r.id.as_str()).map(|lb| (r.loss, *lb)))
        .unzip();
    if x.is_empty() {
        return None;
    }
    Metric::paired_bootstrap(&x, &y, RESAMPLES, BOOTSTRAP_SEED).ok()
}

/// What a model's cached losses are valid for.
fn cache_settings(
    req: &LossRequest<'_>,
    ids: &BTreeMap<String, Vec<String>>,
    semantics: &BTreeMap<String, u32>,
) -> Value {
    json!({
        "format_version": FORMAT_VERSION,
        "ids": ids,
        "template": req.config.template,
        "max_len": req.config.max_len,
        "overlong": req.config.overlong,
        "dtype": req.dtype,
        "semantics": semantics,
    })
}

#[derive(Debug, Serialize, Deserialize)]
struct Cached {
    settings: Value,
    losses: Vec<RecordLoss>,
}

/// Scores one model (or reads its cache in `cache_dir/heldout/`): source name → per-record
/// losses. No held-out records: nothing to score, an empty map.
pub(crate) fn score(
    backend: &dyn Backend,
    cache_dir: &Path,
    model: &Path,
    records: &[sft_compose::Record],
    ids: &BTreeMap<String, Vec<String>>,
    config: &sft_schedule::TrainConfig,
    dtype: EvalDtype,
) -> Result<BTreeMap<String, Vec<RecordLoss>>> {
    if records.is_empty() {
        return Ok(BTreeMap::new());
    }
    let req = LossRequest {
        model,
        records,
        config,
        dtype,
    };
    let settings = cache_settings(&req, ids, &backend.semantics());
    let hash = sha256_hex(settings.to_string().as_bytes());
    let path: PathBuf = cache_dir
        .join("heldout")
        .join(format!("{}.json", &hash[..16]));
    let cached: Option<Cached> = if path.exists() {
        read_json(&path).ok()
    } else {
        None
    };
    let losses = match cached {
        Some(c) if c.settings == settings => {
            tracing::info!(model = %model.display(), "held-out losses already computed: reusing");
            c.losses
        }
        _ => {
            let t0 = std::time::Instant::now();
            let losses = backend.heldout_losses(&req).map_err(Error::Backend)?;
            tracing::info!(model = %model.display(), records = losses.len(), seconds = t0.elapsed().as_secs_f64(), "held-out losses computed");
            write_json(
                &path,
                &Cached {
                    settings,
                    losses: losses.clone(),
                },
            )?;
            losses
        }
    };
    let mut out: BTreeMap<String, Vec<RecordLoss>> = BTreeMap::new();
    for l in losses {
        out.entry(l.source.clone()).or_default().push(l);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(losses: &[(&str, f64)]) -> ModelLosses {
        ModelLosses {
            label: "m".into(),
            stage: Some(0),
            model_key: "k".into(),
            losses: BTreeMap::from([(
                "math".to_string(),
                losses
                    .iter()
                    .map(|(id, l)| RecordLoss {
                        id: id.to_string(),
                        source: "math".into(),
                        loss: *l,
                        tokens: 3,
                    })
                    .collect(),
            )]),
        }
    }

    #[test]
    fn paired_differences_match_records_by_id_and_equal_the_stats_bootstrap() {
        let a = model(&[
            ("math:1", 2.0),
            ("math:2", 3.0),
            ("math:3", 1.5),
            ("math:9", 9.0),
        ]);
        let b = model(&[("math:3", 1.0), ("math:1", 1.0), ("math:2", 2.5)]);
        let d = paired(&a, &b, "math").unwrap();
        // math:9 has no partner; the others pair by id: 1.0, 0.5, 0.5 (id order).
        let want = Metric::paired_bootstrap(
            &[2.0, 3.0, 1.5],
            &[1.0, 2.5, 1.0],
            RESAMPLES,
            BOOTSTRAP_SEED,
        )
        .unwrap();
        assert_eq!(d, want);
        assert_eq!(d.n, 3);
        assert!((d.value - 2.0 / 3.0).abs() < 1e-12);
        assert!(paired(&a, &b, "code").is_none());
        assert_eq!(a.estimates()["math"].n, 4);
    }
}
