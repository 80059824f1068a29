//! Synthetic embeddings for the tests: Gaussian clusters, one per source, drawn from a seeded
//! ChaCha8 generator (Box–Muller), so every run sees the same numbers.

#![allow(dead_code)]

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use sft_analyze::{Embeddings, Pool};

pub struct Normal(ChaCha8Rng);

impl Normal {
    pub fn new(seed: u64) -> Self {
        Normal(ChaCha8Rng::seed_from_u64(seed))
    }
    fn uniform(&mut self) -> f64 {
        // (0, 1]: 53 random bits, never 0 so the log is finite.
        ((self.0.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
    pub fn sample(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    pub fn index(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n as u64) as usize
    }
}

pub const SOURCES: [&str; 3] = ["math", "code", "general"];

/// `per_source` records of each of [`SOURCES`] in `dim` dimensions: source `s` is centred at a
/// random point scaled by `spread`, each record adds unit noise. Records are interleaved
/// (math, code, general, math, …) so no test relies on sorted input.
pub fn clusters(model: &str, per_source: usize, dim: usize, spread: f64, seed: u64) -> Embeddings {
    let mut rng = Normal::new(seed);
    let centres: Vec<Vec<f64>> = (0..SOURCES.len())
        .map(|_| (0..dim).map(|_| spread * rng.sample()).collect())
        .collect();
    let mut e = Embeddings {
        model: model.to_string(),
        layer: 15,
        pool: Pool::Mean,
        ids: Vec::new(),
        sources: Vec::new(),
        n_tokens: Vec::new(),
        dim,
        vectors: Vec::new(),
    };
    for i in 0..per_source {
        for (s, name) in SOURCES.iter().enumerate() {
            e.ids.push(format!("{name}-{i}"));
            e.sources.push(name.to_string());
            e.n_tokens.push(10 + (i * 7 + s) % 40);
            e.vectors
                .extend(centres[s].iter().map(|c| (c + rng.sample()) as f32));
        }
    }
    e
}

/// The same records with a second model's vectors: clusters whose centres are `spread` apart
/// (so `spread` sets how separated this model's sources are).
pub fn same_records(base: &Embeddings, model: &str, spread: f64, seed: u64) -> Embeddings {
    let other = clusters(model, base.len() / SOURCES.len(), base.dim, spread, seed);
    Embeddings {
        model: model.to_string(),
        ids: base.ids.clone(),
        sources: base.sources.clone(),
        n_tokens: base.n_tokens.clone(),
        ..other
    }
}
