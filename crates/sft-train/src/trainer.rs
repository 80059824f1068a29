//! The training loop: accumulation with token-normalised loss, clipping, AdamW, metrics,
//! checkpoints, resume, fault policies and graceful stop.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Kind, Tensor};

use crate::backprop::{forward_backward, Memory};
use crate::batch::{collate, epoch_plan, Collated, MicroBatch, StepPlan};
use crate::checkpoint::{self, FileContent, PendingCheckpoint};
use crate::config::{NanPolicy, TrainConfig};
use crate::data::{ChatEncoder, DataReport, Example, IGNORE};
use crate::error::{Error, Result};
use crate::loss::token_losses;
use crate::model::CausalLm;
use crate::optim::{AdamW, AdamWParams};
use crate::schedule::LrSchedule;
use sft_dist::ProcessGroup;

/// Whether to continue from `out_dir/checkpoints/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resume {
    /// Resume when a checkpoint exists, else start fresh.
    #[default]
    Auto,
    /// A complete checkpoint must exist (`--resume`); otherwise an error.
    Require,
    /// Refuse to run when checkpoints exist (a fresh run must not overwrite them).
    Never,
}

/// Run-time options that are not hyperparameters.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Resume behaviour.
    pub resume: Resume,
    /// Write the first `cfg.dump_batches` global batches here as JSON + readable text.
    pub dump_batches: Option<PathBuf>,
    /// When set (by a signal handler), finish the current step, checkpoint and return.
    pub stop: Option<Arc<AtomicBool>>,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Stop (checkpointing) after this many total steps, as if interrupted; for tests and
    /// time-boxed jobs. The schedule still spans the whole run.
    pub stop_after: Option<u64>,
    /// Fault injection for tests: make the loss NaN at this (1-based) step.
    pub inject_nan_at: Option<u64>,
    /// Another training run's output directory whose newest complete checkpoint seeds AdamW's
    /// moments and step count (bias correction continues) when this run starts fresh: a
    /// multi-stage plan's `optimizer_state = "carry"`. The weights are not taken from it, and
    /// the learning-rate schedule, warm-up included, is this run's own. Ignored when resuming
    /// from this run's own checkpoint, which already holds the carried state.
    pub carry_optimizer_from: Option<PathBuf>,
    /// Start even when the memory estimate ([`sft_config::memory`]) exceeds the device's memory
    /// (the estimate is an estimate; [`crate::train`] refuses otherwise).
    pub ignore_memory_estimate: bool,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct TrainOutcome {
    /// Optimizer steps completed (including skipped ones) when the run returned.
    pub steps: u64,
    /// Steps the schedule spans.
    pub total_steps: u64,
    /// Loss of the last completed step.
    pub last_loss: Option<f64>,
    /// Step the run resumed from, if it resumed.
    pub resumed_from: Option<u64>,
    /// Steps skipped for non-finite values (`nan_policy = skip`).
    pub skipped_steps: u64,
    /// Non-pad tokens processed in this invocation.
    pub tokens: u64,
    /// Examples trained on (after tokenization).
    pub examples: usize,
    /// HF-format weights of the finished run (`None` when stopped early).
    pub final_dir: Option<PathBuf>,
    /// Whether the run stopped early (signal or `stop_after`) after checkpointing.
    pub interrupted: bool,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// 1-based optimizer step.
    pub step: u64,
    /// 0-based epoch.
    pub epoch: u32,
    /// Mean loss per target token over the global batch (NaN for a skipped step; written as
    /// `null` in JSON and read back as NaN).
    #[serde(deserialize_with = "null_as_nan")]
    pub loss: f64,
    /// The same, per source.
    pub per_source_loss: BTreeMap<String, f64>,
    /// Global gradient norm before clipping (NaN when it could not be computed).
    #[serde(deserialize_with = "null_as_nan")]
    pub grad_norm: f64,
    /// Learning rate used by this step.
    pub lr: f64,
    /// Non-pad tokens in the global batch.
    pub tokens: u64,
    /// Tokens that carried loss.
    pub target_tokens: u64,
    /// Throughput of this step (tokens / wall seconds).
    pub tokens_per_s: f64,
    /// Whether the update was skipped for non-finite values.
    pub skipped: bool,
}

fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainerState {
    format_version: u32,
    step: u64,
    total_steps: u64,
    skipped_steps: u64,
    consecutive_skips: u32,
    optimizer_steps: u64,
    fingerprint: BTreeMap<String, String>,
    examples: usize,
    /// No randomness besides the data order (derived from seed and epoch) enters training:
    /// the model has no dropout, so the libtorch RNG is not part of the state.
    rng: String,
}

fn fingerprint(cfg: &TrainConfig, examples: &[Example]) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = cfg
        .resume_fingerprint()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    // A cheap digest of the data: ids and lengths in order.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for ex in examples {
        for b in ex
            .record_id
            .bytes()
            .chain((ex.input_ids.len() as u64).to_le_bytes())
        {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    m.insert("data".into(), format!("{h:016x}"));
    m
}

/// Locates global step `s` (0-based) in the per-epoch plans.
fn locate(plans: &[Vec<StepPlan>], mut s: u64) -> Option<(u32, &StepPlan)> {
    for (e, p) in plans.iter().enumerate() {
        if s < p.len() as u64 {
            return Some((e as u32, &p[s as usize]));
        }
        s -= p.len() as u64;
    }
    None
}

struct StepResult {
    loss_sum: f64,
    per_source: BTreeMap<String, (f64, u64)>,
    tokens: u64,
    targets: u64,
}

/// Forward + backward of one global batch; returns summed token losses (gradients are of
/// `sum / targets`, so a token weighs the same whatever the micro-batch split).
fn accumulate(
    model: &dyn CausalLm,
    opt: &mut AdamW,
    examples: &[Example],
    step: &StepPlan,
    cfg: &TrainConfig,
    device: tch::Device,
    nan: bool,
    ranks: &Ranks<'_>,
) -> Result<StepResult> {
    // This rank's micro-batches of the global step: r, r + W, r + 2W, …
    let mine: Vec<&MicroBatch> = step
        .micro
        .iter()
        .skip(ranks.rank)
        .step_by(ranks.world)
        .collect();
    let batches: Vec<Collated> = mine
        .iter()
        .map(|m| collate(examples, m, cfg.packing, device))
        .collect::<Result<_>>()?;
    let local_targets: usize = batches.iter().map(|b| b.target_tokens).sum();
    // The loss is normalised by the target tokens of the whole global batch.
    let targets = ranks.sum(&[local_targets as f64])?[0] as u64;
    let mut out = StepResult {
        loss_sum: 0.0,
        per_source: BTreeMap::new(),
        tokens: 0,
        targets,
    };
    let scale = 1.0 / targets.max(1) as f64;
    if batches.is_empty() {
        // The global step has fewer micro-batches than ranks (an epoch's last step): take part
        // with zero gradients, so that every rank runs the same collectives.
        let c = collate(examples, &step.micro[0], cfg.packing, device)?;
        let _ = forward_backward(model, &c, 0.0, Memory::of(cfg), false)?;
        opt.absorb_grads()?;
    }
    for c in &batches {
        let tl = forward_backward(model, c, scale, Memory::of(cfg), nan)?;
        opt.absorb_grads()?;
        let sum = tl.f_sum(Kind::Double)?.f_double_value(&[])?;
        out.loss_sum += if nan { f64::NAN } else { sum };
        out.tokens += c.tokens as u64;
        // Per-source sums on the CPU from the detached token losses.
        let t1 = tl.size()[1] as usize;
        let host: Vec<f32> = Vec::<f32>::try_from(
            tl.f_detach()?
                .f_to_device(tch::Device::Cpu)?
                .f_flatten(0, -1)?,
        )?;
        for s in &c.segments {
            let ex = &examples[s.example];
            let mut acc = 0.0f64;
            let mut n = 0u64;
            for j in 1..s.len {
                if ex.labels[j] != IGNORE {
                    acc += f64::from(host[s.row * t1 + s.start + j - 1]);
                    n += 1;
                }
            }
            let e = out.per_source.entry(ex.source.clone()).or_insert((0.0, 0));
            e.0 += acc;
            e.1 += n;
        }
    }
    if let Some(g) = ranks.group {
        opt.reduce_grads(g)?;
        // Loss, tokens and per-source sums of all ranks, in one order every rank knows.
        let mut v = vec![out.loss_sum, out.tokens as f64];
        for src in &ranks.sources {
            let (s, n) = out.per_source.get(src).copied().unwrap_or((0.0, 0));
            v.extend([s, n as f64]);
        }
        let v = ranks.sum(&v)?;
        out.loss_sum = v[0];
        out.tokens = v[1] as u64;
        out.per_source = ranks
            .sources
            .iter()
            .enumerate()
            .map(|(i, src)| (src.clone(), (v[2 + 2 * i], v[3 + 2 * i] as u64)))
            .collect();
    }
    Ok(out)
}

/// This process's place in a data-parallel run (one rank of one, without a group).
pub(crate) struct Ranks<'a> {
    /// The process group, when there is more than one rank.
    pub(crate) group: Option<&'a ProcessGroup>,
    /// This rank.
    pub(crate) rank: usize,
    /// Number of ranks.
    pub(crate) world: usize,
    /// Every source name of the examples, sorted: the order per-source sums are reduced in.
    sources: Vec<String>,
}

impl<'a> Ranks<'a> {
    fn new(group: Option<&'a ProcessGroup>, examples: &[Example]) -> Self {
        let sources: std::collections::BTreeSet<&str> =
            examples.iter().map(|e| e.source.as_str()).collect();
        Ranks {
            group,
            rank: group.map_or(0, ProcessGroup::rank),
            world: group.map_or(1, ProcessGroup::world_size),
            sources: sources.into_iter().map(str::to_string).collect(),
        }
    }

    /// Whether this process writes files (rank 0).
    fn writes(&self) -> bool {
        self.rank == 0
    }

    /// `values` summed over the ranks.
    pub(crate) fn sum(&self, values: &[f64]) -> Result<Vec<f64>> {
        let mut v = values.to_vec();
        if let Some(g) = self.group {
            g.all_reduce_sum_f64(&mut v)?;
        }
        Ok(v)
    }

    /// Every rank's tensors set to rank 0's.
    fn broadcast(&self, tensors: &mut [Tensor]) -> Result<()> {
        if let Some(g) = self.group {
            g.broadcast(tensors, 0)?;
        }
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        if let Some(g) = self.group {
            g.barrier()?;
        }
        Ok(())
    }

    fn barrier_if(&self, cond: bool) -> Result<()> {
        if cond {
            self.barrier()?;
        }
        Ok(())
    }
}

/// What [`train_model`] trains on and with: everything but the variables it updates.
#[derive(Clone, Copy)]
pub struct TrainContext<'a> {
    /// The model; its parameters are the trainable variables of the `VarStore` given beside.
    pub model: &'a dyn CausalLm,
    /// The tokenized examples.
    pub examples: &'a [Example],
    /// What tokenization did (written to `data_report.json`).
    pub data_report: &'a DataReport,
    /// The encoder that produced `examples` (decodes the batch dump).
    pub encoder: &'a dyn ChatEncoder,
    /// The hyperparameters.
    pub config: &'a TrainConfig,
    /// Where metrics, checkpoints and `final/` go.
    pub out_dir: &'a Path,
    /// Resume policy, stop flag, progress, batch dump, optimizer carry-over.
    pub run: &'a RunOptions,
    /// The data-parallel group this process is one rank of (`None`: one process). Every rank
    /// gets the same context; rank 0 writes the files.
    pub group: Option<&'a ProcessGroup>,
}

/// The state of a run between steps: what a checkpoint saves besides weights and moments.
struct Progress {
    /// Completed optimizer steps (including skipped ones).
    step: u64,
    skipped: u64,
    consecutive: u32,
    resumed_from: Option<u64>,
    last_loss: Option<f64>,
    tokens: u64,
}

/// A run being trained: the context plus what [`train_model`] derived from it.
struct Run<'a> {
    ctx: TrainContext<'a>,
    vs: &'a VarStore,
    device: tch::Device,
    plans: Vec<Vec<StepPlan>>,
    total: u64,
    sched: LrSchedule,
    fingerprint: BTreeMap<String, String>,
    ckpt_root: PathBuf,
    metrics_path: PathBuf,
    ranks: Ranks<'a>,
}

/// Trains `ctx.model` (whose parameters are the trainable variables of `vs`) on `ctx.examples`.
///
/// Writes `out_dir/{train_config.json,data_report.json,metrics.jsonl}`, checkpoints under
/// `out_dir/checkpoints/`, and the final HF-format weights (`model.safetensors` +
/// `config.json`) under `out_dir/final/`. Resumes from the newest complete checkpoint
/// according to `ctx.run.resume`. Internally: `resume` (the policy, this run's checkpoint or
/// the carried optimizer state), `train_step` per optimizer step, `save_checkpoint`.
/// [`crate::train`] wraps it for a whole [`crate::TrainJob`].
pub fn train_model(ctx: &TrainContext<'_>, vs: &mut VarStore) -> Result<TrainOutcome> {
    let cfg = ctx.config;
    cfg.validate()?;
    if ctx.examples.is_empty() {
        return Err(Error::NoData("empty example list".into()));
    }
    let device = vs.device();
    let out_dir = ctx.out_dir;
    let ranks = Ranks::new(ctx.group, ctx.examples);
    if ranks.writes() {
        std::fs::create_dir_all(out_dir).map_err(|e| Error::io("create", out_dir, e))?;
        checkpoint::write_atomic(&out_dir.join("train_config.json"), pretty(cfg)?.as_bytes())?;
        checkpoint::write_atomic(
            &out_dir.join("data_report.json"),
            pretty(ctx.data_report)?.as_bytes(),
        )?;
    }

    // One global order: with W ranks a step has W × grad_accum micro-batches, of which rank r
    // trains r, r + W, …: the same global batch (and update) as one process with
    // `grad_accum × W`.
    let epochs = cfg.epochs.max(1);
    let global = TrainConfig {
        grad_accum: cfg.grad_accum * ranks.world,
        ..cfg.clone()
    };
    let plans: Vec<Vec<StepPlan>> = (0..epochs)
        .map(|e| epoch_plan(ctx.examples, &global, e))
        .collect();
    let planned: u64 = plans.iter().map(|p| p.len() as u64).sum();
    let total = cfg.max_steps.map_or(planned, |m| m.min(planned));
    let sched = LrSchedule::new(cfg.schedule, cfg.lr, cfg.warmup_ratio, total);
    let hp = AdamWParams {
        beta1: cfg.adam_beta1,
        beta2: cfg.adam_beta2,
        eps: cfg.adam_eps,
        weight_decay: cfg.weight_decay,
    };
    let mixed = cfg.dtype == crate::config::Dtype::Bf16;
    // Every rank starts from rank 0's weights.
    let mut vars: Vec<Tensor> = vs.trainable_variables();
    ranks.broadcast(&mut vars)?;
    let mut opt = AdamW::new(vs, hp, mixed)?;
    // libtorch's fused multi-tensor AdamW on every device: the same update (to ~1e-7), one pass
    // over each tensor instead of about ten (on the CPU a 10-15% shorter step for SmolLM2;
    // on CUDA far fewer kernel launches).
    opt.set_fused(true);
    if cfg.zero >= 1 && ranks.world > 1 {
        opt.shard(ranks.rank, ranks.world)?;
    } else if cfg.zero >= 1 {
        tracing::warn!("zero = 1 has no effect in a single process");
    }
    if mixed {
        if device == tch::Device::Cpu {
            tracing::warn!("bf16 compute on the CPU is slow; it is meant for CUDA");
        }
        vs.set_kind(Kind::BFloat16);
    }
    let vs: &VarStore = vs;
    let mut fingerprint = fingerprint(cfg, ctx.examples);
    fingerprint.insert("world_size".into(), ranks.world.to_string());
    let run = Run {
        ctx: *ctx,
        vs,
        device,
        plans,
        total,
        sched,
        fingerprint,
        ckpt_root: out_dir.join("checkpoints"),
        metrics_path: out_dir.join("metrics.jsonl"),
        ranks,
    };
    let mut p = resume(&run, &mut opt)?;
    tch::manual_seed(cfg.seed as i64);

    if let (Some(dir), 0, true) = (&ctx.run.dump_batches, p.step, run.ranks.writes()) {
        crate::dump::dump_batches(dir, ctx.examples, &run.plans, cfg, ctx.encoder)?;
    }

    let pb = if ctx.run.progress && run.ranks.writes() {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {msg}  [{elapsed} < {eta}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_position(p.step);
    tracing::info!(
        total_steps = total,
        start = p.step,
        examples = ctx.examples.len(),
        "training"
    );

    let mut metrics = if run.ranks.writes() {
        Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&run.metrics_path)
                .map_err(|e| Error::io("open", &run.metrics_path, e))?,
        )
    } else {
        None
    };
    let mut interrupted = false;
    let mut saved_at = p.resumed_from;
    while p.step < total {
        let signalled = ctx
            .run
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::SeqCst));
        // A signal to any rank stops them all at the same step.
        let signalled = run.ranks.sum(&[f64::from(u8::from(signalled))])?[0] > 0.0;
        if signalled || ctx.run.stop_after.is_some_and(|k| p.step >= k) {
            interrupted = true;
            break;
        }
        let m = train_step(&run, &mut opt, &mut p)?;
        if let Some(metrics) = &mut metrics {
            let line = serde_json::to_string(&m).map_err(|source| Error::Serialize {
                what: "metrics line",
                source,
            })?;
            writeln!(metrics, "{line}").map_err(|e| Error::io("write", &run.metrics_path, e))?;
            metrics
                .flush()
                .map_err(|e| Error::io("write", &run.metrics_path, e))?;
        }
        pb.set_message(format!("loss {:.4}  {:.0} tok/s", m.loss, m.tokens_per_s));
        pb.set_position(p.step);
        if cfg.save_every > 0 && p.step % cfg.save_every == 0 && p.step < total {
            save_checkpoint(&run, &opt, &p)?;
            saved_at = Some(p.step);
        }
    }
    pb.finish_and_clear();

    if saved_at != Some(p.step) {
        save_checkpoint(&run, &opt, &p)?;
    }
    let final_dir = if interrupted {
        tracing::info!(step = p.step, "stopped early after checkpointing");
        None
    } else {
        let dir = out_dir.join("final");
        let weights = model_tensors(vs, &opt, run.ranks.group)?;
        if run.ranks.writes() {
            write_hf_dir(&dir, weights, pretty(&ctx.model.hf_config())?)?;
        }
        Some(dir)
    };
    // No rank returns before rank 0's files are committed.
    run.ranks.barrier()?;
    Ok(TrainOutcome {
        steps: p.step,
        total_steps: total,
        last_loss: p.last_loss,
        resumed_from: p.resumed_from,
        skipped_steps: p.skipped,
        tokens: p.tokens,
        examples: ctx.examples.len(),
        final_dir,
        interrupted,
    })
}

/// Reads a checkpoint's `trainer_state.json`.
fn read_state(dir: &Path) -> Result<TrainerState> {
    let state_path = dir.join("trainer_state.json");
    let text = std::fs::read(&state_path).map_err(|e| Error::io("read", &state_path, e))?;
    serde_json::from_slice(&text).map_err(|source| Error::Json {
        path: state_path,
        source,
    })
}

/// Applies the resume policy: loads the newest complete checkpoint of this run (weights,
/// moments, counters; its fingerprint must match), or starts fresh (removing stale metrics and
/// seeding the moments from [`RunOptions::carry_optimizer_from`] when given).
fn resume(run: &Run<'_>, opt: &mut AdamW) -> Result<Progress> {
    let opts = run.ctx.run;
    let mut p = Progress {
        step: 0,
        skipped: 0,
        consecutive: 0,
        resumed_from: None,
        last_loss: None,
        tokens: 0,
    };
    let found = checkpoint::latest_complete(&run.ckpt_root)?;
    match (opts.resume, found) {
        (Resume::Require, None) => {
            return Err(Error::ckpt(
                &run.ckpt_root,
                "--resume given but there is no checkpoint",
            ))
        }
        (Resume::Never, Some((dir, _))) => {
            return Err(Error::ckpt(
                dir,
                "checkpoints exist but resuming is disabled; use another --out",
            ))
        }
        (_, Some((dir, m))) => {
            let st = read_state(&dir)?;
            for (k, v) in &run.fingerprint {
                let old = st
                    .fingerprint
                    .get(k)
                    .map(String::as_str)
                    .unwrap_or("<missing>");
                if old != v {
                    return Err(Error::ckpt(
                        &dir,
                        format!("cannot resume: `{k}` was {old}, now {v}"),
                    ));
                }
            }
            opt.load_weights(&checkpoint::read_safetensors(
                &dir.join("model.safetensors"),
            )?)?;
            opt.load_state(st.optimizer_steps, &optimizer_state(&dir, opt, &run.ranks)?)?;
            p.step = m.step;
            p.skipped = st.skipped_steps;
            p.consecutive = st.consecutive_skips;
            p.resumed_from = Some(m.step);
            if run.ranks.writes() {
                truncate_metrics(&run.metrics_path, m.step)?;
            }
            tracing::info!(step = m.step, dir = %dir.display(), "resumed from checkpoint");
        }
        (_, None) => {
            if run.ranks.writes() && run.metrics_path.exists() {
                std::fs::remove_file(&run.metrics_path)
                    .map_err(|e| Error::io("remove", &run.metrics_path, e))?;
            }
            if let Some(prev) = &opts.carry_optimizer_from {
                let root = prev.join("checkpoints");
                let (dir, _) = checkpoint::latest_complete(&root)?.ok_or_else(|| {
                    Error::ckpt(
                        &root,
                        "no complete checkpoint to carry the optimizer state from",
                    )
                })?;
                let st = read_state(&dir)?;
                optimizer_state(&dir, opt, &run.ranks)
                    .and_then(|t| opt.load_state(st.optimizer_steps, &t))
                    .map_err(|e| Error::Carry {
                        dir: dir.clone(),
                        source: Box::new(e),
                    })?;
                tracing::info!(from = %dir.display(), optimizer_steps = st.optimizer_steps, "carried optimizer state over");
            }
        }
    }
    Ok(p)
}

/// One optimizer step (global step `p.step`, 0-based): forward/backward of its global batch,
/// the non-finite policy, clipping and AdamW; advances `p` and returns the step's metrics.
fn train_step(run: &Run<'_>, opt: &mut AdamW, p: &mut Progress) -> Result<StepMetrics> {
    let (cfg, examples) = (run.ctx.config, run.ctx.examples);
    let (epoch, plan) =
        locate(&run.plans, p.step).ok_or_else(|| Error::Config("step beyond plan".into()))?;
    let t0 = Instant::now();
    let nan = run.ctx.run.inject_nan_at == Some(p.step + 1);
    let r = accumulate(
        run.ctx.model,
        opt,
        examples,
        plan,
        cfg,
        run.device,
        nan,
        &run.ranks,
    )?;
    let loss = r.loss_sum / r.targets.max(1) as f64;
    let grad_norm = if loss.is_finite() {
        opt.grad_norm(run.ranks.group)?
    } else {
        f64::NAN
    };
    let lr = run.sched.lr(p.step);
    let bad = if !loss.is_finite() {
        Some("loss")
    } else if !grad_norm.is_finite() {
        Some("gradient")
    } else {
        None
    };
    let mut skipped_now = false;
    if let Some(what) = bad {
        let ids: Vec<&str> = plan
            .example_indices()
            .map(|i| examples[i].record_id.as_str())
            .collect();
        let err = Error::NonFinite {
            what,
            step: p.step + 1,
            record_ids: ids.join(","),
        };
        opt.zero_grad();
        p.consecutive += 1;
        match cfg.nan_policy {
            NanPolicy::Abort => return Err(err),
            NanPolicy::Skip if p.consecutive > cfg.max_consecutive_skips => return Err(err),
            NanPolicy::Skip => {
                tracing::warn!(%err, "skipping step");
                p.skipped += 1;
                skipped_now = true;
            }
        }
    } else {
        p.consecutive = 0;
        opt.clip(cfg.max_grad_norm, grad_norm)?;
        opt.step(lr, run.ranks.group)?;
        opt.zero_grad();
    }
    p.step += 1;
    p.tokens += r.tokens;
    let secs = t0.elapsed().as_secs_f64();
    let m = StepMetrics {
        step: p.step,
        epoch,
        loss,
        per_source_loss: r
            .per_source
            .iter()
            .filter(|(_, v)| v.1 > 0)
            .map(|(k, v)| (k.clone(), v.0 / v.1 as f64))
            .collect(),
        grad_norm,
        lr,
        tokens: r.tokens,
        target_tokens: r.targets,
        tokens_per_s: r.tokens as f64 / secs.max(1e-9),
        skipped: skipped_now,
    };
    if !skipped_now {
        p.last_loss = Some(loss);
    }
    tracing::debug!(
        step = p.step,
        loss,
        grad_norm,
        lr,
        tokens_per_s = m.tokens_per_s,
        "step"
    );
    Ok(m)
}

/// Commits a checkpoint of step `p.step`: weights (f32 masters), AdamW moments, the trainer
/// state and the model's `config.json`.
fn save_checkpoint(run: &Run<'_>, opt: &AdamW, p: &Progress) -> Result<PathBuf> {
    // Collective with ZeRO-1 in bf16 (the master shards are gathered): every rank calls it.
    let weights = model_tensors(run.vs, opt, run.ranks.group)?;
    let root = &run.ckpt_root;
    let mut optimizer = vec![(
        "optimizer.safetensors".to_string(),
        FileContent::Tensors(opt.state_tensors()),
    )];
    if opt.is_sharded() {
        // Each rank writes its own optimizer shard into the staging directory rank 0 prepared;
        // rank 0 commits them with the rest.
        if run.ranks.writes() {
            checkpoint::prepare_staging(root, p.step)?;
        }
        run.ranks.barrier()?;
        let name = shard_file(run.ranks.rank, run.ranks.world);
        checkpoint::write_staged(
            root,
            p.step,
            &name,
            &FileContent::Tensors(opt.state_tensors()),
        )?;
        run.ranks.barrier()?;
        optimizer = (0..run.ranks.world)
            .map(|r| (shard_file(r, run.ranks.world), FileContent::Staged))
            .collect();
    }
    if !run.ranks.writes() {
        run.ranks.barrier_if(opt.is_sharded())?;
        return Ok(root.join(checkpoint::step_dir_name(p.step)));
    }
    let st = TrainerState {
        format_version: checkpoint::FORMAT_VERSION,
        step: p.step,
        total_steps: run.total,
        skipped_steps: p.skipped,
        consecutive_skips: p.consecutive,
        optimizer_steps: opt.step_count(),
        fingerprint: run.fingerprint.clone(),
        examples: run.ctx.examples.len(),
        rng: "data order = f(seed, epoch); no other randomness".into(),
    };
    let mut files = vec![(
        "model.safetensors".to_string(),
        FileContent::Tensors(weights),
    )];
    files.append(&mut optimizer);
    files.push((
        "trainer_state.json".to_string(),
        FileContent::Bytes(pretty(&st)?.into_bytes()),
    ));
    files.push((
        "config.json".to_string(),
        FileContent::Bytes(pretty(&run.ctx.model.hf_config())?.into_bytes()),
    ));
    let pending = PendingCheckpoint {
        step: p.step,
        files,
    };
    let keep = run.ctx.config.keep_last;
    let dir = if opt.is_sharded() {
        let dir = checkpoint::commit_staged(root, &pending, keep)?;
        run.ranks.barrier()?;
        dir
    } else {
        checkpoint::commit(root, &pending, keep)?
    };
    tracing::info!(step = p.step, dir = %dir.display(), "checkpoint committed");
    Ok(dir)
}

/// The optimizer state of the checkpoint `dir` for this rank: the whole-model
/// `optimizer.safetensors`, this rank's own shard when the checkpoint was saved under ZeRO-1 by
/// the same world size, or else every shard merged into the whole-model form.
fn optimizer_state(dir: &Path, opt: &AdamW, ranks: &Ranks<'_>) -> Result<Vec<(String, Tensor)>> {
    let whole = dir.join("optimizer.safetensors");
    if whole.exists() {
        return checkpoint::read_safetensors(&whole);
    }
    let own = dir.join(shard_file(ranks.rank, ranks.world));
    if opt.is_sharded() && own.exists() {
        return checkpoint::read_safetensors(&own);
    }
    let mut shards: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io("read", dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("optimizer-rank-"))
        })
        .collect();
    shards.sort();
    if shards.is_empty() {
        return Err(Error::ckpt(
            dir,
            "no optimizer state (optimizer*.safetensors)",
        ));
    }
    let read: Vec<Vec<(String, Tensor)>> = shards
        .iter()
        .map(|p| checkpoint::read_safetensors(p))
        .collect::<Result<_>>()?;
    opt.merge_shards(&read)
        .map_err(|e| Error::ckpt(dir, format!("merging the ZeRO-1 optimizer shards: {e}")))
}

/// The file of rank `rank`'s optimizer shard (ZeRO-1) in a checkpoint.
fn shard_file(rank: usize, world: usize) -> String {
    format!("optimizer-rank-{rank:05}-of-{world:05}.safetensors")
}

/// Every variable of `vs`, with the optimizer's f32 master weights where they exist (shallow
/// clones: the file is streamed from them). Collective under ZeRO-1 in bf16.
fn model_tensors(
    vs: &VarStore,
    opt: &AdamW,
    group: Option<&ProcessGroup>,
) -> Result<Vec<(String, Tensor)>> {
    let mut all: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    for (name, w) in opt.full_weights(group)? {
        all.insert(name, w);
    }
    Ok(all.into_iter().collect())
}

/// Writes an HF-style weights directory atomically (temp dir, fsync, rename).
fn write_hf_dir(dir: &Path, weights: Vec<(String, Tensor)>, config: String) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io("remove", &tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
    checkpoint::write_file_atomic(
        &tmp.join("model.safetensors"),
        &FileContent::Tensors(weights),
    )?;
    checkpoint::write_atomic(&tmp.join("config.json"), config.as_bytes())?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| Error::io("remove", dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| Error::io("rename", &tmp, e))?;
    let f = std::fs::File::open(parent).map_err(|e| Error::io("open", parent, e))?;
    f.sync_all().map_err(|e| Error::io("fsync", parent, e))
}

/// Drops metrics lines of steps after `step` (they are redone after a resume).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<StepMetrics>(l)
                .map(|m| m.step <= step)
                .unwrap_or(false)
        })
        .collect();
    let mut body = kept.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    checkpoint::write_atomic(path, body.as_bytes())
}

/// Mean loss per target token of the model on `examples` (no gradients), plus per source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalLoss {
    /// Sum of token losses / target tokens.
    pub mean: f64,
    /// Target tokens scored.
    pub target_tokens: u64,
    /// Per-source mean.
    pub per_source: BTreeMap<String, f64>,
}

/// Held-out loss: mean cross entropy per target token, padded batches of `micro_batch_size`.
pub fn eval_loss(
    model: &dyn CausalLm,
    examples: &[Example],
    micro_batch_size: usize,
    device: tch::Device,
) -> Result<EvalLoss> {
    if examples.is_empty() {
        return Err(Error::NoData("eval_loss on an empty example list".into()));
    }
    let cfg = TrainConfig {
        micro_batch_size: micro_batch_size.max(1),
        grad_accum: 1,
        packing: false,
        group_by_length: false,
        ..TrainConfig::default()
    };
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| examples[i].input_ids.len());
    let mut sum = 0.0;
    let mut n = 0u64;
    let mut per: BTreeMap<String, (f64, u64)> = BTreeMap::new();
    tch::no_grad(|| -> Result<()> {
        for chunk in order.chunks(cfg.micro_batch_size) {
            let plan = StepPlan {
                micro: vec![crate::batch::MicroBatch {
                    rows: chunk.iter().map(|&i| vec![i]).collect(),
                }],
            };
            let r = accumulate_eval(model, examples, &plan, device)?;
            sum += r.loss_sum;
            n += r.targets;
            for (k, (s, c)) in r.per_source {
                let e = per.entry(k).or_insert((0.0, 0));
                e.0 += s;
                e.1 += c;
            }
        }
        Ok(())
    })?;
    Ok(EvalLoss {
        mean: sum / n.max(1) as f64,
        target_tokens: n,
        per_source: per
            .into_iter()
            .filter(|(_, (_, c))| *c > 0)
            .map(|(k, (s, c))| (k, s / c as f64))
            .collect(),
    })
}

fn accumulate_eval(
    model: &dyn CausalLm,
    examples: &[Example],
    plan: &StepPlan,
    device: tch::Device,
) -> Result<StepResult> {
    let mut out = StepResult {
        loss_sum: 0.0,
        per_source: BTreeMap::new(),
        tokens: 0,
        targets: 0,
    };
    for mb in &plan.micro {
        let c = collate(examples, mb, false, device)?;
        let logits = model.forward(&c.input_ids, None, None)?;
        let tl = token_losses(&logits, &c.labels)?;
        out.loss_sum += tl.f_sum(Kind::Double)?.f_double_value(&[])?;
        out.targets += c.target_tokens as u64;
        out.tokens += c.tokens as u64;
        let t1 = tl.size()[1] as usize;
        let host: Vec<f32> =
            Vec::<f32>::try_from(tl.f_to_device(tch::Device::Cpu)?.f_flatten(0, -1)?)?;
        for s in &c.segments {
            let ex = &examples[s.example];
            let e = out.per_source.entry(ex.source.clone()).or_insert((0.0, 0));
            for j in 1..s.len {
                if ex.labels[j] != IGNORE {
                    e.0 += f64::from(host[s.row * t1 + s.start + j - 1]);
                    e.1 += 1;
                }
            }
        }
    }
    Ok(out)
}

/// Per-example mean losses (sum of its token losses / its target tokens) of one micro-batch;
/// used to check that packing does not leak between conversations.
pub fn per_example_losses(
    model: &dyn CausalLm,
    examples: &[Example],
    mb: &crate::batch::MicroBatch,
    packed: bool,
    device: tch::Device,
) -> Result<Vec<(usize, f64)>> {
    tch::no_grad(|| -> Result<Vec<(usize, f64)>> {
        let c = collate(examples, mb, packed, device)?;
        let logits = model.forward(&c.input_ids, c.position_ids.as_ref(), c.attn_mask.as_ref())?;
        let tl = token_losses(&logits, &c.labels)?;
        let t1 = tl.size()[1] as usize;
        let host: Vec<f32> =
            Vec::<f32>::try_from(tl.f_to_device(tch::Device::Cpu)?.f_flatten(0, -1)?)?;
        Ok(c.segments
            .iter()
            .map(|s| {
                let ex = &examples[s.example];
                let (mut acc, mut n) = (0.0, 0u64);
                for j in 1..s.len {
                    if ex.labels[j] != IGNORE {
                        acc += f64::from(host[s.row * t1 + s.start + j - 1]);
                        n += 1;
                    }
                }
                (s.example, acc / n.max(1) as f64)
            })
            .collect())
    })
}

/// Pretty JSON of a serialisable value.
pub(crate) fn pretty<T: Serialize + ?Sized>(v: &T) -> Result<String> {
    serde_json::to_string_pretty(v).map_err(|source| Error::Serialize {
        what: "a state file",
        source,
    })
}

/// Installs SIGINT/SIGTERM handlers and returns the flag they set, for [`RunOptions::stop`]:
/// the first signal lets the current step finish, checkpoints and returns; a second one exits
/// the process at once (code 1), leaving the previous checkpoint intact.
pub fn install_stop_handler() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&flag))
            .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&flag)))
            .map_err(|e| Error::io("install signal handler", "", e))?;
    }
    Ok(flag)
}
