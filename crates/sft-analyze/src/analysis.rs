//! [`analyze`]: PCA, t-SNE and the separation scores of every model, and the change of each model
//! against the first.

use std::collections::BTreeMap;
use std::time::Instant;

use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use sft_eval::Estimate;

use crate::embeddings::{Embeddings, Pool};
use crate::error::{Error, Result};
use crate::pca::{components_kept, pca};
use crate::scores::{distances, knn_purity, probe_correct, silhouette_samples, stratified_folds};
use crate::tsne::{tsne_2d, TsneMethod, TsneParams};

/// The ridge penalty of the linear probe (scikit-learn's `RidgeClassifier` default).
pub const PROBE_ALPHA: f64 = 1.0;

/// How the analysis is run. [`Default`] gives the settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisSettings {
    /// PCA components kept, capped at `min(n - 1, dim)` (default 50).
    pub pca_dims: usize,
    /// t-SNE perplexity (default 30; needs at least `3 · perplexity + 1` records).
    pub perplexity: f64,
    /// t-SNE iterations (default 1000).
    pub iterations: usize,
    /// Neighbours of the k-NN purity (default 10).
    pub knn_k: usize,
    /// Folds of the cross-validated probe (default 5).
    pub folds: usize,
    /// Bootstrap resamples of every interval (default 2000).
    pub resamples: usize,
    /// Seed of the probe's folds and of the bootstrap (default 1234).
    pub seed: u64,
    /// Threads of the t-SNE fit (default 1: bit-identical reruns; see [`crate::tsne`]).
    pub threads: usize,
    /// The exact t-SNE gradient up to this many records, Barnes-Hut (θ = 0.5) above (default 2000).
    pub tsne_exact_max: usize,
}

impl Default for AnalysisSettings {
    fn default() -> Self {
        AnalysisSettings {
            pca_dims: 50,
            perplexity: 30.0,
            iterations: 1000,
            knn_k: 10,
            folds: 5,
            resamples: sft_eval::stats::BOOTSTRAP_RESAMPLES,
            seed: sft_eval::stats::BOOTSTRAP_SEED,
            threads: 1,
            tsne_exact_max: 2000,
        }
    }
}

/// The three separation scores of one set of records, each the mean of per-record values with
/// a 95% bootstrap interval over the records (`Estimate::bootstrap`); for a [`Change`], the mean
/// paired difference with `Estimate::paired_bootstrap`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Mean silhouette (Euclidean; in `[-1, 1]`).
    pub silhouette: Estimate,
    /// Mean fraction of the `k` nearest neighbours from the same source.
    pub knn_purity: Estimate,
    /// Cross-validated accuracy of the linear probe predicting the source.
    pub probe_accuracy: Estimate,
}

/// Per-record values behind a [`Scores`], in record order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordScores {
    /// Each record's silhouette.
    pub silhouette: Vec<f64>,
    /// Each record's k-NN purity.
    pub knn_purity: Vec<f64>,
    /// 1 where the probe predicted the record's source, else 0.
    pub probe_correct: Vec<f64>,
}

/// The separation of one model's records: over all sources, and for each pair of sources
/// recomputed on the records of those two only (key `a-b`, `a` the source seen first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Separation {
    /// All sources together.
    pub overall: Scores,
    /// Each pair of sources, e.g. `math-general`.
    pub pairs: BTreeMap<String, Scores>,
}

/// One model's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelAnalysis {
    /// The model's label.
    pub label: String,
    /// The layer as requested.
    pub layer: i64,
    /// The pooling.
    pub pool: Pool,
    /// Records analysed.
    pub n: usize,
    /// Input dimension.
    pub dim: usize,
    /// PCA components the scores and t-SNE used.
    pub pca_dims: usize,
    /// Share of the variance those components keep.
    pub pca_variance_kept: f64,
    /// The t-SNE gradient used.
    pub tsne_method: TsneMethod,
    /// The t-SNE coordinates of each record, in record order.
    pub tsne: Vec<[f64; 2]>,
    /// The separation scores.
    pub separation: Separation,
    /// The per-record values of the overall scores.
    pub records: RecordScores,
}

/// The change of one model against the baseline (the first model) on the same records: per
/// score the mean paired difference `model - baseline` with a paired bootstrap interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The model's label.
    pub model: String,
    /// The baseline's label.
    pub baseline: String,
    /// All sources together.
    pub overall: Scores,
    /// Each pair of sources.
    pub pairs: BTreeMap<String, Scores>,
}

/// Everything [`analyze`] computes; `separation.json` is this value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    /// Source names in order of first appearance.
    pub sources: Vec<String>,
    /// Each model, in input order.
    pub models: Vec<ModelAnalysis>,
    /// Each model after the first against the first.
    pub changes: Vec<Change>,
    /// The settings used.
    pub settings: AnalysisSettings,
}

impl Scores {
    /// The three estimates with their names: `silhouette`, `knn_purity`, `probe_accuracy`.
    pub fn named(&self) -> [(&'static str, Estimate); 3] {
        [
            ("silhouette", self.silhouette),
            ("knn_purity", self.knn_purity),
            ("probe_accuracy", self.probe_accuracy),
        ]
    }
}

impl Analysis {
    /// Every estimate under a flat dotted key, for a `results.json`-style metric map:
    /// `<label>.<scope>.<score>` for each model and `<model>-vs-<baseline>.<scope>.<score>` for
    /// each change, where `scope` is `all` or a source pair (`math-general`) and `score` one of
    /// [`Scores::named`]'s names.
    pub fn metrics(&self) -> BTreeMap<String, Estimate> {
        let mut out = BTreeMap::new();
        let mut put = |who: &str, overall: &Scores, pairs: &BTreeMap<String, Scores>| {
            let scopes =
                std::iter::once(("all", overall)).chain(pairs.iter().map(|(k, v)| (k.as_str(), v)));
            for (scope, scores) in scopes {
                for (name, e) in scores.named() {
                    out.insert(format!("{who}.{scope}.{name}"), e);
                }
            }
        };
        for m in &self.models {
            put(&m.label, &m.separation.overall, &m.separation.pairs);
        }
        for c in &self.changes {
            put(
                &format!("{}-vs-{}", c.model, c.baseline),
                &c.overall,
                &c.pairs,
            );
        }
        out
    }
}

struct Computed {
    overall: RecordScores,
    pairs: BTreeMap<String, RecordScores>,
}

/// Analyses each model's embeddings: PCA to `pca_dims` (f64), the separation scores in that
/// space, the 2-D t-SNE map of that space, and the change of every model against the first.
///
/// All models must hold the same records (ids and sources, in the same order), each with at
/// least two sources and `folds` records per source. `progress` counts models × (iterations + 1)
/// steps; pass `ProgressBar::hidden()` for none.
pub fn analyze(
    models: &[Embeddings],
    settings: &AnalysisSettings,
    progress: &ProgressBar,
) -> Result<Analysis> {
    check(models, settings)?;
    let first = &models[0];
    let sources = first.source_names();
    let labels: Vec<usize> = first
        .sources
        .iter()
        .map(|s| sources.iter().position(|n| n == s).expect("listed"))
        .collect();
    progress.set_length((models.len() * (settings.iterations + 1)) as u64);

    let mut out = Vec::with_capacity(models.len());
    let mut computed = Vec::with_capacity(models.len());
    for m in models {
        let started = Instant::now();
        let n = m.len();
        let x: Vec<f64> = m.vectors.iter().map(|&v| f64::from(v)).collect();
        let k = components_kept(settings.pca_dims, n, m.dim);
        let p = pca(&x, n, m.dim, k);
        let kept = p.explained_variance_ratio.iter().sum::<f64>();
        let c = scores_of(&m.model, &p.scores, k, &labels, &sources, settings)?;
        progress.inc(1);
        let pca_s = started.elapsed().as_secs_f64();
        let params = TsneParams {
            perplexity: settings.perplexity,
            iterations: settings.iterations,
            threads: settings.threads,
            exact_max: settings.tsne_exact_max,
        };
        let tick = || progress.inc(1);
        let (y, method) = tsne_2d(&p.scores, n, k, &params, &tick)?;
        tracing::info!(
            model = %m.model,
            n,
            dim = m.dim,
            pca_dims = k,
            variance_kept = kept,
            pca_and_scores_s = pca_s,
            total_s = started.elapsed().as_secs_f64(),
            "analysed"
        );
        let separation = Separation {
            overall: summarize(&c.overall, settings),
            pairs: c
                .pairs
                .iter()
                .map(|(key, r)| (key.clone(), summarize(r, settings)))
                .collect(),
        };
        out.push(ModelAnalysis {
            label: m.model.clone(),
            layer: m.layer,
            pool: m.pool,
            n,
            dim: m.dim,
            pca_dims: k,
            pca_variance_kept: kept,
            tsne_method: method,
            tsne: y.chunks(2).map(|c| [c[0], c[1]]).collect(),
            separation,
            records: c.overall.clone(),
        });
        computed.push(c);
    }

    let mut changes = Vec::new();
    for (j, m) in models.iter().enumerate().skip(1) {
        let diff = |a: &RecordScores, b: &RecordScores| -> Result<Scores> {
            let pb = |x: &[f64], y: &[f64]| {
                Estimate::paired_bootstrap(x, y, settings.resamples, settings.seed)
                    .map_err(Error::Stats)
            };
            Ok(Scores {
                silhouette: pb(&a.silhouette, &b.silhouette)?,
                knn_purity: pb(&a.knn_purity, &b.knn_purity)?,
                probe_accuracy: pb(&a.probe_correct, &b.probe_correct)?,
            })
        };
        let mut pairs = BTreeMap::new();
        for (key, r) in &computed[j].pairs {
            pairs.insert(key.clone(), diff(r, &computed[0].pairs[key])?);
        }
        changes.push(Change {
            model: m.model.clone(),
            baseline: first.model.clone(),
            overall: diff(&computed[j].overall, &computed[0].overall)?,
            pairs,
        });
    }
    progress.finish();
    Ok(Analysis {
        sources,
        models: out,
        changes,
        settings: settings.clone(),
    })
}

fn check(models: &[Embeddings], settings: &AnalysisSettings) -> Result<()> {
    let Some(first) = models.first() else {
        return Err(Error::Mismatch("no models to analyse".into()));
    };
    if settings.folds < 2 {
        return Err(Error::Settings(format!(
            "the probe needs at least 2 folds, got {}",
            settings.folds
        )));
    }
    if settings.knn_k == 0 {
        return Err(Error::Settings("knn_k must be at least 1".into()));
    }
    if settings.pca_dims == 0 {
        return Err(Error::Settings("pca_dims must be at least 1".into()));
    }
    if !(settings.perplexity > 0.0 && settings.perplexity.is_finite()) {
        return Err(Error::Settings(format!(
            "perplexity must be positive, got {}",
            settings.perplexity
        )));
    }
    if settings.resamples == 0 {
        return Err(Error::Settings("resamples must be at least 1".into()));
    }
    let mut labels = std::collections::HashSet::new();
    for m in models {
        m.validate(settings.folds)?;
        if !labels.insert(m.model.as_str()) {
            return Err(Error::Mismatch(format!(
                "two models are labelled `{}`; give each a distinct label",
                m.model
            )));
        }
        if m.ids != first.ids || m.sources != first.sources {
            return Err(Error::Mismatch(format!(
                "model `{}` holds different records (ids or sources, in order) from model `{}`; every model must be run on the same records",
                m.model, first.model
            )));
        }
    }
    // Pairs are analysed on two sources only; the smallest pair bounds the perplexity.
    let sources = first.source_names();
    let counts: Vec<usize> = sources
        .iter()
        .map(|s| first.sources.iter().filter(|x| *x == s).count())
        .collect();
    let need = crate::tsne::min_points(settings.perplexity);
    if first.len() < need {
        return Err(Error::Settings(format!(
            "t-SNE perplexity {} needs at least {need} records (3 × perplexity + 1); there are {}",
            settings.perplexity,
            first.len()
        )));
    }
    let smallest = counts.iter().min().copied().unwrap_or(0);
    if smallest <= settings.knn_k {
        tracing::warn!(
            smallest,
            k = settings.knn_k,
            "a source has no more records than k, so its records' k-NN purity cannot reach 1"
        );
    }
    Ok(())
}

/// The per-record scores over all sources and for every pair of sources.
fn scores_of(
    model: &str,
    x: &[f64],
    d: usize,
    labels: &[usize],
    sources: &[String],
    settings: &AnalysisSettings,
) -> Result<Computed> {
    let overall = record_scores(model, x, d, labels, sources.len(), settings)?;
    let mut pairs = BTreeMap::new();
    for a in 0..sources.len() {
        for b in (a + 1)..sources.len() {
            let keep: Vec<usize> = (0..labels.len())
                .filter(|&i| labels[i] == a || labels[i] == b)
                .collect();
            let sub_x: Vec<f64> = keep
                .iter()
                .flat_map(|&i| x[i * d..(i + 1) * d].iter().copied())
                .collect();
            let sub_l: Vec<usize> = keep.iter().map(|&i| usize::from(labels[i] == b)).collect();
            let r = record_scores(model, &sub_x, d, &sub_l, 2, settings)?;
            pairs.insert(format!("{}-{}", sources[a], sources[b]), r);
        }
    }
    Ok(Computed { overall, pairs })
}

fn record_scores(
    model: &str,
    x: &[f64],
    d: usize,
    labels: &[usize],
    n_labels: usize,
    settings: &AnalysisSettings,
) -> Result<RecordScores> {
    let n = labels.len();
    let dm = distances(x, n, d);
    let folds = stratified_folds(labels, n_labels, settings.folds, settings.seed);
    let probe = probe_correct(x, d, labels, n_labels, &folds, settings.folds, PROBE_ALPHA)
        .ok_or_else(|| Error::Numeric {
            model: model.to_string(),
            message: "the ridge probe's normal equations are not positive definite".into(),
        })?;
    Ok(RecordScores {
        silhouette: silhouette_samples(&dm, labels, n_labels),
        knn_purity: knn_purity(&dm, labels, settings.knn_k),
        probe_correct: probe,
    })
}

fn summarize(r: &RecordScores, s: &AnalysisSettings) -> Scores {
    Scores {
        silhouette: Estimate::bootstrap(&r.silhouette, s.resamples, s.seed),
        knn_purity: Estimate::bootstrap(&r.knn_purity, s.resamples, s.seed),
        probe_accuracy: Estimate::bootstrap(&r.probe_correct, s.resamples, s.seed),
    }
}
