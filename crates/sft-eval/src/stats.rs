//! The workspace's one statistics module: every interval a report or `results.json` shows is
//! computed here.
//!
//! [`Estimate`] is a point estimate with its 95% interval, its sample size and the [`Method`]
//! that made the interval. Its constructors are the methods the evaluations use:
//!
//! | constructor | method tag | for |
//! | --- | --- | --- |
//! | [`Estimate::wilson`] | `wilson` | a proportion `k / n` (GSM8K accuracy, HumanEval pass@1) |
//! | [`Estimate::mean_se`] | `mean_se` | a mean of per-item values, mean ± 1.96 standard errors (held-out loss, MT-Bench scores) |
//! | [`Estimate::bootstrap`] | `bootstrap` | a mean with a seeded 95% percentile bootstrap ([`bootstrap_mean_ci`]) |
//! | [`Estimate::paired_difference`] | `paired_mean_se` | the mean difference of paired values (two models on the same items), mean ± 1.96 SE of the differences |
//! | [`Estimate::paired_bootstrap`] | `paired_bootstrap` | the same mean difference with a seeded 95% percentile bootstrap over the items (resampling pairs) |
//! | [`Estimate::mean_t`] | `mean_t` | a mean over a few replicates (seeds), mean ± t(n−1) · SE |
//!
//! Besides: [`bootstrap_mean_ci`] (the bootstrap with its resample count and seed, as GSM8K's
//! report writes per filter), [`percentile_sorted`] and [`median`].

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};

/// The standard normal's 97.5th percentile (`scipy.stats.norm.ppf(0.975)`), the Wilson
/// interval's `z`.
pub const Z95: f64 = 1.959_963_984_540_054;

/// The multiplier of the standard error in [`Estimate::mean_se`] and
/// [`Estimate::paired_difference`]: the conventional rounded 1.96.
pub const SE_MULTIPLIER: f64 = 1.96;

/// How an [`Estimate`]'s interval was computed (serialized in snake_case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// The 95% Wilson score interval of a proportion.
    Wilson,
    /// Mean ± 1.96 standard errors (sample standard deviation, `n - 1`).
    MeanSe,
    /// The 95% percentile bootstrap of the mean (seeded ChaCha8).
    Bootstrap,
    /// Mean ± 1.96 standard errors of paired differences.
    PairedMeanSe,
    /// The 95% percentile bootstrap of the mean paired difference (items resampled as pairs,
    /// seeded ChaCha8).
    PairedBootstrap,
    /// Mean ± the t distribution's 97.5th percentile (`n − 1` degrees of freedom) times the
    /// standard error: a 95% interval for a mean over a few replicates (e.g. seeds).
    MeanT,
}

/// A point estimate with its 95% interval and sample size: the headline of every task's report
/// and, copied unchanged, a metric of `results.json` (`sft_run::Metric` is this type).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The point estimate.
    pub value: f64,
    /// Lower end of the 95% interval.
    pub ci_low: f64,
    /// Upper end of the 95% interval.
    pub ci_high: f64,
    /// How many items it is computed over.
    pub n: usize,
    /// How the interval was computed; absent in files written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Method>,
}

impl Estimate {
    /// A proportion `k / n` with its 95% Wilson score interval (statsmodels'
    /// `proportion_confint(k, n, method="wilson")`), clamped to `[0, 1]`. `n = 0` gives the
    /// value 0 with the interval `[0, 1]`.
    pub fn wilson(k: usize, n: usize) -> Estimate {
        let method = Some(Method::Wilson);
        if n == 0 {
            return Estimate {
                value: 0.0,
                ci_low: 0.0,
                ci_high: 1.0,
                n,
                method,
            };
        }
        let z = Z95;
        let nf = n as f64;
        let p = k as f64 / nf;
        let denom = 1.0 + z * z / nf;
        let centre = (p + z * z / (2.0 * nf)) / denom;
        let half = z * (p * (1.0 - p) / nf + z * z / (4.0 * nf * nf)).sqrt() / denom;
        Estimate {
            value: p,
            ci_low: (centre - half).max(0.0),
            ci_high: (centre + half).min(1.0),
            n,
            method,
        }
    }

    /// The mean of `values` with mean ± 1.96 standard errors (sample standard deviation with
    /// `n - 1`, as `scipy.stats.sem`; a single value has a zero-width interval). No values give
    /// NaN everywhere.
    pub fn mean_se(values: &[f64]) -> Estimate {
        Self::mean_se_tagged(values, Method::MeanSe)
    }

    fn mean_se_tagged(values: &[f64], method: Method) -> Estimate {
        let n = values.len();
        if n == 0 {
            return Estimate {
                value: f64::NAN,
                ci_low: f64::NAN,
                ci_high: f64::NAN,
                n,
                method: Some(method),
            };
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let var = if n > 1 {
            values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0)
        } else {
            0.0
        };
        let half = SE_MULTIPLIER * (var / n as f64).sqrt();
        Estimate {
            value: mean,
            ci_low: mean - half,
            ci_high: mean + half,
            n,
            method: Some(method),
        }
    }

    /// The mean of `values` with its 95% percentile bootstrap interval ([`bootstrap_mean_ci`]
    /// with `resamples` draws and ChaCha8 `seed`).
    pub fn bootstrap(values: &[f64], resamples: usize, seed: u64) -> Estimate {
        let ci = bootstrap_mean_ci(values, resamples, seed);
        Estimate {
            value: ci.mean,
            ci_low: ci.ci95_low,
            ci_high: ci.ci95_high,
            n: values.len(),
            method: Some(Method::Bootstrap),
        }
    }

    /// The mean of the paired differences `a[i] - b[i]` (e.g. two models scored on the same
    /// items) with mean ± 1.96 standard errors of the differences. The pairing removes the
    /// between-item variance an unpaired comparison of two intervals would carry.
    /// Fails when the lengths differ.
    pub fn paired_difference(a: &[f64], b: &[f64]) -> Result<Estimate> {
        if a.len() != b.len() {
            return Err(EvalError::Mismatch(format!(
                "paired difference of {} and {} values",
                a.len(),
                b.len()
            )));
        }
        let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
        Ok(Self::mean_se_tagged(&d, Method::PairedMeanSe))
    }

    /// The mean of the paired differences `a[i] - b[i]` with a 95% percentile bootstrap
    /// interval: each of `resamples` draws resamples the item indices with replacement (ChaCha8
    /// `seed`, the draws of [`bootstrap_mean_ci`]) and takes the mean difference over them, so
    /// both members of a pair always travel together. Fails when the lengths differ.
    pub fn paired_bootstrap(a: &[f64], b: &[f64], resamples: usize, seed: u64) -> Result<Estimate> {
        if a.len() != b.len() {
            return Err(EvalError::Mismatch(format!(
                "paired bootstrap of {} and {} values",
                a.len(),
                b.len()
            )));
        }
        let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
        let ci = bootstrap_mean_ci(&d, resamples, seed);
        Ok(Estimate {
            value: ci.mean,
            ci_low: ci.ci95_low,
            ci_high: ci.ci95_high,
            n: d.len(),
            method: Some(Method::PairedBootstrap),
        })
    }
}

impl Estimate {
    /// The mean of `values` (e.g. one metric over replicate seeds) with the 95% Student-t
    /// interval: mean ± [`t975`]`(n − 1)` · SD / √n (sample SD, `n − 1`), as
    /// `scipy.stats.t.interval(0.95, n - 1, mean, sem)`. One value has a zero-width interval;
    /// none gives NaN everywhere.
    pub fn mean_t(values: &[f64]) -> Estimate {
        let mut e = Self::mean_se_tagged(values, Method::MeanT);
        if values.len() > 1 {
            let half = (e.ci_high - e.value) / SE_MULTIPLIER * t975(values.len() - 1);
            e.ci_low = e.value - half;
            e.ci_high = e.value + half;
        }
        e
    }
}

/// The t distribution's 97.5th percentile with `df` degrees of freedom
/// (`scipy.stats.t.ppf(0.975, df)`): tabulated to 6 decimals for `df ≤ 30`, the Cornish–Fisher
/// expansion (error below 1e-5) above. `df = 0` is infinite.
pub fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157,
        2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922,
        2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831,
        2.048407, 2.045230, 2.042272,
    ];
    match df {
        0 => f64::INFINITY,
        d if d <= 30 => T[d - 1],
        d => {
            let (z, n) = (Z95, d as f64);
            z + (z.powi(3) + z) / (4.0 * n)
                + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * n * n)
                + (3.0 * z.powi(7) + 19.0 * z.powi(5) + 17.0 * z.powi(3) - 15.0 * z)
                    / (384.0 * n.powi(3))
        }
    }
}

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
    fn mean_t_is_the_student_t_interval() {
        // scipy.stats.t.interval(0.95, 2, loc=2.0, scale=sem([1, 2, 3])) = (-0.4841377, 4.4841377)
        let e = Estimate::mean_t(&[1.0, 2.0, 3.0]);
        assert_eq!(e.method, Some(Method::MeanT));
        assert!((e.value - 2.0).abs() < 1e-12);
        assert!((e.ci_low - -0.4841377).abs() < 1e-6, "{e:?}");
        assert!((e.ci_high - 4.4841377).abs() < 1e-6, "{e:?}");
        let one = Estimate::mean_t(&[0.5]);
        assert_eq!((one.ci_low, one.ci_high, one.n), (0.5, 0.5, 1));
        // scipy.stats.t.ppf(0.975, [31, 60, 1000]) = 2.039513, 2.000298, 1.962339
        for (df, want) in [(31, 2.039513), (60, 2.000298), (1000, 1.962339)] {
            assert!((t975(df) - want).abs() < 2e-5, "df {df}: {}", t975(df));
        }
        assert_eq!(serde_json::to_value(Method::MeanT).unwrap(), "mean_t");
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn wilson_matches_statsmodels() {
        // statsmodels.stats.proportion.proportion_confint(8, 10, method="wilson")
        //   → (0.490162, 0.943318)
        let m = Estimate::wilson(8, 10);
        assert_eq!((m.value, m.n, m.method), (0.8, 10, Some(Method::Wilson)));
        assert!(
            close(m.ci_low, 0.490_162) && close(m.ci_high, 0.943_318),
            "{m:?}"
        );
        // proportion_confint(37, 50, method="wilson") → (0.604468, 0.841285)
        let m = Estimate::wilson(37, 50);
        assert!(
            close(m.ci_low, 0.604_468) && close(m.ci_high, 0.841_285),
            "{m:?}"
        );
        // proportion_confint(0, 5, method="wilson") → (0.0, 0.434482)
        let z = Estimate::wilson(0, 5);
        assert_eq!(z.ci_low, 0.0);
        assert!(close(z.ci_high, 0.434_482), "{z:?}");
        let e = Estimate::wilson(0, 0);
        assert_eq!((e.value, e.ci_low, e.ci_high), (0.0, 0.0, 1.0));
    }

    #[test]
    fn mean_se_matches_scipy_sem() {
        // scipy.stats.sem([1, 2, 3, 4]) → 0.6454972243679028; 2.5 ± 1.96 · sem
        let m = Estimate::mean_se(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!((m.value, m.n, m.method), (2.5, 4, Some(Method::MeanSe)));
        assert!((m.ci_low - 1.234_825_440_238_910_5).abs() < 1e-12, "{m:?}");
        assert!((m.ci_high - 3.765_174_559_761_089_5).abs() < 1e-12, "{m:?}");
        let one = Estimate::mean_se(&[3.0]);
        assert_eq!((one.ci_low, one.ci_high), (3.0, 3.0));
        assert!(Estimate::mean_se(&[]).value.is_nan());
    }

    #[test]
    fn paired_difference_is_the_interval_of_the_differences() {
        // d = [0.2, 0.15, -0.05, 0.1, 0.0]: mean 0.08, scipy.stats.sem(d) → 0.0463680924774785
        let a = [0.9, 0.8, 0.75, 0.6, 0.7];
        let b = [0.7, 0.65, 0.8, 0.5, 0.7];
        let d = Estimate::paired_difference(&a, &b).unwrap();
        assert_eq!((d.n, d.method), (5, Some(Method::PairedMeanSe)));
        assert!((d.value - 0.08).abs() < 1e-12, "{d:?}");
        assert!(
            (d.ci_low - (0.08 - 1.96 * 0.046_368_092_477_478_5)).abs() < 1e-12,
            "{d:?}"
        );
        assert!(
            (d.ci_high - (0.08 + 1.96 * 0.046_368_092_477_478_5)).abs() < 1e-12,
            "{d:?}"
        );
        assert!(Estimate::paired_difference(&a, &b[..4]).is_err());
    }

    #[test]
    fn paired_bootstrap_resamples_pairs_as_a_hand_written_bootstrap_does() {
        let a = [0.9, 0.8, 0.75, 0.6, 0.7, 1.2, 0.4];
        let b = [0.7, 0.65, 0.8, 0.5, 0.7, 0.9, 0.45];
        let e = Estimate::paired_bootstrap(&a, &b, 300, 5).unwrap();
        // The same draws by hand: ChaCha8(5), n draws of uniform_index per resample.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut means: Vec<f64> = (0..300)
            .map(|_| {
                (0..a.len())
                    .map(|_| {
                        let i = uniform_index(&mut rng, a.len());
                        a[i] - b[i]
                    })
                    .sum::<f64>()
                    / a.len() as f64
            })
            .collect();
        means.sort_by(f64::total_cmp);
        let mean = a.iter().zip(&b).map(|(x, y)| x - y).sum::<f64>() / a.len() as f64;
        assert!((e.value - mean).abs() < 1e-12, "{e:?}");
        assert_eq!(e.ci_low, percentile_sorted(&means, 0.025));
        assert_eq!(e.ci_high, percentile_sorted(&means, 0.975));
        assert_eq!((e.n, e.method), (7, Some(Method::PairedBootstrap)));
        assert!(e.ci_low < e.value && e.value < e.ci_high);
        assert!(Estimate::paired_bootstrap(&a, &b[..4], 10, 1).is_err());
    }

    #[test]
    fn bootstrap_estimate_is_the_bootstrap_interval() {
        let values: Vec<f64> = (0..40).map(|i| f64::from(i % 3 == 0)).collect();
        let ci = bootstrap_mean_ci(&values, 500, 9);
        let e = Estimate::bootstrap(&values, 500, 9);
        assert_eq!(
            (e.value, e.ci_low, e.ci_high),
            (ci.mean, ci.ci95_low, ci.ci95_high)
        );
        assert_eq!((e.n, e.method), (40, Some(Method::Bootstrap)));
    }

    #[test]
    fn the_method_tag_is_additive_in_json() {
        let e = Estimate::wilson(1, 2);
        let v = serde_json::to_value(e).unwrap();
        assert_eq!(v["method"], "wilson");
        let old: Estimate =
            serde_json::from_str(r#"{"value":0.5,"ci_low":0.1,"ci_high":0.9,"n":2}"#).unwrap();
        assert_eq!(old.method, None);
        assert_eq!(serde_json::from_value::<Estimate>(v).unwrap(), e);
    }

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
