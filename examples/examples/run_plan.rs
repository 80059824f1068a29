//! Runs one training plan end to end into a run directory (the contract in `docs/formats.md`).
//!
//! ```text
//! cargo run --release --example run_plan -- --plan fixtures/plans/two-stage-tiny.toml \
//!     --run-dir runs/two-stage-tiny --data-dir fixtures/demo --model fixtures/run/tiny-bytes
//! ```
//!
//! Rerunning the same command resumes: finished stages (in the shared stage store) and finished
//! evaluations are reused. Exit code 0 only when `RUN_DIR/status.json` says `done`.
//!
//! Data parallel: `--nproc-per-node N` starts N ranks of this command on this machine (as the
//! `train` example does); under torchrun or `srun` each process joins as its rank. Rank 0 runs
//! the plan exactly as one process would and trains every stage it trains on all ranks (the
//! global batch is N × micro_batch_size × grad_accum); the other ranks only train those stages
//! with it (`sft_local::dist`) and exit with rank 0's outcome.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
    /// Data parallel on this machine: run N ranks (Gloo on CPU, NCCL with one GPU per rank);
    /// every stage's global batch is N × micro_batch_size × grad_accum. Under torchrun or srun
    /// (RANK/WORLD_SIZE or SLURM_PROCID set) each process joins as its rank instead.
    #[arg(long, default_value_t = 1)]
    nproc_per_node: usize,
    /// Seconds a rendezvous or collective may take, and rank 0 may stay silent, before a rank
    /// fails (a dead or hung rank).
    #[arg(long, default_value_t = 1800)]
    dist_timeout_s: u64,
    /// Print every stage's per-device memory estimate (for this device, `--nproc-per-node`
    /// ranks and the stage's `zero`) as a table and JSON, and exit without running anything.
    #[arg(long)]
    estimate: bool,
}

fn main() -> anyhow::Result<()> {
    sft_examples::init_logging();
    let args = Args::parse();
    if args.estimate {
        return estimate(&args);
    }
    if sft_examples::launch_local_ranks(args.nproc_per_node)? {
        return Ok(());
    }
    let launch = sft_examples::launch_from_env()?;
    let timeout = Duration::from_secs(args.dist_timeout_s);
    let device = sft_examples::rank_device(args.device.resolve()?, launch.as_ref());
    match launch {
        None => run(&args, device, None),
        Some(l) if l.rank != 0 => {
            // A follower: trains the stages rank 0 hands over, writes nothing of the run.
            let followed =
                sft_local::dist::follow(&l, timeout, device, Some(sft_examples::stop_flag()))
                    .with_context(|| format!("rank {} of {}", l.rank, l.world_size))?;
            tracing::info!(
                rank = l.rank,
                stages = followed.stages,
                "rank 0's plan is done"
            );
            Ok(())
        }
        Some(l) => {
            let leader = sft_local::dist::Leader::start(l, timeout)?;
            let result = run(&args, device, Some(leader.clone()));
            let error = result.as_ref().err().map(|e| format!("{e:#}"));
            if let Err(e) = leader.finish(error.as_deref()) {
                tracing::warn!("{e}");
            }
            result
        }
    }
}

/// The base model: `--model`, else the plan's `[run] model` (relative to the plan file), else
/// the embedded default.
fn base_model(args: &Args, settings: &sft_run::RunSettings) -> anyhow::Result<PathBuf> {
    let plan_dir = args.plan.parent().map(PathBuf::from).unwrap_or_default();
    Ok(match (&args.model, &settings.model) {
        (Some(m), _) => m.clone(),
        (None, Some(m)) => plan_dir.join(m),
        (None, None) => sft_examples::default_model()?,
    })
}

/// `--estimate`: each stage's memory estimate, nothing run.
fn estimate(args: &Args) -> anyhow::Result<()> {
    use sft_config::memory::{gib, DeviceKind, MemoryEstimate, ModelShape, Parallel};
    let (plan, settings) = sft_run::load_plan_file(&args.plan)?;
    let model = base_model(args, &settings)?;
    let shape = ModelShape::from_model_path(&model)?;
    let kind = match args.device {
        DeviceSpec::Cuda(_) => DeviceKind::Cuda,
        DeviceSpec::Cpu => DeviceKind::Cpu,
        DeviceSpec::Auto => match args.device.resolve()? {
            tch::Device::Cuda(_) => DeviceKind::Cuda,
            _ => DeviceKind::Cpu,
        },
    };
    let world =
        sft_examples::launch_from_env()?.map_or(args.nproc_per_node.max(1), |l| l.world_size);
    let mut rows = Vec::new();
    eprintln!(
        "{} on {kind:?}, {world} rank(s), {} parameters",
        model.display(),
        shape.parameters()
    );
    eprintln!(
        "{:<24} {:>6} {:>6} {:>6} {:>6} {:>5} {:>12}",
        "stage", "micro", "len", "ckpt", "chunk", "zero", "peak"
    );
    for stage in &plan.stages {
        let c = &stage.config;
        let par = Parallel {
            world_size: world as u64,
            zero: c.zero,
        };
        let est = MemoryEstimate::new(&shape, c, par, kind);
        eprintln!(
            "{:<24} {:>6} {:>6} {:>6} {:>6} {:>5} {:>12}",
            stage.name,
            c.micro_batch_size,
            c.max_len,
            c.activation_checkpointing,
            c.loss_chunk,
            c.zero,
            gib(est.peak)
        );
        rows.push(serde_json::json!({"stage": stage.name, "estimate": est}));
    }
    println!("{}", serde_json::to_string_pretty(&rows)?);
    Ok(())
}

/// The plan as one process runs it (or rank 0 of a data-parallel launch, with `leader`).
fn run(
    args: &Args,
    device: tch::Device,
    leader: Option<Arc<sft_local::dist::Leader>>,
) -> anyhow::Result<()> {
    let (plan, mut settings) = sft_run::load_plan_file(&args.plan)?;
    if let Some(policy) = args.stale_stages {
        settings.stale_stages = policy;
    }
    let model = base_model(args, &settings)?;
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => sft_examples::workspace_dir().join("../shared/data"),
    };
    let mut local = LocalOptions::new(device, &model);
    local.progress = !args.quiet;
    local.stop = Some(sft_examples::stop_flag());
    local.leader = leader;
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
