//! Supervised fine-tuning of a LLaMA-architecture model on a chat mixture (JSONL or Parquet, as
//! `sft-compose` writes them).
//!
//! ```text
//! cargo run --release --example train -- --model $SFT_ASSETS/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
//!     --data mix.jsonl --out runs/sft1 --template chatml --max-steps 20 --device cpu
//! ```
//!
//! Hyperparameters come from `--config FILE.toml` (any `TrainConfig` field), then flags override.
//! Re-running with the same `--out` resumes from the newest complete checkpoint; `--resume`
//! makes a missing checkpoint an error, `--fresh` refuses to touch existing ones.
//! SIGINT/SIGTERM finish the current step, checkpoint and exit 0; a second signal exits at once.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use sft_train::{
    Dtype, Overlong, Resume, RunOptions, Schedule, TrainConfig, TrainData, TrainJob, TrainOverrides,
};

#[derive(Parser, Debug)]
#[command(about = "Supervised fine-tuning with assistant-only loss (sft-train)")]
struct Args {
    /// Starting weights: HF directory (config.json + safetensors) or .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// Tokenizer (.gguf, HF dir or tokenizer.json); default: found from --model.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Training data: chat JSONL or Parquet ({"id","source","messages":[{role,content}]}).
    #[arg(long)]
    data: PathBuf,
    /// Output directory (metrics.jsonl, checkpoints/, final/).
    #[arg(long)]
    out: PathBuf,
    /// TOML file with TrainConfig fields; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Chat template: vicuna_v1.1, chatml, or model (the tokenizer's Jinja template).
    #[arg(long)]
    template: Option<String>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    epochs: Option<u32>,
    #[arg(long)]
    max_steps: Option<u64>,
    #[arg(long)]
    micro_batch_size: Option<usize>,
    #[arg(long)]
    grad_accum: Option<usize>,
    #[arg(long)]
    warmup_ratio: Option<f64>,
    /// cosine, linear or constant.
    #[arg(long)]
    schedule: Option<Schedule>,
    #[arg(long)]
    weight_decay: Option<f64>,
    /// 0 disables clipping (the pre-clip norm is logged either way).
    #[arg(long)]
    max_grad_norm: Option<f64>,
    #[arg(long)]
    max_len: Option<usize>,
    /// truncate or drop over-long conversations.
    #[arg(long, value_parser = parse_overlong)]
    overlong: Option<Overlong>,
    /// Pack conversations into rows (block-diagonal attention).
    #[arg(long)]
    packing: Option<bool>,
    #[arg(long)]
    seed: Option<u64>,
    /// f32 or bf16 (bf16: CUDA compute with f32 master weights).
    #[arg(long, value_parser = parse_dtype)]
    dtype: Option<Dtype>,
    /// Recompute each decoder block during backward (keeps only block inputs).
    #[arg(long)]
    activation_checkpointing: Option<bool>,
    /// Loss over this many positions at a time (0: all; never holds [B, T, V] at once).
    #[arg(long)]
    loss_chunk: Option<usize>,
    /// Checkpoint every N steps (0: only at the end and on interrupt).
    #[arg(long)]
    save_every: Option<u64>,
    #[arg(long)]
    keep_last: Option<usize>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Require a checkpoint in --out to resume from.
    #[arg(long, conflicts_with = "fresh")]
    resume: bool,
    /// Refuse to run if --out already has checkpoints.
    #[arg(long)]
    fresh: bool,
    /// Write the first batches (JSON + readable masking view) to this directory.
    #[arg(long)]
    dump_batches: Option<PathBuf>,
    /// Stop (with a checkpoint) after this many steps without shortening the schedule.
    #[arg(long)]
    stop_after: Option<u64>,
    /// A previous run's --out: start from the AdamW moments of its newest checkpoint
    /// (a second stage continuing the first one's optimizer; the schedule is this run's).
    #[arg(long)]
    carry_optimizer_from: Option<PathBuf>,
    /// Print the per-device memory estimate (weights, gradients, optimizer, activations, loss)
    /// as a table and JSON, and exit without training.
    #[arg(long)]
    estimate: bool,
    /// Start even when the estimate exceeds the device's memory.
    #[arg(long)]
    ignore_memory_estimate: bool,
    /// Data parallel on this machine: run N ranks (Gloo on CPU, NCCL with one GPU per rank),
    /// the global batch being N × micro_batch_size × grad_accum. Under torchrun or srun
    /// (RANK/WORLD_SIZE or SLURM_PROCID set) each process joins as its rank instead.
    #[arg(long, default_value_t = 1)]
    nproc_per_node: usize,
    /// ZeRO stage with several ranks: 0, or 1 (master weights and Adam moments sharded).
    #[arg(long)]
    zero: Option<u8>,
    /// Seconds a rendezvous or collective may take before the run fails (a dead or hung rank).
    #[arg(long, default_value_t = 1800)]
    dist_timeout_s: u64,
}

fn parse_overlong(s: &str) -> Result<Overlong, String> {
    match s {
        "truncate" => Ok(Overlong::Truncate),
        "drop" => Ok(Overlong::Drop),
        _ => Err(format!("`{s}`: expected truncate or drop")),
    }
}

fn parse_dtype(s: &str) -> Result<Dtype, String> {
    match s {
        "f32" | "float32" => Ok(Dtype::F32),
        "bf16" | "bfloat16" => Ok(Dtype::Bf16),
        _ => Err(format!("`{s}`: expected f32 or bf16")),
    }
}

fn main() -> anyhow::Result<()> {
    sft_examples::init_logging();
    let a = Args::parse();
    if sft_examples::launch_local_ranks(a.nproc_per_node)? {
        return Ok(());
    }
    let launch = sft_examples::launch_from_env()?;
    let file = match &a.config {
        Some(p) => TrainConfig::from_toml_file(p)?,
        None => TrainConfig::default(),
    };
    // The flags are overrides of the file's settings, applied like a plan stage's `train`.
    let flags = TrainOverrides {
        template: a.template.clone(),
        lr: a.lr,
        epochs: a.epochs,
        max_steps: a.max_steps.map(Some),
        micro_batch_size: a.micro_batch_size,
        grad_accum: a.grad_accum,
        warmup_ratio: a.warmup_ratio,
        schedule: a.schedule,
        weight_decay: a.weight_decay,
        max_grad_norm: a.max_grad_norm,
        max_len: a.max_len,
        overlong: a.overlong,
        packing: a.packing,
        seed: a.seed,
        dtype: a.dtype,
        activation_checkpointing: a.activation_checkpointing,
        loss_chunk: a.loss_chunk,
        zero: a.zero,
        save_every: a.save_every,
        keep_last: a.keep_last,
        ..TrainOverrides::default()
    };
    let cfg = file.with_overrides(&flags);
    cfg.validate()?;
    let device = sft_examples::rank_device(
        a.device.parse::<sft_examples::DeviceSpec>()?.resolve()?,
        launch.as_ref(),
    );
    let rank = launch.as_ref().map_or(0, |l| l.rank);
    let job = TrainJob {
        model: a.model.clone(),
        tokenizer: a.tokenizer.clone(),
        data: TrainData::Path(a.data.clone()),
        config: cfg,
        out_dir: a.out.clone(),
        device,
        run: RunOptions {
            resume: if a.resume {
                Resume::Require
            } else if a.fresh {
                Resume::Never
            } else {
                Resume::Auto
            },
            dump_batches: a.dump_batches.clone(),
            stop: Some(sft_train::install_stop_handler()?),
            progress: true,
            stop_after: a.stop_after,
            inject_nan_at: None,
            carry_optimizer_from: a.carry_optimizer_from.clone(),
            ignore_memory_estimate: a.ignore_memory_estimate,
        },
        distributed: launch.map(|launch| sft_train::Distributed {
            launch,
            timeout: std::time::Duration::from_secs(a.dist_timeout_s),
        }),
    };
    if a.estimate {
        let est = sft_train::memory_estimate(&job)
            .with_context(|| format!("cannot read the shape of {}", a.model.display()))?;
        let have = sft_llama::device::device_memory_bytes(device);
        eprint!("{}", est.table());
        if let Some(h) = have {
            eprintln!(
                "{:<16} {:>10.2}",
                "available",
                h as f64 / f64::from(1u32 << 30)
            );
        }
        println!("{}", serde_json::to_string_pretty(&est)?);
        return Ok(());
    }
    let outcome =
        sft_train::train(&job).with_context(|| format!("training {}", a.model.display()))?;
    if rank == 0 {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    }
    Ok(())
}
