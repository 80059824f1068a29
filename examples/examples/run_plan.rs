//! Runs one training plan end to end into a run directory (the contract in `docs/formats.md`).
//!
//! ```text
//! cargo run --release --example run_plan -- --plan fixtures/plans/two-stage-tiny.toml \
//!     --run-dir runs/two-stage-tiny --data-dir fixtures/demo --model fixtures/run/tiny-bytes
//! ```
//!
//! Rerunning the same command resumes: finished stages (in the shared stage store) and finished
//! evaluations are reused. Exit code 0 only when `RUN_DIR/status.json` says `done`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use sft_examples::DeviceSpec;
use sft_local::{LocalBackend, LocalOptions};
use sft_run::RunOptions;

#[derive(Parser)]
#[command(about = "Run a training plan: compose, train every stage, evaluate, record")]
struct Args {
    /// The plan file (TOML; see docs/strategies.md).
    #[arg(long)]
    plan: PathBuf,
    /// The run directory.
    #[arg(long)]
    run_dir: PathBuf,
    /// Data directory the plan's sources resolve against (default: $SFT_DATA_DIR, else ../shared/data).
    #[arg(long, env = "SFT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Base model (GGUF file or HF directory); overrides the plan's `[run] model`.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The shared stage store (default: RUN_DIR/../stages).
    #[arg(long)]
    stage_store: Option<PathBuf>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// A stored stage trained under other training/chat semantics versions than this build's:
    /// `retrain` it or `refuse` to run; overrides the plan's `[run] stale_stages` (default retrain).
    #[arg(long)]
    stale_stages: Option<sft_run::StaleStages>,
}

fn main() -> anyhow::Result<()> {
    sft_examples::init_logging();
    let args = Args::parse();
    let (plan, mut settings) = sft_run::load_plan_file(&args.plan)?;
    if let Some(policy) = args.stale_stages {
        settings.stale_stages = policy;
    }
    let plan_dir = args.plan.parent().map(PathBuf::from).unwrap_or_default();
    let model = match (&args.model, &settings.model) {
        (Some(m), _) => m.clone(),
        (None, Some(m)) => plan_dir.join(m),
        (None, None) => sft_examples::default_model()?,
    };
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => sft_examples::workspace_dir().join("../shared/data"),
    };
    let device = args.device.resolve()?;
    let mut local = LocalOptions::new(device, &model);
    local.progress = !args.quiet;
    local.stop = Some(sft_examples::stop_flag());
    let backend = LocalBackend::new(local)?;
    // One run per replicate seed (`[run] seeds`): into RUN_DIR itself for one seed, else into
    // RUN_DIR/seed-<s>/ with the stage store shared.
    let replicates = settings.replicates();
    let several = replicates.len() > 1;
    let store = args.stage_store.clone().unwrap_or_else(|| {
        RunOptions {
            run_dir: args.run_dir.clone(),
            stage_store: None,
            data_dir: PathBuf::new(),
            base_model: PathBuf::new(),
            provenance: Default::default(),
        }
        .store()
    });
    let mut done = Vec::new();
    for s in &replicates {
        let run_dir = if several {
            args.run_dir.join(format!("seed-{}", s.seed))
        } else {
            args.run_dir.clone()
        };
        let opts = RunOptions {
            run_dir: run_dir.clone(),
            stage_store: Some(store.clone()),
            data_dir: data_dir.clone(),
            base_model: model.clone(),
            provenance: sft_examples::run_provenance(),
        };
        let results = sft_run::run_plan(&plan, s, &opts, &backend).with_context(|| {
            format!(
                "plan {} (seed {}) failed; see {}/status.json",
                plan.name,
                s.seed,
                run_dir.display()
            )
        })?;
        let heldout = sft_run::heldout::HeldoutLosses::read(&run_dir).ok();
        let items = sft_run::items::read_run(&run_dir)?;
        done.push((
            format!("{} (seed {})", plan.name, s.seed),
            results,
            heldout,
            items,
        ));
    }
    let rows: Vec<sft_run::table::Row<'_>> = done
        .iter()
        .map(|(label, results, heldout, items)| sft_run::table::Row {
            label: label.clone(),
            results,
            heldout: heldout.as_ref(),
            items: Some(items),
        })
        .collect();
    print!("{}", sft_run::table::render(&rows));
    println!();
    print!("{}", sft_run::table::render_comparison(&rows, None));
    println!("run directory: {}", args.run_dir.display());
    Ok(())
}
