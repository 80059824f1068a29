//! Small statistics used by the reports: a seeded percentile bootstrap and the median.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

/// A mean with its 95% percentile-bootstrap confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeanCi {
    /// The sample mean.
    pub mean: f64,
    /// 2.5th percentile of the bootstrap means.
    pub ci95_low: f64,
    /// 97.5th percentile of the bootstrap means.
    pub ci95_high: f64,
    /// Number of bootstrap resamples.
    pub resamples: usize,
    /// Seed of the ChaCha8 generator, so the interval is reproducible.
    pub seed: u64,
}

/// Default number of bootstrap resamples.
pub const BOOTSTRAP_RESAMPLES: usize = 2000;
/// Default bootstrap seed.
pub const BOOTSTRAP_SEED: u64 = 1234;

/// Mean of `values` with a 95% percentile bootstrap interval (`resamples` draws with replacement,
/// ChaCha8 seeded with `seed`). An empty input gives NaN everywhere.
pub fn bootstrap_mean_ci(values: &[f64], resamples: usize, seed: u64) -> MeanCi {
    let n = values.len();
    if n == 0 {
        return MeanCi {
            mean: f64::NAN,
            ci95_low: f64::NAN,
            ci95_high: f64::NAN,
            resamples,
            seed,
        };
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut means = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        let mut sum = 0.0;
        for _ in 0..n {
            sum += values[uniform_index(&mut rng, n)];
        }
        means.push(sum / n as f64);
    }
    means.sort_by(f64::total_cmp);
    MeanCi {
        mean,
        ci95_low: percentile_sorted(&means, 0.025),
        ci95_high: percentile_sorted(&means, 0.975),
        resamples,
        seed,
    }
}

/// An unbiased index in `0..n` (rejection sampling on 64-bit draws).
fn uniform_index(rng: &mut ChaCha8Rng, n: usize) -> usize {
    let n = n as u64;
    let zone = u64::MAX - (u64::MAX % n);
    loop {
        let x = rng.next_u64();
        if x < zone {
            return (x % n) as usize;
        }
    }
}

/// Linear-interpolated percentile (numpy's default) of sorted data; `q` in `[0, 1]`.
pub fn percentile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

/// Median (mean of the middle two for an even count); `None` for no values.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    Some(percentile_sorted(&v, 0.5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_brackets_the_mean_and_is_reproducible() {
        let values: Vec<f64> = (0..200)
            .map(|i| if i % 4 == 0 { 1.0 } else { 0.0 })
            .collect();
        let a = bootstrap_mean_ci(&values, 1000, 7);
        let b = bootstrap_mean_ci(&values, 1000, 7);
        assert_eq!(a, b);
        assert!((a.mean - 0.25).abs() < 1e-12);
        assert!(a.ci95_low < 0.25 && a.ci95_high > 0.25);
        // Binomial standard error is sqrt(.25*.75/200) ≈ 0.0306, so the interval is about ±0.06.
        assert!((a.ci95_high - a.ci95_low - 0.12).abs() < 0.03, "{a:?}");
    }

    #[test]
    fn constant_values_have_a_degenerate_interval() {
        let ci = bootstrap_mean_ci(&[1.0; 10], 100, 1);
        assert_eq!((ci.mean, ci.ci95_low, ci.ci95_high), (1.0, 1.0, 1.0));
        assert!(bootstrap_mean_ci(&[], 10, 1).mean.is_nan());
    }

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
