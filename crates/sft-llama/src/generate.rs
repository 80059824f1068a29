//! Batched generation with a KV cache: greedy or temperature / top-k / top-p sampling, EOS and
//! stop strings, left padding with per-row positions and masks.
//!
//! Prompts are sorted by length and cut into batches of [`GenerationConfig::batch_size`], so
//! padding stays small. Each batch is left-padded; pad keys are masked out and each row's
//! positions count only its real tokens, so a prompt generates the same continuation alone or
//! in a batch (up to floating-point noise). Sampling draws from a ChaCha8 stream seeded by
//! `(seed, prompt index)` on the CPU, so results do not depend on batching or device.

use std::time::Instant;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::{KvCache, Llama, LogitsFor};

/// Turns text into token ids and back. Implemented by the caller's tokenizer (see `sft-chat`).
pub trait TextCodec {
    /// Token ids of `text`, exactly as the model should see them (the caller decides about BOS
    /// and chat templates before calling [`generate`]).
    fn encode(&self, text: &str) -> std::result::Result<Vec<u32>, sft_chat::ChatError>;
    /// Text of `ids`, without special tokens.
    fn decode(&self, ids: &[u32]) -> std::result::Result<String, sft_chat::ChatError>;
}

/// A [`sft_chat::ChatTokenizer`] as a [`TextCodec`].
///
/// `add_special_tokens` is what transformers calls the same flag: true for raw text prompts
/// (prepends BOS where the tokenizer is configured to), false for text rendered by a Jinja chat
/// template, which writes BOS itself (see `sft_chat::ChatTemplate::adds_special_tokens`).
#[derive(Debug, Clone, Copy)]
pub struct TokenizerCodec<'a> {
    /// The tokenizer.
    pub tokenizer: &'a sft_chat::ChatTokenizer,
    /// Run the post-processor when encoding.
    pub add_special_tokens: bool,
}

impl TextCodec for TokenizerCodec<'_> {
    fn encode(&self, text: &str) -> std::result::Result<Vec<u32>, sft_chat::ChatError> {
        self.tokenizer.encode(text, self.add_special_tokens)
    }
    fn decode(&self, ids: &[u32]) -> std::result::Result<String, sft_chat::ChatError> {
        self.tokenizer.decode(ids, true)
    }
}

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token.
    Greedy,
    /// Sample from `softmax(logits / temperature)` restricted to the `top_k` most likely tokens
    /// (all when `None`) and then to the smallest set whose probability reaches `top_p`.
    Sample {
        /// Softmax temperature (> 0).
        temperature: f64,
        /// Nucleus mass in (0, 1].
        top_p: f64,
        /// Keep only this many candidates first.
        top_k: Option<usize>,
    },
}

/// Settings for [`generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Tokens to generate at most per prompt.
    pub max_new_tokens: usize,
    /// Greedy or sampled.
    pub sampling: Sampling,
    /// Seed of the sampling streams.
    pub seed: u64,
    /// Tokens that end a sequence; empty means the model config's `eos_token_ids`.
    pub eos_token_ids: Vec<u32>,
    /// Strings that end a sequence; the returned text is cut before the first one (needs a codec).
    pub stop_strings: Vec<String>,
    /// Prompts decoded together.
    pub batch_size: usize,
    /// Record the `top_logits` largest logits at each prompt's last position (0 = none).
    pub top_logits: usize,
    /// Draw a progress bar over the prompts.
    pub progress: bool,
    /// Continuous batching: when a sequence ends, its slot takes the next prompt (prefilled on
    /// its own and joined to the running batch) instead of idling until the batch's longest
    /// sequence ends. Same results as without (up to floating-point noise).
    pub continuous: bool,
}

impl GenerationConfig {
    /// Greedy decoding of up to `max_new_tokens`, batch size 8, no stop strings.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            sampling: Sampling::Greedy,
            seed: 0,
            eos_token_ids: Vec::new(),
            stop_strings: Vec::new(),
            batch_size: 8,
            top_logits: 0,
            progress: false,
            continuous: false,
        }
    }

    /// Nucleus sampling with the given temperature and `top_p`.
    pub fn sampled(max_new_tokens: usize, temperature: f64, top_p: f64, seed: u64) -> Self {
        Self {
            sampling: Sampling::Sample {
                temperature,
                top_p,
                top_k: None,
            },
            seed,
            ..Self::greedy(max_new_tokens)
        }
    }

    fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::Input("batch_size must be positive".into()));
        }
        if let Sampling::Sample {
            temperature,
            top_p,
            top_k,
        } = self.sampling
        {
            if !(temperature.is_finite() && temperature > 0.0) {
                return Err(Error::Input(format!(
                    "temperature must be positive, got {temperature} (use Sampling::Greedy for 0)"
                )));
            }
            if !(top_p > 0.0 && top_p <= 1.0) {
                return Err(Error::Input(format!(
                    "top_p must be in (0, 1], got {top_p}"
                )));
            }
            if top_k == Some(0) {
                return Err(Error::Input("top_k must be positive".into()));
            }
        }
        Ok(())
    }
}

/// Why a sequence ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token was generated (it is the last of `generated_ids`).
    Eos,
    /// A stop string appeared in the text.
    Stop,
    /// `max_new_tokens` were generated.
    Length,
}

/// One prompt's result.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Generation {
    /// The prompt's tokens.
    pub prompt_ids: Vec<u32>,
    /// Generated tokens, including a final EOS token when there was one.
    pub generated_ids: Vec<u32>,
    /// Decoded `generated_ids` (special tokens skipped), cut before the first stop string; empty
    /// without a codec.
    pub text: String,
    /// Why generation ended.
    pub finish_reason: FinishReason,
    /// The largest logits at the last prompt position, most likely first
    /// ([`GenerationConfig::top_logits`] of them).
    pub top_ids: Vec<u32>,
    /// Their values (f32, before temperature).
    pub top_logits: Vec<f32>,
}

/// Throughput of one [`generate`] call.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct GenerationStats {
    /// Prompts processed.
    pub prompts: usize,
    /// Real (unpadded) prompt tokens.
    pub prompt_tokens: usize,
    /// Tokens generated over all prompts.
    pub generated_tokens: usize,
    /// Seconds spent in prompt processing.
    pub prefill_secs: f64,
    /// Seconds spent decoding.
    pub decode_secs: f64,
    /// Decoding steps: forward passes of one new token per row (each costs about the same
    /// whatever its rows are doing, so fewer steps for the same tokens is the gain of
    /// continuous batching).
    pub decode_steps: usize,
    /// Wall-clock seconds for the whole call.
    pub total_secs: f64,
    /// `generated_tokens / total_secs`.
    pub tokens_per_sec: f64,
}

/// Results in prompt order, and throughput.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GenerationOutput {
    /// One per prompt, in the order given.
    pub generations: Vec<Generation>,
    /// Throughput.
    pub stats: GenerationStats,
}

/// Generate continuations of text prompts: encode with `codec`, run [`generate_ids`], decode.
pub fn generate<S: AsRef<str>>(
    model: &Llama,
    codec: &dyn TextCodec,
    prompts: &[S],
    cfg: &GenerationConfig,
) -> Result<GenerationOutput> {
    let ids = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            codec.encode(p.as_ref()).map_err(|source| Error::Tokenizer {
                context: format!("encoding prompt {i}"),
                source,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    generate_ids(model, &ids, cfg, Some(codec))
}

/// Generate continuations of tokenized prompts on the model's device. `codec` is needed for
/// stop strings and to fill [`Generation::text`].
pub fn generate_ids(
    model: &Llama,
    prompts: &[Vec<u32>],
    cfg: &GenerationConfig,
    codec: Option<&dyn TextCodec>,
) -> Result<GenerationOutput> {
    let seeds: Vec<u64> = (0..prompts.len()).map(|i| row_seed(cfg.seed, i)).collect();
    generate_ids_seeded(model, prompts, &seeds, cfg, codec)
}

/// The sampling seed of prompt `index` under `seed` in [`generate_ids`].
pub fn row_seed(seed: u64, index: usize) -> u64 {
    seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// [`generate_ids`] with each prompt's own sampling seed (`seeds[i]` for `prompts[i]`;
/// `cfg.seed` is not used): a prompt samples the same continuation whatever else is generated
/// with it.
pub fn generate_ids_seeded(
    model: &Llama,
    prompts: &[Vec<u32>],
    seeds: &[u64],
    cfg: &GenerationConfig,
    codec: Option<&dyn TextCodec>,
) -> Result<GenerationOutput> {
    cfg.validate()?;
    if seeds.len() != prompts.len() {
        return Err(Error::Input(format!(
            "{} seeds for {} prompts",
            seeds.len(),
            prompts.len()
        )));
    }
    if !cfg.stop_strings.is_empty() && codec.is_none() {
        return Err(Error::Input(
            "stop strings need a tokenizer to decode with".into(),
        ));
    }
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(Error::Input(format!("prompt {i} is empty (no tokens)")));
    }
    let vocab = model.config().vocab_size as u32;
    for (i, p) in prompts.iter().enumerate() {
        if let Some(&bad) = p.iter().find(|&&t| t >= vocab) {
            return Err(Error::Input(format!(
                "prompt {i} has token id {bad}, vocabulary size is {vocab}"
            )));
        }
    }
    let start = Instant::now();
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    // Longest first: similar lengths share a batch, and running out of memory happens early.
    order.sort_by_key(|&i| std::cmp::Reverse(prompts[i].len()));
    let mut results: Vec<Option<Generation>> = vec![None; prompts.len()];
    let mut stats = GenerationStats {
        prompts: prompts.len(),
        ..Default::default()
    };
    let pb = if cfg.progress {
        crate::weights::progress_bar(prompts.len() as u64, "generating")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let eos: Vec<u32> = if cfg.eos_token_ids.is_empty() {
        model.config().eos_token_ids.clone()
    } else {
        cfg.eos_token_ids.clone()
    };
    if cfg.continuous {
        let outs = generate_continuous(
            model, prompts, &order, seeds, cfg, &eos, codec, &mut stats, &pb,
        )?;
        for (i, g) in outs {
            results[i] = Some(g);
        }
    } else {
        for chunk in order.chunks(cfg.batch_size) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| prompts[i].as_slice()).collect();
            let batch_seeds: Vec<u64> = chunk.iter().map(|&i| seeds[i]).collect();
            let outs = generate_batch(model, &batch, &batch_seeds, cfg, &eos, codec, &mut stats)?;
            for (&i, g) in chunk.iter().zip(outs) {
                results[i] = Some(g);
            }
            pb.inc(chunk.len() as u64);
            let secs = start.elapsed().as_secs_f64();
            pb.set_message(format!(
                "generating ({:.1} tok/s)",
                stats.generated_tokens as f64 / secs.max(1e-9)
            ));
        }
    }
    pb.finish_and_clear();
    stats.total_secs = start.elapsed().as_secs_f64();
    stats.tokens_per_sec = stats.generated_tokens as f64 / stats.total_secs.max(1e-9);
    tracing::info!(
        prompts = stats.prompts,
        generated = stats.generated_tokens,
        secs = format!("{:.2}", stats.total_secs),
        tok_per_s = format!("{:.1}", stats.tokens_per_sec),
        "generation done"
    );
    let generations = results
        .into_iter()
        .map(|g| g.ok_or_else(|| Error::Input("internal: a prompt produced no result".into())))
        .collect::<Result<_>>()?;
    Ok(GenerationOutput { generations, stats })
}

/// One running sequence of [`generate_continuous`] (its [`Row`] is kept beside it).
struct Slot {
    /// The prompt's index.
    prompt: usize,
    /// Its first cache position (the columns before it are masked out for this row).
    start: i64,
    /// Its next RoPE position.
    next_pos: i64,
    top_ids: Vec<u32>,
    top_logits: Vec<f32>,
}

/// Appends `tok` to `row` and decides whether it ends there (EOS, a stop string in the decoded
/// tail, or the length limit).
fn accept(
    row: &mut Row,
    tok: u32,
    cfg: &GenerationConfig,
    eos: &[u32],
    codec: Option<&dyn TextCodec>,
    max_stop: usize,
) -> Result<()> {
    row.generated.push(tok);
    if eos.contains(&tok) {
        row.finish = Some(FinishReason::Eos);
    } else if max_stop > 0 {
        if let Some(codec) = codec {
            // A stop string ending in this token lies within the last `max_stop` tokens.
            let tail_start = row.generated.len().saturating_sub(max_stop + 1);
            let tail = codec
                .decode(&row.generated[tail_start..])
                .map_err(|source| Error::Tokenizer {
                    context: "decoding a generation's tail".into(),
                    source,
                })?;
            if cfg.stop_strings.iter().any(|s| tail.contains(s.as_str())) {
                row.finish = Some(FinishReason::Stop);
            }
        }
    }
    if row.finish.is_none() && row.generated.len() >= cfg.max_new_tokens {
        row.finish = Some(FinishReason::Length);
    }
    Ok(())
}

/// The finished [`Generation`] of a row: its text decoded and cut before a stop string.
fn finish_row(
    prompt: &[u32],
    row: Row,
    cfg: &GenerationConfig,
    codec: Option<&dyn TextCodec>,
    top_ids: Vec<u32>,
    top_logits: Vec<f32>,
) -> Result<Generation> {
    let text = match codec {
        Some(c) => {
            let mut text = c
                .decode(&row.generated)
                .map_err(|source| Error::Tokenizer {
                    context: "decoding a generation".into(),
                    source,
                })?;
            if row.finish == Some(FinishReason::Stop) {
                if let Some(at) = cfg
                    .stop_strings
                    .iter()
                    .filter_map(|s| text.find(s.as_str()))
                    .min()
                {
                    text.truncate(at);
                }
            }
            text
        }
        None => String::new(),
    };
    Ok(Generation {
        prompt_ids: prompt.to_vec(),
        generated_ids: row.generated,
        text,
        finish_reason: row.finish.unwrap_or(FinishReason::Length),
        top_ids,
        top_logits,
    })
}

/// Continuous batching over `order` (prompt indices, longest first): `batch_size` slots share
/// one KV cache whose write position advances by one per step. The prompts that take the free
/// slots of a step are prefilled together (left-padded, as a fixed batch is), and each row is
/// copied into its slot's row so that it ends at the current write position, with the row's
/// earlier positions masked out and its own RoPE positions. The positions no running row needs
/// are dropped from the front once they are an eighth of the cache, so attention spans little
/// more than the longest running row.
#[allow(clippy::too_many_arguments)]
fn generate_continuous(
    model: &Llama,
    prompts: &[Vec<u32>],
    order: &[usize],
    seeds: &[u64],
    cfg: &GenerationConfig,
    eos: &[u32],
    codec: Option<&dyn TextCodec>,
    stats: &mut GenerationStats,
    pb: &indicatif::ProgressBar,
) -> Result<Vec<(usize, Generation)>> {
    tch::no_grad(|| {
        let device = model.device();
        let mut b = cfg.batch_size.min(order.len()).max(1) as i64;
        let longest = order.iter().map(|&i| prompts[i].len()).max().unwrap_or(0) as i64;
        // A row needs at most its prompt and `max_new_tokens` positions. A quarter more (and one)
        // means that when the cache is full, at least that quarter lies before every running row
        // and can be dropped (the front is usually dropped earlier, once it is an eighth).
        let need = longest + cfg.max_new_tokens as i64;
        let cap = need + (need / 4).max(8) + 1;
        let vocab = model.config().vocab_size as i64;
        let pad_id = pad_id(model, eos);
        let mut cache = KvCache::new(model, b, cap)?;
        let mut valid = vec![false; (b * cap) as usize];
        let mut slots: Vec<Option<Slot>> = (0..b).map(|_| None).collect();
        // Each slot's decoding state; a free slot's row draws tokens nobody uses.
        let mut rows: Vec<Row> = (0..b).map(|_| Row::new(0)).collect();
        let mut logits = Tensor::f_zeros([b, vocab], (Kind::Float, device))?;
        let mut queue = order.iter().copied();
        let mut out = Vec::with_capacity(order.len());
        let max_stop = cfg.stop_strings.iter().map(String::len).max().unwrap_or(0);
        loop {
            // Fill the free slots with the next prompts: one left-padded prefill for all of
            // them, each row copied into its slot so that it ends at the current write position.
            let admitted: Vec<(usize, usize)> = (0..b as usize)
                .filter(|&s| slots[s].is_none())
                .zip(queue.by_ref())
                .collect();
            if !admitted.is_empty() {
                let t0 = Instant::now();
                let batch: Vec<&[u32]> = admitted
                    .iter()
                    .map(|&(_, i)| prompts[i].as_slice())
                    .collect();
                let padded = LeftPadded::new(&batch, pad_id, device)?;
                let width = padded.width;
                let (own, first) = padded.prefill(model, width)?;
                if cache.len() < width {
                    // Columns no running row has written stay masked for every row.
                    cache.set_len(width)?;
                }
                let tops = top_k(&first, cfg.top_logits.min(model.config().vocab_size))?;
                for (j, ((&(s, i), &n), (top_ids, top_logits))) in
                    admitted.iter().zip(&padded.lens).zip(tops).enumerate()
                {
                    let start = cache.len() - n;
                    cache.write_row(s as i64, start, &own, j as i64, width - n, n)?;
                    let row_valid = &mut valid[s * cap as usize..(s + 1) * cap as usize];
                    for (c, v) in row_valid.iter_mut().enumerate() {
                        *v = (c as i64) >= start && (c as i64) < start + n;
                    }
                    logits
                        .f_narrow(0, s as i64, 1)?
                        .f_copy_(&first.f_narrow(0, j as i64, 1)?)?;
                    rows[s] = Row::new(seeds[i]);
                    slots[s] = Some(Slot {
                        prompt: i,
                        start,
                        next_pos: n,
                        top_ids,
                        top_logits,
                    });
                    stats.prompt_tokens += n as usize;
                }
                sync(device);
                stats.prefill_secs += t0.elapsed().as_secs_f64();
            }
            if slots.iter().all(Option::is_none) {
                break;
            }
            let t1 = Instant::now();
            let next = choose(&logits, cfg.sampling, &mut rows)?;
            let mut inputs = vec![pad_id; b as usize];
            for (s, &tok) in next.iter().enumerate() {
                if slots[s].is_none() {
                    continue;
                }
                accept(&mut rows[s], tok as u32, cfg, eos, codec, max_stop)?;
                if rows[s].finish.is_none() {
                    inputs[s] = tok;
                    continue;
                }
                let done = slots[s].take().expect("the slot is running");
                let row = std::mem::replace(&mut rows[s], Row::new(0));
                stats.generated_tokens += row.generated.len();
                let g = finish_row(
                    &prompts[done.prompt],
                    row,
                    cfg,
                    codec,
                    done.top_ids,
                    done.top_logits,
                )?;
                out.push((done.prompt, g));
                pb.inc(1);
                for v in &mut valid[s * cap as usize..(s + 1) * cap as usize] {
                    *v = false;
                }
            }
            if slots.iter().all(Option::is_none) {
                stats.decode_secs += t1.elapsed().as_secs_f64();
                continue;
            }
            // No prompt left to admit and at most half the slots running: shrink the batch to
            // them, so that each remaining step computes only the running rows.
            let running: Vec<usize> = if queue.len() == 0 {
                (0..b as usize).filter(|&s| slots[s].is_some()).collect()
            } else {
                Vec::new()
            };
            if !running.is_empty() && running.len() * 2 <= b as usize {
                let keep: Vec<i64> = running.iter().map(|&s| s as i64).collect();
                cache.keep_rows(&keep)?;
                let old_cap = cap as usize;
                valid = running
                    .iter()
                    .flat_map(|&s| valid[s * old_cap..(s + 1) * old_cap].to_vec())
                    .collect();
                let mut old_slots = std::mem::take(&mut slots);
                let mut old_rows = std::mem::take(&mut rows);
                for &s in &running {
                    slots.push(old_slots[s].take());
                    rows.push(std::mem::replace(&mut old_rows[s], Row::new(0)));
                }
                b = running.len() as i64;
                inputs = running.iter().map(|&s| inputs[s]).collect();
            }
            // Drop the columns before the earliest running row once they are an eighth of the
            // cache (every step attends over all columns; one copy is worth the steps it
            // shortens), and whenever the cache is full.
            let full = cache.len() + 1 > cap;
            let drop = slots.iter().flatten().map(|sl| sl.start).min().unwrap_or(0);
            if full && drop == 0 {
                return Err(Error::Input(
                    "internal: the continuous-batching cache is full".into(),
                ));
            }
            if drop > 0 && (full || drop >= (cache.len() / 8).max(8)) {
                cache.shift_left(drop)?;
                for r in 0..b as usize {
                    let row = &mut valid[r * cap as usize..(r + 1) * cap as usize];
                    row.copy_within(drop as usize.., 0);
                    for v in &mut row[(cap - drop) as usize..] {
                        *v = false;
                    }
                }
                for sl in slots.iter_mut().flatten() {
                    sl.start -= drop;
                }
            }
            // The new token's key is valid for every row in this step (a free row attends to it
            // alone, so its softmax is not empty) and stays valid for the running rows only.
            let col = cache.len();
            let mut positions = vec![0i64; b as usize];
            for (s, slot) in slots.iter_mut().enumerate() {
                valid[s * cap as usize + col as usize] = true;
                if let Some(sl) = slot {
                    positions[s] = sl.next_pos;
                    sl.next_pos += 1;
                }
            }
            let total = col + 1;
            let mask_rows: Vec<bool> = (0..b as usize)
                .flat_map(|r| {
                    valid[r * cap as usize..r * cap as usize + total as usize]
                        .iter()
                        .copied()
                })
                .collect();
            let mask = Tensor::f_from_slice(&mask_rows)?
                .f_view([b, 1, 1, total])?
                .f_to_device(device)?;
            let input = Tensor::f_from_slice(&inputs)?
                .f_view([b, 1])?
                .f_to_device(device)?;
            let pos = Tensor::f_from_slice(&positions)?
                .f_view([b, 1])?
                .f_to_device(device)?;
            logits = model
                .forward_step(&input, Some(&pos), Some(&mask), &mut cache, LogitsFor::Last)?
                .f_to_kind(Kind::Float)?;
            stats.decode_steps += 1;
            for (s, slot) in slots.iter().enumerate() {
                if slot.is_none() {
                    valid[s * cap as usize + col as usize] = false;
                }
            }
            sync(device);
            stats.decode_secs += t1.elapsed().as_secs_f64();
        }
        Ok(out)
    })
}

/// Per-row decoding state.
struct Row {
    generated: Vec<u32>,
    finish: Option<FinishReason>,
    rng: ChaCha8Rng,
}

impl Row {
    /// A row that has generated nothing, sampling from the stream of `seed`.
    fn new(seed: u64) -> Row {
        Row {
            generated: Vec::new(),
            finish: None,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }
}

/// The id fed at pad positions: the config's pad token or an EOS id inside the vocabulary. Pad
/// positions are masked out, so any id in the vocabulary will do.
fn pad_id(model: &Llama, eos: &[u32]) -> i64 {
    let vocab = model.config().vocab_size as u32;
    model
        .config()
        .pad_token_id
        .into_iter()
        .chain(eos.iter().copied())
        .find(|&t| t < vocab)
        .unwrap_or(0) as i64
}

/// Prompts left-padded to one width for a batched prefill: pad keys masked out, each row's
/// positions counting only its own tokens.
struct LeftPadded {
    /// `[B, width]` token ids.
    input: Tensor,
    /// `[B, width]` RoPE positions.
    positions: Tensor,
    /// The prefill's `[B, 1, width, width]` mask when the lengths differ (`None`: causal).
    mask: Option<Tensor>,
    lens: Vec<i64>,
    width: i64,
}

impl LeftPadded {
    fn new(prompts: &[&[u32]], pad_id: i64, device: Device) -> Result<Self> {
        let b = prompts.len() as i64;
        let lens: Vec<i64> = prompts.iter().map(|p| p.len() as i64).collect();
        let l = lens.iter().copied().max().unwrap_or(0);
        let mut ids = vec![pad_id; (b * l) as usize];
        let mut pos = vec![0i64; (b * l) as usize];
        for (r, p) in prompts.iter().enumerate() {
            let off = (l - lens[r]) as usize;
            let row = r * l as usize;
            for (j, &t) in p.iter().enumerate() {
                ids[row + off + j] = t as i64;
                pos[row + off + j] = j as i64;
            }
        }
        let input = Tensor::f_from_slice(&ids)?
            .f_view([b, l])?
            .f_to_device(device)?;
        let positions = Tensor::f_from_slice(&pos)?
            .f_view([b, l])?
            .f_to_device(device)?;
        let mut padded = Self {
            input,
            positions,
            mask: None,
            lens,
            width: l,
        };
        if padded.lens.iter().any(|&n| n != l) {
            let causal = Tensor::f_ones([l, l], (Kind::Bool, device))?.f_tril(0)?;
            let keys = padded.key_valid(l, device)?.f_view([b, 1, 1, l])?;
            // Pad rows attend to themselves so that no softmax row is empty (their outputs are
            // unused).
            let eye = Tensor::f_eye(l, (Kind::Bool, device))?;
            padded.mask = Some(causal.f_logical_and(&keys)?.f_logical_or(&eye)?);
        }
        Ok(padded)
    }

    /// `[B, cap]` (`cap` ≥ the width): whether each key column holds a real token, the pads
    /// false and every column after the prompts true.
    fn key_valid(&self, cap: i64, device: Device) -> Result<Tensor> {
        let b = self.lens.len();
        let mut valid = vec![true; b * cap as usize];
        for (r, &n) in self.lens.iter().enumerate() {
            let off = (self.width - n) as usize;
            valid[r * cap as usize..r * cap as usize + off].fill(false);
        }
        Ok(Tensor::f_from_slice(&valid)?
            .f_view([b as i64, cap])?
            .f_to_device(device)?)
    }

    /// The prefill into a new cache of `cap` positions: that cache and the f32 logits
    /// `[B, V]` of each prompt's last token.
    fn prefill(&self, model: &Llama, cap: i64) -> Result<(KvCache, Tensor)> {
        let mut cache = KvCache::new(model, self.lens.len() as i64, cap)?;
        let logits = model
            .forward_step(
                &self.input,
                Some(&self.positions),
                self.mask.as_ref(),
                &mut cache,
                LogitsFor::Last,
            )?
            .f_to_kind(Kind::Float)?;
        Ok((cache, logits))
    }
}

/// The `k` highest logits of each row of `logits` (`[B, V]`), most likely first: ids and
/// values per row (both empty when `k` is 0).
fn top_k(logits: &Tensor, k: usize) -> Result<Vec<(Vec<u32>, Vec<f32>)>> {
    let b = logits.size()[0] as usize;
    if k == 0 {
        return Ok(vec![(Vec::new(), Vec::new()); b]);
    }
    let (vals, idx) = logits.f_topk(k as i64, -1, true, true)?;
    let (idx, vals) = (to_vec_i64(&idx)?, to_vec_f32(&vals)?);
    Ok(idx
        .chunks(k)
        .zip(vals.chunks(k))
        .map(|(i, v)| (i.iter().map(|&x| x as u32).collect(), v.to_vec()))
        .collect())
}

fn generate_batch(
    model: &Llama,
    prompts: &[&[u32]],
    seeds: &[u64],
    cfg: &GenerationConfig,
    eos: &[u32],
    codec: Option<&dyn TextCodec>,
    stats: &mut GenerationStats,
) -> Result<Vec<Generation>> {
    tch::no_grad(|| {
        let device = model.device();
        let b = prompts.len() as i64;
        let t0 = Instant::now();
        let padded = LeftPadded::new(prompts, pad_id(model, eos), device)?;
        let l = padded.width;
        let cap = l + cfg.max_new_tokens as i64;
        let (mut cache, mut logits) = padded.prefill(model, cap)?;
        let tops = top_k(&logits, cfg.top_logits.min(model.config().vocab_size))?;
        // Key validity over the whole cache, for the decoding steps' masks (padded rows only).
        let key_valid = match padded.mask {
            Some(_) => Some(padded.key_valid(cap, device)?),
            None => None,
        };
        sync(device);
        stats.prefill_secs += t0.elapsed().as_secs_f64();
        let lens = &padded.lens;
        stats.prompt_tokens += lens.iter().sum::<i64>() as usize;

        let t1 = Instant::now();
        let mut rows: Vec<Row> = seeds.iter().map(|&seed| Row::new(seed)).collect();
        let mut next_pos = Tensor::f_from_slice(lens)?
            .f_view([b, 1])?
            .f_to_device(device)?;
        let max_stop = cfg.stop_strings.iter().map(String::len).max().unwrap_or(0);
        for step in 0..cfg.max_new_tokens {
            let next = choose(&logits, cfg.sampling, &mut rows)?;
            for (row, &tok) in rows.iter_mut().zip(&next) {
                if row.finish.is_none() {
                    accept(row, tok as u32, cfg, eos, codec, max_stop)?;
                }
            }
            if rows.iter().all(|r| r.finish.is_some()) || step + 1 == cfg.max_new_tokens {
                break;
            }
            let total = l + step as i64 + 1;
            let input = Tensor::f_from_slice(&next)?
                .f_view([b, 1])?
                .f_to_device(device)?;
            let mask = match &key_valid {
                Some(kv) => Some(kv.f_narrow(1, 0, total)?.f_view([b, 1, 1, total])?),
                None => None,
            };
            logits = model
                .forward_step(
                    &input,
                    Some(&next_pos),
                    mask.as_ref(),
                    &mut cache,
                    LogitsFor::Last,
                )?
                .f_to_kind(Kind::Float)?;
            next_pos = next_pos.f_add_scalar(1)?;
            stats.decode_steps += 1;
        }
        sync(device);
        stats.decode_secs += t1.elapsed().as_secs_f64();

        let mut out = Vec::with_capacity(rows.len());
        for ((prompt, row), (ids, vals)) in prompts.iter().zip(rows).zip(tops) {
            stats.generated_tokens += row.generated.len();
            out.push(finish_row(prompt, row, cfg, codec, ids, vals)?);
        }
        Ok(out)
    })
}

/// Next token per row from f32 logits `[B, V]`.
fn choose(logits: &Tensor, sampling: Sampling, rows: &mut [Row]) -> Result<Vec<i64>> {
    match sampling {
        Sampling::Greedy => to_vec_i64(&logits.f_argmax(-1, false)?),
        Sampling::Sample {
            temperature,
            top_p,
            top_k,
        } => {
            let probs = logits
                .f_div_scalar(temperature)?
                .f_softmax(-1, Kind::Float)?;
            let (mut sorted, mut idx) = probs.f_sort(-1, true)?;
            if let Some(k) = top_k {
                let k = (k as i64).min(sorted.size()[1]);
                sorted = sorted.f_narrow(1, 0, k)?;
                idx = idx.f_narrow(1, 0, k)?;
            }
            // Keep token i while the mass before it is below top_p (always keeps the first).
            let before = sorted.f_cumsum(-1, Kind::Float)?.f_sub(&sorted)?;
            let keep = before.f_lt(top_p)?;
            let n_keep = keep
                .f_sum_dim_intlist(-1, false, Kind::Int64)?
                .f_max()?
                .f_int64_value(&[])?
                .max(1);
            let sorted = sorted
                .f_narrow(1, 0, n_keep)?
                .f_mul(&keep.f_narrow(1, 0, n_keep)?.f_to_kind(Kind::Float)?)?;
            let idx = to_vec_i64(&idx.f_narrow(1, 0, n_keep)?)?;
            let probs = to_vec_f32(&sorted)?;
            let n = n_keep as usize;
            let mut out = Vec::with_capacity(rows.len());
            for (r, row) in rows.iter_mut().enumerate() {
                let p = &probs[r * n..(r + 1) * n];
                let total: f64 = p.iter().map(|&x| x as f64).sum();
                // 53 random bits → uniform in [0, 1).
                let u = (row.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
                let mut acc = 0.0;
                let mut pick = 0;
                for (j, &x) in p.iter().enumerate() {
                    acc += x as f64;
                    if x > 0.0 {
                        pick = j;
                    }
                    if acc > u {
                        break;
                    }
                }
                out.push(idx[r * n + pick]);
            }
            Ok(out)
        }
    }
}

fn to_vec_i64(t: &Tensor) -> Result<Vec<i64>> {
    let t = t
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Int64)?
        .f_contiguous()?
        .f_view([-1])?;
    Ok(Vec::<i64>::try_from(&t)?)
}

fn to_vec_f32(t: &Tensor) -> Result<Vec<f32>> {
    let t = t
        .f_to_device(Device::Cpu)?
        .f_to_kind(Kind::Float)?
        .f_contiguous()?
        .f_view([-1])?;
    Ok(Vec::<f32>::try_from(&t)?)
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}
