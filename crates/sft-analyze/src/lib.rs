//! Representation analysis of pooled hidden states (issue #15): how well the sources of the
//! queries (math, code, general, …) separate in one layer of a model, as a picture and as numbers.
//!
//! For each model's [`Embeddings`] (one pooled vector per record, from the libtorch side),
//! [`analyze`]:
//!
//! 1. reduces the vectors by PCA in f64 to `pca_dims` (50) components ([`pca`]);
//! 2. scores the separation of the sources in that PCA space, per record ([`scores`]): the
//!    silhouette (Euclidean, scikit-learn's `silhouette_samples`), the k-NN purity (k = 10: the
//!    share of a record's nearest other records from its own source) and a linear probe's
//!    correctness (5-fold stratified seeded cross-validation of a closed-form ridge one-vs-rest
//!    classifier, scikit-learn's `RidgeClassifier(alpha=1)`). Each score is the mean over the
//!    records with a 95% bootstrap interval (`sft_eval::Estimate::bootstrap` of the per-record
//!    values; the neighbourhoods and probes are computed once and not refit per resample, so the
//!    interval reflects which records were drawn, not the refitting). Each pair of sources is
//!    scored again on the records of those two only;
//! 3. maps the PCA space to 2-D with t-SNE ([`tsne`]: bhtsne, perplexity 30, 1000 iterations,
//!    scikit-learn's PCA initialisation, one thread so reruns are bit-identical);
//! 4. compares every model after the first with the first on the same records: the paired
//!    difference of the per-record values (`Estimate::paired_bootstrap`), as [`Change`].
//!
//! Notes on what the numbers are:
//!
//! - PCA is fitted on all of a model's records (no labels used), and the probe's folds are
//!   cross-validated inside that space; the probe is `RidgeClassifier(alpha=1)` on the raw
//!   (uncentred, unscaled) PCA coordinates, so `alpha` is small next to hidden-state variances.
//! - Each model gets its own PCA; models are compared through their scores on the same records,
//!   never through coordinates.
//! - The t-SNE map uses no random numbers (PCA initialisation), so "the same seed" only matters
//!   for the probe's folds and the bootstrap; reruns on the same inputs and settings give
//!   byte-identical `tsne.csv` with `threads = 1` (the default; see [`tsne`]).
//! - Measured (dev profile, which builds dependencies at `opt-level = 2`; one of 2 busy CPU
//!   cores): two models × 300 records, the whole [`analyze`] + [`write_outputs`] of synthetic
//!   vectors takes 4.7 s at width 576 (SmolLM2-135M) and 6.3 s at width 5120 (LLaMA-13B), 70 MB
//!   peak memory (`cargo run -p sft-analyze --example synthetic -- OUT 100 5120`).
//!
//! The scores are computed before t-SNE because t-SNE preserves neighbourhoods, not distances:
//! the gaps between clusters in the map (and their sizes) are not meaningful.
//!
//! [`write_outputs`] writes `embeddings.parquet`, `tsne.csv`, `tsne.png`, `tsne.svg` and
//! `separation.json`; [`separation_table`] is the markdown table the command prints.

pub mod analysis;
pub mod embeddings;
pub mod error;
pub mod output;
pub mod pca;
pub mod scores;
pub mod table;
pub mod tsne;

pub use analysis::{
    analyze, Analysis, AnalysisSettings, Change, ModelAnalysis, RecordScores, Scores, Separation,
    PROBE_ALPHA,
};
pub use embeddings::{Embeddings, Pool};
pub use error::{Error, Result};
pub use output::{read_embeddings, write_outputs, Outputs};
pub use table::separation_table;
pub use tsne::TsneMethod;
