//! `cargo xtask sweep SPEC [FLAGS]`: set up libtorch, build the release `run_plan` runner and the
//! `sft-sweep` command line (one cargo invocation, so they share their dependencies), then run
//! `sft-sweep SPEC --out target/sweeps/<name> --runner run_plan --runner-env … FLAGS`. The flags
//! are `sft-sweep`'s (`crates/sft-sweep/src/main.rs`, `docs/sweeps.md`); xtask only reads the
//! few that decide what to build. xtask does not depend on `sft-sweep`: it stays a small build.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::setup;

/// Options of `cargo xtask sweep`.
#[derive(Args, Debug)]
pub struct SweepArgs {
    /// The sweep spec (e.g. sweeps/rq1.toml).
    pub spec: PathBuf,
    /// `sft-sweep`'s flags (`cargo run -p sft-sweep -- --help`): --jobs, --devices, --slurm,
    /// --out, --dry-run, --collect-only, --runner, --data-dir, …
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Whether `flag` is among `args` (as `--flag` or `--flag=…`).
fn has_flag(args: &[String], flag: &str) -> bool {
    args.iter()
        .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
}

/// The spec's top-level table (xtask reads only `runner` and `name` from it; `sft-sweep` validates
/// the rest).
fn spec_table(spec: &Path) -> Result<toml::Table> {
    let text =
        std::fs::read_to_string(spec).with_context(|| format!("reading {}", spec.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", spec.display()))
}

/// Runs the subcommand.
pub fn sweep(args: SweepArgs) -> Result<()> {
    let root = setup::workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    // Read once; when nothing is to be built for it, a spec that does not parse is left to
    // `sft-sweep`, whose error names the line.
    let spec = spec_table(&args.spec);
    let listing = has_flag(&args.args, "--dry-run") || has_flag(&args.args, "--collect-only");
    let needs_run_plan = !listing
        && !has_flag(&args.args, "--runner")
        && !spec
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e:#}"))?
            .contains_key("runner");
    let spec = spec.unwrap_or_default();
    let mut build = vec![
        "build",
        "--release",
        "-p",
        "sft-sweep",
        "--bin",
        "sft-sweep",
    ];
    let mut vars: Vec<(String, String)> = Vec::new();
    if needs_run_plan {
        vars = setup::resolved_or_setup()?.vars();
        build.extend(["-p", "sft-examples", "--example", "run_plan"]);
    }
    eprintln!("[sweep] cargo {}", build.join(" "));
    let status = Command::new(setup::cargo())
        .current_dir(&root)
        .args(&build)
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building the sweep failed ({status})");
    }
    let mut cmd = Command::new(target.join("release/sft-sweep"));
    cmd.current_dir(std::env::current_dir()?).arg(&args.spec);
    if !has_flag(&args.args, "--out") {
        if let Some(name) = spec.get("name").and_then(|n| n.as_str()) {
            cmd.arg("--out").arg(target.join("sweeps").join(name));
        }
    }
    if needs_run_plan {
        let bin = target.join("release/examples/run_plan");
        if !bin.is_file() {
            bail!("{} is missing after the build", bin.display());
        }
        cmd.arg("--runner").arg(&bin);
        for (k, v) in &vars {
            cmd.arg("--runner-env").arg(format!("{k}={v}"));
        }
    }
    cmd.args(&args.args);
    let status = cmd.status().context("running sft-sweep")?;
    if !status.success() {
        bail!("sft-sweep failed ({status})");
    }
    Ok(())
}
