//! Hidden states of queries, for the representation analysis (`sft-analyze`): which queries,
//! rendered how, through which layer, pooled how.
//!
//! * **Queries** ([`sample_queries`]): `n` records per source, chosen with `sft-compose`'s
//!   seeded sampling (the prefix of one ChaCha8 permutation per source, stream
//!   `hidden/<source>`), so the same seed picks the same records for every model compared.
//! * **The text** ([`QueryView`]): the record's first user message, either rendered as the model
//!   sees it at inference (a chat template with its generation prompt, tokenized as evaluation
//!   tokenizes prompts) or as is, with the special tokens the tokenizer adds.
//! * **The layer**: transformers' `output_hidden_states` numbering (0 the embeddings, `k` the
//!   output of block `k`, `L` the final-norm output); negative values count from the end as a
//!   Python index into the `L + 1` states does ([`resolve_layer`]).
//! * **Pooling** ([`Pool`]): the mean over the query's tokens, or its last token.
//!
//! Batches are right-padded: under causal attention a real position never sees a later one, so
//! padding cannot change a query's states and no mask is needed; the pass stops at the
//! requested layer ([`Llama::hidden_states`]). A query longer than `max_tokens` is cut to its
//! first `max_tokens` tokens (counted in [`EmbedReport::truncated`]; `n_tokens` says how many
//! were used).

use std::path::{Path, PathBuf};
use std::time::Instant;

use sft_analyze::{Analysis, AnalysisSettings, Embeddings, Pool};
use sft_chat::{ChatTemplate, ChatTokenizer};
use sft_compose::{sample, Take};
use sft_llama::{HiddenStates, Llama};
use sft_record::{Record, Role};
use tch::{Device, Kind, Tensor};

/// What can go wrong while computing hidden states.
#[derive(Debug, thiserror::Error)]
pub enum HiddenError {
    /// The request does not fit the inputs: a layer out of range, an empty source, fewer records
    /// than asked for, a record with no user message.
    #[error("{0}")]
    Input(String),
    /// A chat template does not resolve or does not render, or the tokenizer fails.
    #[error("{context}: {source}")]
    Chat {
        /// What was being done (names the template or the record).
        context: String,
        /// The cause.
        #[source]
        source: sft_chat::ChatError,
    },
    /// The model rejected its inputs.
    #[error(transparent)]
    Model(#[from] sft_llama::Error),
    /// A libtorch call failed.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// Loading a model or its tokenizer failed.
    #[error("{context}: {source}")]
    Load {
        /// What was being loaded (names the file).
        context: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The analysis of the vectors, or writing its files, failed.
    #[error(transparent)]
    Analyze(#[from] sft_analyze::Error),
}

type Result<T> = std::result::Result<T, HiddenError>;

/// How a query is shown to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryView {
    /// Rendered with this chat template (a name [`ChatTemplate::resolve`] knows: `model`,
    /// `chatml`, `vicuna_v1.1`, …) as a one-turn conversation with the generation prompt.
    Template(String),
    /// The first user message's text as is, tokenized with the tokenizer's special tokens.
    Raw,
}

impl std::fmt::Display for QueryView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueryView::Template(name) => write!(f, "template {name}"),
            QueryView::Raw => f.write_str("raw"),
        }
    }
}

/// What to compute for one model.
#[derive(Debug, Clone)]
pub struct HiddenRequest {
    /// The model's label in the outputs.
    pub label: String,
    /// The hidden state, in transformers' numbering (negative: from the end).
    pub layer: i64,
    /// How a query's token states become one vector.
    pub pool: Pool,
    /// How a query is rendered.
    pub view: QueryView,
    /// Queries per forward pass.
    pub batch_size: usize,
    /// Queries longer than this many tokens are cut to their first `max_tokens`.
    pub max_tokens: usize,
    /// Show a progress bar.
    pub progress: bool,
}

/// What [`embed`] did besides the vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbedReport {
    /// The hidden-state index used (the request's layer resolved).
    pub layer: usize,
    /// Queries cut to `max_tokens`.
    pub truncated: usize,
    /// Tokens run through the model.
    pub tokens: usize,
}

/// `layer` (transformers' numbering, negative from the end) as an index into the
/// `num_hidden_layers + 1` hidden states.
pub fn resolve_layer(layer: i64, num_hidden_layers: usize) -> Result<usize> {
    let states = num_hidden_layers as i64 + 1;
    let index = if layer < 0 { states + layer } else { layer };
    if !(0..states).contains(&index) {
        return Err(HiddenError::Input(format!(
            "layer {layer} is out of range: the model has {num_hidden_layers} layers, so hidden \
             states 0..={num_hidden_layers} (or -{states}..=-1 from the end)"
        )));
    }
    Ok(index as usize)
}

/// Checks `layer` against the model at `path` from its configuration alone (no weights are
/// loaded), so a bad layer fails before anything heavy starts; the error names the model.
pub fn check_layer(path: &std::path::Path, layer: i64) -> Result<usize> {
    let cfg = sft_llama::model_config(path)?;
    resolve_layer(layer, cfg.num_hidden_layers).map_err(|e| match e {
        HiddenError::Input(m) => HiddenError::Input(format!("{}: {m}", path.display())),
        other => other,
    })
}

/// `n` records of each source, chosen with the seeded sampling of `sft-compose` (stream
/// `hidden/<source>`), in source order and, within a source, in the sampled order. `sources`
/// are (name, records) pairs; a source with no records or fewer than `n` is an error naming it.
pub fn sample_queries(
    sources: &[(String, Vec<Record>)],
    n: usize,
    seed: u64,
) -> Result<Vec<Record>> {
    if n == 0 {
        return Err(HiddenError::Input("--n must be at least 1".into()));
    }
    let mut out = Vec::with_capacity(n * sources.len());
    for (name, records) in sources {
        if records.is_empty() {
            return Err(HiddenError::Input(format!("source {name} has no records")));
        }
        if records.len() < n {
            return Err(HiddenError::Input(format!(
                "source {name} has {} records, fewer than the {n} queries asked for",
                records.len()
            )));
        }
        let mut rng = sample::rng_for(seed, &format!("hidden/{name}"));
        for i in sample::select(records.len(), Take::Count(n as u64), &mut rng) {
            let mut r = records[i].clone();
            r.source = name.clone();
            out.push(r);
        }
    }
    Ok(out)
}

/// The record's first user message.
pub fn query_text(record: &Record) -> Result<&str> {
    record
        .messages
        .iter()
        .find(|m| m.role == Role::User)
        .map(|m| m.content.as_str())
        .ok_or_else(|| HiddenError::Input(format!("record {} has no user message", record.id)))
}

/// The token ids of each record's query as `view` shows it.
pub fn encode_queries(
    tokenizer: &ChatTokenizer,
    view: &QueryView,
    records: &[Record],
) -> Result<Vec<Vec<u32>>> {
    let template = match view {
        QueryView::Template(name) => Some(ChatTemplate::resolve(name, tokenizer).map_err(
            |source| HiddenError::Chat {
                context: format!("chat template {name:?}"),
                source,
            },
        )?),
        QueryView::Raw => None,
    };
    records
        .iter()
        .map(|r| {
            let text = query_text(r)?;
            let chat = |source| HiddenError::Chat {
                context: format!("record {}", r.id),
                source,
            };
            match &template {
                Some(t) => t
                    .encode_prompt(tokenizer, &[sft_record::Message::user(text)])
                    .map_err(chat),
                None => tokenizer.encode(text, true).map_err(chat),
            }
        })
        .collect()
}

/// The pooled hidden state `layer` (an index into the `L + 1` states) of each token sequence,
/// in the order given, as f32 vectors of the model's hidden size. Sequences are batched
/// longest first, `batch_size` at a time, right-padded.
pub fn pooled_hidden_states(
    model: &Llama,
    ids: &[Vec<u32>],
    layer: usize,
    pool: Pool,
    batch_size: usize,
    progress: &indicatif::ProgressBar,
) -> Result<Vec<Vec<f32>>> {
    if let Some(i) = ids.iter().position(Vec::is_empty) {
        return Err(HiddenError::Input(format!("query {i} has no tokens")));
    }
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
    let mut out = vec![Vec::new(); ids.len()];
    let request = HiddenStates::Layers(vec![layer]);
    for chunk in order.chunks(batch_size.max(1)) {
        let t = ids[chunk[0]].len();
        let mut flat = vec![0i64; chunk.len() * t];
        for (row, &i) in chunk.iter().enumerate() {
            for (slot, &id) in flat[row * t..].iter_mut().zip(&ids[i]) {
                *slot = i64::from(id);
            }
        }
        let input = Tensor::f_from_slice(&flat)?.f_view([chunk.len() as i64, t as i64])?;
        let states = model.hidden_states(&input, None, None, &request)?;
        let h = states[0]
            .f_to_kind(Kind::Float)?
            .f_to_device(tch::Device::Cpu)?;
        for (row, &i) in chunk.iter().enumerate() {
            let n = ids[i].len() as i64;
            let x = h.f_get(row as i64)?.f_narrow(0, 0, n)?;
            let v = match pool {
                Pool::Mean => x.f_mean_dim(0, false, Kind::Float)?,
                Pool::Last => x.f_get(n - 1)?,
            };
            out[i] = Vec::<f32>::try_from(&v.f_contiguous()?)?;
        }
        progress.inc(chunk.len() as u64);
    }
    Ok(out)
}

/// The pooled hidden states of `records`' queries through `model` as [`Embeddings`] (ids,
/// sources and token counts in the order of `records`).
pub fn embed(
    model: &Llama,
    tokenizer: &ChatTokenizer,
    records: &[Record],
    req: &HiddenRequest,
) -> Result<(Embeddings, EmbedReport)> {
    let layer = resolve_layer(req.layer, model.config().num_hidden_layers)?;
    let mut ids = encode_queries(tokenizer, &req.view, records)?;
    let mut truncated = 0;
    for q in &mut ids {
        if q.len() > req.max_tokens {
            q.truncate(req.max_tokens);
            truncated += 1;
        }
    }
    if truncated > 0 {
        tracing::info!(
            model = %req.label,
            truncated,
            max_tokens = req.max_tokens,
            "queries cut to their first max_tokens tokens"
        );
    }
    let progress = if req.progress {
        let pb = indicatif::ProgressBar::new(records.len() as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({elapsed})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb.set_message(format!("hidden states of {}", req.label));
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };
    let vectors = pooled_hidden_states(model, &ids, layer, req.pool, req.batch_size, &progress)?;
    progress.finish_and_clear();
    let dim = model.config().hidden_size;
    let report = EmbedReport {
        layer,
        truncated,
        tokens: ids.iter().map(Vec::len).sum(),
    };
    let embeddings = Embeddings {
        model: req.label.clone(),
        layer: layer as i64,
        pool: req.pool,
        ids: records.iter().map(|r| r.id.clone()).collect(),
        sources: records.iter().map(|r| r.source.clone()).collect(),
        n_tokens: ids.iter().map(Vec::len).collect(),
        dim,
        vectors: vectors.into_iter().flatten().collect(),
    };
    Ok((embeddings, report))
}

/// What [`analyze_models`] did with one model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRun {
    /// The label.
    pub label: String,
    /// The model file or directory.
    pub path: PathBuf,
    /// The model's decoder layers.
    pub num_hidden_layers: usize,
    /// The layer used, truncations, tokens.
    pub report: EmbedReport,
    /// Seconds to load the model (and its tokenizer).
    pub load_s: f64,
    /// Seconds to compute the hidden states.
    pub embed_s: f64,
}

/// What [`analyze_models`] returns.
#[derive(Debug)]
pub struct AnalyzeRun {
    /// One model's vectors each, in the order given.
    pub embeddings: Vec<Embeddings>,
    /// The scores, the t-SNE maps and the changes against the first model.
    pub analysis: Analysis,
    /// What was done with each model.
    pub models: Vec<ModelRun>,
    /// Seconds of PCA, scores and t-SNE.
    pub analysis_s: f64,
    /// Seconds to write the files.
    pub write_s: f64,
}

impl AnalyzeRun {
    /// The models (label, path, layer, tokens, truncations) and the timings, for a `run.json`.
    pub fn summary(&self) -> serde_json::Value {
        let models: Vec<serde_json::Value> = self
            .models
            .iter()
            .map(|m| {
                serde_json::json!({
                    "label": m.label, "path": m.path.display().to_string(),
                    "layer": m.report.layer, "num_hidden_layers": m.num_hidden_layers,
                    "tokens": m.report.tokens, "truncated": m.report.truncated,
                    "load_s": m.load_s, "hidden_states_s": m.embed_s,
                })
            })
            .collect();
        serde_json::json!({
            "models": models,
            "analysis_s": self.analysis_s,
            "write_s": self.write_s,
        })
    }
}

/// The whole representation analysis of `models` ((label, path) pairs, the first the reference
/// of the changes) on `records`: each model loaded in turn on `device` in `kind` (and dropped
/// before the next), its pooled hidden states ([`embed`], `req.label` replaced by the model's),
/// then [`sft_analyze::analyze`] and [`sft_analyze::write_outputs`] into `out`. Every model is
/// tokenized with `tokenizer` when given (the runner passes the base model's, which every stage
/// keeps), else with its own. The one path of the `analyze hidden` command and of
/// `[run.eval.hidden]`.
#[allow(clippy::too_many_arguments)]
pub fn analyze_models(
    models: &[(&str, &Path)],
    tokenizer: Option<&ChatTokenizer>,
    records: &[Record],
    req: &HiddenRequest,
    settings: &AnalysisSettings,
    device: Device,
    kind: Kind,
    out: &Path,
) -> Result<AnalyzeRun> {
    let mut embeddings = Vec::with_capacity(models.len());
    let mut runs = Vec::with_capacity(models.len());
    for &(label, path) in models {
        let t0 = Instant::now();
        let own;
        let tok = match tokenizer {
            Some(t) => t,
            None => {
                own = ChatTokenizer::from_path(path).map_err(|e| HiddenError::Load {
                    context: format!("loading the tokenizer of {}", path.display()),
                    source: e.into(),
                })?;
                &own
            }
        };
        let loaded = sft_llama::load_model_for_inference(path, device, kind).map_err(|e| {
            HiddenError::Load {
                context: format!("loading {} ({kind:?})", path.display()),
                source: e.into(),
            }
        })?;
        let load_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let model_req = HiddenRequest {
            label: label.to_string(),
            ..req.clone()
        };
        let (emb, report) = embed(&loaded.model, tok, records, &model_req)?;
        let embed_s = t1.elapsed().as_secs_f64();
        tracing::info!(model = %label, layer = report.layer, tokens = report.tokens, truncated = report.truncated, secs = embed_s, "hidden states");
        runs.push(ModelRun {
            label: label.to_string(),
            path: path.to_path_buf(),
            num_hidden_layers: loaded.model.config().num_hidden_layers,
            report,
            load_s,
            embed_s,
        });
        embeddings.push(emb);
    }
    let t2 = Instant::now();
    let pb = if req.progress {
        let pb = indicatif::ProgressBar::new(0);
        pb.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({elapsed})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb.set_message("PCA, scores, t-SNE");
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };
    let analysis = sft_analyze::analyze(&embeddings, settings, &pb)?;
    pb.finish_and_clear();
    let analysis_s = t2.elapsed().as_secs_f64();
    let t3 = Instant::now();
    sft_analyze::write_outputs(out, &embeddings, &analysis)?;
    Ok(AnalyzeRun {
        embeddings,
        analysis,
        models: runs,
        analysis_s,
        write_s: t3.elapsed().as_secs_f64(),
    })
}
