//! `sft-sweep SPEC`: expand a sweep spec, run its cells (or write a Slurm array), then tabulate
//! and plot the results. The work is in the `sft_sweep` library; this is its command line.
//!
//! ```text
//! sft-sweep sweeps/mini_rq4.toml --runner "target/release/examples/run_plan" \
//!     --runner-env LIBTORCH=/path/to/torch [--jobs N] [--devices cuda:0,cuda:1] [--out DIR]
//! sft-sweep sweeps/rq4.toml --dry-run [--device-memory-gib 80]
//! ```
//!
//! `cargo xtask sweep SPEC [FLAGS]` is the usual entry point: it sets up libtorch, builds the
//! release `run_plan` runner and this binary, and runs it with `--runner` and `--runner-env`
//! filled in. See `docs/sweeps.md`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use sft_sweep::{
    collect, dry_run_listing, paired_tables, plot_all, prepare, run_cells, slurm_script, table1,
    write_tables, Layout, MemoryTarget, RunOptions, SlurmOptions, SweepSpec,
};

/// Run an experiment sweep: every cell of a spec, resumable, then tables and plots.
#[derive(Parser, Debug)]
#[command(name = "sft-sweep")]
struct Cli {
    /// The sweep spec (e.g. sweeps/rq1.toml).
    spec: PathBuf,
    /// Cells run at once (default: the number of --devices, else 1).
    #[arg(long)]
    jobs: Option<usize>,
    /// Devices, one per running cell: cuda:0,cuda:1 (default: the runner's own choice).
    #[arg(long, value_delimiter = ',')]
    devices: Vec<String>,
    /// Write a Slurm job-array script (OUT/slurm/sweep.sbatch) instead of running.
    #[arg(long)]
    slurm: bool,
    /// The device each Slurm task passes to the runner.
    #[arg(long, default_value = "cuda")]
    slurm_device: String,
    /// Output directory (default: $CARGO_TARGET_DIR/sweeps/<spec name>, else
    /// ./target/sweeps/<spec name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// List the cells, each with its estimated peak memory per device (the largest of its
    /// stages': model shape, dtype, zero, ranks per cell; see docs/sweeps.md), and exit.
    #[arg(long)]
    dry_run: bool,
    /// With --dry-run: mark the cells whose estimate exceeds G GiB per device (OVER) and count
    /// them.
    #[arg(long, value_name = "G", requires = "dry_run", value_parser = positive_gib)]
    device_memory_gib: Option<f64>,
    /// Only tabulate and plot what is finished.
    #[arg(long)]
    collect_only: bool,
    /// The runner command (whitespace-separated argv), e.g. target/release/examples/run_plan;
    /// default: the spec's `runner`.
    #[arg(long)]
    runner: Option<String>,
    /// An environment variable for the runner as NAME=VALUE (repeatable): set for every cell
    /// and exported at the top of a Slurm script (`LIBTORCH`, `LD_LIBRARY_PATH`, …).
    #[arg(long, value_name = "NAME=VALUE")]
    runner_env: Vec<String>,
    /// The data directory passed to the runner (default: the spec's, else the runner's own).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn positive_gib(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(g) if g.is_finite() && g > 0.0 => Ok(g),
        _ => Err(format!("{s:?} is not a positive number of GiB")),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> Result<()> {
    init_logging();
    sweep(Cli::parse())
}

/// `--runner`'s argv: relative paths that exist become absolute, so Slurm tasks find them from
/// any directory.
fn runner_argv(runner: &str) -> Vec<String> {
    runner
        .split_whitespace()
        .map(|a| match Path::new(a) {
            p if p.is_relative() && p.exists() => {
                std::path::absolute(p).map_or(a.to_string(), |p| p.display().to_string())
            }
            _ => a.to_string(),
        })
        .collect()
}

fn runner_env(pairs: &[String]) -> Result<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("--runner-env {p:?}: expected NAME=VALUE"),
        })
        .collect()
}

fn sweep(args: Cli) -> Result<()> {
    let spec = SweepSpec::from_path(&args.spec)?;
    let cells = spec.expand(&args.spec)?;
    let out = args.out.clone().unwrap_or_else(|| {
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("target"))
            .join("sweeps")
            .join(&spec.name)
    });
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
        let target = MemoryTarget::new(
            &spec,
            args.slurm.then_some(args.slurm_device.as_str()),
            &args.devices,
        );
        eprintln!(
            "[sweep] memory per device: {target}; each stage's dtype, zero and batch; a cell's \
             peak is its largest stage's"
        );
        print!(
            "{}",
            dry_run_listing(&spec, &cells, &target, args.device_memory_gib)
        );
        return Ok(());
    }
    let data_dir = args.data_dir.clone().or_else(|| spec.data_dir(&args.spec));
    if !args.collect_only {
        let runner = match (&args.runner, &spec.runner) {
            (Some(r), _) => runner_argv(r),
            (None, Some(r)) => r.clone(),
            (None, None) => bail!(
                "{}: no runner: pass --runner CMD (e.g. target/release/examples/run_plan), or use \
                 `cargo xtask sweep`, which builds run_plan and passes it",
                args.spec.display()
            ),
        };
        let env = runner_env(&args.runner_env)?;
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
                "afterwards: sft-sweep {} --out {} --collect-only",
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
    for f in write_tables(&table, &layout.results_dir())? {
        println!("{}", f.display());
    }
    if let Some(t1) = table1(&table) {
        let path = layout.results_dir().join("table1.md");
        std::fs::write(&path, &t1).with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
        print!("{t1}");
    }
    if let Some(paired) = paired_tables(&table, &layout)? {
        let path = layout.results_dir().join("paired.md");
        std::fs::write(&path, &paired).with_context(|| format!("writing {}", path.display()))?;
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
