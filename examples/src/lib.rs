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

/// Prompts from a JSONL file: each non-blank line is a JSON string or an object with a `prompt`
/// (or `text`) field. Errors name the file and line.
pub fn read_prompts_jsonl(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{}: invalid JSON", at()))?;
        let prompt = match &v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Object(o) => match o.get("prompt").or_else(|| o.get("text")) {
                Some(serde_json::Value::String(s)) => s.clone(),
                _ => anyhow::bail!("{}: object has no string `prompt` field", at()),
            },
            _ => anyhow::bail!("{}: expected a string or an object with `prompt`", at()),
        };
        out.push(prompt);
    }
    Ok(out)
}
