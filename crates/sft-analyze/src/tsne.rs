//! The 2-D t-SNE map, with the `bhtsne` crate, set up as scikit-learn's `TSNE(init="pca")`.
//!
//! - **Input**: the PCA-reduced vectors (the analysis' PCA-50 space), Euclidean distances (the
//!   crate squares them for the Gaussian affinities, as scikit-learn does).
//! - **Optimiser** (bhtsne's defaults, which are scikit-learn's): early exaggeration 12 for the
//!   first 250 iterations, momentum 0.5 then 0.8, learning rate `max(n / 12 / 4, 50)`
//!   (scikit-learn's `learning_rate="auto"`), `iterations` in all, the given perplexity.
//! - **Initialisation**: the first two principal components of the input divided by the standard
//!   deviation of the first and multiplied by `1e-4` (scikit-learn's `init="pca"`). No random
//!   numbers are drawn anywhere, so the map depends on the inputs and settings only.
//! - **Exact or Barnes-Hut**: the exact gradient for up to `exact_max` points (the few hundred
//!   queries of the paper's figure), Barnes-Hut with θ = 0.5 (scikit-learn's `angle`) above.
//! - **Threads**: the fit runs in its own rayon pool of `threads` threads. bhtsne sums some
//!   quantities with rayon's parallel reductions, whose grouping of floating-point additions
//!   depends on work stealing; with one thread (the default) the grouping is fixed, so a rerun
//!   gives bit-identical coordinates. More threads need not be: measured with the `synthetic`
//!   example (2 × 300 records), two runs with `threads = 2` wrote different `tsne.csv` files
//!   (same clusters, different trailing digits) and were no faster on 2 busy cores, while runs
//!   with one thread were byte-identical across processes.
//!
//! Distances between clusters in a t-SNE map are not meaningful (the map preserves
//! neighbourhoods, not global geometry), so the separation scores are computed in the PCA space
//! before t-SNE, never on these coordinates.

use bhtsne::tSNE;

use crate::error::{Error, Result};
use crate::pca::pca;

/// Which gradient the fit used.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum TsneMethod {
    /// The exact O(n²) gradient.
    Exact,
    /// The Barnes-Hut approximation with this θ.
    BarnesHut {
        /// The accuracy parameter (scikit-learn's `angle`).
        theta: f64,
    },
}

/// The Barnes-Hut θ used above `exact_max` points (scikit-learn's default `angle`).
pub const BARNES_HUT_THETA: f64 = 0.5;

/// scikit-learn's PCA initialisation: the first two principal components of `x`
/// (`n × d` row-major), divided by the population standard deviation of the first, times `1e-4`.
pub fn pca_init(x: &[f64], n: usize, d: usize) -> Vec<f64> {
    let p = pca(x, n, d, 2.min(d).min(n - 1));
    let mut y = vec![0.0; n * 2];
    for i in 0..n {
        for c in 0..p.k {
            y[i * 2 + c] = p.scores[i * p.k + c];
        }
    }
    let mean = (0..n).map(|i| y[i * 2]).sum::<f64>() / n as f64;
    let var = (0..n).map(|i| (y[i * 2] - mean).powi(2)).sum::<f64>() / n as f64;
    let sd = var.sqrt();
    if sd > 0.0 {
        for v in &mut y {
            *v = *v / sd * 1e-4;
        }
    }
    y
}

/// The smallest number of points bhtsne accepts for a perplexity: `3 · perplexity + 1`.
pub fn min_points(perplexity: f64) -> usize {
    (3.0 * perplexity).floor() as usize + 1
}

/// Settings of one fit.
#[derive(Debug, Clone, Copy)]
pub struct TsneParams {
    /// Perplexity.
    pub perplexity: f64,
    /// Iterations.
    pub iterations: usize,
    /// Threads of the fit's rayon pool.
    pub threads: usize,
    /// The exact gradient up to this many points, Barnes-Hut above.
    pub exact_max: usize,
}

/// The 2-D map of `n` points of `x` (`n × d` row-major), row-major `n × 2`, and the method used.
/// `tick` is called once per iteration.
pub fn tsne_2d(
    x: &[f64],
    n: usize,
    d: usize,
    params: &TsneParams,
    tick: &(dyn Fn() + Sync),
) -> Result<(Vec<f64>, TsneMethod)> {
    if n < min_points(params.perplexity) {
        return Err(Error::Settings(format!(
            "t-SNE perplexity {} needs at least {} points (3 × perplexity + 1), got {n}",
            params.perplexity,
            min_points(params.perplexity)
        )));
    }
    if params.threads == 0 {
        return Err(Error::Settings("threads must be at least 1".into()));
    }
    let init = pca_init(x, n, d);
    let rows: Vec<&[f64]> = x.chunks(d).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(params.threads)
        .build()
        .map_err(Error::ThreadPool)?;
    let method = if n <= params.exact_max {
        TsneMethod::Exact
    } else {
        TsneMethod::BarnesHut {
            theta: BARNES_HUT_THETA,
        }
    };
    let euclid = |a: &&[f64], b: &&[f64]| -> f64 {
        a.iter()
            .zip(b.iter())
            .map(|(p, q)| (p - q) * (p - q))
            .sum::<f64>()
            .sqrt()
    };
    let y = pool.install(|| {
        let mut t: tSNE<f64, &[f64]> = tSNE::new(&rows);
        t.perplexity(params.perplexity)
            .epochs(params.iterations)
            .initial_embedding(init)
            .epoch_callback(|_, _| tick());
        match method {
            TsneMethod::Exact => {
                t.exact(euclid);
            }
            TsneMethod::BarnesHut { theta } => {
                t.barnes_hut(theta, euclid);
            }
        }
        t.embedding()
    });
    Ok((y, method))
}
