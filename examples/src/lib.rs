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
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
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
    anyhow::ensure!(
        p.exists(),
        "{} is missing: run `cargo xtask setup`",
        p.display()
    );
    Ok(p)
}

/// Prompts from a JSONL file: each non-blank line is a JSON string or an object with a `prompt`
/// (or `text`) field. Errors name the file and line.
pub fn read_prompts_jsonl(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: invalid JSON", at()))?;
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

/// The workspace root (the examples package's parent directory).
pub fn workspace_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `git rev-parse HEAD` of the workspace and whether the tree has uncommitted changes, for
/// provenance; `None` outside a git checkout.
pub fn git_revision() -> Option<(String, bool)> {
    let dir = workspace_dir();
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(&dir)
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let rev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dirty = std::process::Command::new("git")
        .arg("-C")
        .arg(&dir)
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    Some((rev, dirty))
}

/// Provenance common to every run: git revision, command line, host.
pub fn run_provenance() -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut p = std::collections::BTreeMap::new();
    if let Some((rev, dirty)) = git_revision() {
        p.insert("git_revision".into(), serde_json::json!(rev));
        p.insert("git_dirty".into(), serde_json::json!(dirty));
    }
    p.insert(
        "command".into(),
        serde_json::json!(std::env::args().collect::<Vec<_>>()),
    );
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        p.insert("hostname".into(), serde_json::json!(h.trim()));
    }
    p
}

/// A flag set on the first Ctrl-C / SIGTERM: the trainer then checkpoints and returns, and the run
/// is marked failed ("interrupted; rerun to resume"). A second signal exits at once.
pub fn stop_flag() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, flag.clone());
        let _ = signal_hook::flag::register(sig, flag.clone());
    }
    flag
}
