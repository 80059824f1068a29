//! Principal component analysis in f64, as scikit-learn's `PCA` computes it.
//!
//! The data are centred; the principal axes come from the symmetric eigen-decomposition
//! (nalgebra) of the smaller of the two products: the `n × n` Gram matrix `X Xᵀ` when there are
//! fewer records than dimensions (the usual case: a few hundred queries, thousands of hidden
//! units), else the `d × d` scatter matrix `Xᵀ X`. Both give the same axes as the SVD of `X`.
//! Components are ordered by decreasing variance and their signs fixed as scikit-learn's
//! `svd_flip(u_based_decision=False)` does (since scikit-learn 1.5): the entry of largest absolute
//! value in each component is positive. So the result does not depend on the eigen-solver's signs.

use nalgebra::{DMatrix, SymmetricEigen};

/// A fitted PCA: the projected data, the axes and their variances.
#[derive(Debug, Clone, PartialEq)]
pub struct Pca {
    /// Number of records.
    pub n: usize,
    /// Number of components kept.
    pub k: usize,
    /// Input dimension.
    pub dim: usize,
    /// Row-major `n × k`: each record's coordinates on the components (`transform`).
    pub scores: Vec<f64>,
    /// Row-major `k × dim`: the unit-length principal axes (`components_`).
    pub components: Vec<f64>,
    /// The variance along each component, `n - 1` denominator (`explained_variance_`).
    pub explained_variance: Vec<f64>,
    /// Each component's share of the total variance (`explained_variance_ratio_`).
    pub explained_variance_ratio: Vec<f64>,
}

/// The number of components kept: `min(wanted, n - 1, dim)` (at least 1).
pub fn components_kept(wanted: usize, n: usize, dim: usize) -> usize {
    wanted.min(n.saturating_sub(1)).min(dim).max(1)
}

/// PCA of `n` row-major rows of `dim` values, keeping `k` components
/// (`k ≤ min(n - 1, dim)`; see [`components_kept`]).
///
/// # Panics
///
/// If `data` is not `n × dim` values or `k` is out of that range.
pub fn pca(data: &[f64], n: usize, dim: usize, k: usize) -> Pca {
    assert_eq!(data.len(), n * dim, "pca: data is not n × dim");
    assert!(k >= 1 && k < n.max(2) && k <= dim, "pca: k out of range");
    let mut x = DMatrix::<f64>::from_row_slice(n, dim, data);
    for j in 0..dim {
        let mean = x.column(j).sum() / n as f64;
        x.column_mut(j).add_scalar_mut(-mean);
    }
    let total_var: f64 = x.iter().map(|v| v * v).sum::<f64>() / (n as f64 - 1.0);

    // axes: dim × k unit columns; eigenvalues: the squared singular values.
    let (mut axes, eig) = if n <= dim {
        let gram = &x * x.transpose();
        let (vecs, vals) = sorted_eigen(gram, k);
        // v_i = Xᵀ u_i / s_i
        let mut axes = x.transpose() * vecs;
        for (i, &lambda) in vals.iter().enumerate() {
            let s = lambda.max(0.0).sqrt();
            let mut col = axes.column_mut(i);
            if s > 0.0 {
                col /= s;
            }
        }
        (axes, vals)
    } else {
        let scatter = x.transpose() * &x;
        sorted_eigen(scatter, k)
    };
    // svd_flip(u_based_decision=False): largest |entry| of each axis positive.
    for i in 0..k {
        let mut col = axes.column_mut(i);
        let (mut best, mut best_abs) = (0usize, -1.0f64);
        for (j, v) in col.iter().enumerate() {
            if v.abs() > best_abs {
                best_abs = v.abs();
                best = j;
            }
        }
        if col[best] < 0.0 {
            col.neg_mut();
        }
    }
    let scores = &x * &axes; // n × k
    let explained_variance: Vec<f64> = eig.iter().map(|l| l.max(0.0) / (n as f64 - 1.0)).collect();
    let explained_variance_ratio = explained_variance
        .iter()
        .map(|v| if total_var > 0.0 { v / total_var } else { 0.0 })
        .collect();
    let mut scores_rm = Vec::with_capacity(n * k);
    for r in 0..n {
        for c in 0..k {
            scores_rm.push(scores[(r, c)]);
        }
    }
    let mut components = Vec::with_capacity(k * dim);
    for c in 0..k {
        components.extend(axes.column(c).iter().copied());
    }
    Pca {
        n,
        k,
        dim,
        scores: scores_rm,
        components,
        explained_variance,
        explained_variance_ratio,
    }
}

/// The `k` eigenvectors (columns) of the symmetric `m` with the largest eigenvalues, in
/// decreasing order (ties by index, so the order is deterministic), and those eigenvalues.
fn sorted_eigen(m: DMatrix<f64>, k: usize) -> (DMatrix<f64>, Vec<f64>) {
    let eig = SymmetricEigen::new(m);
    let mut order: Vec<usize> = (0..eig.eigenvalues.len()).collect();
    order.sort_by(|&a, &b| {
        eig.eigenvalues[b]
            .total_cmp(&eig.eigenvalues[a])
            .then(a.cmp(&b))
    });
    let rows = eig.eigenvectors.nrows();
    let mut vecs = DMatrix::<f64>::zeros(rows, k);
    let mut vals = Vec::with_capacity(k);
    for (c, &i) in order.iter().take(k).enumerate() {
        vecs.set_column(c, &eig.eigenvectors.column(i));
        vals.push(eig.eigenvalues[i]);
    }
    (vecs, vals)
}
