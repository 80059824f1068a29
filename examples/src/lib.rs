//! Glue shared by the example binaries: logging set-up, the `--device` convention, asset paths.
//!
//! Logic that more than one example needs lives here; logic a library user would need belongs in
//! a library crate instead.

use std::path::PathBuf;

pub use sft_llama::device::{DeviceSpec, EnvReport};

/// Start `tracing` logging to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// The directory where `cargo xtask setup` unpacked the real assets (`SFT_ASSETS`).
pub fn assets_dir() -> anyhow::Result<PathBuf> {
    match std::env::var_os("SFT_ASSETS") {
        Some(d) => Ok(PathBuf::from(d)),
        None => anyhow::bail!(
            "SFT_ASSETS is not set: run `cargo xtask setup` and `eval \"$(cargo xtask env)\"` first"
        ),
    }
}

/// The embedded default model: SmolLM2-135M-Instruct, GGUF Q4_1, fetched at set-up.
pub fn default_model() -> anyhow::Result<PathBuf> {
    let p = assets_dir()?.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    anyhow::ensure!(p.exists(), "{} is missing: run `cargo xtask setup`", p.display());
    Ok(p)
}
