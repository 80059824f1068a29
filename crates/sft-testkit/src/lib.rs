//! Test support for the sft-compose workspace: one policy for what integration tests need.
//!
//! A test that needs a resource builds or finds it, and fails loudly naming what to run when it
//! cannot: nothing here returns "skip".

pub mod fake_openai;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The workspace root (the parent of `crates/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root exists")
}

/// The shared data directory (real GSM8K, Code Alpaca, ShareGPT, HumanEval, MT-Bench files):
/// `$SFT_DATA_DIR` (a relative value is taken from the workspace root, since tests run in their
/// crate's folder), else `<workspace>/../shared/data`. A directory without `gsm8k/train.jsonl`
/// fails the calling test, naming what to set.
pub fn shared_data() -> PathBuf {
    let root = workspace_root();
    let dir = match std::env::var_os("SFT_DATA_DIR").map(PathBuf::from) {
        Some(d) if d.is_relative() => root.join(d),
        Some(d) => d,
        None => root.join("../shared/data"),
    };
    assert!(
        dir.join("gsm8k/train.jsonl").is_file(),
        "shared data not found: {} has no gsm8k/train.jsonl (set SFT_DATA_DIR to the data \
         directory, or put it at ../shared/data beside the checkout)",
        dir.display()
    );
    dir
}

/// The assets directory `cargo xtask setup` fills: `$SFT_ASSETS`, else
/// `$HOME/.cache/sft-compose/assets` (the set-up default).
pub fn assets_dir() -> PathBuf {
    std::env::var_os("SFT_ASSETS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/sft-compose/assets"))
        })
        .expect("neither SFT_ASSETS nor HOME is set: run `eval \"$(cargo xtask env)\"`")
}

/// The asset at `rel` under [`assets_dir`]; a missing one fails the calling test, naming what
/// to run.
pub fn asset(rel: &str) -> PathBuf {
    let p = assets_dir().join(rel);
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask setup` (and `eval \"$(cargo xtask env)\"` to set SFT_ASSETS)",
        p.display()
    );
    p
}

/// The embedded default model, SmolLM2-135M-Instruct as Q4_1 GGUF (fetched by set-up).
pub fn smollm2_gguf() -> PathBuf {
    asset(SMOLLM2_GGUF)
}

/// Where [`smollm2_gguf`] lies under the assets directory.
pub const SMOLLM2_GGUF: &str = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The `name` example binary of package `package`, for the calling test's profile and target
/// directory: used as it is when it is newer than every source file and manifest of the workspace
/// (as after `cargo xtask test`'s `cargo build --workspace --all-targets`), otherwise built now
/// with `cargo build -p PACKAGE --example NAME`. A failed build fails the test with cargo's
/// output and `hint` (what a failed build most likely lacks); nothing is skipped.
pub fn example_binary(package: &str, name: &str, hint: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // <target-dir>/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary outside <target>/<profile>/deps")
        .to_path_buf();
    let bin = profile_dir.join("examples").join(name);
    let root = workspace_root();
    let fresh = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t >= newest_source_mtime(&root));
    if fresh {
        return bin;
    }
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_string(),
        Some(p) => p.to_string(),
        None => panic!("cannot tell the profile from {}", exe.display()),
    };
    let target_dir = profile_dir.parent().expect("target directory");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!(
        "building the {name} example: cargo build -p {package} --example {name} --profile {profile}"
    );
    let out = std::process::Command::new(&cargo)
        .current_dir(&root)
        .args([
            "build",
            "-p",
            package,
            "--example",
            name,
            "--profile",
            &profile,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo:?}: {e}"));
    assert!(
        out.status.success(),
        "`cargo build -p {package} --example {name} --profile {profile}` failed ({}){hint}:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        bin.is_file(),
        "cargo built {name} but {} is missing",
        bin.display()
    );
    bin
}

/// The newest modification time of the Rust sources and manifests under `dir` that an example
/// binary can depend on (not `target/`, `tests/`, `benches/`, `fixtures/`, `docs/`, hidden
/// folders).
pub fn newest_source_mtime(dir: &Path) -> SystemTime {
    const NOT_SOURCES: [&str; 5] = ["target", "tests", "benches", "fixtures", "docs"];
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            if p.is_dir() {
                if !(name.starts_with('.') || NOT_SOURCES.contains(&name.as_ref())) {
                    stack.push(p);
                }
            } else if name.ends_with(".rs") || name == "Cargo.toml" || name == "Cargo.lock" {
                if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
                    newest = newest.max(t);
                }
            }
        }
    }
    newest
}
