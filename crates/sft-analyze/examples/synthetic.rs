//! Times the whole analysis on synthetic embeddings the size of the measurement: two
//! models × 3 sources × 100 records of SmolLM2-135M's width (576), and writes the outputs.
//!
//!     cargo run --release -p sft-analyze --example synthetic -- OUT_DIR [PER_SOURCE] [DIM] [THREADS]
//!
//! The "base" model has three overlapping Gaussian clusters, the "tuned" one separates math from
//! the other two (code and general overlap), a shape like the paper's figure. The numbers are
//! synthetic: this measures time and shows the plot, it says nothing about any model.

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use sft_analyze::{analyze, separation_table, write_outputs, AnalysisSettings, Embeddings, Pool};

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u = ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let v = ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

fn model(label: &str, per: usize, dim: usize, spread: [f64; 3], seed: u64) -> Embeddings {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let shared: Vec<f64> = (0..dim).map(|_| normal(&mut rng)).collect();
    let centres: Vec<Vec<f64>> = spread
        .iter()
        .map(|s| shared.iter().map(|c| c + s * normal(&mut rng)).collect())
        .collect();
    let names = ["math", "code", "general"];
    let mut e = Embeddings {
        model: label.into(),
        layer: 15,
        pool: Pool::Mean,
        ids: vec![],
        sources: vec![],
        n_tokens: vec![],
        dim,
        vectors: vec![],
    };
    for (s, name) in names.iter().enumerate() {
        for i in 0..per {
            e.ids.push(format!("{name}-{i}"));
            e.sources.push(name.to_string());
            e.n_tokens.push(40);
            e.vectors.extend(
                centres[s]
                    .iter()
                    .map(|c| (c + 0.5 * normal(&mut rng)) as f32),
            );
        }
    }
    e
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = args
        .first()
        .ok_or("usage: synthetic OUT_DIR [PER_SOURCE] [DIM] [THREADS]")?;
    let per: usize = args.get(1).map_or(Ok(100), |s| s.parse())?;
    let dim: usize = args.get(2).map_or(Ok(576), |s| s.parse())?;
    let threads: usize = args.get(3).map_or(Ok(1), |s| s.parse())?;
    let settings = AnalysisSettings {
        threads,
        ..AnalysisSettings::default()
    };
    let models = [
        model("base", per, dim, [0.1, 0.1, 0.1], 1),
        model("tuned", per, dim, [0.3, 0.08, 0.08], 2),
    ];
    let started = Instant::now();
    let bar = ProgressBar::new(0).with_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} {elapsed}",
    )?);
    let analysis = analyze(&models, &settings, &bar)?;
    let analysed = started.elapsed().as_secs_f64();
    let files = write_outputs(std::path::Path::new(out), &models, &analysis)?;
    println!("{}", separation_table(&analysis));
    println!(
        "analysis {analysed:.2} s, with outputs {:.2} s; {}",
        started.elapsed().as_secs_f64(),
        files.tsne_png.display()
    );
    Ok(())
}
