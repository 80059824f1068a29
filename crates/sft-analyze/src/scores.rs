//! Per-record separation scores of labelled points (row-major `n × d` f64, labels `0..c`):
//!
//! - [`silhouette_samples`]: scikit-learn's `silhouette_samples` with the Euclidean metric;
//! - [`knn_purity`]: the fraction of each point's `k` nearest other points with its label;
//! - [`probe_correct`]: 0/1 per point from a cross-validated linear probe, closed-form ridge
//!   one-vs-rest with an intercept (scikit-learn's `RidgeClassifier(alpha)`), each point scored
//!   by the probe fitted on the folds it is not in ([`stratified_folds`] makes the folds).

use nalgebra::{DMatrix, DVector};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

fn dist(x: &[f64], d: usize, i: usize, j: usize) -> f64 {
    let (a, b) = (&x[i * d..(i + 1) * d], &x[j * d..(j + 1) * d]);
    a.iter()
        .zip(b)
        .map(|(p, q)| (p - q) * (p - q))
        .sum::<f64>()
        .sqrt()
}

/// The pairwise Euclidean distance matrix, row-major `n × n`.
pub fn distances(x: &[f64], n: usize, d: usize) -> Vec<f64> {
    let mut m = vec![0.0; n * n];
    for i in 0..n {
        for j in (i + 1)..n {
            let v = dist(x, d, i, j);
            m[i * n + j] = v;
            m[j * n + i] = v;
        }
    }
    m
}

/// The silhouette of each point (scikit-learn's definition): `a` is the mean distance to the other
/// points of its label, `b` the smallest mean distance to the points of another label,
/// `s = (b - a) / max(a, b)`, and 0 for a point alone in its label.
/// `dist` is the `n × n` distance matrix; needs at least 2 labels.
pub fn silhouette_samples(dist: &[f64], labels: &[usize], n_labels: usize) -> Vec<f64> {
    let n = labels.len();
    let mut counts = vec![0usize; n_labels];
    for &l in labels {
        counts[l] += 1;
    }
    (0..n)
        .map(|i| {
            let mut sums = vec![0.0; n_labels];
            for j in 0..n {
                sums[labels[j]] += dist[i * n + j];
            }
            let own = labels[i];
            if counts[own] <= 1 {
                return 0.0;
            }
            let a = sums[own] / (counts[own] - 1) as f64;
            let b = (0..n_labels)
                .filter(|&l| l != own && counts[l] > 0)
                .map(|l| sums[l] / counts[l] as f64)
                .fold(f64::INFINITY, f64::min);
            let m = a.max(b);
            if m > 0.0 {
                (b - a) / m
            } else {
                0.0
            }
        })
        .collect()
}

/// For each point, the fraction of its `k` nearest other points (Euclidean; equal distances
/// broken by lower index) that share its label.
pub fn knn_purity(dist: &[f64], labels: &[usize], k: usize) -> Vec<f64> {
    let n = labels.len();
    let k = k.min(n - 1);
    (0..n)
        .map(|i| {
            let mut others: Vec<usize> = (0..n).filter(|&j| j != i).collect();
            others.sort_by(|&a, &b| dist[i * n + a].total_cmp(&dist[i * n + b]).then(a.cmp(&b)));
            let same = others[..k]
                .iter()
                .filter(|&&j| labels[j] == labels[i])
                .count();
            same as f64 / k as f64
        })
        .collect()
}

/// Fold ids `0..folds` per point, stratified by label and seeded: each label's points are
/// shuffled (ChaCha8 `seed`, Fisher–Yates) and dealt round-robin to the folds, the deal continuing
/// from one label to the next so fold sizes differ by at most one.
pub fn stratified_folds(labels: &[usize], n_labels: usize, folds: usize, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut fold_of = vec![0usize; labels.len()];
    let mut next = 0usize;
    for l in 0..n_labels {
        let mut members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == l).collect();
        for i in (1..members.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            members.swap(i, j);
        }
        for m in members {
            fold_of[m] = next % folds;
            next += 1;
        }
    }
    fold_of
}

/// A ridge classifier (scikit-learn's `RidgeClassifier(alpha)`): targets ±1 one-vs-rest (one
/// column for two labels), features and targets centred by their training means, weights from
/// `(XᵀX + αI) W = XᵀY` (Cholesky), intercept `ȳ - x̄ᵀW`.
#[derive(Debug, Clone)]
pub struct Ridge {
    weights: DMatrix<f64>, // d × columns
    intercept: DVector<f64>,
    n_labels: usize,
}

impl Ridge {
    /// Fits on the rows `train` of `x` (`n × d` row-major). `None` when the normal equations are
    /// not positive definite (cannot happen for `alpha > 0` and finite data).
    pub fn fit(
        x: &[f64],
        d: usize,
        labels: &[usize],
        n_labels: usize,
        train: &[usize],
        alpha: f64,
    ) -> Option<Ridge> {
        let m = train.len();
        let cols = if n_labels == 2 { 1 } else { n_labels };
        let mut xt = DMatrix::<f64>::zeros(m, d);
        let mut yt = DMatrix::<f64>::from_element(m, cols, -1.0);
        for (r, &i) in train.iter().enumerate() {
            for c in 0..d {
                xt[(r, c)] = x[i * d + c];
            }
            let col = if n_labels == 2 {
                (labels[i] == 1).then_some(0)
            } else {
                Some(labels[i])
            };
            if let Some(c) = col {
                yt[(r, c)] = 1.0;
            }
        }
        let x_mean = DVector::from_iterator(d, (0..d).map(|c| xt.column(c).mean()));
        let y_mean = DVector::from_iterator(cols, (0..cols).map(|c| yt.column(c).mean()));
        for c in 0..d {
            xt.column_mut(c).add_scalar_mut(-x_mean[c]);
        }
        for c in 0..cols {
            yt.column_mut(c).add_scalar_mut(-y_mean[c]);
        }
        let mut gram = xt.transpose() * &xt;
        for c in 0..d {
            gram[(c, c)] += alpha;
        }
        let rhs = xt.transpose() * &yt;
        let weights = gram.cholesky()?.solve(&rhs);
        let intercept = &y_mean - weights.transpose() * &x_mean;
        Some(Ridge {
            weights,
            intercept,
            n_labels,
        })
    }

    /// The predicted label of row `i` of `x`.
    pub fn predict(&self, x: &[f64], d: usize, i: usize) -> usize {
        let row = DVector::from_column_slice(&x[i * d..(i + 1) * d]);
        let scores = self.weights.transpose() * row + &self.intercept;
        if self.n_labels == 2 {
            usize::from(scores[0] > 0.0)
        } else {
            // argmax, first on ties (numpy's argmax)
            let mut best = 0;
            for c in 1..scores.len() {
                if scores[c] > scores[best] {
                    best = c;
                }
            }
            best
        }
    }
}

/// Each point's cross-validated prediction: the [`Ridge`] probe fitted on the points of the other
/// folds predicts the points of fold `f`. `None` when a fit fails.
pub fn probe_predictions(
    x: &[f64],
    d: usize,
    labels: &[usize],
    n_labels: usize,
    fold_of: &[usize],
    folds: usize,
    alpha: f64,
) -> Option<Vec<usize>> {
    let n = labels.len();
    let mut pred = vec![0usize; n];
    for f in 0..folds {
        let train: Vec<usize> = (0..n).filter(|&i| fold_of[i] != f).collect();
        let test: Vec<usize> = (0..n).filter(|&i| fold_of[i] == f).collect();
        if test.is_empty() {
            continue;
        }
        let model = Ridge::fit(x, d, labels, n_labels, &train, alpha)?;
        for i in test {
            pred[i] = model.predict(x, d, i);
        }
    }
    Some(pred)
}

/// 1.0 where the cross-validated probe ([`probe_predictions`]) gets a point's label right, else 0.
pub fn probe_correct(
    x: &[f64],
    d: usize,
    labels: &[usize],
    n_labels: usize,
    fold_of: &[usize],
    folds: usize,
    alpha: f64,
) -> Option<Vec<f64>> {
    let pred = probe_predictions(x, d, labels, n_labels, fold_of, folds, alpha)?;
    Some(
        pred.iter()
            .zip(labels)
            .map(|(p, l)| if p == l { 1.0 } else { 0.0 })
            .collect(),
    )
}
