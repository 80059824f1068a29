//! `cargo xtask sweep SPEC`: expand a sweep spec, run its cells (or write a Slurm array), then
//! tabulate and plot the results. The work is in `sft-sweep`; this is the command line.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;
use sft_sweep::{
    collect, paired_tables, plot_all, prepare, run_cells, slurm_script, table1, write_tables,
    Layout, RunOptions, SlurmOptions, SweepSpec,
};

use crate::setup;

/// Options of `cargo xtask sweep`.
#[derive(Args, Debug)]
pub struct SweepArgs {
    /// The sweep spec (e.g. sweeps/rq1.toml).
    pub spec: PathBuf,
    /// Cells run at once (default: the number of --devices, else 1).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Devices, one per running cell: cuda:0,cuda:1 (default: the runner's own choice).
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<String>,
    /// Write a Slurm job-array script (OUT/slurm/sweep.sbatch) instead of running.
    #[arg(long)]
    pub slurm: bool,
    /// The device each Slurm task passes to the runner.
    #[arg(long, default_value = "cuda")]
    pub slurm_device: String,
    /// Output directory (default: target/sweeps/<spec name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// List the cells and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Only tabulate and plot what is finished.
    #[arg(long)]
    pub collect_only: bool,
    /// The runner command instead of the built run_plan (whitespace-separated argv).
    #[arg(long)]
    pub runner: Option<String>,
    /// The data directory passed to the runner (default: the spec's, else $SFT_DATA_DIR).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs the subcommand.
pub fn sweep(args: SweepArgs) -> Result<()> {
    init_logging();
    let spec = SweepSpec::from_path(&args.spec)?;
    let cells = spec.expand(&args.spec)?;
    let root = setup::workspace_root();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("target/sweeps").join(&spec.name));
    let layout = Layout::new(&out);
    let grid_points: usize = cells.iter().map(|c| c.grids.len()).sum();
    eprintln!(
        "[sweep] {}: {} cells ({} grid points) -> {}",
        spec.name,
        cells.len(),
        grid_points,
        layout.out().display()
    );
    if args.dry_run {
        for c in &cells {
            println!("{:>4}  {}  [{}]", c.index, c.id, c.grids.join(", "));
        }
        return Ok(());
    }
    let data_dir = args.data_dir.clone().or_else(|| spec.data_dir(&args.spec));
    if !args.collect_only {
        let (runner, env) = runner_command(&args, &spec, &root)?;
        if args.slurm {
            prepare(&cells, &layout)?;
            let script = slurm_script(
                &cells,
                &layout,
                &SlurmOptions {
                    runner,
                    data_dir,
                    device: Some(args.slurm_device.clone()),
                    env,
                    spec: spec.slurm.clone().unwrap_or_default(),
                    job_name: format!("sweep-{}", spec.name),
                },
            )?;
            let path = layout.slurm_dir().join("sweep.sbatch");
            std::fs::create_dir_all(layout.slurm_dir().join("logs"))?;
            std::fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
            println!(
                "wrote {} ({} array tasks)\nsubmit: sbatch {}",
                path.display(),
                cells.len(),
                path.display()
            );
            println!(
                "afterwards: cargo xtask sweep {} --out {} --collect-only",
                args.spec.display(),
                out.display()
            );
            return Ok(());
        }
        let jobs = args.jobs.unwrap_or(args.devices.len().max(1));
        let summary = run_cells(
            &cells,
            &layout,
            &RunOptions {
                runner,
                jobs,
                devices: args.devices.clone(),
                data_dir,
                env,
            },
        )?;
        eprintln!(
            "[sweep] {} skipped (done), {} run: {} succeeded, {} failed",
            summary.skipped,
            summary.executed.len(),
            summary.succeeded.len(),
            summary.failed.len()
        );
    }
    let table = collect(&cells, &layout)?;
    let files = write_tables(&table, &layout.results_dir())?;
    for f in &files {
        println!("{}", f.display());
    }
    if let Some(t1) = table1(&table) {
        let path = layout.results_dir().join("table1.md");
        std::fs::write(&path, &t1)?;
        println!("{}", path.display());
        print!("{t1}");
    }
    if let Some(paired) = paired_tables(&table, &layout)? {
        let path = layout.results_dir().join("paired.md");
        std::fs::write(&path, &paired)?;
        println!("{}", path.display());
    }
    let plots = plot_all(&spec, &table, &layout.plots_dir())?;
    for p in plots.png.iter().chain(&plots.svg) {
        println!("{}", p.display());
    }
    let failed: Vec<&str> = table
        .cells
        .iter()
        .filter(|s| s.state == "failed")
        .map(|s| s.cell.id.as_str())
        .collect();
    let unfinished = table.cells.iter().filter(|s| s.state != "done").count();
    if !failed.is_empty() {
        bail!(
            "{} of {} cells failed (see {}): {}",
            failed.len(),
            cells.len(),
            layout.results_dir().join("cells.md").display(),
            failed.join(", ")
        );
    }
    if unfinished > 0 && !args.collect_only {
        bail!("{unfinished} cells are not done");
    }
    Ok(())
}

/// A command line and the environment variables it needs.
type CommandEnv = (Vec<String>, Vec<(String, String)>);

/// The runner argv and its environment: `--runner`, else the spec's `runner`, else the release
/// `run_plan` example, built here with set-up's libtorch environment.
fn runner_command(args: &SweepArgs, spec: &SweepSpec, root: &Path) -> Result<CommandEnv> {
    if let Some(r) = &args.runner {
        // Relative paths that exist become absolute, so Slurm tasks find them from any directory.
        let argv = r
            .split_whitespace()
            .map(|a| match Path::new(a) {
                p if p.is_relative() && p.exists() => {
                    std::path::absolute(p).map_or(a.to_string(), |p| p.display().to_string())
                }
                _ => a.to_string(),
            })
            .collect();
        return Ok((argv, Vec::new()));
    }
    if let Some(r) = &spec.runner {
        return Ok((r.clone(), Vec::new()));
    }
    let env = setup::resolved_or_setup()?;
    let vars: Vec<(String, String)> = env
        .exports()
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect();
    eprintln!(
        "[sweep] building run_plan (cargo build --release -p sft-examples --example run_plan)"
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .args([
            "build",
            "--release",
            "-p",
            "sft-examples",
            "--example",
            "run_plan",
        ])
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building run_plan failed ({status})");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("release/examples/run_plan");
    if !bin.is_file() {
        bail!("{} is missing after the build", bin.display());
    }
    Ok((vec![bin.display().to_string()], vars))
}
