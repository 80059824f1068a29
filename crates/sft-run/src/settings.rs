//! Runner settings: the plan file's `[run]` table (data pools, evaluation sizes, seed, model),
//! overridable from the command line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sft_compose::SourceFormat;
use sft_schedule::{CODE, GENERAL, MATH};

use crate::error::{Error, Result};

/// Everything about a run that is not the plan's stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSettings {
    /// The base model: a GGUF file or an HF directory (`config.json` + safetensors + tokenizer).
    /// Relative paths resolve against the plan file's directory. Flags override it.
    #[serde(default)]
    pub model: Option<PathBuf>,
    /// The seed of data selection (pools, stage mixtures, data order) and of the trainer; also
    /// the seed of the held-out records and benchmark subsets unless `split_seed` is set.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// The seed that draws the held-out records and the GSM8K/HumanEval subsets (default:
    /// `seed`). A run of a `seeds = [...]` list keeps it at the plan's `seed`
    /// ([`RunSettings::for_seed`]), so every replicate is scored on the same records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_seed: Option<u64>,
    /// Replicate seeds: the plan is run once per seed ([`RunSettings::replicates`]); each
    /// changes the pools' sampling, the data order and the trainer's seed, not the held-out
    /// records or the benchmark subsets. Empty = one run with `seed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<u64>,
    /// The data sources and how much of each the plan's proportions refer to.
    #[serde(default)]
    pub data: DataSettings,
    /// What to evaluate, and how much.
    #[serde(default)]
    pub eval: EvalSettings,
    /// What to do with a stored stage trained under other training or chat semantics versions
    /// than this build's ([`crate::Backend::semantics`]): retrain it (default) or refuse to run.
    #[serde(default)]
    pub stale_stages: StaleStages,
}

/// The policy for a stage in the store that was trained (or partly trained) under other
/// semantics versions than the running code's: it is never silently reused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StaleStages {
    /// Discard the stage's weights, checkpoints and data and train it again (logged).
    #[default]
    Retrain,
    /// Stop with [`crate::Error::StaleStage`], naming the stage and both versions.
    Refuse,
}

impl std::str::FromStr for StaleStages {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "retrain" => Ok(StaleStages::Retrain),
            "refuse" => Ok(StaleStages::Refuse),
            _ => Err(format!("`{s}`: expected retrain or refuse")),
        }
    }
}

fn default_seed() -> u64 {
    42
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings {
            model: None,
            seed: default_seed(),
            split_seed: None,
            seeds: Vec::new(),
            data: DataSettings::default(),
            eval: EvalSettings::default(),
            stale_stages: StaleStages::default(),
        }
    }
}

/// One source: a file and the size of its pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSettings {
    /// The file, relative to the data directory (or absolute).
    pub path: PathBuf,
    /// Its format; detected when absent.
    #[serde(default)]
    pub format: Option<SourceFormat>,
    /// How many records form the pool that the plan's proportions refer to: a seeded sample of
    /// the file (every stage's selection is a prefix of the same permutation, so a stage taking
    /// 1/4 of the pool takes records the full-pool stage also saw). `None` = the whole file
    /// (minus the held-out records, for the general source).
    #[serde(default)]
    pub pool: Option<usize>,
    /// The pool as a proportion of the file instead (`"1/64"`): `floor(n · r)` records, at least 1.
    #[serde(default)]
    pub pool_ratio: Option<sft_compose::Ratio>,
    /// An InsTag-style tag file for the source (relative to the data directory, or absolute;
    /// e.g. the `tag` example's output): its tags are added to the records' own before `filter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<PathBuf>,
    /// Keep only the records whose tags match this tag filter (`sft_compose::TagFilter`, e.g.
    /// `"not (code|program|math)"` for the paper's ablation). The source *is* the kept records:
    /// held-out records, the pool and every stage draw from them only. Checked when the plan
    /// loads; the counts are in `plan.resolved.json` (`pools.<name>.filtered_out`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
}

/// The sources and the held-out split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSettings {
    /// Source name → file and pool. Default: the three sources of `../shared/data`.
    #[serde(default = "default_sources")]
    pub sources: BTreeMap<String, SourceSettings>,
    /// The source whose held-out conversations measure general ability (never trained on).
    #[serde(default = "default_general")]
    pub general_source: String,
    /// Held-out records per source, never trained on by any stage: one number for every source
    /// or a table `{ math = 32, code = 32, general = 32 }` (a source left out holds none back).
    /// Default (with `general_heldout` also absent): 16 records of the general source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout: Option<Heldout>,
    /// The older spelling of `heldout = { <general_source> = N }`; kept so existing plans load.
    /// Giving both is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub general_heldout: Option<usize>,
}

/// `[run.data] heldout`: one count for every source, or a count per source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Heldout {
    /// The same number of records from every source.
    All(usize),
    /// Source name → number of records (absent sources hold none back).
    PerSource(BTreeMap<String, usize>),
}

fn default_general() -> String {
    GENERAL.to_string()
}

fn default_heldout() -> usize {
    16
}

impl DataSettings {
    /// Held-out records per configured source (sources holding none back are absent), from
    /// `heldout`, the `general_heldout` alias, or the default (16 general records). Fails when
    /// both spellings are given or a table names a source that is not configured.
    pub fn heldout_counts(&self) -> Result<BTreeMap<String, usize>> {
        let counts: BTreeMap<String, usize> = match (&self.heldout, self.general_heldout) {
            (Some(_), Some(_)) => {
                return Err(Error::Settings(
                    "[run.data] sets both `heldout` and `general_heldout`; `general_heldout = N` \
                     is the older spelling of `heldout = { general = N }`: keep only `heldout`"
                        .into(),
                ))
            }
            (Some(Heldout::All(n)), None) => self.sources.keys().map(|s| (s.clone(), *n)).collect(),
            (Some(Heldout::PerSource(m)), None) => {
                if let Some(bad) = m.keys().find(|k| !self.sources.contains_key(*k)) {
                    return Err(Error::Settings(format!(
                        "[run.data] heldout names source {bad:?}, which is not configured (sources: {})",
                        self.sources.keys().cloned().collect::<Vec<_>>().join(", ")
                    )));
                }
                m.clone()
            }
            (None, g) => {
                let n = g.unwrap_or_else(default_heldout);
                if n > 0 && !self.sources.contains_key(&self.general_source) {
                    return Err(Error::Settings(format!(
                        "general_source {:?} is not among the sources ({})",
                        self.general_source,
                        self.sources.keys().cloned().collect::<Vec<_>>().join(", ")
                    )));
                }
                BTreeMap::from([(self.general_source.clone(), n)])
            }
        };
        Ok(counts.into_iter().filter(|(_, n)| *n > 0).collect())
    }
}

/// The three sources of the shared data directory (see `/work/shared/data/README.md`).
pub fn default_sources() -> BTreeMap<String, SourceSettings> {
    let s = |p: &str, f: SourceFormat| SourceSettings {
        path: PathBuf::from(p),
        format: Some(f),
        pool: None,
        pool_ratio: None,
        tags: None,
        filter: None,
    };
    BTreeMap::from([
        (
            CODE.to_string(),
            s("code_alpaca/code_alpaca_20k.json", SourceFormat::Alpaca),
        ),
        (
            MATH.to_string(),
            s("gsm8k/train.jsonl", SourceFormat::Gsm8k),
        ),
        (
            GENERAL.to_string(),
            s(
                "sharegpt/sharegpt_v3_sample_1011.json",
                SourceFormat::ShareGpt,
            ),
        ),
    ])
}

impl Default for DataSettings {
    fn default() -> Self {
        DataSettings {
            sources: default_sources(),
            general_source: default_general(),
            heldout: None,
            general_heldout: None,
        }
    }
}

/// Evaluation sizes and generation limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSettings {
    /// GSM8K test file, relative to the data directory.
    #[serde(default = "default_gsm8k_path")]
    pub gsm8k_path: PathBuf,
    /// How many GSM8K test questions: a seeded random subset of n (drawn with the split seed,
    /// the same for every strategy and replicate; all of them when n ≥ the file's size; 0 =
    /// skip; the paper uses all 1,319).
    #[serde(default = "default_gsm8k_n")]
    pub gsm8k: usize,
    /// New-token limit for GSM8K answers.
    #[serde(default = "default_gsm8k_tokens")]
    pub gsm8k_max_new_tokens: usize,
    /// HumanEval problems file (`.jsonl` or `.jsonl.gz`), relative to the data directory.
    #[serde(default = "default_humaneval_path")]
    pub humaneval_path: PathBuf,
    /// How many HumanEval problems: a seeded random subset of n, like `gsm8k` (0 = skip; the
    /// paper uses all 164).
    #[serde(default = "default_humaneval_n")]
    pub humaneval: usize,
    /// New-token limit for HumanEval completions.
    #[serde(default = "default_humaneval_tokens")]
    pub humaneval_max_new_tokens: usize,
    /// Prompts per generation batch.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Directory with FastChat's MT-Bench files (`question.jsonl`, `judge_prompts.jsonl`,
    /// `reference_answer/gpt-4.jsonl`), relative to the data directory (or absolute).
    #[serde(default = "default_mtbench_dir")]
    pub mtbench_dir: PathBuf,
    /// How many MT-Bench questions (the first n of 80; 0 = skip). Only used with a `judge`.
    #[serde(default = "default_mtbench_n")]
    pub mtbench: usize,
    /// New-token limit per MT-Bench answer turn (FastChat: 1024).
    #[serde(default = "default_mtbench_tokens")]
    pub mtbench_max_new_tokens: usize,
    /// The OpenAI-compatible judge; without one MT-Bench is reported as not evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<JudgeSettings>,
    /// The dtype the model is loaded in for evaluation: `auto` (default: bf16 on CUDA, f32 on
    /// the CPU, as the `generate` example does), `f32` or `bf16`. The resolved dtype is
    /// recorded in every task's report and in the cached metrics' key, so changing it (or
    /// `auto` resolving differently on another device) evaluates again.
    #[serde(default)]
    pub dtype: EvalDtype,
    /// The representation analysis of the final model next to the base model
    /// (`[run.eval.hidden]`); absent = not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<HiddenSettings>,
    /// Generate the answers of GSM8K, HumanEval and MT-Bench with a server the runner starts on
    /// each evaluated model (e.g. vLLM) instead of in-process; the prompts, stop sequences and
    /// scoring stay the toolkit's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerSettings>,
}

/// `[run.eval] server = { command = "vllm serve {model} --port {port}", ready_timeout_s = 900 }`:
/// the runner runs `command` (with `sh -c`, `{model}` the evaluated model's directory, `{port}` a
/// free port) for each evaluation, waits until `GET /v1/models` answers, sends every prompt to
/// `/v1/completions` as text already rendered in the stage's chat template, and stops the server
/// (its whole process group) when the evaluation ends, whatever happens. Its output goes to
/// `<eval dir>/server.log`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// The command; must contain `{model}` and `{port}`.
    pub command: String,
    /// Seconds to wait for `/v1/models` (loading a 7B model in vLLM takes minutes).
    #[serde(default = "default_ready_timeout")]
    pub ready_timeout_s: f64,
    /// Concurrent requests.
    #[serde(default = "default_server_parallel")]
    pub parallel: usize,
    /// Environment variable with an API key the server wants (none by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
}

fn default_ready_timeout() -> f64 {
    900.0
}
fn default_server_parallel() -> usize {
    16
}

impl ServerSettings {
    /// Checks the placeholders and ranges; the error names the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for p in ["{model}", "{port}"] {
            if !self.command.contains(p) {
                return Err(format!(
                    "[run.eval] server.command {:?} has no {p} placeholder",
                    self.command
                ));
            }
        }
        if !(self.ready_timeout_s.is_finite() && self.ready_timeout_s > 0.0) {
            return Err(format!(
                "[run.eval] server.ready_timeout_s must be positive, got {}",
                self.ready_timeout_s
            ));
        }
        if self.parallel == 0 {
            return Err("[run.eval] server.parallel must be at least 1".into());
        }
        Ok(())
    }
}

/// `[run.eval.hidden]`: how well the sources separate in one layer's hidden states, for the base
/// model and the plan's final model, on the same queries (`sft-analyze`; `docs/analysis.md`).
///
/// The queries are the run's **held-out records** of each analysed source (never trained on by
/// any stage, the same for every strategy, seed and sweep cell), so a strategy cannot have seen
/// some of them and not others. The seed of the probe's folds and of the bootstrap is the run's
/// split seed. Every value is checked when the settings load ([`RunSettings::from_plan_value`]):
/// the sources, that each holds at least `n` (and `folds`) records back, and that the queries are
/// enough for t-SNE's perplexity. The layer is checked against the base model before anything
/// trains ([`crate::Backend::check_hidden`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HiddenSettings {
    /// The sources whose held-out records are the queries (at least two; default: every source
    /// that holds records back).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// Queries per source: the first `n` held-out records of each (default: all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    /// The hidden state in transformers' numbering (0 the embeddings, `L` the final-norm output;
    /// negative counts from the end). Default 15, the paper's.
    #[serde(default = "default_hidden_layer")]
    pub layer: i64,
    /// How a query's token states become one vector.
    #[serde(default = "default_hidden_pool")]
    pub pool: sft_analyze::Pool,
    /// The chat template the query is rendered in, with the generation prompt (a name
    /// `sft-chat` resolves). Default: the final stage's training template, which is how the
    /// runner's evaluation prompts the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// The first user message as is, tokenized with the tokenizer's special tokens, instead of
    /// a chat template.
    #[serde(default)]
    pub raw: bool,
    /// Queries per forward pass.
    #[serde(default = "default_hidden_batch")]
    pub batch_size: usize,
    /// Longer queries are cut to their first this-many tokens.
    #[serde(default = "default_hidden_max_tokens")]
    pub max_tokens: usize,
    /// PCA components the scores and t-SNE work in.
    #[serde(default = "default_pca_dims")]
    pub pca_dims: usize,
    /// t-SNE perplexity (needs at least `3 · perplexity + 1` queries in all).
    #[serde(default = "default_perplexity")]
    pub perplexity: f64,
    /// t-SNE iterations.
    #[serde(default = "default_tsne_iterations")]
    pub iterations: usize,
}

fn default_hidden_layer() -> i64 {
    15
}
fn default_hidden_pool() -> sft_analyze::Pool {
    sft_analyze::Pool::Mean
}
fn default_hidden_batch() -> usize {
    16
}
fn default_hidden_max_tokens() -> usize {
    512
}
fn default_pca_dims() -> usize {
    sft_analyze::AnalysisSettings::default().pca_dims
}
fn default_perplexity() -> f64 {
    sft_analyze::AnalysisSettings::default().perplexity
}
fn default_tsne_iterations() -> usize {
    sft_analyze::AnalysisSettings::default().iterations
}

impl Default for HiddenSettings {
    fn default() -> Self {
        HiddenSettings {
            sources: Vec::new(),
            n: None,
            layer: default_hidden_layer(),
            pool: default_hidden_pool(),
            template: None,
            raw: false,
            batch_size: default_hidden_batch(),
            max_tokens: default_hidden_max_tokens(),
            pca_dims: default_pca_dims(),
            perplexity: default_perplexity(),
            iterations: default_tsne_iterations(),
        }
    }
}

impl HiddenSettings {
    /// The analysis settings: these values, the other ones `sft-analyze`'s defaults, and `seed`
    /// (the run's split seed) for the probe's folds and the bootstrap.
    pub fn analysis(&self, seed: u64) -> sft_analyze::AnalysisSettings {
        sft_analyze::AnalysisSettings {
            pca_dims: self.pca_dims,
            perplexity: self.perplexity,
            iterations: self.iterations,
            seed,
            ..sft_analyze::AnalysisSettings::default()
        }
    }

    /// Source name → queries taken from its held-out records (the first `n`, or all), given the
    /// held-out counts of [`DataSettings::heldout_counts`]. Fails, naming the setting, when a
    /// source is unknown or holds too few records back, fewer than two sources are analysed,
    /// or the queries are too few for the perplexity or the probe's folds.
    pub fn queries(&self, heldout: &BTreeMap<String, usize>) -> Result<BTreeMap<String, usize>> {
        let bad = |m: String| Err(Error::Settings(format!("[run.eval.hidden] {m}")));
        let names: Vec<String> = if self.sources.is_empty() {
            heldout.keys().cloned().collect()
        } else {
            self.sources.clone()
        };
        if names.len() < 2 {
            return bad(format!(
                "needs at least two sources to measure how they separate; the analysed sources \
                 are the ones holding records back ([run.data] heldout), here: {}",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ));
        }
        if !(self.perplexity > 0.0 && self.perplexity.is_finite())
            || self.iterations == 0
            || self.pca_dims < 2
        {
            return bad("perplexity must be > 0, iterations ≥ 1 and pca_dims ≥ 2".into());
        }
        let folds = sft_analyze::AnalysisSettings::default().folds;
        let mut out = BTreeMap::new();
        for name in &names {
            if out.contains_key(name) {
                return bad(format!("sources names {name:?} twice"));
            }
            let Some(&held) = heldout.get(name) else {
                return bad(format!(
                    "source {name:?} holds no records back: the queries are held-out records, \
                     so give it some in [run.data] heldout (sources holding records back: {})",
                    heldout.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            };
            let n = self.n.unwrap_or(held);
            if n > held {
                return bad(format!(
                    "n = {n}, but source {name:?} holds only {held} records back ([run.data] heldout)"
                ));
            }
            if n < folds {
                return bad(format!(
                    "source {name:?} would give {n} queries, fewer than the probe's {folds} folds"
                ));
            }
            out.insert(name.clone(), n);
        }
        let total: usize = out.values().sum();
        let need = sft_analyze::tsne::min_points(self.perplexity);
        if total < need {
            return bad(format!(
                "{total} queries in all are too few for t-SNE at perplexity {} (it needs at \
                 least 3 · perplexity + 1 = {need}): lower `perplexity` or hold more records back",
                self.perplexity
            ));
        }
        if self.batch_size == 0 || self.max_tokens == 0 {
            return bad("batch_size and max_tokens must be at least 1".into());
        }
        if self.raw && self.template.is_some() {
            return bad("sets both `raw = true` and `template`: choose one".into());
        }
        Ok(out)
    }
}

/// The dtype evaluation loads the model in (`[run.eval] dtype`).
///
/// Read from its lowercase name; any other value fails when the settings load, naming it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalDtype {
    /// bf16 where the device computes it natively (CUDA; CPUs with AVX-512 BF16, AMX or Arm BF16,
    /// detected at run time), f32 elsewhere ([`EvalDtype::resolve`]).
    #[default]
    Auto,
    /// 32-bit float.
    F32,
    /// bfloat16.
    Bf16,
}

impl EvalDtype {
    /// The name in settings and reports (`auto`, `f32`, `bf16`).
    pub fn as_str(self) -> &'static str {
        match self {
            EvalDtype::Auto => "auto",
            EvalDtype::F32 => "f32",
            EvalDtype::Bf16 => "bf16",
        }
    }

    /// The dtype actually used on a device (`native_bf16`: whether it computes bf16 natively: a
    /// CUDA device, or a CPU with AVX-512 BF16, AMX or Arm BF16): `auto` is bf16 there and f32
    /// otherwise; `f32` and `bf16` stay.
    pub fn resolve(self, native_bf16: bool) -> EvalDtype {
        match self {
            EvalDtype::Auto if native_bf16 => EvalDtype::Bf16,
            EvalDtype::Auto => EvalDtype::F32,
            other => other,
        }
    }
}

impl std::fmt::Display for EvalDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EvalDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(EvalDtype::Auto),
            "f32" => Ok(EvalDtype::F32),
            "bf16" => Ok(EvalDtype::Bf16),
            _ => Err(format!("eval dtype `{s}`: expected auto, f32 or bf16")),
        }
    }
}

impl<'de> Deserialize<'de> for EvalDtype {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An OpenAI-compatible MT-Bench judge (FastChat's single-answer grading).
///
/// The API key is read from the environment variable named here, never stored in files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeSettings {
    /// Base URL up to and including `/v1`, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// Judge model (the paper and FastChat: `gpt-4`).
    #[serde(default = "default_judge_model")]
    pub model: String,
    /// Environment variable holding the API key.
    #[serde(default = "default_judge_key_env")]
    pub api_key_env: String,
    /// Concurrent judge requests.
    #[serde(default = "default_judge_parallel")]
    pub parallel: usize,
    /// Judgments per (question, turn); the score is their median.
    #[serde(default = "default_judge_repeats")]
    pub repeats: usize,
}

fn default_judge_model() -> String {
    "gpt-4".into()
}
fn default_judge_key_env() -> String {
    "OPENAI_API_KEY".into()
}
fn default_judge_parallel() -> usize {
    4
}
fn default_judge_repeats() -> usize {
    1
}

impl JudgeSettings {
    /// A judge at `base_url` with the defaults (`gpt-4`, `OPENAI_API_KEY`, 4 parallel, 1 repeat).
    pub fn new(base_url: impl Into<String>) -> Self {
        JudgeSettings {
            base_url: base_url.into(),
            model: default_judge_model(),
            api_key_env: default_judge_key_env(),
            parallel: default_judge_parallel(),
            repeats: default_judge_repeats(),
        }
    }
}

fn default_gsm8k_path() -> PathBuf {
    PathBuf::from("gsm8k/test.jsonl")
}
fn default_gsm8k_n() -> usize {
    50
}
fn default_gsm8k_tokens() -> usize {
    256
}
fn default_humaneval_path() -> PathBuf {
    PathBuf::from("humaneval/HumanEval.jsonl.gz")
}
fn default_humaneval_n() -> usize {
    20
}
fn default_humaneval_tokens() -> usize {
    256
}
fn default_batch() -> usize {
    8
}
fn default_mtbench_dir() -> PathBuf {
    PathBuf::from("mt_bench")
}
fn default_mtbench_n() -> usize {
    80
}
fn default_mtbench_tokens() -> usize {
    1024
}

impl Default for EvalSettings {
    fn default() -> Self {
        EvalSettings {
            gsm8k_path: default_gsm8k_path(),
            gsm8k: default_gsm8k_n(),
            gsm8k_max_new_tokens: default_gsm8k_tokens(),
            humaneval_path: default_humaneval_path(),
            humaneval: default_humaneval_n(),
            humaneval_max_new_tokens: default_humaneval_tokens(),
            batch_size: default_batch(),
            mtbench_dir: default_mtbench_dir(),
            mtbench: default_mtbench_n(),
            mtbench_max_new_tokens: default_mtbench_tokens(),
            judge: None,
            dtype: EvalDtype::Auto,
            hidden: None,
            server: None,
        }
    }
}

impl RunSettings {
    /// Reads the plan's opaque `[run]` table (absent = defaults).
    pub fn from_plan_value(
        value: Option<&serde_json::Value>,
        origin: &Path,
    ) -> Result<RunSettings> {
        match value {
            None => Ok(RunSettings::default()),
            Some(v) => {
                let settings: RunSettings =
                    serde_json::from_value(v.clone()).map_err(|source| Error::RunTable {
                        path: origin.to_path_buf(),
                        source,
                    })?;
                for (name, src) in &settings.data.sources {
                    if let Some(expr) = &src.filter {
                        sft_compose::TagFilter::parse(expr).map_err(|e| {
                            Error::Settings(format!(
                                "{}: [run.data.sources.{name}] filter {expr:?}: {e}",
                                origin.display()
                            ))
                        })?;
                    }
                }
                if let Some(server) = &settings.eval.server {
                    server
                        .validate()
                        .map_err(|e| Error::Settings(format!("{}: {e}", origin.display())))?;
                }
                if let Some(h) = &settings.eval.hidden {
                    let counts = settings.data.heldout_counts()?;
                    h.queries(&counts)
                        .map_err(|e| Error::Settings(format!("{}: {e}", origin.display())))?;
                }
                Ok(settings)
            }
        }
    }

    /// The trainer config every stage's settings apply to: the trainer defaults with the run's
    /// seed (a plan's `[train] seed` still wins). What [`sft_schedule::PlanSpec::resolve`] and
    /// [`sft_schedule::Plan::with_train`] take as `base`.
    pub fn base_train_config(&self) -> sft_schedule::TrainConfig {
        sft_schedule::TrainConfig {
            seed: self.seed,
            ..Default::default()
        }
    }

    /// The seed of the held-out records and benchmark subsets: `split_seed`, else `seed`.
    pub fn split_seed(&self) -> u64 {
        self.split_seed.unwrap_or(self.seed)
    }

    /// The seeds this plan runs with: `seeds`, or `[seed]` when it is empty.
    pub fn replicate_seeds(&self) -> Vec<u64> {
        if self.seeds.is_empty() {
            vec![self.seed]
        } else {
            self.seeds.clone()
        }
    }

    /// The settings of the replicate with seed `seed`: data selection and training use `seed`,
    /// the held-out records and benchmark subsets keep this run's split seed, and the replicate
    /// runs once (`seeds` empty).
    pub fn for_seed(&self, seed: u64) -> RunSettings {
        RunSettings {
            seed,
            split_seed: Some(self.split_seed()),
            seeds: Vec::new(),
            ..self.clone()
        }
    }

    /// One settings value per replicate seed ([`RunSettings::replicate_seeds`], each through
    /// [`RunSettings::for_seed`]).
    pub fn replicates(&self) -> Vec<RunSettings> {
        self.replicate_seeds()
            .into_iter()
            .map(|s| self.for_seed(s))
            .collect()
    }

    /// The names of the configured sources, sorted.
    pub fn source_names(&self) -> Vec<&str> {
        self.data.sources.keys().map(String::as_str).collect()
    }

    /// Resolves `p` against `data_dir` unless it is absolute.
    pub fn data_path(data_dir: &Path, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            data_dir.join(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_table_overrides_defaults_and_rejects_typos() {
        let v: serde_json::Value = toml::from_str::<toml::Value>(
            "seed = 7\n[data.sources.math]\npath = \"m.jsonl\"\npool = 10\n[eval]\ngsm8k = 4\n",
        )
        .map(|t| serde_json::to_value(t).unwrap())
        .unwrap();
        let s = RunSettings::from_plan_value(Some(&v), Path::new("p.toml")).unwrap();
        assert_eq!(s.seed, 7);
        assert_eq!(s.data.sources["math"].pool, Some(10));
        assert_eq!(
            s.data.sources.len(),
            1,
            "an explicit source table replaces the defaults"
        );
        assert_eq!(s.eval.gsm8k, 4);
        assert_eq!(s.eval.humaneval, 20);

        let bad = serde_json::json!({"eval": {"gsm8kk": 3}});
        let msg = RunSettings::from_plan_value(Some(&bad), Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("p.toml") && msg.contains("gsm8kk"), "{msg}");
    }

    #[test]
    fn eval_dtype_defaults_to_auto_resolves_by_device_and_is_validated_at_load() {
        assert_eq!(RunSettings::default().eval.dtype, EvalDtype::Auto);
        assert_eq!(EvalDtype::Auto.resolve(true), EvalDtype::Bf16);
        assert_eq!(EvalDtype::Auto.resolve(false), EvalDtype::F32);
        assert_eq!(EvalDtype::F32.resolve(true), EvalDtype::F32);
        assert_eq!(EvalDtype::Bf16.resolve(false), EvalDtype::Bf16);
        let ok = serde_json::json!({"eval": {"dtype": "bf16"}});
        let s = RunSettings::from_plan_value(Some(&ok), Path::new("p.toml")).unwrap();
        assert_eq!(s.eval.dtype, EvalDtype::Bf16);
        assert_eq!(serde_json::to_value(s.eval.dtype).unwrap(), "bf16");
        let bad = serde_json::json!({"eval": {"dtype": "fp16"}});
        let msg = RunSettings::from_plan_value(Some(&bad), Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("p.toml") && msg.contains("`fp16`") && msg.contains("auto, f32 or bf16"),
            "{msg}"
        );
    }

    fn data(toml_text: &str) -> Result<RunSettings> {
        let v = serde_json::to_value(toml::from_str::<toml::Value>(toml_text).unwrap()).unwrap();
        RunSettings::from_plan_value(Some(&v), Path::new("p.toml"))
    }

    #[test]
    fn heldout_is_one_number_a_table_or_the_older_general_heldout() {
        let all = data("[data]\nheldout = 8\n").unwrap();
        assert_eq!(
            all.data.heldout_counts().unwrap(),
            BTreeMap::from([
                ("code".into(), 8),
                ("general".into(), 8),
                ("math".into(), 8)
            ])
        );
        let table = data("[data]\nheldout = { math = 5, general = 2, code = 0 }\n").unwrap();
        assert_eq!(
            table.data.heldout_counts().unwrap(),
            BTreeMap::from([("general".into(), 2), ("math".into(), 5)])
        );
        let alias = data("[data]\ngeneral_heldout = 4\n").unwrap();
        assert_eq!(
            alias.data.heldout_counts().unwrap(),
            BTreeMap::from([("general".into(), 4)])
        );
        assert_eq!(
            RunSettings::default().data.heldout_counts().unwrap(),
            BTreeMap::from([("general".into(), 16)])
        );
        let both = data("[data]\nheldout = 3\ngeneral_heldout = 4\n").unwrap();
        let msg = both.data.heldout_counts().unwrap_err().to_string();
        assert!(
            msg.contains("both") && msg.contains("heldout = { general = N }"),
            "{msg}"
        );
        let unknown = data("[data]\nheldout = { maths = 3 }\n").unwrap();
        let msg = unknown.data.heldout_counts().unwrap_err().to_string();
        assert!(
            msg.contains("\"maths\"") && msg.contains("code, general, math"),
            "{msg}"
        );
    }

    #[test]
    fn replicates_change_the_seed_but_not_the_split_seed() {
        let s = data("seed = 5\nseeds = [1, 2, 3]\n").unwrap();
        assert_eq!(s.replicate_seeds(), vec![1, 2, 3]);
        let reps = s.replicates();
        assert_eq!(
            reps.iter().map(|r| r.seed).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert!(reps
            .iter()
            .all(|r| r.split_seed() == 5 && r.seeds.is_empty()));
        assert_eq!(
            reps[1].base_train_config().seed,
            2,
            "the trainer's seed follows"
        );
        let one = data("seed = 5\n").unwrap();
        assert_eq!(one.replicate_seeds(), vec![5]);
        assert_eq!(one.split_seed(), 5);
    }
}
