//! The orchestration: plan → pools → stages (content-keyed, reused, resumable) → evaluation →
//! `results.json`. The layout is the contract in `docs/formats.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sft_schedule::{KeyContext, OptimizerState, Plan, TrainOverrides};

use crate::backend::{Backend, EvalRequest, HiddenRequest, Metric, Task, TrainRequest};
use crate::data::Pools;
use crate::error::{BackendError, Error, ErrorKind, Result};
use crate::files::{fingerprint_model, read_json, write_json, DirLock};
use crate::settings::{RunSettings, StaleStages};

/// The version of `results.json`, `status.json` and `done.json`.
pub const RESULTS_FORMAT_VERSION: u32 = 1;

/// Where a run reads from and writes to.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The run directory.
    pub run_dir: PathBuf,
    /// The shared stage store (default: `<run_dir>/../stages`).
    pub stage_store: Option<PathBuf>,
    /// The data directory the sources and benchmarks resolve against.
    pub data_dir: PathBuf,
    /// The base model (GGUF file or HF directory).
    pub base_model: PathBuf,
    /// Extra provenance (command line, git revision, …) merged into `provenance.json`.
    pub provenance: BTreeMap<String, Value>,
}

impl RunOptions {
    /// The stage store directory.
    pub fn store(&self) -> PathBuf {
        match &self.stage_store {
            Some(s) => s.clone(),
            None => self
                .run_dir
                .parent()
                .map(|p| p.join("stages"))
                .unwrap_or_else(|| PathBuf::from("stages")),
        }
    }
}

/// `status.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Always [`RESULTS_FORMAT_VERSION`].
    pub format_version: u32,
    /// `running`, `done` or `failed`.
    pub state: String,
    /// The error when `failed`.
    pub error: Option<String>,
    /// The error's class when `failed` ([`Error::kind`]); `null` otherwise, and absent in files
    /// written before kinds were recorded.
    #[serde(default)]
    pub error_kind: Option<ErrorKind>,
    /// When it was written (seconds since the epoch).
    pub updated_unix: u64,
}

/// `done.json` of a finished stage in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageDone {
    /// Always [`RESULTS_FORMAT_VERSION`].
    pub format_version: u32,
    /// The stage key.
    pub key: String,
    /// Records composed for the stage.
    pub records: usize,
    /// Examples trained on.
    pub examples: usize,
    /// Optimizer steps.
    pub steps: u64,
    /// Wall time of the invocation that finished it (seconds).
    pub train_seconds: f64,
    /// The last step's loss.
    pub final_train_loss: Option<f64>,
    /// The checkpoint step the finishing attempt resumed from (after an interruption).
    #[serde(default)]
    pub resumed_from: Option<u64>,
    /// The backend's semantics versions it was trained under ([`Backend::semantics`]); empty
    /// in stages stored before versions were recorded (which are therefore stale).
    #[serde(default)]
    pub semantics: BTreeMap<String, u32>,
}

/// The semantics versions a stage's training started under (`semantics.json`, written before
/// training starts, so an interrupted stage records them too).
const SEMANTICS_FILE: &str = "semantics.json";

/// `training v1, chat v1`, or what an empty record means.
fn describe_semantics(s: &BTreeMap<String, u32>) -> String {
    if s.is_empty() {
        return "no recorded semantics versions (stored before they were recorded)".into();
    }
    s.iter()
        .map(|(k, v)| format!("{k} v{v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One stage's line in `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageResult {
    /// 0-based index.
    pub index: usize,
    /// The stage's name.
    pub name: String,
    /// Its content key.
    pub key: String,
    /// Whether it was found finished in the store rather than trained by this invocation.
    pub reused: bool,
    /// Records composed for the stage.
    pub records: usize,
    /// Wall time of the training that produced it.
    pub train_seconds: f64,
    /// The last step's loss.
    pub final_train_loss: Option<f64>,
    /// Where its weights are.
    pub store_dir: PathBuf,
    /// Source name → held-out loss of this stage's model (mean over the held-out records, mean
    /// ± 1.96 SE); per-record values in `heldout_loss.json`. Empty without held-out records
    /// (and in results written before per-stage losses were recorded).
    #[serde(default)]
    pub heldout_loss: BTreeMap<String, Metric>,
}

/// `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResults {
    /// Always [`RESULTS_FORMAT_VERSION`].
    pub format_version: u32,
    /// The plan's name.
    pub plan: String,
    /// Metric name → value (absent when not evaluated).
    pub metrics: BTreeMap<String, Metric>,
    /// Every stage, in order.
    pub stages: Vec<StageResult>,
    /// Source name → the base model's held-out loss (before any stage), as in
    /// [`StageResult::heldout_loss`].
    #[serde(default)]
    pub base_heldout_loss: BTreeMap<String, Metric>,
    /// Git revision, seed, libtorch, device, base model, times.
    pub provenance: BTreeMap<String, Value>,
}

/// A cached evaluation (`eval/<task>.metric.json`), valid for one final model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CachedMetric {
    model_key: String,
    settings: Value,
    metric: Option<Metric>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn write_status(run_dir: &Path, state: &str, error: Option<&Error>) -> Result<()> {
    let status = Status {
        format_version: RESULTS_FORMAT_VERSION,
        state: state.into(),
        error: error.map(|e| e.to_string()),
        error_kind: error.map(Error::kind),
        updated_unix: now_unix(),
    };
    write_json(&run_dir.join("status.json"), &status)
}

/// Runs `plan` with `status.json` kept up to date: `running` at the start, then `done` with
/// `results.json`, or `failed` with the error (which is also returned).
pub fn run_plan(
    plan: &Plan,
    settings: &RunSettings,
    opts: &RunOptions,
    backend: &dyn Backend,
) -> Result<RunResults> {
    std::fs::create_dir_all(&opts.run_dir).map_err(Error::io("create", &opts.run_dir))?;
    let _lock = DirLock::acquire(&opts.run_dir)?;
    write_status(&opts.run_dir, "running", None)?;
    match run_inner(plan, settings, opts, backend) {
        Ok(results) => {
            write_json(&opts.run_dir.join("results.json"), &results)?;
            write_status(&opts.run_dir, "done", None)?;
            Ok(results)
        }
        Err(e) => {
            tracing::error!(error = %e, kind = %e.kind(), "run failed");
            write_status(&opts.run_dir, "failed", Some(&e))?;
            Err(e)
        }
    }
}

fn run_inner(
    plan: &Plan,
    settings: &RunSettings,
    opts: &RunOptions,
    backend: &dyn Backend,
) -> Result<RunResults> {
    let started = now_unix();
    // Every stage trains with its resolved config over the run's base (trainer defaults, the
    // run's seed). Idempotent for a plan `load_plan_file` resolved; a plan built in code (e.g.
    // `Strategy::plan()`) gets the run's seed here, and a bad value fails before anything trains.
    let plan = &plan.clone().with_train(
        "run_plan",
        &settings.base_train_config(),
        &TrainOverrides::default(),
    )?;
    for stage in &plan.stages {
        backend
            .check_stage(stage)
            .map_err(|source| Error::StageSettings {
                index: stage.index,
                name: stage.name.clone(),
                source,
            })?;
    }
    let run_dir = &opts.run_dir;
    let store = opts.store();
    let _ = std::fs::remove_file(run_dir.join("results.json"));

    let mut pools = Pools::open(settings, &opts.data_dir, &store.join("heldout"))?;
    plan.check_sources(&pools.names())?;
    if !opts.base_model.exists() {
        return Err(Error::Settings(format!(
            "base model {} does not exist",
            opts.base_model.display()
        )));
    }
    // `[run.eval.hidden]`: its queries (held-out records) and its layer, checked before
    // anything trains.
    let hidden_queries = match &settings.eval.hidden {
        Some(h) => {
            let counts = h.queries(&settings.data.heldout_counts()?)?;
            backend
                .check_hidden(&opts.base_model, h)
                .map_err(Error::Backend)?;
            let mut queries = Vec::new();
            for (name, n) in &counts {
                for r in pools.heldout.get(name).into_iter().flatten().take(*n) {
                    let mut r = r.clone();
                    r.source = name.clone();
                    queries.push(r);
                }
            }
            Some(queries)
        }
        None => None,
    };
    let base_fp = fingerprint_model(&opts.base_model)?;
    let ctx = KeyContext {
        base_model: base_fp.clone(),
        sources: pools.fingerprints(),
        world_size: backend.world_size(),
    };
    let keys = plan.stage_keys(&ctx)?;

    write_json(
        &run_dir.join("plan.resolved.json"),
        &json!({
            "format_version": RESULTS_FORMAT_VERSION,
            "plan": plan,
            "keys": keys.iter().map(|k| json!({"key": k.key, "parent": k.parent})).collect::<Vec<_>>(),
            "settings": settings,
            "pools": pools.pools.iter().map(|(n, p)| (n.clone(), json!({"path": p.spec.path, "available": p.available, "filtered_out": p.filtered_out, "filter": p.user_filter.as_ref().map(|f| &f.0), "pool": p.size, "sha256": p.sha256}))).collect::<BTreeMap<_, _>>(),
            "heldout_ids": pools.heldout_ids(),
            "split_seed": pools.split_seed,
        }),
    )?;
    let heldout_ids = pools.heldout_ids();
    let heldout_records = pools.heldout_records();
    let dtype = backend.eval_dtype(settings.eval.dtype);
    let default_config = sft_schedule::TrainConfig::default();
    let mut losses = crate::heldout::HeldoutLosses {
        format_version: crate::heldout::FORMAT_VERSION,
        split_seed: pools.split_seed,
        ids: heldout_ids.clone(),
        models: Vec::new(),
    };
    // The base model in the first stage's template and lengths (what stage 0 starts from).
    let base_losses = crate::heldout::score(
        backend,
        &store.join("base").join(&base_fp[..16]),
        &opts.base_model,
        &heldout_records,
        &heldout_ids,
        plan.stages
            .first()
            .map(|s| &s.config)
            .unwrap_or(&default_config),
        dtype,
    )?;
    losses.models.push(crate::heldout::ModelLosses {
        label: "base".into(),
        stage: None,
        model_key: format!("base:{base_fp}"),
        losses: base_losses,
    });
    let base_heldout_loss = losses.models[0].estimates();
    let mut provenance: BTreeMap<String, Value> = opts.provenance.clone();
    provenance.insert("seed".into(), json!(settings.seed));
    provenance.insert("base_model".into(), json!(opts.base_model));
    provenance.insert("base_model_sha256".into(), json!(base_fp));
    provenance.insert("data_dir".into(), json!(opts.data_dir));
    provenance.insert("stage_store".into(), json!(store));
    provenance.insert("started_unix".into(), json!(started));
    for (k, v) in backend.describe() {
        provenance.insert(k, json!(v));
    }
    write_json(&run_dir.join("provenance.json"), &provenance)?;

    let semantics = backend.semantics();
    let mut stages = Vec::with_capacity(plan.stages.len());
    let mut prev_model = opts.base_model.clone();
    let mut prev_train: Option<PathBuf> = None;
    for (i, (stage, key)) in plan.stages.iter().zip(&keys).enumerate() {
        // The optimizer state is kept only when the next stage of this plan carries it over
        // (it is twice the model's size; the paper restarts the optimizer per stage).
        let keep_optimizer_state = plan
            .stages
            .get(i + 1)
            .is_some_and(|next| next.optimizer_state == OptimizerState::Carry);
        let dir = store.join(&key.key);
        let short = key.key[..12].to_string();
        let span =
            tracing::info_span!("stage", index = stage.index, name = %stage.name, key = %short);
        let _guard = span.enter();
        let done_path = dir.join("done.json");
        let current = |done_path: &Path| -> Result<bool> {
            Ok(done_path.exists() && read_json::<StageDone>(done_path)?.semantics == semantics)
        };
        let mut reused = current(&done_path)?;
        if reused {
            tracing::info!(
                "stage {} ({}) already trained: reusing {}",
                stage.index,
                stage.name,
                dir.display()
            );
        } else {
            let _stage_lock = DirLock::acquire(&dir)?;
            reused = current(&done_path)?;
            if !reused {
                discard_if_stale(stage, &key.key, &dir, &semantics, settings.stale_stages)?;
                write_json(&dir.join(SEMANTICS_FILE), &semantics)?;
                train_stage(
                    stage,
                    &key.key,
                    &key.material,
                    &dir,
                    &prev_model,
                    prev_train.as_deref(),
                    keep_optimizer_state,
                    &mut pools,
                    settings,
                    backend,
                    &semantics,
                )?;
            }
        }
        let done: StageDone = read_json(&done_path)?;
        if done.key != key.key {
            return Err(Error::Parse {
                path: done_path,
                message: format!("holds key {}, expected {}", done.key, key.key),
            });
        }
        let result = StageResult {
            index: stage.index,
            name: stage.name.clone(),
            key: key.key.clone(),
            reused,
            records: done.records,
            train_seconds: done.train_seconds,
            final_train_loss: done.final_train_loss,
            store_dir: dir.clone(),
            heldout_loss: BTreeMap::new(),
        };
        let stage_losses = crate::heldout::ModelLosses {
            label: stage.name.clone(),
            stage: Some(stage.index),
            model_key: key.key.clone(),
            losses: crate::heldout::score(
                backend,
                &dir,
                &dir.join("model"),
                &heldout_records,
                &heldout_ids,
                &stage.config,
                dtype,
            )?,
        };
        let result = StageResult {
            heldout_loss: stage_losses.estimates(),
            ..result
        };
        losses.models.push(stage_losses);
        write_json(
            &run_dir.join("stages").join(format!("{}.json", stage.index)),
            &result,
        )?;
        stages.push(result);
        prev_model = dir.join("model");
        prev_train = Some(dir.join("train"));
    }

    write_json(&run_dir.join(crate::heldout::FILE), &losses)?;

    let final_key = keys.last().map(|k| k.key.clone()).unwrap_or_default();
    let eval_dir = run_dir.join("eval");
    let req = EvalRequest {
        model: &prev_model,
        data_dir: &opts.data_dir,
        settings: &settings.eval,
        out_dir: &eval_dir,
        seed: settings.seed,
        split_seed: pools.split_seed,
        final_stage_train: plan.stages.last().map(|s| &s.config),
        dtype,
    };
    let mut metrics = evaluate(backend, &req, &final_key)?;
    // GSM8K's strict-match accuracy beside the headline flexible-extract one, from its items.
    if let Some(flex) = metrics.get("gsm8k_acc").copied() {
        let p = crate::items::path(&eval_dir, Task::Gsm8k);
        if p.exists() {
            let items: crate::items::TaskItems = read_json(&p)?;
            if let Some(strict) = items.proportion(crate::items::STRICT) {
                if strict.n == flex.n {
                    metrics.insert("gsm8k_strict_acc".to_string(), strict);
                }
            }
        }
    }
    if let Some(last) = losses.final_model() {
        for (source, m) in last.estimates() {
            if source == settings.data.general_source {
                metrics.insert("general_heldout_loss".to_string(), m);
            }
            metrics.insert(format!("heldout_loss.{source}"), m);
        }
    }
    if let (Some(h), Some(queries)) = (&settings.eval.hidden, &hidden_queries) {
        let template = if h.raw {
            None
        } else {
            Some(h.template.clone().unwrap_or_else(|| {
                plan.stages
                    .last()
                    .map(|s| &s.config)
                    .unwrap_or(&default_config)
                    .template
                    .clone()
            }))
        };
        let mut models: Vec<(&str, &Path)> = vec![("base", opts.base_model.as_path())];
        if !plan.stages.is_empty() {
            models.push(("final", prev_model.as_path()));
        }
        let req = HiddenRequest {
            models: &models,
            records: queries,
            settings: h,
            template: template.as_deref(),
            seed: pools.split_seed,
            dtype,
            out_dir: &run_dir.join(HIDDEN_DIR),
        };
        for (k, m) in analyze_hidden(backend, &req, &format!("{base_fp}:{final_key}"))? {
            metrics.insert(format!("hidden.{k}"), m);
        }
    }
    provenance.insert("finished_unix".into(), json!(now_unix()));
    write_json(&run_dir.join("provenance.json"), &provenance)?;
    Ok(RunResults {
        format_version: RESULTS_FORMAT_VERSION,
        plan: plan.name.clone(),
        metrics,
        stages,
        base_heldout_loss,
        provenance,
    })
}

/// The directory of a run's representation analysis (`[run.eval.hidden]`).
pub const HIDDEN_DIR: &str = "hidden";

/// A cached representation analysis (`hidden/metrics.json`), valid for one pair of models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CachedAnalysis {
    model_key: String,
    settings: Value,
    metrics: BTreeMap<String, Metric>,
}

/// The representation analysis' metrics: cached in `hidden/metrics.json` for these models
/// (`model_key`: base fingerprint and final stage key), queries, settings, seed and dtype, else
/// one [`Backend::analyze_hidden`] call.
fn analyze_hidden(
    backend: &dyn Backend,
    req: &HiddenRequest<'_>,
    model_key: &str,
) -> Result<BTreeMap<String, Metric>> {
    let settings = json!({
        "hidden": req.settings,
        "template": req.template,
        "seed": req.seed,
        "dtype": req.dtype,
        "labels": req.models.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
        "queries": req.records.iter().map(|r| (&r.source, &r.id)).collect::<Vec<_>>(),
    });
    let cache = req.out_dir.join("metrics.json");
    if cache.exists() {
        if let Ok(c) = read_json::<CachedAnalysis>(&cache) {
            if c.model_key == model_key && c.settings == settings {
                tracing::info!("representation analysis already done for these models: reusing");
                return Ok(c.metrics);
            }
        }
    }
    let t0 = Instant::now();
    let metrics = backend.analyze_hidden(req).map_err(Error::Backend)?;
    tracing::info!(
        seconds = t0.elapsed().as_secs_f64(),
        metrics = metrics.len(),
        "representation analysis done"
    );
    write_json(
        &cache,
        &CachedAnalysis {
            model_key: model_key.to_string(),
            settings,
            metrics: metrics.clone(),
        },
    )?;
    Ok(metrics)
}

/// The final model's metrics: the cached ones (`eval/<task>.metric.json`, valid for this
/// model key, evaluation settings, split seed and resolved dtype), and one
/// [`Backend::evaluate`] call for every task that is not cached, which caches each task's
/// metric as soon as it is reported (so a failure in a later task keeps it).
fn evaluate(
    backend: &dyn Backend,
    req: &EvalRequest<'_>,
    final_key: &str,
) -> Result<BTreeMap<String, Metric>> {
    let eval_settings = json!({
        "eval": req.settings,
        "split_seed": req.split_seed,
        "dtype": req.dtype,
    });
    let cache_path = |task: Task| {
        req.out_dir
            .join(format!("{}.metric.json", task.file_name()))
    };
    let mut metrics = BTreeMap::new();
    let mut todo = Vec::new();
    for task in Task::ALL {
        let path = cache_path(task);
        let cached: Option<CachedMetric> = if path.exists() {
            read_json(&path).ok()
        } else {
            None
        };
        match cached {
            Some(c) if c.model_key == final_key && c.settings == eval_settings => {
                tracing::info!(%task, "evaluation already done for this model: reusing");
                if let Some(m) = c.metric {
                    metrics.insert(task.metric_name().to_string(), m);
                }
            }
            _ => todo.push(task),
        }
    }
    if todo.is_empty() {
        return Ok(metrics);
    }
    let mut reported: Vec<Task> = Vec::new();
    let mut t0 = Instant::now();
    let mut done = |task: Task, m: Option<Metric>| -> Result<()> {
        if !todo.contains(&task) || reported.contains(&task) {
            return Err(Error::Backend(BackendError::new(
                ErrorKind::Eval,
                format!("evaluating {task}"),
                "the backend reported a task it was not asked for, or twice",
            )));
        }
        tracing::info!(%task, seconds = t0.elapsed().as_secs_f64(), metric = ?m, "evaluated");
        t0 = Instant::now();
        write_json(
            &cache_path(task),
            &CachedMetric {
                model_key: final_key.to_string(),
                settings: eval_settings.clone(),
                metric: m,
            },
        )?;
        if let Some(m) = m {
            metrics.insert(task.metric_name().to_string(), m);
        }
        reported.push(task);
        Ok(())
    };
    backend.evaluate(req, &todo, &mut done)?;
    if let Some(missing) = todo.iter().find(|t| !reported.contains(t)) {
        return Err(Error::Backend(BackendError::new(
            ErrorKind::Eval,
            format!("evaluating {missing}"),
            "the backend returned without a result for it",
        )));
    }
    Ok(metrics)
}

/// Under the stage's lock, before training it: a finished stage (`done.json`) or a partial one
/// (`train/`) recorded under other semantics versions than `current` is refused or, with
/// [`StaleStages::Retrain`], deleted (`done.json` first, so an interruption never leaves a stale
/// stage that looks finished) so that it is trained from scratch. A partial stage under the
/// same versions is left for the trainer to resume.
fn discard_if_stale(
    stage: &sft_schedule::Stage,
    key: &str,
    dir: &Path,
    current: &BTreeMap<String, u32>,
    policy: StaleStages,
) -> Result<()> {
    let done_path = dir.join("done.json");
    let sem_path = dir.join(SEMANTICS_FILE);
    let (what, recorded) = if done_path.exists() {
        ("trained", read_json::<StageDone>(&done_path)?.semantics)
    } else if dir.join("train").exists() || dir.join("model").exists() {
        let recorded: BTreeMap<String, u32> = if sem_path.exists() {
            read_json(&sem_path)?
        } else {
            BTreeMap::new()
        };
        if &recorded == current {
            return Ok(());
        }
        ("partly trained", recorded)
    } else {
        return Ok(());
    };
    let (recorded, now) = (describe_semantics(&recorded), describe_semantics(current));
    match policy {
        StaleStages::Refuse => Err(Error::StaleStage {
            index: stage.index,
            name: stage.name.clone(),
            key: key[..12].to_string(),
            dir: dir.to_path_buf(),
            what,
            recorded,
            current: now,
        }),
        StaleStages::Retrain => {
            tracing::warn!(
                "stage {} ({}, key {}) was {what} under {recorded}; this build is {now}: \
                 retraining it (stale_stages = \"retrain\")",
                stage.index,
                stage.name,
                &key[..12]
            );
            for name in ["done.json", SEMANTICS_FILE, "model", "train", "data"] {
                let p = dir.join(name);
                if p.is_dir() {
                    std::fs::remove_dir_all(&p).map_err(Error::io("remove", &p))?;
                } else if p.exists() {
                    std::fs::remove_file(&p).map_err(Error::io("remove", &p))?;
                }
            }
            Ok(())
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn train_stage(
    stage: &sft_schedule::Stage,
    key: &str,
    material: &Value,
    dir: &Path,
    init_model: &Path,
    prev_train: Option<&Path>,
    keep_optimizer_state: bool,
    pools: &mut Pools,
    settings: &RunSettings,
    backend: &dyn Backend,
    semantics: &BTreeMap<String, u32>,
) -> Result<()> {
    let t0 = Instant::now();
    write_json(&dir.join("stage.json"), material)?;
    let mixture = pools.compose_stage(stage)?;
    let data = dir.join("data/train.jsonl");
    std::fs::create_dir_all(dir.join("data")).map_err(Error::io("create", dir.join("data")))?;
    mixture.write_jsonl(&data)?;
    mixture.manifest().write(&dir.join("data/manifest.json"))?;
    let counts: Vec<String> = mixture
        .source_stats()
        .iter()
        .map(|s| format!("{}={}", s.name, s.selected))
        .collect();
    tracing::info!(
        "training stage {} ({}): {} records ({})",
        stage.index,
        stage.name,
        mixture.len(),
        counts.join(", ")
    );
    let init_optimizer = match stage.optimizer_state {
        OptimizerState::Carry => prev_train,
        OptimizerState::Restart => None,
    };
    let req = TrainRequest {
        stage,
        key,
        init_model,
        init_optimizer,
        keep_optimizer_state,
        data: &data,
        seed: settings.seed,
        work_dir: &dir.join("train"),
        model_out: &dir.join("model"),
    };
    let stage_error = |source: BackendError| Error::Stage {
        index: stage.index,
        name: stage.name.clone(),
        key: key[..12].to_string(),
        source,
    };
    let report = backend.train(&req).map_err(stage_error)?;
    if !dir.join("model").is_dir() {
        return Err(stage_error(BackendError::new(
            ErrorKind::Io,
            "training",
            "the trainer returned without writing model/",
        )));
    }
    let done = StageDone {
        format_version: RESULTS_FORMAT_VERSION,
        key: key.to_string(),
        records: mixture.len(),
        examples: report.examples,
        steps: report.steps,
        train_seconds: t0.elapsed().as_secs_f64(),
        final_train_loss: report.final_train_loss,
        resumed_from: report.resumed_from,
        semantics: semantics.clone(),
    };
    write_json(&dir.join("done.json"), &done)?;
    tracing::info!(seconds = done.train_seconds, steps = done.steps, loss = ?done.final_train_loss, "stage finished");
    Ok(())
}
